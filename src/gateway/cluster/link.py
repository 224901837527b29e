"""One connection to Redis, with a deadline on every call, and its channels.

:func:`parse_url` reads ``[cluster] redis``; :class:`RedisLink` keeps one
command connection and one subscriber connection, reconnecting every second
while Redis is away, and tells its owner when it goes down and comes back.
A call that misses its deadline aborts the connection: replies that might
still arrive could no longer be matched to their calls, and the owner must
state its places again anyway (SYNC) when the link is back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import txredisapi
from twisted.internet import ssl
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import (
    HostnameEndpoint,
    UNIXClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import TimeoutError as DeadlineMissed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from gateway.cluster.url import Target
from gateway.logfmt import Logger

log = Logger(namespace="gateway.cluster")

#: Seconds between attempts to reach Redis while it is away.
RETRY = 1.0


def endpoint(
    reactor: Any, target: Target, timeout: float, ca_file: str = ""
) -> IStreamClientEndpoint:
    if target.kind == "unix":
        return UNIXClientEndpoint(reactor, target.path, timeout=max(1, round(timeout)))
    plain = HostnameEndpoint(reactor, target.host, target.port, timeout=timeout)
    if target.kind == "tcp":
        return plain
    trust: Any = None
    if ca_file:
        with open(ca_file, "rb") as f:
            trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(f.read())])
    return wrapClientTLS(ssl.optionsForClientTLS(target.host, trustRoot=trust), plain)


class _Owner:
    """What txredisapi's protocol asks of its factory when logging in fails."""

    isLazy = False

    def __init__(self) -> None:
        self.error: str | None = None

    def stopTrying(self) -> None:
        pass

    def connectionError(self, message: str) -> None:
        self.error = message


class _Hand(Factory):
    """Hands over one protocol, quietly (no "Starting factory" lines)."""

    noisy = False

    def __init__(self, proto: Any) -> None:
        self.proto = proto

    def buildProtocol(self, addr: object) -> Any:
        return self.proto


class _Subscriber(txredisapi.SubscriberProtocol):
    heard: Callable[[str, str], None] = staticmethod(lambda channel, message: None)

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.heard(str(channel), str(message))


class RedisLink:
    """Calls scripts with a deadline; reconnects; says when it is up or down."""

    def __init__(
        self,
        reactor: Any,
        target: Target,
        timeout: float,
        password: str | None = None,
        ca_file: str = "",
        channels: Sequence[str] = (),
        heard: Callable[[str, str], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.target = target
        self.timeout = timeout
        self.password = password if password is not None else target.password
        self.ca_file = ca_file
        self.channels = list(channels)
        self.heard = heard
        self.on_up: Callable[[], None] = lambda: None
        self.on_down: Callable[[str], None] = lambda why: None
        self._proto: Any = None
        self._sub: Any = None
        self._retry: Any = None
        self._connecting = False
        self._stopped = True
        #: Why Redis is unreachable ("" while connected).
        self.problem = "not connected yet"

    @property
    def up(self) -> bool:
        return self._proto is not None

    def start(self) -> None:
        self._stopped = False
        self._connect()

    def stop(self) -> None:
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        for proto in (self._proto, self._sub):
            if proto is not None and proto.transport is not None:
                proto.transport.loseConnection()
        self._proto = self._sub = None

    # -- connecting

    def _protocol(self, kind: Any) -> Any:
        proto = kind(
            password=self.password, dbid=self.target.db or None, username=self.target.username
        )
        proto.factory = _Owner()
        return proto

    def _connect(self) -> None:
        if self._stopped or self._connecting or self._proto is not None:
            return
        self._connecting = True
        try:
            where = endpoint(self.reactor, self.target, self.timeout, self.ca_file)
        except (OSError, ValueError) as e:
            self._lost(f"cannot set up TLS: {e}")
            return
        main = self._protocol(txredisapi.RedisProtocol)
        sub = self._protocol(_Subscriber) if self.channels else None
        if sub is not None and self.heard is not None:
            sub.heard = self.heard

        def ready(proto: Any) -> Deferred[Any]:
            return self._deadline(proto.whenConnected(), proto)

        def both(_: object) -> Deferred[Any] | None:
            if sub is None:
                return None
            subscribed: Deferred[Any] = (
                where.connect(_Hand(sub))
                .addCallback(ready)
                .addCallback(lambda s: self._deadline(s.subscribe(self.channels), s))
            )
            return subscribed

        def connected(_: object) -> None:
            self._connecting = False
            if self._stopped:
                for proto in (main, sub):
                    if proto is not None and proto.transport is not None:
                        proto.transport.loseConnection()
                return
            self._proto, self._sub = main, sub
            for proto in (main, sub):
                if proto is not None:
                    proto.whenDisconnected().addCallback(lambda _: self._lost("connection lost"))
            self.problem = ""
            log.info("redis at {where} reachable", where=self.target.shown)
            self.on_up()

        def failed(failure: Failure) -> None:
            self._connecting = False
            for proto in (main, sub):
                if proto is not None and proto.transport is not None:
                    proto.transport.abortConnection()
            owner_error = main.factory.error or (sub.factory.error if sub is not None else None)
            self._lost(owner_error or _reason(failure))

        connected_d = where.connect(_Hand(main)).addCallback(ready).addCallback(both)
        self._deadline(connected_d, None).addCallbacks(connected, failed)

    def _lost(self, why: str) -> None:
        was_up = self._proto is not None
        for proto in (self._proto, self._sub):
            if proto is not None and proto.transport is not None:
                proto.transport.abortConnection()
        self._proto = self._sub = None
        if self._stopped:
            return
        if was_up or self.problem != why:
            self.problem = why
            self.on_down(why)
        if self._retry is None or not self._retry.active():
            self._retry = self.reactor.callLater(RETRY, self._connect)

    # -- calls

    def _deadline(self, d: Deferred[Any], proto: Any) -> Deferred[Any]:
        def missed(failure: Failure) -> Failure:
            if failure.check(DeadlineMissed) and proto is not None and proto.transport:
                proto.transport.abortConnection()
            return failure

        d.addTimeout(self.timeout, self.reactor)
        return d.addErrback(missed)

    def run(self, script: str, args: Sequence[object]) -> Deferred[Any]:
        """Run ``script`` with ``args``; fails at once when Redis is not reachable,
        and after the deadline when it does not answer."""
        proto = self._proto
        if proto is None:
            return fail(ConnectionError(self.problem or "redis unreachable"))
        try:
            called = proto.eval(script, [], [str(a) for a in args])
        except Exception:
            return fail()
        return self._deadline(called, proto).addErrback(self._failed)

    def _failed(self, failure: Failure) -> Failure:
        if not failure.check(txredisapi.ResponseError):  # Redis answered: the link is fine
            self._lost(_reason(failure))
        return failure


def _reason(failure: Failure) -> str:
    if failure.check(DeadlineMissed):
        return "no answer in time"
    text = str(failure.value) or repr(failure.value)
    return text.splitlines()[0][:200]


def read_password(env: Mapping[str, str], password_file: str) -> str | None:
    """``GATEWAY_REDIS_PASSWORD``, else the first line of ``password_file``, else ``None``."""
    given = env.get("GATEWAY_REDIS_PASSWORD")
    if given:
        return given
    if password_file:
        with open(password_file, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    return None
