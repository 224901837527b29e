"""Admission: who may come in, and on what terms, for every front-end.

One object owns what each front-end used to wire for itself: the quota slot
(held for a connection's life on the line server and the WebSocket, for a
request's on HTTP), the token check with its growing delay and lockout, the
login timeout, the rate limit, the stall policy for clients that stop reading,
and applying a new configuration (SIGHUP).  A front-end's factory takes the
admission, the command service and its own settings, nothing more.

Whatever goes wrong with the quota store, the client gets an answer: a full
quota is ``quota_exceeded``; any other failure (a store that is down, a bug)
is logged with its traceback and answered ``internal``, never silence.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gateway.config import Config
from gateway.core.auth import Authenticator, Grant, bearer
from gateway.core.errors import INTERNAL_MESSAGE, CommandError
from gateway.core.flow import Flow
from gateway.core.quota import ClientQuota, Quota, Slot
from gateway.core.ratelimit import RateLimiter
from gateway.core.scope import ANONYMOUS, Identity, Scope
from gateway.frontends.tls import certificate_cn
from gateway.logfmt import Logger, printable
from gateway.tokens import Limits

log = Logger(namespace="gateway.admission")

#: Seconds a close the server started may take (the client reading its last
#: answer) before the connection is aborted, on every front-end, TLS or not.
LINGER = 2.0


class Proven:
    """The last ``Authorization`` header a connection proved an identity with."""

    __slots__ = ("_generation", "_header", "_identity")

    def __init__(self) -> None:
        self._header = ""
        self._generation = -1
        self._identity: Identity | None = None

    def same(self, header: str, generation: int) -> Identity | None:
        """The identity ``header`` proved, if it is the header kept (and the
        tokens are those it was checked against)."""
        identity = self._identity
        if identity is None or generation != self._generation or not header.isascii():
            return None
        return identity if hmac.compare_digest(header, self._header) else None

    def keep(self, header: str, generation: int, identity: Identity) -> None:
        if header.isascii():
            self._header, self._generation, self._identity = header, generation, identity


def no_delay(transport: Any) -> None:
    """Send each write at once (``TCP_NODELAY``) on a TCP connection (TLS too).

    A client that only reads (a follower, a stream) sends no data for the
    acknowledgements to ride on, so Nagle's algorithm would hold each small
    write for the client's delayed ACK: 40 ms a line on Linux.  A front-end
    writes a batch at a time, so the extra packets are few.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        with contextlib.suppress(OSError):  # a unix socket (no Nagle there), or gone
            set_no_delay(True)


@dataclass(frozen=True)
class Denial:
    """A token the front-end must refuse: the error, and how long to hold the answer."""

    error: CommandError
    delay: float
    retry_after: int | None


def _explain(failure: Failure, peer: str) -> Failure:
    """A quota refusal passes as it is; any other failure is logged and told as internal."""
    if isinstance(failure.value, CommandError):
        return failure
    log.failure("the quota failed for {peer}", failure, peer=peer)
    return Failure(CommandError("internal", INTERNAL_MESSAGE))


class Admission:
    def __init__(
        self,
        quota: Quota,
        clock: IReactorTime,
        auth: Authenticator | None = None,
        limiter: RateLimiter | None = None,
        login_timeout: float = 0.0,
        stall_timeout: float = 0.0,
        metrics_need_token: bool = True,
    ) -> None:
        self.quota = quota
        self.clock = clock
        self.auth = auth if auth is not None else Authenticator([], clock)
        self.limiter = limiter
        self.login_timeout = login_timeout
        self.stall_timeout = stall_timeout
        self.metrics_need_token = metrics_need_token
        self.trust_certificates = False

    @classmethod
    def from_config(
        cls,
        config: Config,
        clock: IReactorTime,
        quota: Quota | None = None,
        limiter: RateLimiter | None = None,
    ) -> Admission:
        """Built from ``config``; ``quota`` and ``limiter`` default to in-memory ones."""
        limits = config.limits
        admission = cls(
            quota or ClientQuota(config.quota.max_clients, config.quota.max_per_ip),
            clock,
            Authenticator([], clock),
            limiter or RateLimiter(limits.commands_per_second, limits.command_burst, clock),
        )
        admission.reload(config)  # one place that reads the settings
        return admission

    def reload(self, config: Config) -> None:
        """Apply ``config`` (checked) to everyone who comes in from now on.

        Raises :class:`~gateway.config.ConfigError` before changing anything
        if the token file cannot be read.
        """
        auth = config.auth
        tokens = grants_of(config)
        configure = getattr(self.quota, "configure", None)
        if configure is not None:
            configure(config.quota.max_clients, config.quota.max_per_ip)
        if self.limiter is not None:
            self.limiter.configure(config.limits.commands_per_second, config.limits.command_burst)
        self.auth.replace_tokens(tokens)
        self.auth.replace_peers(
            {
                p.uid: Identity(p.name, "unix", scope_of(p.limits))
                for p in auth.unix
                if p.uid is not None
            },
            {
                p.gid: Identity(p.name, "unix", scope_of(p.limits))
                for p in auth.unix
                if p.gid is not None
            },
            {c.cn: Identity(c.name, "certificate", scope_of(c.limits)) for c in auth.certificate},
        )
        self.auth.configure(
            auth.max_failures,
            auth.failure_window,
            auth.lockout,
            auth.max_pending_logins,
            auth.max_pending_logins_per_ip,
        )
        self.login_timeout = auth.login_timeout
        #: Client certificates are verified (ssl: listeners with tls.client_ca).
        self.trust_certificates = bool(config.tls.client_ca)
        self.stall_timeout = config.limits.stall_timeout
        self.metrics_need_token = auth.metrics

    # -- tokens

    @property
    def login_auth(self) -> Authenticator | None:
        """The authenticator a conversation checks ``auth`` lines with (``None``: off)."""
        return self.auth if self.auth.enabled else None

    def check_bearer(
        self, peer: str, header: str | None, proven: Proven | None = None
    ) -> Identity | Denial:
        """Who the request comes from, if it may go on; else why not and how
        long to wait.

        A wrong token is answered after a growing delay; a locked-out address
        at once, with ``Retry-After``.  ``proven`` is what the connection
        proved last: a kept-alive HTTP connection sends the same header with
        every request, and the same header again is taken without hashing the
        token again (compared in constant time; not once the tokens were
        reloaded or the identity has expired).
        """
        auth = self.auth
        if not auth.enabled:
            return ANONYMOUS
        if proven is not None and header is not None:
            known = proven.same(header, auth.generation)
            if known is not None and not auth.expired(known):
                return known
        presented = bearer(header)
        try:
            identity = auth.check(peer, presented)
        except CommandError as e:
            if e.code == "rate_limited":
                return Denial(e, 0.0, max(1, round(auth.locked(peer))))
            delay = auth.delay(peer) if presented is not None else 0.0
            return Denial(e, delay, None)
        if proven is not None and header is not None:
            proven.keep(header, auth.generation, identity)
        return identity

    def local_identity(self, transport: Any) -> Identity | None:
        """Who the peer of a ``unix:`` connection is, from its credentials
        (SO_PEERCRED: the kernel's word, not the client's): its user's
        identity, else its group's (``[[auth.unix]]``); ``None`` otherwise."""
        if not self.auth.enabled or not isinstance(transport.getPeer(), UNIXAddress):
            return None
        try:
            raw = transport.getHandle().getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
            )
        except (AttributeError, OSError):
            return None
        pid, uid, gid = struct.unpack("3i", raw)
        identity = self.auth.unix_peer(uid, gid)
        if identity is not None:
            log.info(
                "unix peer pid {pid} uid {uid} gid {gid} is {who}",
                pid=pid,
                uid=uid,
                gid=gid,
                who=identity.shown,
            )
        return identity

    def certificate_identity(self, transport: Any) -> Identity | None:
        """Who a verified client certificate on ``transport`` names
        (``[[auth.certificate]]``, by subject CN); ``None`` otherwise."""
        if not self.trust_certificates:
            return None
        cn = certificate_cn(transport)
        if cn is None:
            return None
        identity = self.auth.certificate(cn)
        if identity is None:
            log.info("client certificate {cn} names no identity", cn=printable(cn, 200))
        return identity

    def known_peer(self, transport: Any) -> Identity | None:
        """Who the peer is without a token: a local user, a verified certificate."""
        return self.local_identity(transport) or self.certificate_identity(transport)

    # -- back-pressure

    def make_flow(self, on_stalled: Callable[[], None]) -> Flow:
        """A connection's flow; read per connection, so SIGHUP applies to new ones."""
        return Flow(self.clock, self.stall_timeout, on_stalled)

    # -- the quota

    def acquire(self, transport: str, peer: str) -> Deferred[Slot]:
        """A slot, or a failure with a :class:`CommandError` (quota or internal)."""
        try:
            acquired = self.quota.acquire(transport, peer)
        except Exception:  # a quota that raises instead of failing its Deferred
            acquired = fail()
        if acquired.called and not isinstance(acquired.result, Failure):
            return acquired  # granted at once: the common case, kept cheap
        return acquired.addErrback(_explain, peer)

    def hold(
        self,
        transport: str,
        peer: str,
        gone: Callable[[], bool],
        granted: Callable[[Slot], None],
        refused: Callable[[CommandError], None],
    ) -> None:
        """Ask for a connection's slot; ``refused`` gets the error to tell the client.

        A slot granted after the client has gone (the answer may come later)
        goes straight back, so it is released exactly once either way.
        """

        def got(slot: Slot) -> None:
            if gone():
                slot.release()
            else:
                granted(slot)

        def failed(failure: Failure) -> None:
            error = failure.value
            assert isinstance(error, CommandError)
            if not gone():
                refused(error)

        self.acquire(transport, peer).addCallbacks(got, failed)


def is_busy(error: CommandError) -> bool:
    """A refusal that trying again later may cure: the quota full, or a shared
    quota unreachable for now."""
    return error.code in ("quota_exceeded", "unavailable")


def scope_of(limits: Limits) -> Scope:
    """A scope from its configured limits (roots resolved now)."""
    return Scope(
        commands=frozenset(limits.commands) if limits.commands is not None else None,
        max_lines=limits.max_lines,
        follow=limits.follow,
        roots=tuple(os.path.realpath(r) for r in limits.roots) if limits.roots else None,
        algorithms=frozenset(limits.algorithms) if limits.algorithms is not None else None,
        max_clients=limits.max_clients,
        expires=limits.expires,
    )


def grants_of(config: Config) -> list[Grant | str]:
    """The tokens ``config`` accepts (the token file read now): plain ones
    give full access, named ones their scope (roots resolved)."""
    auth = config.auth
    plain, named = auth.read_tokens()
    config.check_scopes("auth.token_file: token", named[len(auth.token) :])
    out: list[Grant | str] = list(plain)
    for token in named:
        identity = Identity(token.name, "token", scope_of(token.limits))
        out.append((bytes.fromhex(token.sha256), identity))
    return out
