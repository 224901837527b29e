"""``[cluster] redis``: where Redis is, read without importing a Redis client."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit


class URLError(ValueError):
    """A ``[cluster] redis`` that cannot be used; the message never shows a password."""


@dataclass(frozen=True)
class Target:
    """Where Redis is, and how to log in (``shown`` has no password)."""

    kind: str  # "tcp", "tls" or "unix"
    host: str
    port: int
    path: str
    db: int
    username: str | None
    password: str | None
    shown: str


def parse_url(url: str) -> Target:
    """``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS) or
    ``unix:///path/redis.sock[?db=N]``."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise URLError("not a redis://, rediss:// or unix:// URL") from None
    scheme = parts.scheme.lower()
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    query = parse_qs(parts.query)
    if scheme == "unix":
        if not parts.path.startswith("/"):
            raise URLError("unix:// needs an absolute socket path, e.g. unix:///run/redis.sock")
        db = _db(query.get("db", ["0"])[0])
        shown = f"unix://{parts.path}" + (f"?db={db}" if db else "")
        return Target("unix", "", 0, parts.path, db, username, password, shown)
    if scheme not in ("redis", "rediss"):
        raise URLError("not a redis://, rediss:// or unix:// URL")
    if not parts.hostname:
        raise URLError("needs a host, e.g. redis://127.0.0.1:6379/0")
    db = _db(parts.path.strip("/") or "0")
    port = port or 6379
    host = parts.hostname
    where = f"[{host}]" if ":" in host else host
    shown = f"{scheme}://{where}:{port}/{db}"
    return Target(
        "tls" if scheme == "rediss" else "tcp", host, port, "", db, username, password, shown
    )


def _db(text: str) -> int:
    if not text.isdigit():
        raise URLError("the database must be a number, e.g. redis://127.0.0.1:6379/0")
    return int(text)
