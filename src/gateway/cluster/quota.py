"""The client quota shared by several gateway processes through Redis.

Each process holds an *allotment* of places per counter (``all`` for the
quota, ``ip:<address>`` for the per-address limit): the places its clients
hold plus a few spare.  A client comes in without a round trip while the
allotment has a free place; otherwise one atomic script (TAKE) grows it, or
refuses because the counter's cap would be passed.  The sum of allotments in
Redis never exceeds a cap, and a process's allotment in Redis is never
smaller than what its clients hold, so the clients held across every process
never exceed ``max_clients``.

Spare places are few (at most half the free room, split between processes,
and at most :data:`MOST_SPARE`), given back as clients leave, when idle, and
at once when another process is refused while this one has some (the
``squeeze`` channel; the refused process tries once more).  A process that
stops renewing its lease (killed, cut off) loses its allotment after
``lease_ttl`` seconds.  While Redis is unreachable, ``on_redis_down`` says
whether new clients are refused or admitted against this process's share;
when it is back, the process states what its clients hold (SYNC) and goes on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure

from gateway.cluster import scripts
from gateway.cluster.link import RedisLink
from gateway.core.errors import CommandError, QuotaExceeded
from gateway.core.peers import limit_key
from gateway.core.quota import ClientQuota, QuotaSnapshot, Slot
from gateway.logfmt import Logger

log = Logger(namespace="gateway.cluster")

ALL = "all"
#: Most spare places a process keeps, per counter.
MOST_SPARE = 64
#: Seconds a refused acquire waits for the others to give back spare places.
SQUEEZE_WAIT = 0.05
DOWN_MESSAGE = "The shared client quota cannot be reached; try again shortly."


class _Counter:
    __slots__ = ("alloc", "in_use", "spare", "used_at")

    def __init__(self) -> None:
        self.alloc = 0  # places this process holds in Redis (at least in_use, when up)
        self.in_use = 0  # places its clients hold (and acquires under way)
        self.spare = 0  # spare places to keep, as last granted
        self.used_at = 0.0


class ClusterQuota:
    """A :class:`~gateway.core.quota.Quota` shared through Redis."""

    def __init__(
        self,
        link: RedisLink,
        clock: IReactorTime,
        max_clients: int,
        max_per_ip: int,
        *,
        name: str,
        proc: str,
        lease_ttl: float,
        on_down: str = "refuse",
    ) -> None:
        #: This process's own figures, and the cap while it falls back on its share.
        self.local = ClientQuota(max_clients, max_per_ip)
        self.link = link
        self.clock = clock
        self.max_clients = max_clients
        self.max_per_ip = max_per_ip
        self.prefix = "{" + name + "}:"
        self.proc = proc
        self.ttl = lease_ttl
        self.on_down = on_down
        #: "down" until the first SYNC, "up" while shared, "down" again while unreachable.
        self.state = "down"
        self.problem = "not connected yet"
        self.processes = 1
        self.cluster_allotted = 0
        self.cluster_in_use = 0
        #: Told the lockouts in force, as (address, seconds left), on each SYNC.
        self.on_locks: Callable[[Sequence[tuple[str, float]]], None] = lambda locks: None
        self._counters: dict[str, _Counter] = {}
        self._give: dict[str, int] = {}
        self._flush: Any = None
        self._epoch = 0
        self._syncing = False
        self._renewed = -math.inf
        self._joined = False
        self._beat = LoopingCall(self._heartbeat)
        self._beat.clock = clock
        link.on_up = self._sync
        link.on_down = self._down

    # -- life

    def start(self) -> None:
        self.link.start()
        self._beat.start(self.ttl / 3, now=False)

    def stop(self) -> Deferred[None]:
        """Leave: every place this process holds goes back now (best effort)."""
        if self._beat.running:
            self._beat.stop()
        done: Deferred[Any] = succeed(None)
        if self.link.up:
            done = self.link.run(scripts.SYNC, [self.prefix, self.proc, 1, 0])
        return done.addBoth(lambda _: self.link.stop())

    def configure(self, max_clients: int, max_per_ip: int) -> None:
        self.max_clients = max_clients
        self.max_per_ip = max_per_ip
        self._set_local_caps()

    def _set_local_caps(self) -> None:
        if self.state == "up" or self.on_down != "local":
            self.local.configure(self.max_clients, self.max_per_ip)
        else:
            share = max(1, self.processes)
            per_ip = max(1, self.max_per_ip // share) if self.max_per_ip else 0
            self.local.configure(max(1, self.max_clients // share), per_ip)

    # -- acquiring

    def _keys(self, peer: str) -> list[str]:
        return [ALL, "ip:" + limit_key(peer)] if self.max_per_ip else [ALL]

    def _cap(self, key: str) -> int:
        return self.max_clients if key == ALL else self.max_per_ip

    def _reserve(self, keys: Sequence[str]) -> list[_Counter]:
        now = self.clock.seconds()
        counters = []
        for key in keys:
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = _Counter()
            counter.in_use += 1
            counter.used_at = now
            counters.append(counter)
        return counters

    def acquire(self, transport: str, peer: str) -> Deferred[Slot]:
        return self._acquire(transport, peer, retried=False)

    def _acquire(self, transport: str, peer: str, retried: bool) -> Deferred[Slot]:
        keys = self._keys(peer)
        counters = self._reserve(keys)
        if self.state != "up":
            return self._fallback(transport, peer, keys, counters)
        fresh = self.clock.seconds() - self._renewed < self.ttl / 2
        if fresh and all(c.alloc >= c.in_use for c in counters):
            return self._admit(transport, peer, keys)
        return self._take(transport, peer, keys, counters, retried)

    def _admit(self, transport: str, peer: str, keys: Sequence[str]) -> Deferred[Slot]:
        try:
            self.local.admit(transport, peer)
        except QuotaExceeded:
            self._unreserve(keys)
            return fail()
        return succeed(Slot(self, transport, peer))

    def _take(
        self,
        transport: str,
        peer: str,
        keys: Sequence[str],
        counters: Sequence[_Counter],
        retried: bool,
    ) -> Deferred[Slot]:
        needs = [
            (k, c, c.in_use - c.alloc)
            for k, c in zip(keys, counters, strict=True)
            if c.in_use > c.alloc
        ]
        args: list[object] = self._head()
        for key, _, need in needs:
            cap = self._cap(key)
            args += [key, cap, need, min(MOST_SPARE, cap // 16)]
        epoch, sent = self._epoch, self.clock.seconds()

        def answered(reply: list[Any]) -> Deferred[Slot]:
            if epoch != self._epoch:
                # A SYNC came in between: it stated these places already
                # (reservations included); a refusal leaves one spare, given back.
                if reply and reply[0] == 1:
                    return self._admit(transport, peer, keys)
                self._unreserve(keys)
                return fail(QuotaExceeded())
            if reply[0] == -1:
                self._unreserve(keys)
                self._lease_lapsed()
                return self._fallback(transport, peer, keys, self._reserve(keys))
            if reply[0] == 0:
                self._unreserve(keys)
                _, key, _total, spare_elsewhere = reply
                if spare_elsewhere > 0 and not retried:
                    return deferLater(self.clock, SQUEEZE_WAIT, lambda: None).addCallback(
                        lambda _: self._acquire(transport, peer, retried=True)
                    )
                self.local.refuse(transport)
                if str(key) == ALL:
                    return fail(QuotaExceeded())
                return fail(QuotaExceeded(f"Too many connections from {peer}. Bye!"))
            self._renewed = sent
            self.processes = int(reply[1])
            for i, (key, counter, need) in enumerate(needs):
                grant, total = int(reply[2 + 2 * i]), int(reply[3 + 2 * i])
                counter.alloc += grant
                counter.spare = grant - need
                if key == ALL:
                    self.cluster_allotted = total
            return self._admit(transport, peer, keys)

        def failed(failure: Failure) -> Deferred[Slot]:
            if self.state == "up":  # Redis answered with an error: the link stays
                self._unreserve(keys)
                log.failure("the shared quota's script failed", failure)
                return fail(CommandError("unavailable", DOWN_MESSAGE, retry_after=1))
            return self._fallback(transport, peer, keys, counters)  # still reserved

        return self.link.run(scripts.TAKE, args).addCallbacks(answered, failed)

    def _fallback(
        self, transport: str, peer: str, keys: Sequence[str], counters: Sequence[_Counter]
    ) -> Deferred[Slot]:
        """Redis unreachable: refuse, or admit against this process's share."""
        if self.on_down == "local":
            for counter in counters:
                counter.alloc = max(counter.alloc, counter.in_use)
            return self._admit(transport, peer, keys)
        self._unreserve(keys)
        self.local.refuse(transport)
        return fail(CommandError("unavailable", DOWN_MESSAGE, retry_after=1))

    # -- releasing

    def _release(self, slot: Slot) -> None:
        self.local.discharge(slot.transport, slot.peer)
        self._unreserve(self._keys(slot.peer))

    def _unreserve(self, keys: Sequence[str]) -> None:
        for key in keys:
            counter = self._counters[key]
            counter.in_use -= 1
            self._settle(key, counter, counter.spare)

    def _settle(self, key: str, counter: _Counter, keep: int) -> None:
        """Give back what ``counter`` holds beyond its clients and ``keep`` spare."""
        excess = counter.alloc - counter.in_use - keep
        if excess > 0:
            counter.alloc -= excess
            if self.state == "up":
                self._give[key] = self._give.get(key, 0) + excess
                if self._flush is None:
                    self._flush = self.clock.callLater(0, self._give_back)
        if counter.alloc <= 0 and counter.in_use <= 0:
            del self._counters[key]

    def _give_back(self) -> None:
        self._flush = None
        if not self._give or self.state != "up":
            self._give.clear()
            return
        args = self._head()
        for key, count in self._give.items():
            args += [key, count]
        self._give = {}
        self._renewing(scripts.GIVE, args)

    def squeezed(self, key: str) -> None:
        """Another process was refused ``key``: give back its spare places now."""
        counter = self._counters.get(key)
        if counter is not None:
            counter.spare = 0
            self._settle(key, counter, 0)

    # -- the lease

    def _head(self) -> list[object]:
        used = self._counters[ALL].in_use if ALL in self._counters else 0
        return [self.prefix, self.proc, round(self.ttl * 1000), used]

    def _heartbeat(self) -> None:
        if self.state != "up":
            if self.link.up and not self._syncing:
                self._sync()
            return
        idle = self.clock.seconds() - self.ttl / 3
        for key, counter in list(self._counters.items()):
            if counter.used_at < idle:  # quiet since the last beat: no spare needed
                counter.spare = 0
                self._settle(key, counter, 0)
        self._renewing(scripts.BEAT, self._head())

    def _renewing(self, script: str, args: list[object]) -> None:
        """Run GIVE or BEAT, which renew the lease; take the cluster's figures
        from the answer (``{1, processes, allotted[, in use]}``), or state this
        process's places again if the lease had lapsed."""
        epoch, sent = self._epoch, self.clock.seconds()

        def answered(reply: list[Any]) -> None:
            if epoch != self._epoch:
                return
            if reply[0] == -1:
                self._lease_lapsed()
                return
            self._renewed = sent
            self.processes, self.cluster_allotted = int(reply[1]), int(reply[2])
            if len(reply) > 3:
                self.cluster_in_use = int(reply[3])

        self.link.run(script, args).addCallbacks(answered, lambda _: None)

    def _lease_lapsed(self) -> None:
        log.warn("this process's lease in redis had lapsed; stating its places again")
        self._sync()

    def _sync(self) -> None:
        """State in Redis exactly what this process's clients hold."""
        if self._syncing:
            return
        self._syncing = True
        self._epoch += 1
        self._give.clear()
        args = self._head()
        stated: dict[str, int] = {}
        for key, counter in list(self._counters.items()):
            counter.alloc = counter.in_use
            counter.spare = 0
            if counter.in_use > 0:
                args += [key, counter.in_use]
                stated[key] = counter.in_use
            else:
                del self._counters[key]
        epoch, sent = self._epoch, self.clock.seconds()

        def answered(reply: list[Any]) -> None:
            self._syncing = False
            if epoch != self._epoch:
                return
            if {k: c.alloc for k, c in self._counters.items() if c.alloc} != stated:
                # Clients came or went (on this process's share) while the
                # statement was on its way: state it again before going up.
                self._sync()
                return
            self._renewed = sent
            self.processes, self.cluster_allotted, self.cluster_in_use = map(int, reply[:3])
            locks = [(str(reply[i]), int(reply[i + 1]) / 1000) for i in range(3, len(reply), 2)]
            was = self.state
            self.state, self.problem = "up", ""
            self._set_local_caps()
            if not self._joined:
                self._joined = True
                log.info(
                    "client quota shared through redis at {where} ({n} gateway processes)",
                    where=self.link.target.shown,
                    n=self.processes,
                )
            elif was != "up":
                log.warn(
                    "redis at {where} is back: the client quota is shared again",
                    where=self.link.target.shown,
                )
            self.on_locks(locks)

        def failed(failure: Failure) -> None:
            self._syncing = False
            if self.link.up:
                log.failure("stating this process's places in redis failed", failure)

        self.link.run(scripts.SYNC, args).addCallbacks(answered, failed)

    def _down(self, why: str) -> None:
        was = self.state
        self.state, self.problem = "down", why
        self._epoch += 1
        self._give.clear()
        self._set_local_caps()
        if was != "up" and self._joined:
            return
        where = self.link.target.shown
        if self.on_down == "local":
            log.error(
                "redis at {where} unreachable ({why}): each gateway process now admits "
                "its own share, {share} of {max} clients, until it is back",
                where=where,
                why=why,
                share=self.local.max_clients,
                max=self.max_clients,
            )
        else:
            log.error(
                "redis at {where} unreachable ({why}): new clients are refused "
                "(on_redis_down = refuse) until it is back",
                where=where,
                why=why,
            )

    # -- figures

    def snapshot(self) -> QuotaSnapshot:
        own = self.local.snapshot()
        here = self._counters.get(ALL)
        cluster: dict[str, int | str] = {
            "state": self.state,
            "processes": self.processes,
            "in_use": self.cluster_in_use,
            "allotted": self.cluster_allotted,
            "allotted_here": here.alloc if here is not None else 0,
        }
        if self.problem:
            cluster["problem"] = self.problem
        return QuotaSnapshot(
            max_clients=self.max_clients,
            max_per_ip=self.max_per_ip,
            in_use=own.in_use,
            granted=own.granted,
            refused=own.refused,
            cluster=cluster,
        )
