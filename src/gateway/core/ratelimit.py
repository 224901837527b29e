"""Per-address command rate limit: a token bucket for each client address.

Pure (a clock is passed in) and O(1) per command.  Buckets of addresses that
have been quiet long enough to refill are forgotten, so memory stays bounded
by the number of recently active addresses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from gateway.core.errors import CommandError
from gateway.core.peers import limit_key


@dataclass
class _Bucket:
    tokens: float
    updated: float


def slow_down(peer: str, seconds: float) -> CommandError:
    """The refusal of a command from ``peer``, who may try again in ``seconds``."""
    wait = max(1, math.ceil(seconds))
    return CommandError(
        "rate_limited",
        f"Too many commands from {peer}; slow down (try again in {wait} s).",
        retry_after=wait,
    )


class RateLimiter:
    def __init__(self, rate: float, burst: int, clock: IReactorTime) -> None:
        """``rate`` commands per second on average, ``burst`` at once; rate 0: no limit."""
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def configure(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets.clear()

    def take(self, peer: str) -> None:
        """Spend one command for ``peer`` or raise ``rate_limited``."""
        if not self.rate:
            return
        now = self.clock.seconds()
        key = limit_key(peer)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= 10_000:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens < 1:
            raise slow_down(peer, (1 - bucket.tokens) / self.rate)
        bucket.tokens -= 1

    def _forget_full(self, now: float) -> None:
        full = [
            p
            for p, b in self._buckets.items()
            if b.tokens + (now - b.updated) * self.rate >= self.burst
        ]
        for peer in full:
            del self._buckets[peer]
