"""TOML configuration -> frozen dataclasses, with environment and flag overrides.

Precedence, lowest first: built-in defaults (equal to ``config/gateway.toml``),
the config file, ``GATEWAY_<SECTION>_<KEY>`` environment variables, then
command-line flags.  Any problem is a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shlex
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.declarations import DeclarationError, DeclaredCommand, parse_commands
from gateway.tokens import (
    CertificateName,
    Named,
    NamedToken,
    TokenError,
    UnixPeer,
    check_scopes,
    parse_certificates,
    parse_tokens,
    parse_unix_peers,
)

ENV_PREFIX = "GATEWAY_"
#: Environment variables that are not config keys.
ENV_OTHER = frozenset({"GATEWAY_CONFIG", "GATEWAY_TOKEN", "GATEWAY_REDIS_PASSWORD"})


class ConfigError(Exception):
    """A bad configuration; ``str()`` is one line naming the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config error: {key}: {message}" if key else f"config error: {message}")
        self.key = key


@dataclass(frozen=True)
class TCPConfig:
    listen: str = "tcp:9999:interface=127.0.0.1"
    max_line_length: int = 4096
    idle_timeout: float = 300.0
    eof_grace: float = 5.0

    def check(self) -> None:
        _positive("tcp.max_line_length", self.max_line_length)
        _not_negative("tcp.idle_timeout", self.idle_timeout)
        _not_negative("tcp.eof_grace", self.eof_grace)
        _nonempty("tcp.listen", self.listen)


@dataclass(frozen=True)
class HTTPConfig:
    listen: str = "tcp:8080:interface=127.0.0.1"
    max_header_bytes: int = 16384
    max_body_bytes: int = 65536
    request_timeout: float = 10.0
    idle_timeout: float = 60.0
    retry_after: int = 5
    allowed_hosts: tuple[str, ...] = ()
    sse_keepalive: float = 15.0

    def check(self) -> None:
        _nonempty("http.listen", self.listen)
        for host in self.allowed_hosts:
            name = host.strip()
            if not name or any(c.isspace() or c in "/@[]" for c in name) or not name.isprintable():
                raise ConfigError(
                    "http.allowed_hosts",
                    f'not a host name (name, ".example.com" or "*"): {host!r}',
                )
        if self.max_header_bytes < 1024:
            raise ConfigError("http.max_header_bytes", "must be at least 1024")
        _not_negative("http.max_body_bytes", self.max_body_bytes)
        _positive("http.request_timeout", self.request_timeout)
        _positive("http.idle_timeout", self.idle_timeout)
        _not_negative("http.retry_after", self.retry_after)
        _positive("http.sse_keepalive", self.sse_keepalive)


@dataclass(frozen=True)
class QuotaConfig:
    max_clients: int = 10
    max_per_ip: int = 0
    max_followers: int = 0

    def check(self) -> None:
        _positive("quota.max_clients", self.max_clients)
        _not_negative("quota.max_per_ip", self.max_per_ip)
        _not_negative("quota.max_followers", self.max_followers)


@dataclass(frozen=True)
class LimitsConfig:
    commands_per_second: float = 10.0
    command_burst: int = 30
    shutdown_grace: float = 10.0
    stall_timeout: float = 30.0

    def check(self) -> None:
        _not_negative("limits.stall_timeout", self.stall_timeout)
        _not_negative("limits.shutdown_grace", self.shutdown_grace)
        _not_negative("limits.commands_per_second", self.commands_per_second)
        _positive("limits.command_burst", self.command_burst)


@dataclass(frozen=True)
class LastlogConfig:
    source: str = "auto"
    default_lines: int = 10
    max_lines: int = 1000
    timeout: float = 10.0

    def check(self) -> None:
        _positive("lastlog.max_lines", self.max_lines)
        _positive("lastlog.default_lines", self.default_lines)
        if self.default_lines > self.max_lines:
            raise ConfigError("lastlog.default_lines", "must not exceed lastlog.max_lines")
        _positive("lastlog.timeout", self.timeout)
        source = self.source
        if source in ("auto", "journal"):
            return
        if source.startswith("journal:"):
            if not os.path.isabs(source[len("journal:") :]):
                raise ConfigError(
                    "lastlog.source", f"journal: needs an absolute directory, got {source!r}"
                )
            return
        if source.startswith("command:"):
            try:
                argv = shlex.split(source[len("command:") :])
            except ValueError as e:
                raise ConfigError("lastlog.source", f"cannot split command: {e}") from None
            if not argv:
                raise ConfigError("lastlog.source", "command: needs a program to run")
            return
        if not os.path.isabs(source):
            raise ConfigError(
                "lastlog.source",
                'must be "auto", "journal", "journal:<directory>", an absolute file path '
                f'or "command:<argv>", got {source!r}',
            )


@dataclass(frozen=True)
class ComphashConfig:
    allowed_roots: tuple[str, ...] = ("/",)
    algorithms: tuple[str, ...] = ("sha1", "sha256", "sha512", "md5", "blake2b", "blake3")
    default_algorithm: str = "sha1"
    chunk_size: int = 1024 * 1024
    workers: int = 4
    timeout: float = 600.0
    #: The most threads one hash uses (0: one per core): a BLAKE3 hash of a
    #: large file, or the files of a tree (-r) or a manifest (-c).
    threads: int = 0
    #: A tree (-r) holding more files or bytes is refused.
    max_files: int = 100_000
    max_bytes: int = 1 << 40
    #: A manifest (-c) larger than this is refused (also the body limit of
    #: POST /comphash/check).
    max_manifest_bytes: int = 64 * 1024 * 1024

    def check(self) -> None:
        if not self.allowed_roots:
            raise ConfigError("comphash.allowed_roots", "must list at least one directory")
        for root in self.allowed_roots:
            if not os.path.isabs(root):
                raise ConfigError("comphash.allowed_roots", f"not an absolute path: {root!r}")
        if not self.algorithms:
            raise ConfigError("comphash.algorithms", "must list at least one algorithm")
        for name in self.algorithms:
            if name == "blake3":
                continue
            if name not in hashlib.algorithms_available or name.startswith("shake_"):
                raise ConfigError("comphash.algorithms", f"unsupported algorithm {name!r}")
        if self.default_algorithm not in self.algorithms:
            raise ConfigError("comphash.default_algorithm", "must be one of comphash.algorithms")
        if self.chunk_size < 1024 * 1024:
            raise ConfigError("comphash.chunk_size", "must be at least 1048576 (1 MiB)")
        _positive("comphash.workers", self.workers)
        _positive("comphash.timeout", self.timeout)
        _not_negative("comphash.threads", self.threads)
        _positive("comphash.max_files", self.max_files)
        _positive("comphash.max_bytes", self.max_bytes)
        _positive("comphash.max_manifest_bytes", self.max_manifest_bytes)


@dataclass(frozen=True)
class WebSocketConfig:
    allowed_origins: tuple[str, ...] = ()
    max_message_bytes: int = 65536
    max_frame_bytes: int = 65536
    max_in_flight: int = 8
    auto_ping_interval: float = 30.0
    auto_ping_timeout: float = 10.0
    open_handshake_timeout: float = 10.0
    close_handshake_timeout: float = 5.0

    def check(self) -> None:
        for origin in self.allowed_origins:
            if origin not in ("*", "null") and parse_origin(origin) is None:
                raise ConfigError(
                    "websocket.allowed_origins",
                    f'not an origin (scheme://host[:port], "*" or "null"): {origin!r}',
                )
        _positive("websocket.max_message_bytes", self.max_message_bytes)
        _positive("websocket.max_frame_bytes", self.max_frame_bytes)
        _positive("websocket.max_in_flight", self.max_in_flight)
        _not_negative("websocket.auto_ping_interval", self.auto_ping_interval)
        _not_negative("websocket.auto_ping_timeout", self.auto_ping_timeout)
        _positive("websocket.open_handshake_timeout", self.open_handshake_timeout)
        _positive("websocket.close_handshake_timeout", self.close_handshake_timeout)


def parse_origin(origin: str) -> tuple[str, str, int] | None:
    """``"http://Host:80"`` -> ``("http", "host", 80)``; ``None`` if not an origin.

    Default ports are written out, so ``http://h`` and ``http://h:80`` are the
    same origin, as a browser treats them.
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    defaults = {"http": 80, "https": 443}
    if scheme not in defaults or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else defaults[scheme]


@dataclass(frozen=True)
class AuthConfig:
    tokens: tuple[str, ...] = ()
    #: ``[[auth.token]]``: named tokens, stored hashed, each with its scope.
    token: tuple[NamedToken, ...] = ()
    #: ``[[auth.unix]]``: local users or groups on a ``unix:`` listener.
    unix: tuple[UnixPeer, ...] = ()
    #: ``[[auth.certificate]]``: verified client certificates, by subject CN.
    certificate: tuple[CertificateName, ...] = ()
    token_file: str = ""
    metrics: bool = True
    max_failures: int = 5
    failure_window: float = 60.0
    lockout: float = 300.0
    login_timeout: float = 10.0
    max_pending_logins: int = 5
    max_pending_logins_per_ip: int = 2

    def check(self) -> None:
        _not_negative("auth.login_timeout", self.login_timeout)
        _positive("auth.max_pending_logins", self.max_pending_logins)
        _positive("auth.max_pending_logins_per_ip", self.max_pending_logins_per_ip)
        for token in self.tokens:
            check_token("auth.tokens", token)
        if self.token_file and not os.path.isabs(self.token_file):
            raise ConfigError("auth.token_file", "must be an absolute path")
        _positive("auth.max_failures", self.max_failures)
        _positive("auth.failure_window", self.failure_window)
        _positive("auth.lockout", self.lockout)

    def read_tokens(self) -> tuple[tuple[str, ...], tuple[NamedToken, ...]]:
        """Every token, the token file read (once) now: the plain ones
        (``tokens`` first) and the named ones (``[[auth.token]]`` first)."""
        plain, named = self._file()
        return (*self.tokens, *plain), (*self.token, *named)

    def all_tokens(self) -> tuple[str, ...]:
        """``tokens`` plus the plain tokens in ``token_file`` (read now)."""
        return self.read_tokens()[0]

    @property
    def enabled(self) -> bool:
        """Whether clients must prove who they are (the token file read now)."""
        plain, named = self.read_tokens()
        return bool(plain or named or self.unix or self.certificate)

    def _file(self) -> tuple[list[str], tuple[NamedToken, ...]]:
        """The token file: one plain token per line, or ``[[token]]`` tables
        (the shape of ``[[auth.token]]``)."""
        if not self.token_file:
            return [], ()
        try:
            with open(self.token_file, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(
                "auth.token_file", f"cannot read {self.token_file}: {e.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError("auth.token_file", "is not UTF-8 text") from None
        found = [line.strip() for line in text.splitlines()]
        found = [t for t in found if t and not t.startswith("#")]
        if found and found[0].startswith("["):
            try:
                tables = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                raise ConfigError("auth.token_file", f"is not valid TOML: {e}") from None
            unknown = sorted(set(tables) - {"token", "auth"})
            if unknown:
                raise ConfigError(f"auth.token_file: {unknown[0]}", "unknown key")
            value = tables.get("token", tables.get("auth", {}).get("token", []))
            try:
                return [], parse_tokens("auth.token_file: token", value)
            except TokenError as e:
                raise ConfigError(e.key, e.message) from None
        for token in found:
            check_token("auth.token_file", token)
        return found, ()


MIN_TOKEN_LENGTH = 16


def check_token(key: str, token: str) -> None:
    # Never echo the token in the message.
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(key, f"a token must be at least {MIN_TOKEN_LENGTH} characters")
    if any(c.isspace() for c in token) or not token.isprintable():
        raise ConfigError(key, "a token must not contain spaces or control characters")


@dataclass(frozen=True)
class TLSConfig:
    #: PEM file of the CAs client certificates are verified against ("": none asked).
    client_ca: str = ""
    #: Refuse clients without a certificate at the handshake.
    require_client_cert: bool = False

    def check(self) -> None:
        if self.client_ca and not os.path.isabs(self.client_ca):
            raise ConfigError("tls.client_ca", "must be an absolute path")
        if self.require_client_cert and not self.client_ca:
            raise ConfigError("tls.require_client_cert", "needs tls.client_ca")


@dataclass(frozen=True)
class AuditConfig:
    #: "" (off), "journal", or an absolute path (JSON lines, reopened on SIGHUP).
    file: str = ""

    def check(self) -> None:
        if self.file not in ("", "journal") and not os.path.isabs(self.file):
            raise ConfigError(
                "audit.file", f'must be "", "journal" or an absolute path, got {self.file!r}'
            )


@dataclass(frozen=True)
class FollowConfig:
    replay_lines: int = 10000
    queue_lines: int = 1000

    def check(self) -> None:
        _positive("follow.replay_lines", self.replay_lines)
        _positive("follow.queue_lines", self.queue_lines)


@dataclass(frozen=True)
class ClusterConfig:
    #: "" (one process, everything in memory), redis://, rediss:// or unix://.
    redis: str = ""
    name: str = "gw"
    lease_ttl: float = 15.0
    timeout: float = 0.5
    on_redis_down: str = "refuse"
    workers: int = 1
    password_file: str = ""
    tls_ca: str = ""

    def check(self) -> None:
        from gateway.cluster.url import URLError, parse_url

        if self.redis:
            try:
                parse_url(self.redis)
            except URLError as e:  # the message never shows the URL: it may hold a password
                raise ConfigError("cluster.redis", str(e)) from None
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.name):
            raise ConfigError("cluster.name", "letters, digits, '_', '.' and '-' only (1 to 64)")
        _positive("cluster.timeout", self.timeout)
        if self.lease_ttl < 3 * self.timeout or self.lease_ttl < 1:
            raise ConfigError(
                "cluster.lease_ttl", "must be at least 1 s and three times cluster.timeout"
            )
        if self.on_redis_down not in ("refuse", "local"):
            raise ConfigError(
                "cluster.on_redis_down", f'must be "refuse" or "local", got {self.on_redis_down!r}'
            )
        _positive("cluster.workers", self.workers)
        if self.workers > 1 and not self.redis:
            raise ConfigError(
                "cluster.workers",
                "more than one worker needs [cluster] redis: the client quota "
                "could not be shared between them otherwise",
            )
        for key in ("password_file", "tls_ca"):
            value = getattr(self, key)
            if value and not os.path.isabs(value):
                raise ConfigError(f"cluster.{key}", "must be an absolute path")


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"
    level: str = "info"

    def check(self) -> None:
        if self.format not in ("text", "json"):
            raise ConfigError("log.format", f'must be "text" or "json", got {self.format!r}')
        if self.level not in ("debug", "info", "warn", "error"):
            raise ConfigError("log.level", "must be one of debug, info, warn, error")


@dataclass(frozen=True)
class Config:
    tcp: TCPConfig = field(default_factory=TCPConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)
    quota: QuotaConfig = field(default_factory=QuotaConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    lastlog: LastlogConfig = field(default_factory=LastlogConfig)
    comphash: ComphashConfig = field(default_factory=ComphashConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    log: LogConfig = field(default_factory=LogConfig)
    follow: FollowConfig = field(default_factory=FollowConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    #: ``[commands.<name>]``: programs operators expose (checked when parsed).
    commands: tuple[DeclaredCommand, ...] = ()

    def check(self) -> None:
        for name in _sections():
            getattr(self, name).check()
        self.check_scopes("auth.token", self.auth.token)
        self.check_scopes("auth.unix", self.auth.unix)
        self.check_scopes("auth.certificate", self.auth.certificate)

    def check_scopes(self, key: str, tokens: typing.Sequence[Named]) -> None:
        """Every command and algorithm the tokens name exists."""
        commands = BUILTIN_COMMANDS | {c.name for c in self.commands}
        try:
            check_scopes(key, tokens, commands, self.comphash.algorithms)
        except TokenError as e:
            raise ConfigError(e.key, e.message) from None


#: The commands every gateway has (a token's ``commands`` may also name declared ones).
BUILTIN_COMMANDS = frozenset({"lastlog", "comphash", "help", "stats", "exit"})


#: Keys that hold tables of identities, and their parsers.
TABLES: dict[str, Callable[[str, object], tuple[Any, ...]]] = {
    "auth.token": parse_tokens,
    "auth.unix": parse_unix_peers,
    "auth.certificate": parse_certificates,
}


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(key, f"must be greater than 0, got {value!r}")


def _not_negative(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(key, f"must be 0 or more, got {value!r}")


def _nonempty(key: str, value: str) -> None:
    if not value.strip():
        raise ConfigError(key, "must not be empty")


def _sections() -> dict[str, type[Any]]:
    """The sections of plain keys (``[commands]`` is a table of declarations)."""
    hints = typing.get_type_hints(Config)
    return {name: cls for name, cls in hints.items() if name != "commands"}


def _keys(section_cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def is_secret(key: str) -> bool:
    """Does the key (``auth.tokens``, ``GATEWAY_AUTH_TOKENS``, ...) hold a secret?

    No error message, log line or printout shows such a key's value.
    """
    return "token" in key.lower() and "token_file" not in key.lower()


def _coerce(key: str, kind: Any, value: object) -> object:
    """Check ``value`` (from TOML) against the annotated type ``kind``."""
    if is_secret(key):  # never echo what may be a secret
        try:
            return _coerce_value(key, kind, value)
        except ConfigError:
            raise ConfigError(key, f"expected {_kind_name(kind)}") from None
    return _coerce_value(key, kind, value)


def _kind_name(kind: Any) -> str:
    if typing.get_origin(kind) is tuple:
        return "a list of strings"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[kind]


def _coerce_value(key: str, kind: Any, value: object) -> object:
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"expected a list of strings, got {value!r}")
        return tuple(value)
    raise AssertionError(f"unhandled config type {kind!r}")  # pragma: no cover


def _from_text(key: str, kind: Any, text: str) -> object:
    """Turn an environment variable or flag value into a TOML-like value."""
    if kind is str:
        return text
    if typing.get_origin(kind) is tuple:
        stripped = text.strip()
        if stripped.startswith("["):
            return _toml_value(key, stripped)
        return [part.strip() for part in stripped.split(",") if part.strip()]
    return _toml_value(key, text.strip())


def _toml_value(key: str, text: str) -> object:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        shown = "(not shown: it may hold a secret)" if is_secret(key) else repr(text)
        raise ConfigError(key, f"cannot parse value {shown}") from None


def merge(base: Config, overrides: Mapping[str, Mapping[str, object]]) -> Config:
    """A new config with ``overrides`` (``{section: {key: value}}``) applied."""
    sections = _sections()
    changed: dict[str, Any] = {}
    for section, values in overrides.items():
        if section == "commands":
            try:
                changed[section] = parse_commands(values)
            except DeclarationError as e:
                raise ConfigError(e.key, e.message) from None
            continue
        if section not in sections:
            raise ConfigError(section, "unknown section")
        if not isinstance(values, Mapping):
            raise ConfigError(section, "expected a table")
        keys = _keys(sections[section])
        fields: dict[str, object] = {}
        for key, value in values.items():
            name = f"{section}.{key}"
            if key not in keys:
                raise ConfigError(name, "unknown key")
            parse = TABLES.get(name)
            if parse is not None:
                try:
                    fields[key] = parse(name, value)
                except TokenError as e:
                    raise ConfigError(e.key, e.message) from None
                continue
            fields[key] = _coerce(name, keys[key], value)
        changed[section] = dataclasses.replace(getattr(base, section), **fields)
    config = dataclasses.replace(base, **changed)
    config.check()
    return config


def load_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError("", f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"{path}: {e}") from None


def env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, object]]:
    """``GATEWAY_QUOTA_MAX_CLIENTS=20`` -> ``{"quota": {"max_clients": 20}}``."""
    by_name: dict[str, tuple[str, str, Any]] = {}
    for section, cls in _sections().items():
        for key, kind in _keys(cls).items():
            if f"{section}.{key}" in TABLES:  # tables of identities: the file only
                continue
            by_name[f"{ENV_PREFIX}{section}_{key}".upper()] = (section, key, kind)
    out: dict[str, dict[str, object]] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_OTHER:
            continue
        if name not in by_name:
            raise ConfigError(name, "unknown environment variable")
        section, key, kind = by_name[name]
        out.setdefault(section, {})[key] = _from_text(name, kind, text)
    return out


def flag_overrides(flags: Mapping[str, str | None]) -> dict[str, dict[str, object]]:
    """``{"quota.max_clients": "20"}`` (unset flags are ``None``) -> overrides."""
    sections = _sections()
    out: dict[str, dict[str, object]] = {}
    for dotted, text in flags.items():
        if text is None:
            continue
        section, key = dotted.split(".", 1)
        kind = _keys(sections[section])[key]
        out.setdefault(section, {})[key] = _from_text(dotted, kind, text)
    return out


def redacted(config: Config) -> dict[str, Any]:
    """The config as a dict, tokens hidden (for printing)."""
    out = dataclasses.asdict(config)
    out["auth"]["tokens"] = ["***"] * len(config.auth.tokens)
    for token in out["auth"]["token"]:
        token["sha256"] = "***"
    if config.cluster.redis:  # a password may be part of the URL
        from gateway.cluster.url import parse_url

        out["cluster"]["redis"] = parse_url(config.cluster.redis).shown
    for command in out["commands"]:  # a declared command's env may hold a key or password
        command["env"] = {name: "***" for name, _ in command["env"]}
    return out


def load(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, str | None] | None = None,
) -> Config:
    """Defaults, then the file at ``path``, then ``environ``, then ``flags``."""
    config = Config()
    config.check()
    if path is not None:
        config = merge(config, load_file(path))
    if environ is not None:
        config = merge(config, env_overrides(environ))
        token = environ.get("GATEWAY_TOKEN")
        if token:
            check_token("GATEWAY_TOKEN", token)
            config = dataclasses.replace(
                config, auth=dataclasses.replace(config.auth, tokens=(*config.auth.tokens, token))
            )
    if flags is not None:
        config = merge(config, flag_overrides(flags))
    return config


def split_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """``ssl:8443:privateKey=k.pem`` -> ``("ssl", ["8443"], {"privateKey": "k.pem"})``
    (``\\:`` is a colon inside a value, as in Twisted's endpoint strings)."""
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", description.strip())]
    kind, positional, named = parts[0].lower(), [], {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            named[key] = value
        else:
            positional.append(part)
    return kind, positional, named


def reaches_beyond_loopback(description: str) -> bool:
    """Does this endpoint string listen where other machines can reach it?

    ``tcp:9999`` (all interfaces) does; ``tcp:9999:interface=127.0.0.1`` and
    ``unix:/run/x.sock`` do not.  An endpoint type we cannot judge counts as
    reaching beyond, to be safe.
    """
    import ipaddress

    kind, _, options = split_endpoint(description)
    if kind == "unix":
        return False
    if kind == "systemd":
        return _systemd_reach(description)
    if kind not in ("tcp", "ssl", "tcp6"):
        return True
    interface = options.get("interface", "").strip("[]")
    if not interface:
        return True  # every interface
    if interface == "localhost":
        return False
    try:
        return not ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return True


def _systemd_reach(description: str) -> bool:
    """Does the socket systemd passed (by index or name) listen beyond loopback?
    Judged by where it is bound; one that cannot be found counts as reaching.

    The socket is found the way the listener will find it, through Twisted's
    ``systemd:`` parser (which reads, and clears, ``LISTEN_FDS`` once).
    """
    import ipaddress
    import socket

    from twisted.internet.endpoints import serverFromString

    try:
        endpoint = serverFromString(None, description)
        with socket.socket(fileno=os.dup(endpoint.fileno)) as s:
            if s.family == socket.AF_UNIX:
                return False
            host = s.getsockname()[0]
    except (IndexError, KeyError, ValueError, TypeError, AttributeError, OSError):
        return True
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def unsafe_listeners(config: Config) -> list[str]:
    """Listeners open beyond loopback while no token is configured."""
    if config.auth.enabled:
        return []
    return [
        f"{key} = {value}"
        for key, value in (("tcp.listen", config.tcp.listen), ("http.listen", config.http.listen))
        if reaches_beyond_loopback(value)
    ]
