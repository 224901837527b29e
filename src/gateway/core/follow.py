"""Live follow, without I/O: one feed per source, many watchers, cursors, drops.

A :class:`Feed` numbers the lines its source writes and keeps the last
``replay`` of them, so a new watcher gets the last N lines and a watcher that
reconnects with a cursor continues right after the line it saw last (no gap,
no duplicate), or is told how many lines it may have missed.  Each
:class:`Watcher` delivers to one client; while its client does not read (its
:class:`~gateway.core.flow.Flow` is paused) lines wait in a bounded queue,
the oldest dropped first and counted, and the client is told exactly how many
it lost once it reads again.  One slow watcher never holds up the feed or
the others.

Cursors are opaque strings ``<epoch>-<n>``: the epoch names one run of one
reader (a new reader, a new epoch), ``n`` the line's number in it.  A source
that names its own lines (the journal's ``__CURSOR``) gives them with
:meth:`Feed.append_named`, and those names are the cursors: they stay good
however often the reader starts again.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.core.events import Lines
from gateway.core.flow import UNLIMITED, Flow

Entry = tuple[int, str]


@dataclass(frozen=True)
class Stale:
    """A resume cursor older than what is kept: ``missing`` lines may be lost
    (``None``: unknown, the cursor is from another run of the reader)."""

    missing: int | None


def new_epoch() -> str:
    return os.urandom(4).hex()


class Batch(list[Entry]):
    """Lines appended together, with the one :class:`Lines` event every
    watcher is handed (so each front-end renders it once for all of them; a
    watcher that filters or queues makes its own)."""

    __slots__ = ("event",)

    event: Lines


def lines_of(feed: Feed, entries: Sequence[Entry]) -> Lines:
    """``entries`` as a :class:`Lines` event: the shared one of a whole batch."""
    if isinstance(entries, Batch):
        return entries.event
    return Lines(tuple(t for _, t in entries), tuple(feed.cursor(n) for n, _ in entries))


@dataclass
class FeedStats:
    watchers: int = 0
    delivered: int = 0
    dropped: int = 0


class Watcher:
    """One client's view of a feed: a filter, a bounded queue, a drop count."""

    def __init__(
        self,
        deliver: Callable[[Sequence[Entry]], None],
        dropped: Callable[[int], None],
        notice: Callable[[str], None],
        queue_limit: int,
        flow: Flow = UNLIMITED,
        grep: Any = None,
    ) -> None:
        self._deliver = deliver
        self._dropped = dropped
        self._notice = notice
        self._limit = max(1, queue_limit)
        self._flow = flow
        self._grep = grep
        self._queue: deque[Entry] = deque()
        self.lost = 0
        self.delivered = 0
        self._unwatch = flow.watch(lambda: None, self._resumed)

    def _match(self, entries: Sequence[Entry]) -> Sequence[Entry]:
        grep = self._grep
        if grep is None:
            return entries
        return [e for e in entries if grep.search(e[1]) is not None]

    def offer(self, entries: Sequence[Entry]) -> int:
        """New lines; returns how many were dropped now (the queue was full)."""
        entries = self._match(entries)
        if not entries:
            return 0
        if not self._flow.paused and not self._queue:
            self.delivered += len(entries)
            self._deliver(entries)
            return 0
        queue = self._queue
        queue.extend(entries)
        over = len(queue) - self._limit
        if over > 0:
            for _ in range(over):
                queue.popleft()
            self.lost += over
            return over
        return 0

    def note(self, text: str) -> None:
        """A notice for the client (a truncated file, a rotated one)."""
        self._notice(text)

    def _resumed(self) -> None:
        if self.lost:
            lost, self.lost = self.lost, 0
            self._dropped(lost)
        if self._queue:
            batch = list(self._queue)
            self._queue.clear()
            self.delivered += len(batch)
            self._deliver(batch)

    def close(self) -> None:
        self._unwatch()
        self._queue.clear()

    def reopen(self) -> None:
        """Watch the flow again after :meth:`close` (the follow moved to another feed)."""
        self._unwatch()
        self._unwatch = self._flow.watch(lambda: None, self._resumed)


@dataclass
class Feed:
    """The numbered lines of one source and who watches them."""

    replay: int
    epoch: str = field(default_factory=new_epoch)
    stats: FeedStats = field(default_factory=FeedStats)
    #: Lines between two numbers that are no longer kept (``None``: unknown).
    #: A file's feed numbers lines by their end offset and counts them on disk.
    missing_between: Callable[[int, int], int | None] | None = None
    #: For a feed of named lines: how many lines lie between two names
    #: (``None``: unknown), for a resume from a name no longer kept.
    names_apart: Callable[[str, str], int | None] | None = None

    def __post_init__(self) -> None:
        self._buffer: deque[Entry] = deque(maxlen=max(1, self.replay))
        self._numbers = itertools.count(1)
        self._last = 0
        self.watchers: set[Watcher] = set()
        #: The names of the lines kept, both ways (a feed of named lines only).
        self._names: dict[int, str] = {}
        self._named: dict[str, int] = {}

    def cursor(self, number: int) -> str:
        name = self._names.get(number)
        return name if name is not None else f"{self.epoch}-{number}"

    def append_named(self, entries: Sequence[tuple[str, str]]) -> None:
        """Lines the source names itself, as ``(name, text)``: numbered here,
        and each line's name is its cursor."""
        if not entries:
            return
        numbered = []
        names, named, numbers = self._names, self._named, self._numbers
        for name, text in entries:
            n = next(numbers)
            names[n] = name
            named[name] = n
            numbered.append((n, text))
        self.append_numbered(numbered)
        oldest = self._buffer[0][0]
        while len(names) > len(self._buffer):  # forget the names of lines no longer kept
            first = next(iter(names))
            if first >= oldest:
                break
            named.pop(names.pop(first), None)

    def append(self, lines: Sequence[str]) -> None:
        if lines:
            self.append_numbered([(next(self._numbers), line) for line in lines])

    def append_numbered(self, entries: Sequence[Entry]) -> None:
        """Lines whose numbers the source gives (increasing: a file's offsets)."""
        if not entries:
            return
        batch = Batch(entries)
        cursor = self.cursor
        batch.event = Lines(tuple(t for _, t in entries), tuple(cursor(n) for n, _ in entries))
        entries = batch
        self._last = entries[-1][0]
        self._buffer.extend(entries)
        for watcher in list(self.watchers):
            before = watcher.delivered
            self.stats.dropped += watcher.offer(entries)
            self.stats.delivered += watcher.delivered - before

    def notice(self, text: str) -> None:
        for watcher in list(self.watchers):
            watcher.note(text)

    def replay_for(self, last: int, after: str | None) -> tuple[list[Entry], Stale | None]:
        """What a new watcher is sent first: the last ``last`` lines, or the
        lines after cursor ``after`` (with a :class:`Stale` if some are gone)."""
        kept = list(self._buffer)
        if after is None:
            return (kept[-last:] if last > 0 else []), None
        if self._names:
            return self._replay_named(kept, after)
        epoch, _, number = after.rpartition("-")
        if epoch != self.epoch or not number.isdigit():
            return kept, Stale(None)
        seen = int(number)
        if seen > self._last:  # past the end: the source started again (a truncated file)
            return kept, Stale(None)
        if seen == self._last:
            return [], None
        if not kept or seen >= kept[0][0]:
            return [e for e in kept if e[0] > seen], None
        oldest = kept[0][0]
        if self.missing_between is not None:
            missing = self.missing_between(seen, oldest)
            return kept, (None if missing == 0 else Stale(missing))
        return kept, (None if seen + 1 >= oldest else Stale(oldest - seen - 1))

    def _replay_named(self, kept: list[Entry], after: str) -> tuple[list[Entry], Stale | None]:
        seen = self._named.get(after)
        if seen is not None:
            return [e for e in kept if e[0] > seen], None
        apart = self.names_apart
        missing = apart(after, self._names[kept[0][0]]) if apart is not None and kept else None
        if missing == 0:  # the line just before the oldest kept
            return kept, None
        return kept, Stale(missing if missing is not None and missing > 0 else None)

    def rebase(self, epoch: str) -> None:
        """The source started again (a new file): new numbers, nothing kept."""
        self.epoch = epoch
        self._buffer.clear()
        self._names.clear()
        self._named.clear()
        self._numbers = itertools.count(1)
        self._last = 0

    def attach(
        self,
        watcher: Watcher,
        last: int,
        after: str | None,
        on_gap: Callable[[Stale], None] | None = None,
        cap: int | None = None,
    ) -> Stale | None:
        """Start ``watcher``: what it missed first (``on_gap`` told of a gap
        before any line), then every new line.  A resume replays at most
        ``cap`` lines (a scoped client's ``max_lines``); the older ones count
        as missing."""
        entries, stale = self.replay_for(last, after)
        if cap is not None and after is not None and len(entries) > cap:
            skipped = len(entries) - cap
            entries = entries[-cap:]
            if stale is None:
                stale = Stale(skipped)
            elif stale.missing is not None:
                stale = Stale(stale.missing + skipped)
        if stale is not None and on_gap is not None:
            on_gap(stale)
        if entries:
            before = watcher.delivered
            self.stats.dropped += watcher.offer(entries)
            self.stats.delivered += watcher.delivered - before
        self.watchers.add(watcher)
        self.stats.watchers = len(self.watchers)
        return stale

    def detach(self, watcher: Watcher) -> bool:
        """Forget ``watcher``; ``True`` when nobody watches any more."""
        self.watchers.discard(watcher)
        watcher.close()
        self.stats.watchers = len(self.watchers)
        return not self.watchers
