"""The shared quota, rate limit and lockout, against a real redis-server.

The scripts run in Redis for real; the link is a synchronous stand-in for
:class:`~gateway.cluster.link.RedisLink` (calls answered at once, Redis
outages switched by the test), and time on the gateway's side is a Clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from gateway.cluster.quota import ClusterQuota
from gateway.cluster.shared import SharedLockout, SharedRateLimiter
from gateway.cluster.url import parse_url
from gateway.core.auth import Authenticator
from gateway.core.errors import CommandError, QuotaExceeded
from gateway.core.quota import Slot

from .support.redis import RedisServer

PREFIX = "{gw}:"
TOKEN = "a-token-of-sixteen-chars"


class DirectLink:
    """RedisLink's interface, answered synchronously by a real Redis."""

    def __init__(self, server: RedisServer) -> None:
        self.r = server.client()
        self.target = parse_url(server.url)
        self.up = True
        self.calls = 0
        self.on_up: Callable[[], None] = lambda: None
        self.on_down: Callable[[str], None] = lambda why: None
        self.heard: Callable[[str, str], None] = lambda channel, message: None
        self.pubsub = self.r.pubsub()
        self.pubsub.subscribe(PREFIX + "squeeze", PREFIX + "lock")
        self.pubsub.get_message(timeout=1)
        self.pubsub.get_message(timeout=1)

    def start(self) -> None:
        self.on_up()

    def stop(self) -> None:
        self.pubsub.close()

    def run(self, script: str, args: Sequence[object]) -> Deferred[Any]:
        if not self.up:
            return fail(ConnectionError("redis unreachable"))
        self.calls += 1
        return succeed(self.r.eval(script, 0, *[str(a) for a in args]))

    def down(self) -> None:
        self.up = False
        self.on_down("connection lost")

    def back(self) -> None:
        self.up = True
        self.on_up()

    def deliver(self) -> int:
        """Hand what was published to ``heard``; how many messages."""
        n = 0
        while (message := self.pubsub.get_message(timeout=0.2)) is not None:
            if message["type"] == "message":
                self.heard(message["channel"], message["data"])
                n += 1
        return n


def quota_for(
    server: RedisServer,
    max_clients: int,
    max_per_ip: int = 0,
    on_down: str = "refuse",
    ttl: float = 15.0,
    name: str = "p",
) -> tuple[ClusterQuota, DirectLink, Clock]:
    link = DirectLink(server)
    clock = Clock()
    quota = ClusterQuota(
        link,  # type: ignore[arg-type]
        clock,
        max_clients,
        max_per_ip,
        name="gw",
        proc=name,
        lease_ttl=ttl,
        on_down=on_down,
    )
    link.heard = lambda channel, message: quota.squeezed(message)
    quota.start()
    return quota, link, clock


def take(quota: ClusterQuota, peer: str = "10.0.0.1", transport: str = "tcp") -> Slot:
    result: list[Any] = []
    quota.acquire(transport, peer).addBoth(result.append)
    assert result, "the acquire is still waiting"
    if isinstance(result[0], Failure):
        result[0].raiseException()
    slot = result[0]
    assert isinstance(slot, Slot)
    return slot


def refusal(quota: ClusterQuota, peer: str = "10.0.0.1") -> CommandError:
    with pytest.raises(CommandError) as info:
        take(quota, peer)
    return info.value


def allotted(server: RedisServer, key: str = "all") -> int:
    return int(server.client().hget(PREFIX + "sum", key) or 0)


def test_clients_come_in_without_a_round_trip_while_the_allotment_lasts(
    redis_server: RedisServer,
) -> None:
    quota, link, _ = quota_for(redis_server, max_clients=1000)
    before = link.calls
    slots = [take(quota) for _ in range(20)]
    # 1000 // 16 = 62, so up to 62 spare places per round trip
    assert link.calls - before == 1
    assert 20 <= allotted(redis_server) <= 1000
    assert quota.snapshot().total_in_use == 20
    for slot in slots:
        slot.release()
    assert quota.snapshot().total_in_use == 0


def test_two_processes_never_pass_the_cap_and_a_freed_place_is_taken_again(
    redis_server: RedisServer,
) -> None:
    a, _, clock_a = quota_for(redis_server, max_clients=5, name="a")
    b, _, clock_b = quota_for(redis_server, max_clients=5, name="b")
    held_a = [take(a) for _ in range(3)]
    held_b = [take(b) for _ in range(2)]
    assert allotted(redis_server) == 5
    error = refusal(b)
    assert isinstance(error, QuotaExceeded)
    assert error.message == "Too many connections. Bye!"
    assert isinstance(refusal(a), QuotaExceeded)
    assert b.snapshot().refused["tcp"] == 1
    held_a.pop().release()
    clock_a.advance(0)  # what leaves in one reactor turn goes back in one call
    assert allotted(redis_server) == 4  # no spare near the cap
    held_b.append(take(b))
    assert allotted(redis_server) == 5
    for slot in held_a + held_b:
        slot.release()
    clock_a.advance(0)
    clock_b.advance(0)
    assert allotted(redis_server) == 0


def test_a_process_refused_while_another_holds_spare_places_gets_them(
    redis_server: RedisServer,
) -> None:
    a, link_a, clock_a = quota_for(redis_server, max_clients=64, name="a")
    b, _, clock_b = quota_for(redis_server, max_clients=64, name="b")
    first = take(a)
    spare = allotted(redis_server) - 1
    assert spare > 0  # a keeps a few spare places
    held = [take(b) for _ in range(63 - spare)]
    assert allotted(redis_server) == 64
    waiting: list[Any] = []
    b.acquire("http", "10.0.0.2").addBoth(waiting.append)
    assert not waiting  # refused while a holds spare: it asked a to give them back
    assert link_a.deliver() >= 1
    clock_a.advance(0)  # a gives its spare back
    assert allotted(redis_server) == 64 - spare
    clock_b.advance(0.05)  # b tries once more
    assert isinstance(waiting[0], Slot)
    assert allotted(redis_server) <= 64
    for slot in [first, *held, waiting[0]]:
        slot.release()
    clock_a.advance(0)
    clock_b.advance(0)
    assert allotted(redis_server) <= 2 * 4  # at most the spare each keeps


def test_the_per_address_limit_is_shared(redis_server: RedisServer) -> None:
    a, _, clock = quota_for(redis_server, max_clients=100, max_per_ip=2, name="a")
    b, _, clock_b = quota_for(redis_server, max_clients=100, max_per_ip=2, name="b")
    one, two = take(a, "10.1.1.1"), take(b, "10.1.1.1")
    error = refusal(a, "10.1.1.1")
    assert error.message == "Too many connections from 10.1.1.1. Bye!"
    other = take(a, "10.1.1.2")  # another address is not affected
    one.release()
    clock.advance(0)
    again = take(b, "10.1.1.1")
    for slot in (two, other, again):
        slot.release()
    clock.advance(0)
    clock_b.advance(0)
    assert allotted(redis_server, "ip:10.1.1.1") == 0


def test_a_process_that_stops_renewing_loses_its_places_after_the_ttl(
    redis_server: RedisServer,
) -> None:
    dead, _, clock_dead = quota_for(redis_server, max_clients=3, ttl=1.0, name="dead")
    alive, _, clock = quota_for(redis_server, max_clients=3, ttl=1.0, name="alive")
    held = [take(dead) for _ in range(3)]
    assert isinstance(refusal(alive), QuotaExceeded)
    for _ in range(4):  # the lease runs in Redis time: alive renews it, dead does not
        time.sleep(0.3)
        clock.advance(1 / 3)
    slot = take(alive)
    assert allotted(redis_server) == 1
    assert redis_server.client().zscore(PREFIX + "procs", "dead") is None
    # the dead process, had it only been frozen, states its clients again
    error = refusal(dead)
    assert error.code == "unavailable"
    assert allotted(redis_server) == 1 + 3
    for s in [slot, *held]:
        s.release()
    clock.advance(0)
    clock_dead.advance(0)
    assert allotted(redis_server) == 0


def test_redis_down_with_refuse_refuses_and_comes_back(redis_server: RedisServer) -> None:
    quota, link, _ = quota_for(redis_server, max_clients=10)
    held = take(quota)
    link.down()
    error = refusal(quota)
    assert error.code == "unavailable"
    assert error.message == "The shared client quota cannot be reached; try again shortly."
    cluster = quota.snapshot().cluster
    assert cluster is not None
    assert cluster["state"] == "down"
    assert cluster["problem"] == "connection lost"
    held.release()  # leaving while Redis is away loses nothing
    link.back()
    assert quota.snapshot().cluster == {
        "state": "up",
        "processes": 1,
        "in_use": 0,
        "allotted": 0,
        "allotted_here": 0,
    }
    take(quota).release()


def test_redis_down_with_local_admits_this_process_share_then_states_it(
    redis_server: RedisServer,
) -> None:
    other, _, _ = quota_for(redis_server, max_clients=10, name="other")
    quota, link, _ = quota_for(redis_server, max_clients=10, on_down="local")
    take(quota).release()
    assert quota.processes == 2
    link.down()
    held = [take(quota) for _ in range(5)]  # 10 // 2 processes
    assert isinstance(refusal(quota), QuotaExceeded)
    link.back()
    assert allotted(redis_server) == 5  # what its clients hold, stated on return
    assert quota.local.max_clients == 10
    for slot in held:
        slot.release()
    other.stop()


def test_leaving_gives_every_place_back(redis_server: RedisServer) -> None:
    quota, _, clock = quota_for(redis_server, max_clients=1000)
    take(quota).release()
    clock.advance(0)
    assert allotted(redis_server) > 0  # spare kept
    quota.stop()
    assert allotted(redis_server) == 0


def test_idle_spare_places_go_back_at_the_next_beats(redis_server: RedisServer) -> None:
    quota, _, clock = quota_for(redis_server, max_clients=1000, ttl=3.0)
    take(quota).release()
    assert allotted(redis_server) > 0
    clock.advance(1.0)
    clock.advance(1.0)
    clock.advance(0)
    assert allotted(redis_server) == 0


def test_the_rate_limit_is_shared_within_one_round_trip(redis_server: RedisServer) -> None:
    link_a, link_b = DirectLink(redis_server), DirectLink(redis_server)
    clock = Clock()
    a = SharedRateLimiter(1.0, 3, clock, link_a, PREFIX)  # type: ignore[arg-type]
    b = SharedRateLimiter(1.0, 3, clock, link_b, PREFIX)  # type: ignore[arg-type]
    for _ in range(3):
        a.take("10.2.2.2")
    clock.advance(0)  # a tells Redis: the shared bucket is empty
    b.take("10.2.2.2")  # b has not heard yet: one command passes
    clock.advance(0)  # b's own report comes back below zero
    with pytest.raises(CommandError) as info:
        b.take("10.2.2.2")
    assert info.value.code == "rate_limited"
    assert info.value.message.startswith("Too many commands from 10.2.2.2; slow down")
    b.take("10.2.2.3")  # other addresses are not affected


def test_a_lockout_reaches_every_process(redis_server: RedisServer) -> None:
    link_a, link_b = DirectLink(redis_server), DirectLink(redis_server)
    clock = Clock()
    a = Authenticator([TOKEN], clock, max_failures=3, window=60, lockout=300)
    b = Authenticator([TOKEN], clock, max_failures=3, window=60, lockout=300)
    SharedLockout(a, link_a, PREFIX)  # type: ignore[arg-type]
    shared_b = SharedLockout(b, link_b, PREFIX)  # type: ignore[arg-type]
    link_b.heard = lambda channel, message: shared_b.heard(message)
    with pytest.raises(CommandError):
        a.check("10.3.3.3", "wrong-token-0000001")
    with pytest.raises(CommandError):
        b.check("10.3.3.3", "wrong-token-0000002")
    with pytest.raises(CommandError):
        a.check("10.3.3.3", "wrong-token-0000003")  # the third across both: locked
    assert link_b.deliver() == 1
    assert 299 < b.locked("10.3.3.3") <= 300
    with pytest.raises(CommandError) as info:
        b.check("10.3.3.3", TOKEN)
    assert info.value.code == "rate_limited"
    assert b.check("10.3.3.4", TOKEN).name == "tokens[1]"


def test_redis_keys_hold_no_token_or_peer_secret(redis_server: RedisServer) -> None:
    link = DirectLink(redis_server)
    auth = Authenticator([TOKEN], Clock(), max_failures=3)
    SharedLockout(auth, link, PREFIX)  # type: ignore[arg-type]
    with pytest.raises(CommandError):
        auth.check("10.4.4.4", "wrong-token-0000004")
    client = redis_server.client()
    dump = " ".join(str(client.hgetall(k)) for k in client.keys("*"))
    assert "wrong-token" not in dump and TOKEN not in dump


def test_an_error_from_redis_is_answered_not_hung(redis_server: RedisServer) -> None:
    quota, link, _ = quota_for(redis_server, max_clients=10)

    def broken(script: str, args: Sequence[object]) -> Deferred[Any]:
        return fail(redis.ResponseError("ERR something"))

    link.run = broken  # type: ignore[method-assign]
    assert refusal(quota).code == "unavailable"


def test_stats_and_metrics_show_the_cluster_and_this_process(redis_server: RedisServer) -> None:
    from gateway.commands.builtin import StatsCommand
    from gateway.core.metrics import CommandMetrics, render

    quota, _, clock = quota_for(redis_server, max_clients=10)
    slot = take(quota, transport="http")
    clock.advance(5.0)  # a heartbeat: the cluster's figures
    stats: list[Any] = []
    StatsCommand(quota, clock).run(None, lambda *a: None).addCallback(stats.append)
    text = "\n".join(stats[0].text)
    assert "clients: 1/10 in use (tcp 0, http 1, websocket 0)" in text
    assert "cluster: 1/10 in use across 1 processes, 1 allotted (1 here); redis up" in text
    assert stats[0].data["cluster"]["state"] == "up"
    metrics = render(quota.snapshot(), CommandMetrics(), 0, 1.0)
    assert "gateway_cluster_up 1" in metrics
    assert "gateway_cluster_in_use 1" in metrics
    assert 'gateway_clients_in_use{transport="http"} 1' in metrics
    slot.release()


def test_clients_admitted_while_the_statement_travels_are_stated_too(
    redis_server: RedisServer,
) -> None:
    quota, link, _ = quota_for(redis_server, max_clients=10, on_down="local")
    link.down()
    held = [take(quota)]
    real_run = link.run
    pending: list[tuple[str, Sequence[object]]] = []

    def slow(script: str, args: Sequence[object]) -> Deferred[Any]:
        if not pending:  # the first SYNC: a client comes in before its answer
            pending.append((script, args))
            held.append(take(quota))
        return real_run(script, args)

    link.run = slow  # type: ignore[method-assign]
    link.back()
    assert quota.state == "up"
    assert allotted(redis_server) == 2  # stated again, with the newcomer
    for slot in held:
        slot.release()
