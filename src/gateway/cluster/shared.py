"""The command rate limit and the login lockout, shared through Redis.

Neither costs a round trip before a command runs.  Each process keeps its own
bucket and lockout as before (so one process alone never lets more through
than the limits say) and tells Redis what it let through, in one call per
reactor turn; what Redis answers (the shared bucket empty, an address locked
out by another process) is applied to the next commands.  Across processes
the limits are therefore exact to within one round trip.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime

from gateway.cluster import scripts
from gateway.cluster.link import RedisLink
from gateway.cluster.quota import ClusterQuota
from gateway.cluster.url import parse_url
from gateway.core.auth import Authenticator
from gateway.core.peers import limit_key
from gateway.core.ratelimit import RateLimiter, slow_down


class SharedRateLimiter(RateLimiter):
    """A :class:`RateLimiter` whose buckets are also spent in Redis."""

    def __init__(
        self, rate: float, burst: int, clock: IReactorTime, link: RedisLink, prefix: str
    ) -> None:
        super().__init__(rate, burst, clock)
        self.link = link
        self.prefix = prefix
        #: Addresses whose shared bucket is empty, until when.
        self._blocked: dict[str, float] = {}
        self._spent: dict[str, int] = {}
        self._flush: Any = None

    def configure(self, rate: float, burst: int) -> None:
        super().configure(rate, burst)
        self._blocked.clear()

    def take(self, peer: str) -> None:
        if not self.rate:
            return
        key = limit_key(peer)
        until = self._blocked.get(key)
        if until is not None:
            wait = until - self.clock.seconds()
            if wait > 0:
                raise slow_down(peer, wait)
            del self._blocked[key]
        super().take(peer)
        if self.link.up:
            self._spent[key] = self._spent.get(key, 0) + 1
            if self._flush is None:
                self._flush = self.clock.callLater(0, self._tell)

    def _tell(self) -> None:
        self._flush = None
        spent, self._spent = self._spent, {}
        if not spent or not self.rate:
            return
        rate, args = self.rate, [self.prefix, self.rate, self.burst]
        for key, n in spent.items():
            args += [key, n]

        def answered(left: Sequence[int]) -> None:
            now = self.clock.seconds()
            if len(self._blocked) > 10_000:
                self._blocked = {k: t for k, t in self._blocked.items() if t > now}
            for key, thousandths in zip(spent, left, strict=False):
                tokens = int(thousandths) / 1000
                if tokens < 1:
                    self._blocked[key] = now + (1 - tokens) / rate

        self.link.run(scripts.RATE, args).addCallbacks(answered, lambda _: None)


class SharedLockout:
    """Failed logins counted, and lockouts applied, across processes."""

    def __init__(self, auth: Authenticator, link: RedisLink, prefix: str) -> None:
        self.auth = auth
        self.link = link
        self.prefix = prefix
        auth.on_failure = self.failed
        auth.on_success = self.cleared

    def failed(self, key: str) -> None:
        if not self.link.up:
            return
        auth = self.auth
        args = [
            self.prefix,
            key,
            round(auth.window * 1000),
            auth.max_failures,
            round(auth.lockout * 1000),
        ]

        def answered(reply: Sequence[int]) -> None:
            auth.failed_elsewhere(key, int(reply[0]), int(reply[1]) / 1000)

        self.link.run(scripts.FAIL, args).addCallbacks(answered, lambda _: None)

    def cleared(self, key: str) -> None:
        if self.link.up:
            self.link.run(scripts.CLEAR, [self.prefix, key]).addErrback(lambda _: None)

    def heard(self, message: str) -> None:
        """``<address> <ms>``: another process locked an address out."""
        key, _, ms = message.rpartition(" ")
        if key and ms.isdigit():
            self.auth.failed_elsewhere(key, 0, int(ms) / 1000)

    def locks(self, found: Sequence[tuple[str, float]]) -> None:
        for key, seconds in found:
            self.auth.failed_elsewhere(key, 0, seconds)


class Cluster:
    """Everything one gateway process shares through Redis (``[cluster]``)."""

    def __init__(
        self,
        reactor: Any,
        redis: str,
        name: str,
        lease_ttl: float,
        timeout: float,
        on_down: str,
        max_clients: int,
        max_per_ip: int,
        password: str | None = None,
        tls_ca: str = "",
    ) -> None:
        self.prefix = "{" + name + "}:"
        self.link = RedisLink(
            reactor,
            parse_url(redis),
            timeout,
            password,
            tls_ca,
            channels=[self.prefix + "squeeze", self.prefix + "lock"],
            heard=self._heard,
        )
        self.quota = ClusterQuota(
            self.link,
            reactor,
            max_clients,
            max_per_ip,
            name=name,
            proc=f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}",
            lease_ttl=lease_ttl,
            on_down=on_down,
        )
        self.reactor = reactor
        self.lockout: SharedLockout | None = None

    def rate_limiter(self, rate: float, burst: int) -> SharedRateLimiter:
        return SharedRateLimiter(rate, burst, self.reactor, self.link, self.prefix)

    def share_lockouts(self, auth: Authenticator) -> None:
        self.lockout = SharedLockout(auth, self.link, self.prefix)
        self.quota.on_locks = self.lockout.locks

    def _heard(self, channel: str, message: str) -> None:
        if channel == self.prefix + "squeeze":
            self.quota.squeezed(message)
        elif channel == self.prefix + "lock" and self.lockout is not None:
            self.lockout.heard(message)

    @property
    def problem(self) -> str | None:
        """Why ``/healthz`` says degraded, if it should."""
        if self.quota.state == "up":
            return None
        return f"redis down: {self.quota.problem}"
