"""Following a log file like ``tail -F``: one reader per file, however many watch.

:class:`Followers` keeps one :class:`FileReader` per path while anyone
watches it, and stops it when the last watcher leaves.  The reader primes its
:class:`~gateway.core.follow.Feed` with the file's last lines (read in a
thread, as ``lastlog`` reads them), then polls the file: appended lines go to
the feed as they are written; a new file at the path (rotation) is read from
its start once the old one is read to its end; a file that shrank
(truncation) is read again from its start, with a notice.
"""

from __future__ import annotations

import errno
import os
import shlex
from collections.abc import Callable
from typing import Any

from twisted.internet import inotify
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorFDSet,
    IReactorProcess,
    IReactorTime,
)
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from gateway.commands.child import (
    MAX_LINE_BYTES,
    ChildProtocol,
    decode_line,
    exit_of,
    first_lines,
    spawn,
)
from gateway.commands.journal import JournalSource, entries_apart, named_lines
from gateway.core.errors import CommandError
from gateway.core.events import Lines
from gateway.core.flow import UNLIMITED
from gateway.core.follow import Feed, Stale, Watcher
from gateway.core.metrics import Family
from gateway.logfmt import Logger

RunInThread = Callable[[Callable[[], Any]], "Deferred[Any]"]
#: What a follow starts from: the last lines (numbered by their end offset),
#: the offset after them, and the file's ``(dev, inode)``.
Primed = tuple[list[tuple[int, str]], int, tuple[int, int]]
#: How often a followed file is looked at without inotify (the most a new line waits).
POLL_SECONDS = 0.05
#: How often it is looked at anyway with inotify (what inotify cannot see).
SAFETY_SECONDS = 1.0
#: How long after a change the file is read (changes meanwhile are read together),
COALESCE_SECONDS = 0.005
#: and longer with many watchers, so each gets fewer, larger writes (each write
#: costs the same whatever its size): 25 ms with 1,000 watchers,
COALESCE_PER_WATCHER = 0.000025
#: never more than this.
COALESCE_MOST = 0.05
WATCH_MASK = (
    inotify.IN_MODIFY
    | inotify.IN_CREATE
    | inotify.IN_MOVED_TO
    | inotify.IN_MOVED_FROM
    | inotify.IN_DELETE
    | inotify.IN_CLOSE_WRITE
)
#: A command's first output counts as its backlog until it has been quiet this long
SETTLE_SECONDS = 0.1
#: (or for this long at most).
SETTLE_MOST = 2.0
#: The most read from a followed file in one look (the rest comes next time).
READ_BYTES = 1024 * 1024
#: The most read to count the lines a resume missed (more: "unknown").
COUNT_BYTES = 16 * 1024 * 1024


def coalesce(watchers: int) -> float:
    """How long to wait after a change before reading, with ``watchers`` watching."""
    return min(COALESCE_MOST, max(COALESCE_SECONDS, watchers * COALESCE_PER_WATCHER))


def epoch_of(identity: tuple[int, int]) -> str:
    """The cursor prefix of one file (device and inode): stable across restarts."""
    dev, ino = identity
    return f"{((dev << 40) ^ ino) & 0xFFFFFFFFFFFF:x}"


class FileReader:
    """Reads what is appended to ``path`` into ``feed``, following rotation and truncation."""

    log = Logger(namespace="gateway.commands.follow")

    def __init__(self, path: str, feed: Feed, clock: IReactorTime) -> None:
        self.path = self.key = path
        self.feed = feed
        self._clock = clock
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._offset = 0
        self._partial = b""
        self._loop: LoopingCall | None = None
        self._notifier: inotify.INotify | None = None
        self._again: IDelayedCall | None = None
        self._soon: IDelayedCall | None = None

    def start(self, offset: int, identity: tuple[int, int] | None) -> None:
        """Follow from ``offset`` of the file whose ``(dev, inode)`` is ``identity``.

        With a reactor that watches descriptors, inotify on the file's
        directory says when to look (a line is read as soon as it is written),
        and a look each :data:`SAFETY_SECONDS` catches what it cannot see (a
        network filesystem).  Without, the file is looked at every
        :data:`POLL_SECONDS`.
        """
        self._open(offset, identity)
        interval = POLL_SECONDS
        if IReactorFDSet.providedBy(self._clock):
            try:
                notifier = inotify.INotify(self._clock)
                notifier.startReading()
                directory = FilePath(os.path.dirname(os.path.abspath(self.path)))
                notifier.watch(directory, mask=WATCH_MASK, callbacks=[self._changed])
            except Exception as e:  # no inotify here (or no watches left): poll
                self.log.info("following {path} by polling: {why}", path=self.path, why=str(e))
            else:
                self._notifier = notifier
                interval = SAFETY_SECONDS
        loop = LoopingCall(self.poll)
        loop.clock = self._clock
        self._loop = loop
        loop.start(interval, now=False)

    def _changed(self, watch: object, path: FilePath[str], mask: int) -> None:
        # A busy writer makes an event per write: look once, a moment later
        # (longer with many watchers), so each watcher gets one batch, not one per write.
        if self._soon is None:
            self._soon = self._clock.callLater(coalesce(len(self.feed.watchers)), self._look)

    def _look(self) -> None:
        self._soon = None
        self.poll()

    def _open(self, offset: int, identity: tuple[int, int] | None) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError:
            self._fd = None  # not there (yet): rotation under way; looked for again
            return
        st = os.fstat(fd)
        self._fd = fd
        self._inode = (st.st_dev, st.st_ino)
        self._offset = offset if self._inode == identity else 0
        self._partial = b""

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier = None
        for call in (self._again, self._soon):
            if call is not None and call.active():
                call.cancel()
        self._again = self._soon = None
        self._close()

    def _read(self) -> bool:
        """Read what there is (up to :data:`READ_BYTES`); ``True`` if something was read.

        Each line is numbered by the file offset just after it, so a cursor
        names a place in the file and stays good however often the reader
        starts again.
        """
        fd = self._fd
        if fd is None:
            return False
        try:
            new = os.pread(fd, READ_BYTES, self._offset)
        except OSError as e:
            if e.errno != errno.EINTR:
                self.log.warn("cannot read {path}: {error}", path=self.path, error=e.strerror)
            return False
        if not new:
            return False
        position = self._offset - len(self._partial)
        self._offset += len(new)
        *complete, self._partial = (self._partial + new).split(b"\n")
        entries = []
        for raw in complete:
            position += len(raw) + 1
            entries.append((position, decode_line(raw)))
        if len(self._partial) > MAX_LINE_BYTES:
            position += len(self._partial)
            entries.append((position, decode_line(self._partial)))
            self._partial = b""
        self.feed.append_numbered(entries)
        if len(new) == READ_BYTES and self._again is None:  # more to read: soon, not now
            self._again = self._clock.callLater(0, self._read_again)
        return True

    def _read_again(self) -> None:
        self._again = None
        self.poll()

    def missing_between(self, seen: int, oldest: int) -> int | None:
        """How many lines of the file lie between offset ``seen`` and the
        oldest line kept (which ends at ``oldest``): a resume's gap."""
        fd = self._fd
        if fd is None or oldest - seen > COUNT_BYTES:
            return None
        try:
            data = os.pread(fd, oldest - seen, seen)
        except OSError:
            return None
        return max(0, data.count(b"\n") - 1)

    def poll(self) -> None:
        if self._fd is not None:
            size = os.fstat(self._fd).st_size
            if size < self._offset:  # truncated in place: from its start again
                self.feed.notice(f"-- {self.path} was truncated; following from its start")
                self.feed.rebase(self.feed.epoch)
                self._offset = 0
                self._partial = b""
            if self._read():
                return  # more next time: others get their turn
        try:
            st = os.stat(self.path)
        except OSError:
            return  # moved away, the new one not created yet: keep the old one
        if (st.st_dev, st.st_ino) != self._inode:
            if self._fd is not None and self._read():
                return  # the old file first, to its end
            if self._partial:
                end = self._offset
                self.feed.append_numbered([(end, decode_line(self._partial))])
            self._close()
            self._open(0, None)
            if self._fd is not None:
                self.feed.notice(f"-- {self.path} was replaced; following the new file")
                assert self._inode is not None
                self.feed.rebase(epoch_of(self._inode))


class CommandReader(ChildProtocol):
    """One child for every watcher of a ``command:`` source: its stdout lines
    go to the feed; when it ends, so do the follows.

    What the command prints first (``tail -n N``'s backlog) primes the feed:
    it counts as printed once the output has been quiet for
    :data:`SETTLE_SECONDS` (or after :data:`SETTLE_MOST`), and only then do
    watchers attach, so ``-f 2`` starts with two lines, not the whole backlog.
    """

    def __init__(
        self,
        key: str,
        feed: Feed,
        ended: Callable[[CommandReader, Any], None],
        clock: IReactorTime,
        ready: Callable[[CommandReader], None],
    ) -> None:
        super().__init__()
        self.key = key
        self.feed = feed
        self.primed = False
        self._ended = ended
        self._clock = clock
        self._ready = ready
        self._quiet: IDelayedCall | None = None
        self._most: IDelayedCall | None = None

    def settle(self) -> None:
        """Started: primed once quiet (a command without a backlog, at once)."""
        self._quiet = self._clock.callLater(SETTLE_SECONDS, self._settled)
        self._most = self._clock.callLater(SETTLE_MOST, self._settled)

    def _settled(self) -> None:
        for call in (self._quiet, self._most):
            if call is not None and call.active():
                call.cancel()
        self._quiet = self._most = None
        if not self.primed:
            self.primed = True
            self._ready(self)

    def lines_received(self, lines: list[bytes]) -> None:
        self.feed.append([decode_line(line) for line in lines])
        if self._quiet is not None and self._quiet.active():
            self._quiet.reset(SETTLE_SECONDS)

    def ended(self, reason: Any) -> None:
        for call in (self._quiet, self._most):
            if call is not None and call.active():
                call.cancel()
        self._ended(self, reason)

    def stop(self) -> None:
        self.kill()


class JournalReader(CommandReader):
    """One ``journalctl -o json --follow`` for every watcher of the journal:
    each entry's ``__CURSOR`` is its cursor (what is not an entry, a notice).
    It is primed before it starts (the last entries, then a follow from
    right after them), so it is ready as soon as it runs."""

    def lines_received(self, lines: list[bytes]) -> None:
        named, plain = named_lines(lines)
        self.feed.append_named(named)
        for text in plain:
            self.feed.notice(text)


def how_it_ended(reason: Any) -> str:
    status, signum = exit_of(reason)
    return f"exit status {status}" if status is not None else f"signal {signum}"


class Subscription:
    """One follow: which file, which feed and watcher now (a reload may move it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.feed: Feed | None = None
        self.watcher: Watcher | None = None
        #: Called with a notice when the follow must end (its source can no longer be followed).
        self.ended: Callable[[str], None] = lambda text: None


class Followers:
    """One feed and one reader per followed file, while anyone watches it."""

    def __init__(
        self,
        clock: IReactorTime,
        run_in_thread: RunInThread,
        replay: int,
        prime: Callable[[str, int], Primed],
    ) -> None:
        """``prime(path, n)`` reads the last ``n`` lines, the offset they end
        at and the file's identity (in a thread)."""
        self._clock = clock
        self._run_in_thread = run_in_thread
        self.replay = replay
        self._prime = prime
        self._readers: dict[str, FileReader | CommandReader] = {}
        self._commands: dict[str, tuple[tuple[str, ...], IReactorProcess] | JournalSource] = {}
        self._subscriptions: set[Subscription] = set()
        #: What feeds that have stopped delivered and dropped, per path.
        self._delivered: dict[str, int] = {}
        self._dropped: dict[str, int] = {}
        #: The most watchers at once, all files together (0: no cap).
        self.max_watchers = 0
        self._opening: dict[str, list[Deferred[Feed]]] = {}

    def register_command(self, argv: tuple[str, ...], spawner: IReactorProcess) -> str:
        """The key under which a follow of command ``argv`` is read (once for all)."""
        key = "command:" + shlex.join(argv)
        self._commands[key] = (argv, spawner)
        return key

    def register_journal(self, source: JournalSource) -> str:
        """The key under which a follow of the journal ``source`` is read."""
        self._commands[source.description] = source
        return source.description

    def _start_command(self, key: str, argv: tuple[str, ...], spawner: IReactorProcess) -> None:
        reader = CommandReader(
            key, Feed(self.replay), self._command_ended, self._clock, self._opened
        )
        args = [a.replace("{lines}", str(self.replay)) for a in argv]
        spawn(spawner, reader, args, Deferred(), what="Log command")
        reader.settle()

    def _start_journal(self, key: str, source: JournalSource) -> None:
        feed = Feed(self.replay, names_apart=entries_apart)
        raws: list[str] = []

        def collect(event: object) -> None:
            if isinstance(event, Lines):
                raws.extend(event.lines)

        def follow(_: object) -> None:
            if key not in self._opening:
                return  # every watcher left meanwhile
            named, _ = named_lines(raws)  # (the rest: journalctl's own notes)
            feed.append_named(named)
            after = named[-1][0] if named else None
            reader = JournalReader(key, feed, self._command_ended, self._clock, self._opened)
            try:
                spawn(
                    source.spawner,
                    reader,
                    source.follow_argv(after),
                    Deferred(),
                    what="Log command",
                )
            except CommandError as e:
                self._failed(key, Failure(e))
                return
            reader.primed = True
            self._opened(reader)

        prime = first_lines(
            source.spawner,
            source.prime_argv(self.replay),
            self.replay,
            collect,
            UNLIMITED,
            source.description,
            line=lambda raw: raw.decode("utf-8", "replace"),
        )
        prime.addCallbacks(follow, lambda failure: self._failed(key, failure))

    def _opened(self, reader: FileReader | CommandReader) -> None:
        """``reader`` is primed: its feed goes to everyone waiting for it."""
        waiters = self._opening.pop(reader.key, [])
        if not any(not w.called for w in waiters):
            reader.stop()  # every watcher left while it started
            return
        self._readers[reader.key] = reader
        for waiter in waiters:
            if not waiter.called:  # (a watcher may have left meanwhile)
                waiter.callback(reader.feed)

    def _failed(self, key: str, failure: Any) -> None:
        for waiter in self._opening.pop(key, []):
            if not waiter.called:
                waiter.errback(failure)

    def _command_ended(self, reader: CommandReader, reason: Any) -> None:
        how = how_it_ended(reason)
        if not reader.primed:
            detail = f": {reader.stderr_tail[-1]}" if reader.stderr_tail else ""
            message = f"The log command ended before it could be followed ({how}){detail}"
            self._failed(reader.key, Failure(CommandError("unavailable", message)))
            return
        if self._readers.get(reader.key) is reader:
            del self._readers[reader.key]
        for sub in list(self._subscriptions):
            if sub.path == reader.key:
                sub.ended(f"-- the log command ended ({how})")

    def feed(self, path: str) -> Deferred[Feed]:
        """The running feed of ``path`` (a file, or a registered command's key),
        started and primed if nobody watched it yet."""
        reader = self._readers.get(path)
        if reader is not None:
            return succeed(reader.feed)
        waiter: Deferred[Feed] = Deferred()
        waiting = self._opening.get(path)
        if waiting is not None:
            waiting.append(waiter)
            return waiter
        self._opening[path] = [waiter]
        command = self._commands.get(path)
        try:
            if isinstance(command, JournalSource):
                self._start_journal(path, command)
            elif command is not None:
                self._start_command(path, *command)
            else:
                self._start_file(path)
        except CommandError as e:
            self._failed(path, Failure(e))
        return waiter

    def _start_file(self, path: str) -> None:
        def started(primed: Primed) -> None:
            entries, offset, identity = primed
            feed = Feed(self.replay, epoch_of(identity))
            feed.append_numbered(entries)
            reader = FileReader(path, feed, self._clock)
            feed.missing_between = reader.missing_between
            reader.start(offset, identity)
            self._opened(reader)

        d: Deferred[Any] = self._run_in_thread(lambda: self._prime(path, self.replay))
        d.addCallbacks(started, lambda failure: self._failed(path, failure))

    def leave(self, path: str, feed: Feed, watcher: Any = None) -> None:
        """``watcher`` stops (or never started); the reader stops with the last one."""
        idle = feed.detach(watcher) if watcher is not None else not feed.watchers
        if idle:
            reader = self._readers.get(path)
            if reader is not None and reader.feed is feed:
                reader.stop()
                del self._readers[path]
                self._delivered[path] = self._delivered.get(path, 0) + feed.stats.delivered
                self._dropped[path] = self._dropped.get(path, 0) + feed.stats.dropped

    def subscribe(
        self,
        sub: Subscription,
        feed: Feed,
        last: int,
        after: str | None,
        on_gap: Callable[[Stale], None] | None = None,
        cap: int | None = None,
    ) -> None:
        assert sub.watcher is not None
        sub.feed = feed
        self._subscriptions.add(sub)
        feed.attach(sub.watcher, last, after, on_gap, cap)

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)
        if sub.feed is not None and sub.watcher is not None:
            self.leave(sub.path, sub.feed, sub.watcher)
        sub.feed = None

    def move(self, path: str | None, description: str) -> None:
        """The log source is now ``path`` (a reload): every follow of another
        file moves to it, told so, from its next line; with no file to follow
        (``path`` is ``None``), they end with a notice."""
        for sub in list(self._subscriptions):
            if sub.path == path or sub.feed is None or sub.watcher is None:
                continue
            watcher = sub.watcher
            self.leave(sub.path, sub.feed, watcher)
            self._subscriptions.discard(sub)
            if path is None:
                sub.feed = None
                sub.ended(f"-- the log source is now {description}, which cannot be followed")
                continue
            watcher.reopen()
            watcher.note(f"-- the log source is now {path} (configuration reloaded)")
            sub.path, sub.feed = path, None

            def moved(feed: Feed, sub: Subscription = sub) -> None:
                if sub.watcher is not None:
                    self.subscribe(sub, feed, 0, None)

            def failed(failure: Any, sub: Subscription = sub) -> None:
                sub.ended(f"-- cannot follow {path}: {failure.getErrorMessage()}")

            self.feed(path).addCallbacks(moved, failed)

    @property
    def watchers(self) -> int:
        """Watchers of every followed file, together."""
        return sum(len(r.feed.watchers) for r in self._readers.values())

    def samples(self) -> list[Family]:
        """The follow metrics: readers, and per file its watchers, lines
        delivered and lines dropped (since start)."""
        paths = sorted(set(self._readers) | set(self._delivered))

        def total(kept: dict[str, int], path: str, attr: str) -> int:
            reader = self._readers.get(path)
            live = getattr(reader.feed.stats, attr) if reader is not None else 0
            return kept.get(path, 0) + int(live)

        return [
            (
                "gateway_follow_readers",
                "gauge",
                "Followed files being read.",
                [({}, len(self._readers))],
            ),
            (
                "gateway_follow_watchers",
                "gauge",
                "Clients following, per file.",
                [({"source": p}, len(r.feed.watchers)) for p, r in sorted(self._readers.items())],
            ),
            (
                "gateway_follow_lines_delivered_total",
                "counter",
                "Lines handed to followers, per file.",
                [({"source": p}, total(self._delivered, p, "delivered")) for p in paths],
            ),
            (
                "gateway_follow_lines_dropped_total",
                "counter",
                "Lines dropped for followers that did not read them in time, per file.",
                [({"source": p}, total(self._dropped, p, "dropped")) for p in paths],
            ),
        ]

    @property
    def running(self) -> dict[str, int]:
        """Readers running: path -> watchers."""
        return {path: len(r.feed.watchers) for path, r in self._readers.items()}


def unavailable(source: str) -> CommandError:
    return CommandError(
        "unavailable", f"Following is not available for {source} (a file or a command is)"
    )
