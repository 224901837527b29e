"""Back-pressure from a client to the command feeding it.

A front-end registers its connection's :class:`Flow` as a streaming producer
with the transport; Twisted pauses it when the transport's write buffer is
full (the client is not reading) and resumes it once the buffer drains.
Sources watch the flow: a child's pipe stops being read (so the child blocks
on its own output), a file stops being sent.  Memory per client stays bounded
by the transport's buffer plus one batch.  A client that stays paused longer
than ``stall_timeout`` is given up on: ``on_stalled`` closes it, which cancels
what it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

Watch = tuple[Callable[[], None], Callable[[], None]]


@implementer(IPushProducer)
class Flow:
    __slots__ = ("_clock", "_on_stalled", "_stall_timeout", "_timer", "_watches", "paused")

    def __init__(
        self,
        clock: IReactorTime | None = None,
        stall_timeout: float = 0.0,
        on_stalled: Callable[[], None] = lambda: None,
    ) -> None:
        self.paused = False
        self._clock = clock
        self._stall_timeout = stall_timeout
        self._on_stalled = on_stalled
        self._timer: IDelayedCall | None = None
        self._watches: list[Watch] | None = None  # made when first watched: idle clients are many

    def watch(self, pause: Callable[[], None], resume: Callable[[], None]) -> Callable[[], None]:
        """Call ``pause``/``resume`` as the client falls behind and catches up.

        Returns the function that stops watching.
        """
        entry = (pause, resume)
        if self._watches is None:
            self._watches = []
        watches = self._watches
        watches.append(entry)
        if self.paused:
            pause()

        def unwatch() -> None:
            if entry in watches:
                watches.remove(entry)

        return unwatch

    # IPushProducer, called by the transport
    def pauseProducing(self) -> None:
        if self.paused:
            return
        self.paused = True
        for pause, _ in list(self._watches or ()):
            pause()
        if self._clock is not None and self._stall_timeout:
            self._timer = self._clock.callLater(self._stall_timeout, self._stalled)

    def resumeProducing(self) -> None:
        if not self.paused:
            return
        self.paused = False
        self._cancel_timer()
        for _, resume in list(self._watches or ()):
            resume()

    def stopProducing(self) -> None:
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _stalled(self) -> None:
        self._timer = None
        if self.paused:
            self._on_stalled()


#: For callers with no transport to push back (tests, batch use).
UNLIMITED = Flow()

#: Why a front-end stops reading from its client (see :class:`ReadGate`).
BACKLOG = 1  # too many commands wait their turn
BEHIND = 2  # the client does not read its answers


class ReadGate:
    """Stops and restarts reading from a transport, for any of several reasons.

    Reading stops while at least one reason holds and starts again once none
    does: a client that does not read its answers, or that has queued too
    many commands, sends nothing more into the daemon's memory.
    """

    __slots__ = ("_reasons", "_transport")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._reasons = 0

    @staticmethod
    def for_transport(transport: object) -> ReadGate | None:
        """A gate for ``transport`` if it can stop reading, else ``None``.

        Checked by behaviour, not by declared interface: a TLS connection
        wraps TCP and stops reading through it, without declaring
        ``IPushProducer``.
        """
        if hasattr(transport, "pauseProducing") and hasattr(transport, "resumeProducing"):
            return ReadGate(transport)
        return None

    @property
    def closed(self) -> bool:
        """Is reading stopped?"""
        return bool(self._reasons)

    def hold(self, reason: int, holds: bool) -> None:
        before = self._reasons
        self._reasons = before | reason if holds else before & ~reason
        if self._reasons and not before:
            self._transport.pauseProducing()
        elif before and not self._reasons:
            self._transport.resumeProducing()

    def open(self) -> None:
        """Read again whatever held (the connection is closing and drains)."""
        if self._reasons:
            self._reasons = 0
            self._transport.resumeProducing()
