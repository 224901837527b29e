"""Every front-end registers its transport when imported; load them all, as the daemon does."""

import gateway.app  # noqa: F401
