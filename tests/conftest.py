"""Every front-end registers its transport when imported; load them all, as the daemon does."""

from collections.abc import Iterator

import pytest

import gateway.app  # noqa: F401

from .support.redis import RedisServer


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A running redis-server of the test's own (skipped without one, failed in CI)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
