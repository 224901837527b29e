"""The one client quota shared by every front-end.

:class:`ClientQuota` is a pure object: no reactor, no sockets.  Front-ends use
it through the :class:`Quota` interface, whose ``acquire`` returns a Deferred so
that a quota living elsewhere (a cluster-wide store) can answer later without
any front-end changing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred, fail, succeed

from gateway.core.errors import QuotaExceeded
from gateway.core.peers import limit_key

#: Registered transport names, in the order stats and metrics list them.
_TRANSPORTS: list[str] = []
_ORDER: dict[str, int] = {}


def register_transport(name: str, order: int = 100) -> str:
    """Declare a front-end's transport name; quotas count it, stats and metrics list it.

    Each front-end module registers itself when it is imported, so a new
    transport is one new module.  ``order`` places it in listings (the line
    server, HTTP and the WebSocket are 0, 1 and 2; newcomers follow).
    Registering twice is harmless.
    """
    if name not in _ORDER:
        _ORDER[name] = order
        _TRANSPORTS.append(name)
        _TRANSPORTS.sort(key=lambda t: (_ORDER[t], t))
    return name


def unregister_transport(name: str) -> None:
    """Forget a transport (a front-end that is unloaded; tests)."""
    if name in _ORDER:
        del _ORDER[name]
        _TRANSPORTS.remove(name)


def transports() -> tuple[str, ...]:
    """The registered transports, in listing order."""
    return tuple(_TRANSPORTS)


@dataclass(frozen=True)
class QuotaSnapshot:
    """A consistent copy of the quota's counters (this process's)."""

    max_clients: int
    max_per_ip: int
    in_use: Mapping[str, int]
    granted: Mapping[str, int]
    refused: Mapping[str, int]
    #: The quota shared with other processes, when there is one: ``state``
    #: ("up", "down"), ``processes``, ``in_use`` and ``allotted`` across them.
    cluster: Mapping[str, int | str] | None = None

    @property
    def total_in_use(self) -> int:
        return sum(self.in_use.values())


class Releases(Protocol):
    def _release(self, slot: Slot) -> None: ...


class Slot:
    """One held place in the quota.  ``release()`` gives it back exactly once."""

    __slots__ = ("_quota", "peer", "transport")

    def __init__(self, quota: Releases, transport: str, peer: str) -> None:
        self._quota: Releases | None = quota
        self.transport = transport
        self.peer = peer

    @property
    def held(self) -> bool:
        return self._quota is not None

    def release(self) -> bool:
        """Free the slot.  Returns ``True`` the first time, ``False`` after."""
        quota, self._quota = self._quota, None
        if quota is None:
            return False
        quota._release(self)
        return True


class Quota(Protocol):
    """What front-ends need from a quota."""

    def acquire(self, transport: str, peer: str) -> Deferred[Slot]:
        """A slot, or a failure with :class:`QuotaExceeded`."""

    def snapshot(self) -> QuotaSnapshot: ...


class ClientQuota:
    """In-process quota: ``max_clients`` overall, ``max_per_ip`` per address.

    Addresses are counted by :func:`gateway.core.peers.limit_key` (an IPv6 /64).
    """

    def __init__(self, max_clients: int, max_per_ip: int = 0) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        if max_per_ip < 0:
            raise ValueError("max_per_ip must be 0 (off) or more")
        self.max_clients = max_clients
        self.max_per_ip = max_per_ip
        self._total = 0
        self._in_use: Counter[str] = Counter()
        self._per_peer: Counter[str] = Counter()
        self._granted: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()

    def configure(self, max_clients: int, max_per_ip: int) -> None:
        """New limits; slots held beyond a smaller limit stay until released."""
        if max_clients < 1 or max_per_ip < 0:
            raise ValueError("bad quota limits")
        self.max_clients = max_clients
        self.max_per_ip = max_per_ip

    def try_acquire(self, transport: str, peer: str) -> Slot:
        """Take a slot now or raise :class:`QuotaExceeded`.  O(1)."""
        self.admit(transport, peer)
        return Slot(self, transport, peer)

    def admit(self, transport: str, peer: str) -> None:
        """Count one more client of ``transport`` from ``peer``, or raise
        :class:`QuotaExceeded` (counted as refused).  Matched by :meth:`discharge`."""
        if transport not in _TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}")
        if self._total >= self.max_clients:
            self._refused[transport] += 1
            raise QuotaExceeded()
        key = limit_key(peer)
        if self.max_per_ip and self._per_peer[key] >= self.max_per_ip:
            self._refused[transport] += 1
            raise QuotaExceeded(f"Too many connections from {peer}. Bye!")
        self._total += 1
        self._in_use[transport] += 1
        self._per_peer[key] += 1
        self._granted[transport] += 1

    def refuse(self, transport: str) -> None:
        """Count a client refused elsewhere (by a shared quota)."""
        self._refused[transport] += 1

    def acquire(self, transport: str, peer: str) -> Deferred[Slot]:
        try:
            return succeed(self.try_acquire(transport, peer))
        except QuotaExceeded:
            return fail()

    def _release(self, slot: Slot) -> None:
        self.discharge(slot.transport, slot.peer)

    def discharge(self, transport: str, peer: str) -> None:
        """One client counted by :meth:`admit` has gone."""
        self._total -= 1
        self._in_use[transport] -= 1
        key = limit_key(peer)
        left = self._per_peer[key] - 1
        if left:
            self._per_peer[key] = left
        else:
            del self._per_peer[key]

    def snapshot(self) -> QuotaSnapshot:
        return QuotaSnapshot(
            max_clients=self.max_clients,
            max_per_ip=self.max_per_ip,
            in_use={t: self._in_use[t] for t in _TRANSPORTS},
            granted={t: self._granted[t] for t in _TRANSPORTS},
            refused={t: self._refused[t] for t in _TRANSPORTS},
        )
