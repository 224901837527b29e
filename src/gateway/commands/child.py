"""Running a program for a client: no shell, its own process group, killed with it.

Used by ``lastlog``'s ``command:`` source and by the commands operators
declare in the config.  The child gets a minimal environment (nothing of the
daemon's), no stdin, and a session of its own, so a timeout or a client
leaving kills whatever it started too.  Its stdout arrives as lines; while the
client is not reading, the pipe is not read either (the child then blocks on
its own output, and nothing piles up in the daemon).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from gateway.core.errors import CommandError
from gateway.core.events import Lines, Sink
from gateway.core.flow import UNLIMITED, Flow

#: The PATH a child gets, and where a program named without a slash is looked for.
CHILD_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
#: What a child's environment always holds (a declaration may add to it).
BASE_ENV: Mapping[str, str] = {"PATH": CHILD_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
#: A line longer than this is cut (from a file or a child's output).
MAX_LINE_BYTES = 64 * 1024
#: How much of a child's stderr is kept (its last lines) for the log or an error.
STDERR_LINES = 20


def decode_line(raw: bytes) -> str:
    if len(raw) > MAX_LINE_BYTES:
        raw = raw[:MAX_LINE_BYTES]
    return raw.rstrip(b"\r").decode("utf-8", "replace")


def find_program(name: str) -> str | None:
    """The executable ``name`` runs: itself if it has a slash, else found on :data:`CHILD_PATH`."""
    if "/" in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name, path=CHILD_PATH)


def exit_of(reason: Failure) -> tuple[int | None, int | None]:
    """How a child ended: ``(exit status, None)`` or ``(None, signal number)``."""
    status = getattr(reason.value, "exitCode", None)
    signum = getattr(reason.value, "signal", None)
    if status is None and signum is None:
        return 0, None
    return status, signum


class ChildProtocol(ProcessProtocol):
    """One child: stdout split into lines for :meth:`lines_received`, the last
    lines of stderr kept (or handed to :meth:`stderr_received`), the whole
    process group killed on :meth:`kill` and when the child exits."""

    def __init__(self) -> None:
        self.own_group = False
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
        self._pid: int | None = None
        self._out = b""
        self._err = b""

    # -- what a subclass does with the output

    def lines_received(self, lines: list[bytes]) -> None:
        raise NotImplementedError

    def stderr_received(self, lines: list[bytes]) -> None:
        """By default, keep the last lines (for the log or an error message)."""
        self.stderr_tail.extend(decode_line(line) for line in lines)

    def ended(self, reason: Failure) -> None:
        raise NotImplementedError

    # -- ProcessProtocol

    def connectionMade(self) -> None:
        assert self.transport is not None
        self._pid = getattr(self.transport, "pid", None)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._out = self._split(self._out + data, self.lines_received)

    def errReceived(self, data: bytes) -> None:
        self._err = self._split(self._err + data, self.stderr_received)

    @staticmethod
    def _split(buffer: bytes, deliver: Callable[[list[bytes]], None]) -> bytes:
        if b"\n" in buffer:
            *complete, buffer = buffer.split(b"\n")
            deliver(complete)
        if len(buffer) > MAX_LINE_BYTES:
            deliver([buffer])
            buffer = b""
        return buffer

    def kill(self) -> None:
        """Kill the child and everything it started (its process group)."""
        if self.transport is None:
            return
        pid = getattr(self.transport, "pid", None)
        if self.own_group and pid:
            try:
                os.killpg(pid, signal.SIGKILL)
                return
            except (ProcessLookupError, PermissionError):
                pass  # not its own group yet (or any more): kill the child alone
        with contextlib.suppress(ProcessExitedAlready):
            self.transport.signalProcess("KILL")

    def processExited(self, reason: Failure) -> None:
        if self.own_group and self._pid:
            # Whatever the command left running in the background goes too
            # (and with it any copy of our pipes it holds open).  While any
            # member lives, the kernel keeps the group id from being reused
            # as a pid, so this cannot hit a stranger.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pid, signal.SIGKILL)

    def processEnded(self, reason: Failure) -> None:
        if self._out:
            out, self._out = self._out, b""
            self.lines_received([out])
        if self._err:
            err, self._err = self._err, b""
            self.stderr_received([err])
        self.ended(reason)


def spawn(
    spawner: IReactorProcess,
    child: ChildProtocol,
    argv: Sequence[str],
    done: Deferred[Any],
    env: Mapping[str, str] | None = None,
    flow: Flow = UNLIMITED,
    what: str = "Program",
) -> None:
    """Start ``argv`` (no shell) in a session of its own; ``done`` is the run's Deferred.

    Raises ``unavailable`` when the program cannot be found or started.
    """
    executable = find_program(argv[0])
    if executable is None:
        raise CommandError("unavailable", f"{what} not found: {argv[0]}")
    args = list(argv)
    # setsid(1) puts the child in a session (and process group) of its own.
    # Twisted starts it with posix_spawnp (no fork of this process) since no
    # path, uid or gid is given; not a group leader, setsid then execs the
    # command in place, so the pid we hold is the group's.
    setsid = shutil.which("setsid", path=CHILD_PATH)
    if setsid is not None:
        args = [setsid, "--", executable, *args[1:]]
        executable = setsid
        child.own_group = True
    try:
        process = spawner.spawnProcess(child, executable, args, env=dict(env or BASE_ENV))
    except OSError as e:
        raise CommandError("unavailable", f"Cannot run {argv[0]}: {e.strerror}") from None
    # A client that does not read stops us reading the child's pipe.
    pause = getattr(process, "pauseProducing", None)
    resume = getattr(process, "resumeProducing", None)
    if pause is not None and resume is not None:
        unwatch = flow.watch(pause, resume)
        done.addBoth(lambda result: (unwatch(), result)[1])


class _FirstLines(ChildProtocol):
    """Sends the first ``n`` lines of a child's stdout (``journalctl -n N``), then kills it."""

    def __init__(
        self, n: int, sink: Sink, done: Deferred[str], name: str, line: Callable[[bytes], str]
    ) -> None:
        super().__init__()
        self.n = n
        self.sink = sink
        self.done = done
        self.name = name
        self.line = line
        self.sent = 0

    def lines_received(self, raw: list[bytes]) -> None:
        room = self.n - self.sent
        if room <= 0 or self.done.called:
            return
        take = raw[:room]
        self.sent += len(take)
        self.sink(Lines(tuple(self.line(line) for line in take)))
        if self.sent >= self.n:
            self.kill()  # we have all we were asked for

    def ended(self, reason: Failure) -> None:
        if self.done.called:
            return
        failed = reason.check(ProcessTerminated) is not None and self.sent < self.n
        if failed and not self.sent:
            status, signum = exit_of(reason)
            how = f"exit status {status}" if status is not None else f"signal {signum}"
            detail = f": {self.stderr_tail[0]}" if self.stderr_tail else ""
            self.done.errback(
                CommandError("unavailable", f"Log command {self.name} failed ({how}){detail}")
            )
            return
        assert reason.check(ProcessDone, ProcessTerminated)
        self.done.callback(self.name)


def first_lines(
    spawner: IReactorProcess,
    argv: Sequence[str],
    n: int,
    sink: Sink,
    flow: Flow,
    name: str,
    line: Callable[[bytes], str] = decode_line,
) -> Deferred[str]:
    """Run ``argv`` and send the first ``n`` lines of its output (each made
    by ``line``); the Deferred fires with ``name`` (cancel it: the child is killed)."""
    child: _FirstLines

    def cancel(d: Deferred[str]) -> None:
        child.kill()

    done: Deferred[str] = Deferred(cancel)
    child = _FirstLines(n, sink, done, name, line)
    spawn(spawner, child, argv, done, flow=flow, what="Log command")
    return done
