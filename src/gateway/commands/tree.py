"""Many files hashed at once: a directory tree (``comphash -r``) or a
manifest's entries (``comphash -c``).

The walk and the hashing run in threads; nothing here touches the reactor
except :func:`in_order`, which runs on it.

A tree is walked through directory descriptors: each directory is opened
relative to its parent's descriptor with ``O_NOFOLLOW``, and each file
relative to its directory's, so no symbolic link, and no directory swapped
for one while the walk runs, can lead outside the tree: nothing outside it is
ever opened.  Symbolic links are listed as skipped, never followed; FIFOs,
sockets and devices are skipped with a notice before anything opens them.
Files come out sorted by the bytes of their paths, as ``sort -z`` in the C
locale sorts ``find``'s output.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gateway.commands.treeio import Cancelled
from gateway.core.flow import Flow

#: A unit of work: files hashed one after the other by one thread.
UNIT_FILES = 256
UNIT_BYTES = 8 * 1024 * 1024


def units_of(sizes: Sequence[int]) -> list[range]:
    """Consecutive runs of items, each a thread's share: up to ``UNIT_FILES``
    items or about ``UNIT_BYTES`` bytes; a large file is a unit of its own."""
    out: list[range] = []
    start = 0
    count = 0
    weight = 0
    for i, size in enumerate(sizes):
        if count and (count >= UNIT_FILES or weight + size > UNIT_BYTES):
            out.append(range(start, i))
            start, count, weight = i, 0, 0
        count += 1
        weight += size
    if count:
        out.append(range(start, len(sizes)))
    return out


T = TypeVar("T")


@dataclass
class _Run(Generic[T]):
    results: dict[int, list[T]]
    started: int = 0
    emitted: int = 0
    running: int = 0
    stopped: bool = False
    filling: bool = False  # _fill() is on the stack (work that finished at once)
    again: bool = False  # and was asked again meanwhile


class InOrder(Generic[T]):
    """Runs ``work`` on units in threads, at most ``width`` at once, and
    ``emit`` s the results in the units' order as soon as each is next.

    Units may be added while it runs (:meth:`add`, as a walk finds files);
    :meth:`close` says there are no more.  While ``held``, results are kept,
    not emitted, units start without a bound on how far ahead they run (a
    tree's walk still going: its limits are only known at its end), and at
    most ``width - 1`` at once (the walk has the other thread);
    :meth:`release` lets them out.  Otherwise, while ``flow`` is paused (the
    client does not read) no unit starts, and none runs more than
    ``4 * width`` units ahead of the last emitted, so what waits in memory
    stays bounded.  Cancelling :attr:`done` sets ``stop`` (work checks it)
    and starts nothing more.
    """

    def __init__(
        self,
        work: Callable[[range], list[T]],
        run_in_thread: Callable[[Callable[[], Any]], Deferred[Any]],
        emit: Callable[[range, list[T]], None],
        width: int,
        flow: Flow,
        stop: threading.Event,
        held: bool = False,
    ) -> None:
        self._work = work
        self._run_in_thread = run_in_thread
        self._emit = emit
        self._width = max(1, width)
        self._flow = flow
        self._stop = stop
        self._held = held
        self._closed = False
        self._units: list[range] = []
        self._state: _Run[T] = _Run({})
        self._watching: list[Callable[[], None]] = []
        self.done: Deferred[None] = Deferred(self._cancel)

    def add(self, units: Sequence[range]) -> None:
        self._units.extend(units)
        self._fill()

    def close(self) -> None:
        self._closed = True
        self._fill()

    def release(self) -> None:
        self._held = False
        self._drain()
        self._fill()

    def fail(self, failure: Failure) -> None:
        """Stop, and fail :attr:`done` with ``failure`` (the walk failed)."""
        state = self._state
        if state.stopped:
            return
        state.stopped = True
        self._stop.set()
        if not self.done.called:
            self.done.errback(failure)

    def _cancel(self, _: Deferred[None]) -> None:
        self._state.stopped = True
        self._stop.set()

    def _fill(self) -> None:
        state = self._state
        if state.filling:  # a unit finished synchronously: the loop below goes on
            state.again = True
            return
        if self._watching:
            self._watching.pop()()
        state.filling = True
        try:
            while self._start_more():
                pass
        finally:
            state.filling = False
        if (
            self._closed
            and not self._held
            and state.emitted == len(self._units)
            and not state.stopped
            and not self.done.called
        ):
            self.done.callback(None)

    def _start_more(self) -> bool:
        """Start what may start; whether to look again."""
        state = self._state
        state.again = False
        width = max(1, self._width - 1) if self._held else self._width
        while (
            not state.stopped
            and state.running < width
            and state.started < len(self._units)
            and (self._held or state.started - state.emitted < 4 * self._width)
        ):
            if self._flow.paused and not self._held:
                self._watching.append(self._flow.watch(lambda: None, self._fill))
                return False
            index = state.started
            state.started += 1
            state.running += 1
            unit = self._units[index]
            d = self._run_in_thread(lambda unit=unit: self._work(unit))  # type: ignore[misc]
            d.addBoth(self._finished, index)
        return bool(state.again)

    def _finished(self, outcome: list[T] | Failure, index: int) -> None:
        state = self._state
        state.running -= 1
        if state.stopped:
            return
        if isinstance(outcome, Failure):
            self.fail(outcome)
            return
        state.results[index] = outcome
        self._drain()
        self._fill()

    def _drain(self) -> None:
        state = self._state
        while not self._held and state.emitted in state.results:
            i = state.emitted
            self._emit(self._units[i], state.results.pop(i))
            state.emitted += 1
            if state.stopped:  # emit may cancel (the client went away)
                return


def in_order(
    units: Sequence[range],
    work: Callable[[range], list[T]],
    run_in_thread: Callable[[Callable[[], Any]], Deferred[Any]],
    emit: Callable[[range, list[T]], None],
    width: int,
    flow: Flow,
    stop: threading.Event,
) -> Deferred[None]:
    """:class:`InOrder` over units all known at the start."""
    runner: InOrder[T] = InOrder(work, run_in_thread, emit, width, flow, stop)
    runner.add(units)
    runner.close()
    return runner.done


class SharedFd:
    """A descriptor several threads use, closed once the last is done with it.

    :meth:`close` may come (from the reactor) while threads still work: the
    descriptor is closed when the last of them leaves, so its number is
    never reused under them.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._users = 0
        self._closing = False
        self._lock = threading.Lock()

    def acquire(self) -> int:
        with self._lock:
            if self._closing:
                raise Cancelled()
            self._users += 1
            return self._fd

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._closing and self._users == 0
        if last:
            os.close(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            last = self._users == 0
        if last:
            os.close(self._fd)
