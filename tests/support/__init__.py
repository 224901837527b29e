"""Helpers the tests share: fakes, the service as the gateway builds it, clients.

Test modules import from here, never from ``conftest`` or from one another."""
