"""Stable error codes shared by every transport.

Front-ends never word an error themselves: they take the code and the message
from a :class:`CommandError` and only choose how to frame it (a text line, an
HTTP status, a JSON object).
"""

from __future__ import annotations

from typing import Final

#: code -> HTTP status, as in the design's error table.
HTTP_STATUS: Final[dict[str, int]] = {
    "unknown_command": 404,
    "missing_argument": 400,
    "bad_argument": 400,
    "not_found": 404,
    "not_a_file": 400,
    "forbidden": 403,
    "permission_denied": 403,
    "unauthorized": 401,
    "quota_exceeded": 503,
    "rate_limited": 429,
    "unavailable": 503,
    "timeout": 504,
    "internal": 500,
    # a declared command's program ran and failed (exit status or signal)
    "command_failed": 502,
    # HTTP-level refusals (the request never reached a command)
    "method_not_allowed": 405,
    "request_timeout": 408,
    "too_large": 413,
    "uri_too_long": 414,
    "headers_too_large": 431,
}

INTERNAL_MESSAGE: Final = "Internal error (details in the server log only)"
QUOTA_MESSAGE: Final = "Too many connections. Bye!"


class CommandError(Exception):
    """A failure a client may see: a stable ``code`` and a human ``message``."""

    def __init__(self, code: str, message: str, retry_after: int | None = None) -> None:
        """``retry_after``: seconds after which trying again may succeed."""
        if code not in HTTP_STATUS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"CommandError({self.code!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CommandError):
            return NotImplemented
        return (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))


class QuotaExceeded(CommandError):
    """No client slot is free (globally or for this address)."""

    def __init__(self, message: str = QUOTA_MESSAGE) -> None:
        super().__init__("quota_exceeded", message)
