"""``lastlog [N]``: the last N lines of the system log.

Sources: a file (read backwards from its end, never whole), a command run with
``spawnProcess`` and streamed line by line, or ``auto`` which picks the first
of ``/var/log/syslog``, ``/var/log/messages`` and the systemd journal; on a
machine with none of them (containers, CI) it falls back to the kernel ring
buffer where readable, then the gateway's own recent log, and says so.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import stat
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.python.failure import Failure

from gateway.commands.child import CHILD_PATH, decode_line, first_lines
from gateway.commands.follow import Followers, Primed, Subscription
from gateway.commands.follow import unavailable as follow_unavailable
from gateway.commands.journal import CURSOR_PATTERN, JournalSource
from gateway.core.command import Command, Field
from gateway.core.errors import CommandError
from gateway.core.events import Dropped, Following, Gap, Lines, Result, Sink
from gateway.core.flow import UNLIMITED, Flow
from gateway.core.follow import Feed, Watcher, lines_of
from gateway.core.params import Param, compile_pattern, validate
from gateway.core.scope import Identity

T = TypeVar("T")
RunInThread = Callable[[Callable[[], T]], "Deferred[T]"]

#: Most bytes read backwards from a log file for one request.
TAIL_MAX_BYTES = 16 * 1024 * 1024
AUTO_FILES: tuple[str, ...] = ("/var/log/syslog", "/var/log/messages")
#: Where the systemd journal keeps its files (persistent, volatile).
JOURNAL_DIRS: tuple[str, ...] = ("/var/log/journal", "/run/log/journal")
#: The kernel ring buffer, as ``dmesg`` reads it.
KMSG = "/dev/kmsg"
OWN_LOG = "the gateway's own log"


def tail_lines(
    f: IO[bytes], n: int, block: int = 65536, max_bytes: int = TAIL_MAX_BYTES
) -> list[str]:
    """The last ``n`` lines of the seekable binary file ``f``, reading backwards.

    Reads at most ``max_bytes`` (plus one block); a final line without a newline
    counts as a line.
    """
    end = f.seek(0, os.SEEK_END)
    pos = end
    chunks: list[bytes] = []
    newlines = 0
    while pos > 0 and newlines <= n and end - pos < max_bytes:
        size = min(block, pos)
        pos -= size
        f.seek(pos)
        data = f.read(size)
        chunks.append(data)
        newlines += data.count(b"\n")
    data = b"".join(reversed(chunks))
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    if pos > 0 and parts:
        parts.pop(0)  # the first piece may start mid-line
    return [decode_line(p) for p in parts[-n:]]


#: Most bytes of a log's end read in the reactor thread (page-cached only).
INLINE_MAX_BYTES = 256 * 1024
_INLINE_BLOCK = 16 * 1024


def tail_cached(fd: int, end: int, n: int) -> list[str] | None:
    """The last ``n`` lines of the file ``fd`` (``end`` bytes long) if the
    bytes that hold them are all in the page cache and within
    :data:`INLINE_MAX_BYTES` of the end; else ``None``, having waited for no disk."""
    nowait = getattr(os, "RWF_NOWAIT", None)
    if nowait is None:
        return None
    pos = end
    chunks: list[bytearray] = []
    newlines = 0
    while pos > 0 and newlines <= n:
        if end - pos >= INLINE_MAX_BYTES:
            return None
        size = min(_INLINE_BLOCK, pos)
        pos -= size
        buf = bytearray(size)
        try:
            got = os.preadv(fd, [buf], pos, nowait)
        except BlockingIOError:
            return None  # not cached: a thread waits for the disk instead
        if got != size:
            return None  # partly cached, or the file shrank under us
        chunks.append(buf)
        newlines += buf.count(b"\n")
    parts = b"".join(reversed(chunks)).split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    if pos > 0 and parts:
        parts.pop(0)  # the first piece may start mid-line
    return [decode_line(p) for p in parts[-n:]]


class LogSource(Protocol):
    description: str

    def note_for(self, source: str) -> str | None:
        """A line telling the reader what ``source`` (a name :meth:`tail`
        fired with) is, when it is not what was asked for; else ``None``."""

    def tail(self, n: int, sink: Sink, flow: Flow = UNLIMITED) -> Deferred[str]:
        """Send up to ``n`` last lines to ``sink``; fire with the source's name.

        While ``flow`` is paused (the client is not reading), send nothing.
        """


def _prime(f: IO[bytes], n: int) -> Primed:
    st = os.fstat(f.fileno())
    end = st.st_size
    start = max(0, end - TAIL_MAX_BYTES)
    f.seek(start)
    data = f.read(end - start)
    *complete, partial = data.split(b"\n")
    if start > 0 and complete:
        complete.pop(0)  # may start mid-line
        start = end - len(partial) - sum(len(c) + 1 for c in complete)
    position = start
    numbered: list[tuple[int, str]] = []
    for raw in complete:
        position += len(raw) + 1
        numbered.append((position, decode_line(raw)))
    return numbered[-n:] if n > 0 else [], end - len(partial), (st.st_dev, st.st_ino)


def open_log(path: str) -> IO[bytes]:
    """The log file ``path``, opened to read, or the error a client is told."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise CommandError("unavailable", f"Log file not found: {path}") from None
    except PermissionError:
        raise CommandError("permission_denied", f"Permission denied: {path}") from None
    except IsADirectoryError:
        raise CommandError("unavailable", f"Log source is a directory: {path}") from None
    except OSError as e:
        raise CommandError("unavailable", f"Cannot read {path}: {e.strerror}") from None


def prime_file(path: str, n: int) -> Primed:
    """What a follow of ``path`` starts from: the last ``n`` complete lines
    (numbered by the offset after each), the offset after them, and the
    file's ``(dev, inode)``.  A last line still being written is left to the
    reader, which reads it once it is complete."""
    with open_log(path) as f:
        return _prime(f, n)


def identity_of(st: os.stat_result) -> tuple[int, int, int, int]:
    """What changes when a log is written to, truncated or replaced."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileSource:
    """A log file, read backwards from its end in a thread.

    The last answer is kept with the file's identity (inode, size, mtime): a
    log that has not changed since is answered from it at once, with no
    thread hop and no read.  Any write, truncation or rotation changes the
    identity and the file is read again.
    """

    def __init__(
        self, path: str, run_in_thread: RunInThread[Any], clock: IReactorTime | None = None
    ) -> None:
        """With ``clock`` (the reactor), the file is looked at once per
        reactor turn: the requests answered in one turn see it as it was at
        the first of them."""
        self.path = path
        self.description = path
        self._run_in_thread = run_in_thread
        self._cached: tuple[tuple[int, int, int, int], int, list[str]] | None = None
        self._clock = clock
        self._this_turn: tuple[tuple[int, int, int, int] | None] | None = None

    def note_for(self, source: str) -> str | None:
        return None

    def exists(self) -> bool:
        """Is the file there (as seen this turn)?"""
        return self._identity() is not None

    def _identity(self) -> tuple[int, int, int, int] | None:
        seen = self._this_turn
        if seen is not None:
            return seen[0]
        try:
            identity: tuple[int, int, int, int] | None = identity_of(os.stat(self.path))
        except OSError:
            identity = None
        if self._clock is not None:
            self._this_turn = (identity,)
            self._clock.callLater(0, self._next_turn)
        return identity

    def _next_turn(self) -> None:
        self._this_turn = None

    def _read(self, n: int) -> list[str]:
        with open_log(self.path) as f:
            return tail_lines(f, n)

    def _read_now(self, n: int) -> tuple[list[str], tuple[int, int, int, int]] | None:
        """The last ``n`` lines and the file's identity, read here and now if
        that cannot block: a regular file whose last :data:`INLINE_MAX_BYTES`
        hold the lines and are in the page cache (``RWF_NOWAIT``).  ``None``
        otherwise (and on any error): the thread reads it, and tells the error."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            lines = tail_cached(fd, st.st_size, n)
            if lines is None:
                return None
            return lines, identity_of(os.fstat(fd))  # unchanged while read: may be kept
        except OSError:
            return None
        finally:
            os.close(fd)

    def tail(self, n: int, sink: Sink, flow: Flow = UNLIMITED) -> Deferred[str]:
        def send(lines: list[str]) -> Deferred[str]:
            return send_in_batches(lines, sink, flow, self.path)

        identity = self._identity()
        cached = self._cached
        if identity is not None and cached is not None and cached[0] == identity:
            _, asked, lines = cached
            if n <= asked:
                return send(lines[-n:] if n < len(lines) else lines)
        now = self._read_now(n) if identity is not None else None
        if now is not None:
            lines, read = now
            if read == identity:
                self._cached = (identity, n, lines)
            return send(lines)

        def keep(lines: list[str]) -> list[str]:
            if identity is not None and identity == self._identity():
                self._cached = (identity, n, lines)
            return lines

        return self._run_in_thread(lambda: self._read(n)).addCallback(keep).addCallback(send)


#: Lines sent at once; between batches a paused client is waited for.
BATCH = 100


def send_in_batches(lines: list[str], sink: Sink, flow: Flow, then: T) -> Deferred[T]:
    """Send ``lines`` a batch at a time, waiting while ``flow`` is paused;
    fires with ``then`` (what the caller answers with) once all are sent."""
    if len(lines) <= BATCH and not flow.paused:  # the common answer: one batch, now
        if lines:
            sink(Lines(tuple(lines)))
        return succeed(then)
    done: Deferred[T] = Deferred(lambda d: stop.append(True))
    stop: list[bool] = []
    position = [0]
    waiting: list[Callable[[], None]] = []

    def go() -> None:
        if waiting:
            waiting.pop()()  # stop watching
        while position[0] < len(lines) and not stop:
            if flow.paused:
                waiting.append(flow.watch(lambda: None, go))
                return
            batch = lines[position[0] : position[0] + BATCH]
            position[0] += BATCH
            sink(Lines(tuple(batch)))
        if not done.called:
            done.callback(then)

    go()
    return done


class CommandSource:
    """Runs ``argv`` (``{lines}`` replaced by N) and streams its output."""

    def __init__(
        self,
        argv: Sequence[str],
        spawner: IReactorProcess,
        follow_argv: Sequence[str] | None = None,
    ) -> None:
        self.argv = tuple(argv)
        #: What a follow runs (one child for every watcher): the same command
        #: unless the source knows its follow flag (the journal's ``--follow``).
        self.follow_argv = tuple(follow_argv) if follow_argv is not None else self.argv
        self.description = shlex.join(self.argv)
        self.spawner = spawner
        self._spawner = spawner

    def note_for(self, source: str) -> str | None:
        return None

    def tail(self, n: int, sink: Sink, flow: Flow = UNLIMITED) -> Deferred[str]:
        argv = [arg.replace("{lines}", str(n)) for arg in self.argv]
        return first_lines(self._spawner, argv, n, sink, flow, argv[0])


def _has_entries(directory: str) -> bool:
    try:
        with os.scandir(directory) as entries:
            return any(True for _ in entries)
    except OSError:
        return False


def kmsg_line(record: bytes) -> str | None:
    """One ``/dev/kmsg`` record (``prio,seq,usec,flags;text``) as ``dmesg`` shows it.

    Continuation lines (`` KEY=value``) and anything unparsable give ``None``.
    """
    head, sep, text = record.partition(b";")
    if not sep or record.startswith(b" "):
        return None
    fields = head.split(b",")
    if len(fields) < 4 or not fields[2].isdigit():
        return None
    usec = int(fields[2])
    return f"[{usec // 1_000_000:5d}.{usec % 1_000_000:06d}] {decode_line(text)}"


class KernelSource:
    """The kernel ring buffer (``/dev/kmsg``), read to its current end in a thread.

    ``/dev/kmsg`` hands out one record per read and ``EAGAIN`` at the end when
    opened non-blocking; a plain file of records (tests) reads the same way.
    """

    def __init__(self, run_in_thread: RunInThread[Any], path: str = KMSG) -> None:
        self.path = path
        self.description = f"the kernel ring buffer ({path})"
        self._run_in_thread = run_in_thread

    def note_for(self, source: str) -> str | None:
        return None

    def readable(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        os.close(fd)
        return True

    def _read(self, n: int) -> list[str]:
        last: deque[str] = deque(maxlen=n)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise CommandError("unavailable", f"Cannot read {self.path}: {e.strerror}") from None
        try:
            pending = b""
            read = 0
            while read < TAIL_MAX_BYTES:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno == errno.EPIPE:  # records overwritten while reading
                        continue
                    raise CommandError(
                        "unavailable", f"Cannot read {self.path}: {e.strerror}"
                    ) from None
                if not chunk:
                    break
                read += len(chunk)
                *records, pending = (pending + chunk).split(b"\n")
                for record in records:
                    line = kmsg_line(record)
                    if line is not None:
                        last.append(line)
            if pending:
                line = kmsg_line(pending)
                if line is not None:
                    last.append(line)
        finally:
            os.close(fd)
        return list(last)

    def tail(self, n: int, sink: Sink, flow: Flow = UNLIMITED) -> Deferred[str]:
        def send(lines: list[str]) -> Deferred[str]:
            return send_in_batches(lines, sink, flow, self.description)

        return self._run_in_thread(lambda: self._read(n)).addCallback(send)


class OwnLogSource:
    """The gateway's own last log lines, kept in memory (always there)."""

    def __init__(self, recent: Callable[[int], list[str]]) -> None:
        self.description = OWN_LOG
        self._recent = recent

    def note_for(self, source: str) -> str | None:
        return None

    def tail(self, n: int, sink: Sink, flow: Flow = UNLIMITED) -> Deferred[str]:
        return send_in_batches(self._recent(n), sink, flow, self.description)


class AutoSource:
    """The first of ``files`` that exists, else the journal, else a fallback.

    The journal counts only when ``journalctl`` is installed and one of
    ``journal_dirs`` holds something (an empty journal is no log source).
    With no system log, the kernel ring buffer is read where the daemon may
    read it, else the gateway's own recent log (when given); the answer then
    says which, and what was tried.  With no fallback either: ``unavailable``,
    naming what was tried.
    """

    def __init__(
        self,
        run_in_thread: RunInThread[Any],
        spawner: IReactorProcess,
        files: Sequence[str] = AUTO_FILES,
        journal: str = "journalctl",
        journal_dirs: Sequence[str] = JOURNAL_DIRS,
        kernel: str | None = KMSG,
        own_log: Callable[[int], list[str]] | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self.description = "auto"
        self._clock = clock
        self._run_in_thread = run_in_thread
        self._spawner = spawner
        self._files = tuple(files)
        self._journal = journal
        self._journal_dirs = tuple(journal_dirs)
        self._kernel = KernelSource(run_in_thread, kernel) if kernel else None
        self._own = OwnLogSource(own_log) if own_log is not None else None
        self._file_sources: dict[str, FileSource] = {}

    @property
    def tried(self) -> str:
        return ", ".join((*self._files, self._journal))

    def note_for(self, source: str) -> str | None:
        fallbacks = [s.description for s in (self._kernel, self._own) if s is not None]
        if source not in fallbacks:
            return None
        return f"-- no system log found (tried {self.tried}); these lines are from {source}"

    def pick(self) -> LogSource:
        for path in self._files:
            # the same source each time: its last answer is kept, and whether
            # the file is there is asked once per turn, with that answer's stat
            source = self._file_sources.get(path)
            if source is None:
                source = FileSource(path, self._run_in_thread, self._clock)
                self._file_sources[path] = source
            if source.exists():
                return source
        if shutil.which(self._journal, path=CHILD_PATH) and any(
            _has_entries(d) for d in self._journal_dirs
        ):
            return JournalSource(self._spawner, program=self._journal)
        if self._kernel is not None and self._kernel.readable():
            return self._kernel
        if self._own is not None:
            return self._own
        tried = self.tried if self._kernel is None else f"{self.tried}, {self._kernel.path}"
        raise CommandError("unavailable", f"No log source found (tried {tried})")

    def tail(self, n: int, sink: Sink, flow: Flow = UNLIMITED) -> Deferred[str]:
        return self.pick().tail(n, sink, flow)


def source_from_config(
    source: str,
    run_in_thread: RunInThread[Any],
    spawner: IReactorProcess,
    own_log: Callable[[int], list[str]] | None = None,
    clock: IReactorTime | None = None,
) -> LogSource:
    """The source ``lastlog.source`` names; ``own_log`` is the last resort of
    ``auto``; with ``clock``, a file is looked at once per reactor turn."""
    if source == "auto":
        return AutoSource(run_in_thread, spawner, own_log=own_log, clock=clock)
    if source.startswith("command:"):
        return CommandSource(shlex.split(source[len("command:") :]), spawner)
    if source == "journal" or source.startswith("journal:"):
        return JournalSource(spawner, source[len("journal:") :] or None)
    return FileSource(source, run_in_thread, clock)


@dataclass(frozen=True)
class LastlogArgs:
    lines: int
    follow: bool = False
    grep: Any = None  # a compiled RE2 pattern
    after: str | None = None


class LastlogCommand(Command[LastlogArgs]):
    name = "lastlog"
    frame = ("Begin lastlog", "End lastlog")
    stream_key = "lines"
    result_fields = (
        Field("count", {"type": "integer", "minimum": 0}, "how many lines were sent"),
        Field("source", {"type": "string"}, "where they were read: a file, command or fallback"),
        Field(
            "note",
            {"type": "string"},
            "set when no system log was found and a fallback answered",
            required=False,
        ),
    )

    def __init__(
        self,
        source: LogSource,
        default_lines: int,
        max_lines: int,
        timeout: float,
        followers: Followers | None = None,
        queue_lines: int = 1000,
    ) -> None:
        self.source = source
        self.followers = followers
        self.queue_lines = queue_lines
        self.default_lines = default_lines
        self.max_lines = max_lines
        self.timeout = timeout
        self.params = (
            Param(
                "lines",
                "int",
                "how many of the last lines",
                default=default_lines,
                minimum=1,
                maximum=max_lines,
                metavar="N",
                scope="max_lines",
            ),
            Param(
                "follow", "flag", "then every new line, until stopped", flag="-f", scope="follow"
            ),
            Param(
                "grep",
                "string",
                "only lines this pattern finds (RE2 syntax)",
                flag="-g",
                metavar="REGEX",
                noun="a pattern",
            ),
            Param(
                "after",
                "string",
                "with follow: resume right after this cursor",
                pattern=rf"[0-9a-f]{{1,16}}-[0-9]{{1,19}}|{CURSOR_PATTERN}",
                flag="--after",
                metavar="CURSOR",
                noun="a cursor",
            ),
        )
        self.summary = (
            f"last N lines of the system log (default {default_lines}, at most {max_lines}); "
            "-f follows it, -g filters"
        )

    def prepare(self, args: Mapping[str, object]) -> LastlogArgs:
        checked = validate(self.name, self.params, args)
        grep = checked["grep"]
        if grep is not None:
            try:
                grep = compile_pattern(grep)
            except ValueError as e:
                raise CommandError("bad_argument", f"grep: {e}") from None
        return LastlogArgs(checked["lines"], bool(checked["follow"]), grep, checked["after"])

    def timeout_for(self, args: LastlogArgs) -> float | None:
        return None if args.follow else self.timeout

    def run_as(
        self, identity: Identity, args: LastlogArgs, sink: Sink, flow: Flow = UNLIMITED
    ) -> Deferred[Result]:
        """A scoped client's resume replays at most its ``max_lines``."""
        if args.follow:
            return self._follow(args, sink, flow, identity.scope.max_lines)
        return self.run(args, sink, flow)

    def run(self, args: LastlogArgs, sink: Sink, flow: Flow = UNLIMITED) -> Deferred[Result]:
        if args.follow:
            return self._follow(args, sink, flow)
        if args.grep is not None:
            sink = _grepping(sink, args.grep)
        counted: list[int] = [0]

        def count(event: Any) -> None:
            if isinstance(event, Lines):
                counted[0] += len(event.lines)
            sink(event)

        def result(source: str) -> Result:
            n = counted[0]
            data: dict[str, object] = {"count": n, "source": source}
            summary = f"{n} {'line' if n == 1 else 'lines'} from {source}"
            note = self.source.note_for(source)
            if note is None:
                return Result(command=self.name, data=data, summary=summary)
            return Result(
                command=self.name, data={**data, "note": note}, text=(note,), summary=summary
            )

        return self.source.tail(args.lines, count, flow).addCallback(result)

    def follow_target(self) -> tuple[str | None, str]:
        """The file a follow reads now (``None``: none) and the source's name."""
        try:
            source = self.source.pick() if isinstance(self.source, AutoSource) else self.source
        except CommandError:
            return None, self.source.description
        return self._follow_key(source), source.description

    def _follow_key(self, source: LogSource) -> str | None:
        """What a follow of ``source`` reads: a file's path, or a command's key."""
        if isinstance(source, FileSource):
            return source.path
        if self.followers is None:
            return None
        if isinstance(source, JournalSource):
            return self.followers.register_journal(source)
        if isinstance(source, CommandSource):
            return self.followers.register_command(source.follow_argv, source.spawner)
        return None

    def _follow(
        self, args: LastlogArgs, sink: Sink, flow: Flow, replay_cap: int | None = None
    ) -> Deferred[Result]:
        source = self.source.pick() if isinstance(self.source, AutoSource) else self.source
        followers = self.followers
        path = self._follow_key(source) if followers is not None else None
        if path is None or followers is None:
            raise follow_unavailable(source.description)
        cap = followers.max_watchers
        if cap and followers.watchers >= cap:
            raise CommandError(
                "quota_exceeded", f"Too many followers (quota.max_followers = {cap})."
            )
        sub = Subscription(path)

        def result() -> Result:
            n = sub.watcher.delivered if sub.watcher is not None else 0
            data = {"count": n, "source": sub.path}
            summary = f"followed {sub.path}: {n} lines"
            return Result(command=self.name, data=data, summary=summary)

        def stop(d: Deferred[Result]) -> None:
            # Stopped (the client said stop, went away, or the daemon shuts
            # down): a follow ends normally, with its End line.
            followers.unsubscribe(sub)
            d.callback(result())

        done: Deferred[Result] = Deferred(stop)

        def deliver(entries: Sequence[tuple[int, str]]) -> None:
            feed = sub.feed
            assert feed is not None
            sink(lines_of(feed, entries))

        def notice(text: str) -> None:
            sink(Lines((text,)))

        def ended(text: str) -> None:  # the new source cannot be followed
            notice(text)
            if not done.called:
                followers.unsubscribe(sub)
                done.callback(result())

        def watch(feed: Feed) -> None:
            if done.called:  # stopped while the reader started
                followers.leave(path, feed)
                return
            sub.watcher = Watcher(
                deliver,
                lambda n: sink(Dropped(n)),
                notice,
                self.queue_lines,
                flow,
                args.grep,
            )
            sub.ended = ended
            followers.subscribe(
                sub, feed, args.lines, args.after, lambda g: sink(Gap(g.missing)), replay_cap
            )
            sink(Following())

        def failed(failure: Failure) -> None:
            if not done.called:
                done.errback(failure)

        followers.feed(path).addCallbacks(watch, failed)
        return done


def _grepping(sink: Sink, grep: Any) -> Sink:
    """``sink``, passing on only the lines ``grep`` finds."""

    def filtered(event: Any) -> None:
        if isinstance(event, Lines):
            kept = tuple(line for line in event.lines if grep.search(line) is not None)
            if kept:
                sink(Lines(kept))
            return
        sink(event)

    return filtered
