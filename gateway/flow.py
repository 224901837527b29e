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

#: What front-ends get: makes a connection's Flow given what to do when stalled.
FlowMaker = Callable[[Callable[[], None]], Flow]


def flows(clock: IReactorTime, stall_timeout: float) -> FlowMaker:
    def make(on_stalled: Callable[[], None]) -> Flow:
        return Flow(clock, stall_timeout, on_stalled)

    return make


def no_flow(on_stalled: Callable[[], None]) -> Flow:
    """A FlowMaker whose flows never give up on a client (tests)."""
    return Flow()
