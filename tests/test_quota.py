import pytest
from twisted.python.failure import Failure

from gateway.core.errors import QuotaExceeded
from gateway.core.quota import ClientQuota, Slot


def test_grants_up_to_max_then_refuses_and_counts_per_transport() -> None:
    quota = ClientQuota(max_clients=2)
    a = quota.try_acquire("tcp", "10.0.0.1")
    b = quota.try_acquire("http", "10.0.0.2")
    with pytest.raises(QuotaExceeded) as info:
        quota.try_acquire("websocket", "10.0.0.3")
    assert info.value.message == "Too many connections. Bye!"
    assert info.value.code == "quota_exceeded"
    snap = quota.snapshot()
    assert snap.total_in_use == 2
    assert snap.in_use == {"tcp": 1, "http": 1, "websocket": 0}
    assert snap.granted == {"tcp": 1, "http": 1, "websocket": 0}
    assert snap.refused == {"tcp": 0, "http": 0, "websocket": 1}
    a.release()
    b.release()
    assert quota.snapshot().total_in_use == 0


def test_release_happens_exactly_once() -> None:
    quota = ClientQuota(max_clients=1)
    slot = quota.try_acquire("tcp", "h")
    assert slot.held
    assert slot.release() is True
    assert slot.release() is False
    assert not slot.held
    assert quota.snapshot().total_in_use == 0
    # the freed place can be taken again, and only once
    again = quota.try_acquire("tcp", "h")
    with pytest.raises(QuotaExceeded):
        quota.try_acquire("tcp", "h")
    again.release()


def test_max_per_ip_limits_one_address_only() -> None:
    quota = ClientQuota(max_clients=10, max_per_ip=2)
    slots = [quota.try_acquire("tcp", "1.1.1.1") for _ in range(2)]
    with pytest.raises(QuotaExceeded) as info:
        quota.try_acquire("http", "1.1.1.1")
    assert "1.1.1.1" in info.value.message
    other = quota.try_acquire("tcp", "2.2.2.2")
    slots[0].release()
    slots.append(quota.try_acquire("websocket", "1.1.1.1"))
    for slot in [*slots, other]:
        slot.release()
    assert quota.snapshot().total_in_use == 0
    assert quota._per_peer == {}  # no address left behind


def test_acquire_is_a_deferred_interface() -> None:
    quota = ClientQuota(max_clients=1)
    granted: list[Slot] = []
    quota.acquire("tcp", "h").addCallback(granted.append)
    assert len(granted) == 1
    refused: list[Failure] = []
    quota.acquire("tcp", "h").addErrback(refused.append)
    assert refused[0].check(QuotaExceeded)
    granted[0].release()


def test_storm_of_acquires_and_releases_returns_to_zero() -> None:
    quota = ClientQuota(max_clients=10)
    held = []
    served = refused = 0
    for i in range(1000):
        try:
            held.append(quota.try_acquire(("tcp", "http", "websocket")[i % 3], f"p{i % 7}"))
            served += 1
        except QuotaExceeded:
            refused += 1
        if i % 4 == 0 and held:
            held.pop(0).release()
    assert quota.snapshot().total_in_use == len(held) <= 10
    for slot in held:
        slot.release()
        slot.release()
    snap = quota.snapshot()
    assert snap.total_in_use == 0
    assert sum(snap.granted.values()) == served
    assert sum(snap.refused.values()) == refused


@pytest.mark.parametrize(("max_clients", "max_per_ip"), [(0, 0), (-1, 0), (1, -1)])
def test_bad_limits_are_refused(max_clients: int, max_per_ip: int) -> None:
    with pytest.raises(ValueError):
        ClientQuota(max_clients, max_per_ip)


def test_unknown_transport_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        ClientQuota(1).try_acquire("udp", "h")
