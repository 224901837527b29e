import pytest
from twisted.internet.task import Clock

from gateway.commands.builtin import ExitCommand
from gateway.core.command import Client, Request
from gateway.core.errors import CommandError
from gateway.core.events import Error, Event
from gateway.core.ratelimit import RateLimiter
from gateway.core.service import CommandService


def test_burst_then_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.take("a")
    with pytest.raises(CommandError) as info:
        limiter.take("a")
    assert info.value.code == "rate_limited"
    assert info.value.retry_after == 1
    assert info.value.message == "Too many commands from a; slow down (try again in 1 s)."
    limiter.take("b")  # another address has its own bucket
    clock.advance(0.5)
    limiter.take("a")  # one token back after 1/rate seconds
    with pytest.raises(CommandError):
        limiter.take("a")


def test_zero_rate_is_no_limit() -> None:
    limiter = RateLimiter(0, 1, Clock())
    for _ in range(1000):
        limiter.take("a")


def test_quiet_addresses_are_forgotten() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 1, clock)
    for i in range(10_000):
        limiter.take(f"10.0.{i // 256}.{i % 256}")
    clock.advance(5)
    limiter.take("new")
    assert len(limiter._buckets) == 1


def test_service_answers_rate_limited_with_retry_after() -> None:
    clock = Clock()
    service = CommandService([ExitCommand()], clock, RateLimiter(1.0, 1, clock))
    events: list[Event] = []
    service.execute(Request("exit"), Client("tcp", "h"), events.append)
    service.execute(Request("exit"), Client("tcp", "h"), events.append)
    assert events[-1] == Error(
        "rate_limited", "Too many commands from h; slow down (try again in 1 s).", 1
    )
