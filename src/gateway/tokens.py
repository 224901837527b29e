"""Named tokens with scopes: ``[[auth.token]]`` in the config or the token file.

A named token is stored as the SHA-256 of the token (never the token), with
what its holder may do.  :func:`parse_tokens` checks the TOML tables and names
the key that is wrong; :func:`new_token` makes a fresh token and the TOML
block to paste (``gateway token new NAME``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

#: What narrows an identity (a token's, a Unix user's, a certificate's).
SCOPE_KEYS = frozenset(
    {"commands", "max_lines", "follow", "roots", "algorithms", "max_clients", "expires"}
)
TOKEN_KEYS = SCOPE_KEYS | {"name", "sha256"}
UNIX_KEYS = SCOPE_KEYS | {"name", "uid", "gid"}
CERTIFICATE_KEYS = SCOPE_KEYS | {"name", "cn"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
SHA256 = re.compile(r"[0-9a-fA-F]{64}\Z")


class TokenError(Exception):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What an identity may do; ``None`` for a field means no narrowing."""

    commands: tuple[str, ...] | None = None
    max_lines: int | None = None
    follow: bool = True
    roots: tuple[str, ...] | None = None
    algorithms: tuple[str, ...] | None = None
    max_clients: int | None = None
    #: Seconds since the epoch.
    expires: float | None = None


@dataclass(frozen=True)
class NamedToken:
    """One ``[[auth.token]]``."""

    name: str
    sha256: str
    limits: Limits = Limits()


@dataclass(frozen=True)
class UnixPeer:
    """One ``[[auth.unix]]``: a local user (or group) on a ``unix:`` listener."""

    name: str
    uid: int | None = None
    gid: int | None = None
    limits: Limits = Limits()


@dataclass(frozen=True)
class CertificateName:
    """One ``[[auth.certificate]]``: a verified client certificate's subject CN."""

    name: str
    cn: str
    limits: Limits = Limits()


Named = NamedToken | UnixPeer | CertificateName


def _strings(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TokenError(key, "expected a list of strings")
    return tuple(value)


def _positive_int(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TokenError(key, f"expected an integer of 1 or more, got {value!r}")
    return value


def _expires(key: str, value: object) -> float:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise TokenError(key, "needs a time zone (e.g. 2027-01-31T00:00:00Z)")
        return value.timestamp()
    if isinstance(value, dt.date):  # the start of that day, UTC
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp()
    raise TokenError(key, "expected a date or a date-time (e.g. 2027-01-31T00:00:00Z)")


def _table(key: str, table: object, keys: frozenset[str]) -> tuple[Mapping[str, Any], str]:
    if not isinstance(table, Mapping):
        raise TokenError(key, "expected a table")
    for name in table:
        if name not in keys:
            raise TokenError(f"{key}.{name}", "unknown key")
    name = table.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise TokenError(
            f"{key}.name", "needs a name: letters, digits, '.', '_' or '-' (at most 64)"
        )
    return table, name


def parse_limits(key: str, table: Mapping[str, Any]) -> Limits:
    """The scope fields of a table (the same for every kind of identity)."""
    follow = table.get("follow", True)
    if not isinstance(follow, bool):
        raise TokenError(f"{key}.follow", "expected true or false")
    roots = None
    if "roots" in table:
        roots = _strings(f"{key}.roots", table["roots"])
        if not roots or not all(os.path.isabs(r) for r in roots):
            raise TokenError(f"{key}.roots", "expected absolute directories")

    def optional(field: str, check: Callable[[str, object], T]) -> T | None:
        return check(f"{key}.{field}", table[field]) if field in table else None

    return Limits(
        commands=optional("commands", _strings),
        max_lines=optional("max_lines", _positive_int),
        follow=follow,
        roots=roots,
        algorithms=optional("algorithms", _strings),
        max_clients=optional("max_clients", _positive_int),
        expires=optional("expires", _expires),
    )


def parse_token(key: str, table: object) -> NamedToken:
    fields, name = _table(key, table, TOKEN_KEYS)
    digest = fields.get("sha256")
    if not isinstance(digest, str) or not SHA256.match(digest):
        # (never echoed: close to a secret)
        raise TokenError(
            f"{key}.sha256", "needs the token's SHA-256 as 64 hex digits (gateway token new)"
        )
    return NamedToken(name, digest.lower(), parse_limits(key, fields))


def _id(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TokenError(key, f"expected a number of 0 or more, got {value!r}")
    return value


def parse_unix(key: str, table: object) -> UnixPeer:
    fields, name = _table(key, table, UNIX_KEYS)
    uid = _id(f"{key}.uid", fields["uid"]) if "uid" in fields else None
    gid = _id(f"{key}.gid", fields["gid"]) if "gid" in fields else None
    if (uid is None) == (gid is None):
        raise TokenError(key, "needs a uid or a gid (one of them)")
    return UnixPeer(name, uid, gid, parse_limits(key, fields))


def parse_certificate(key: str, table: object) -> CertificateName:
    fields, name = _table(key, table, CERTIFICATE_KEYS)
    cn = fields.get("cn", name)
    if not isinstance(cn, str) or not cn:
        raise TokenError(f"{key}.cn", "expected the certificate's subject common name")
    return CertificateName(name, cn, parse_limits(key, fields))


def _parse_all(
    key: str, value: object, parse: Callable[[str, object], T], shape: str
) -> tuple[T, ...]:
    if not isinstance(value, list):
        raise TokenError(key, f"expected [[{shape}]] tables")
    items = tuple(parse(f"{key}[{i}]", table) for i, table in enumerate(value, 1))
    seen: set[str] = set()
    for i, item in enumerate(items, 1):
        name = item.name  # type: ignore[attr-defined]
        if name in seen:
            raise TokenError(f"{key}[{i}].name", f"{name!r} is used twice")
        seen.add(name)
    return items


def parse_tokens(key: str, value: object) -> tuple[NamedToken, ...]:
    """``[[auth.token]]`` tables: checked, names unique."""
    return _parse_all(key, value, parse_token, "auth.token")


def parse_unix_peers(key: str, value: object) -> tuple[UnixPeer, ...]:
    """``[[auth.unix]]`` tables."""
    return _parse_all(key, value, parse_unix, "auth.unix")


def parse_certificates(key: str, value: object) -> tuple[CertificateName, ...]:
    """``[[auth.certificate]]`` tables."""
    return _parse_all(key, value, parse_certificate, "auth.certificate")


def check_scopes(
    key: str, named: Sequence[Named], commands: frozenset[str], algorithms: Sequence[str]
) -> None:
    """Every command and algorithm an identity's scope names exists."""
    for i, item in enumerate(named, 1):
        token = item.limits
        for command in token.commands or ():
            if command not in commands:
                known = ", ".join(sorted(commands))
                raise TokenError(
                    f"{key}[{i}].commands", f"unknown command {command!r} (known: {known})"
                )
        for algorithm in token.algorithms or ():
            if algorithm not in algorithms:
                raise TokenError(
                    f"{key}[{i}].algorithms",
                    f"{algorithm!r} is not in comphash.algorithms ({', '.join(algorithms)})",
                )


def new_token(name: str) -> tuple[str, str]:
    """A fresh token (shown once) and the ``[[auth.token]]`` block that accepts it."""
    if not NAME.match(name):
        raise TokenError("name", "letters, digits, '.', '_' or '-' (at most 64)")
    token = secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode()).hexdigest()
    block = (
        "[[auth.token]]\n"
        f'name = "{name}"\n'
        f'sha256 = "{digest}"\n'
        '# commands = ["lastlog", "stats", "help"]   # default: all\n'
        "# max_lines = 200\n"
        "# follow = true\n"
        '# roots = ["/srv/releases"]\n'
        '# algorithms = ["sha256"]\n'
        "# max_clients = 2\n"
        "# expires = 2027-01-31T00:00:00Z\n"
    )
    return token, block
