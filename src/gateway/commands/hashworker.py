"""Worker processes for small files: a tree's (``comphash -r``) and a
manifest's (``comphash -c``).

Hashing a 4 KiB file is a few system calls and little hashing: Python
threads gain nothing there (each call hands the interpreter lock over, and
two threads run slower than one).  So the small files of a tree go, a unit
at a time, to worker processes, one per thread the tree may use; a pool
thread writes the unit to its worker and waits, without the lock, for the
answer.  Large files stay in the threads, where hashing runs without the
lock anyway.

A worker is ``python -m gateway.commands.hashworker``: it reads requests on
stdin and answers on stdout (a 4-byte length, then ``marshal`` data; both
ends are this module).  It opens the tree's top directory itself, checks it
is the one the gateway walked (device and inode), and opens every file
through :mod:`.treeio`, exactly as the threads do.  It runs at a lower
priority, and ends when its stdin closes (the gateway stopped or died).  A
worker that fails is stopped and its unit hashed in the thread instead.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any

from gateway.commands.checkio import Checked, check_small
from gateway.commands.treeio import (
    DIR_FLAGS,
    Cancelled,
    File,
    FileChanged,
    Outcome,
    Skipped,
    Tree,
    hash_small_files,
    walk,
)
from gateway.core.errors import CommandError

HEADER = struct.Struct("!I")
#: The most a message may be (a unit of files, or its answer).
MAX_MESSAGE = 64 * 1024 * 1024


def _read_message(stream: IO[bytes]) -> Any:
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        raise EOFError()
    (size,) = HEADER.unpack(head)
    if size > MAX_MESSAGE:
        raise EOFError()
    body = stream.read(size)
    if len(body) < size:
        raise EOFError()
    return marshal.loads(body)


def _write_message(stream: IO[bytes], value: Any) -> None:
    body = marshal.dumps(value)
    stream.write(HEADER.pack(len(body)) + body)
    stream.flush()


Request = tuple[str, int, int, str, list[tuple[tuple[str, ...], int, int, int]]]
CheckRequest = tuple[
    str, list[tuple[str, str, str]], str, tuple[str, ...], tuple[str, ...] | None, int
]


WalkRequest = tuple[str, str, int, int, str, int, int, int]


def open_top(top: str, dev: int, ino: int) -> int:
    """The tree's top directory, if it is still the one the daemon resolved
    (device and inode); else :class:`OSError` (``FileChanged``)."""
    fd = os.open(top, DIR_FLAGS)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (dev, ino):
        os.close(fd)
        raise FileChanged()
    return fd


def walk_messages(request: WalkRequest, send: Callable[[Any], None]) -> None:
    """A tree's walk, sent as it goes: ``("files", [(shown, parts, size,
    dev, ino), ...])`` runs, then ``("done", [(shown, why), ...], bytes)`` or
    ``("error", code, message)``."""
    _, top, dev, ino, shown_top, max_files, max_bytes, every = request
    try:
        fd = open_top(top, dev, ino)
    except FileChanged:
        send(("error", "not_a_file", f"Directory changed while being opened: {shown_top}"))
        return
    except OSError as e:
        send(("error", "not_found", f"Cannot open {shown_top}: {e.strerror}"))
        return
    try:
        try:
            tree = walk(
                fd,
                shown_top,
                max_files,
                max_bytes,
                threading.Event(),
                lambda batch: send(("files", [tuple(f) for f in batch])),
                every,
            )
        except CommandError as e:
            send(("error", e.code, e.message))
            return
        send(("done", [(s.shown, s.why) for s in tree.skipped], tree.bytes))
    finally:
        os.close(fd)


def answer(request: Request | CheckRequest) -> list[Outcome] | list[Checked]:
    """What a worker answers: a tree's files hashed, or a manifest's entries
    checked (``("check", entries, base, roots, scope_roots, large)``)."""
    if request[0] == "check":
        _, entries, base, roots, scope_roots, large = request  # type: ignore[misc]
        return check_small(entries, base, roots, scope_roots, large)
    return answer_tree(request)  # type: ignore[arg-type]


def answer_tree(request: Request) -> list[Outcome]:
    """Each file of a tree hashed, or why not."""
    top, dev, ino, algorithm, files = request
    try:
        fd = open_top(top, dev, ino)
    except OSError as e:
        return [(None, e.strerror or "cannot open")] * len(files)
    try:
        found = [File("", parts, size, fdev, fino) for parts, size, fdev, fino in files]
        return hash_small_files(fd, found, algorithm, lambda: False)
    finally:
        os.close(fd)


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    while True:
        try:
            request = _read_message(stdin)
        except EOFError:
            return
        if request[0] == "walk":
            walk_messages(request, lambda message: _write_message(stdout, message))
        else:
            _write_message(stdout, answer(request))


def worker_environment() -> dict[str, str]:
    """The daemon's environment without its own settings (``GATEWAY_TOKEN``
    is a secret): what Python needs to find the package is kept."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}


class Worker:
    """One worker process, used by one thread at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.commands.hashworker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            env=worker_environment(),
        )

    def ask(self, request: Request | CheckRequest, count: int) -> Any:
        """The answer, of ``count`` items; ``OSError`` or ``EOFError`` if the
        worker is gone."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        _write_message(self.proc.stdin, request)
        answer = _read_message(self.proc.stdout)
        if not isinstance(answer, list) or len(answer) != count:
            raise EOFError()
        return answer

    def walk(
        self, request: WalkRequest, found: Callable[[list[File]], None], stopped: Callable[[], bool]
    ) -> Tree:
        """The walk's :class:`Tree` (its files handed to ``found`` as they
        come); :class:`CommandError` as the walk refused; :class:`Cancelled`
        once ``stopped()`` (the worker is then in the middle: stop it)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        _write_message(self.proc.stdin, request)
        files: list[File] = []
        while True:
            message = _read_message(self.proc.stdout)
            if stopped():
                raise Cancelled()
            kind = message[0]
            if kind == "files":
                batch = [File(*f) for f in message[1]]
                files += batch
                found(batch)
            elif kind == "done":
                skipped = [Skipped(shown, why) for shown, why in message[1]]
                return Tree(files, skipped, message[2])
            elif kind == "error":
                raise CommandError(message[1], message[2])
            else:
                raise EOFError()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class Workers:
    """The worker processes, started when first needed, kept while idle."""

    def __init__(self) -> None:
        self._idle: list[Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        #: How many units went to a worker, and how many fell back to a thread.
        self.sent = 0
        self.fell_back = 0

    def hash(
        self, top: str, dev: int, ino: int, algorithm: str, files: Sequence[File]
    ) -> list[Outcome] | None:
        """``files`` hashed by a worker; ``None`` if none could (hash them here)."""
        request: Request = (
            top,
            dev,
            ino,
            algorithm,
            [(f.parts, f.size, f.dev, f.ino) for f in files],
        )
        answer: list[Outcome] | None = self._ask(request, len(files))
        return answer

    def check(
        self,
        entries: list[tuple[str, str, str]],
        base: str,
        roots: Sequence[str],
        scope_roots: Sequence[str] | None,
        large: int,
    ) -> list[Checked] | None:
        """``entries`` checked by a worker (:func:`.checkio.check_small`);
        ``None`` if none could (check them here)."""
        request: CheckRequest = (
            "check",
            entries,
            base,
            tuple(roots),
            None if scope_roots is None else tuple(scope_roots),
            large,
        )
        answer: list[Checked] | None = self._ask(request, len(entries))
        return answer

    def walk(
        self,
        top: str,
        dev: int,
        ino: int,
        shown_top: str,
        max_files: int,
        max_bytes: int,
        every: int,
        found: Callable[[list[File]], None],
        stopped: Callable[[], bool],
    ) -> Tree | None:
        """The tree walked by a worker (its files handed to ``found`` as they
        come); ``None`` if no worker could (walk it here, from the start:
        nothing was handed on).  :class:`CommandError`: the walk refused the
        tree; :class:`Cancelled`: ``stopped()``."""
        worker = self._take()
        if worker is None:
            return None
        request: WalkRequest = ("walk", top, dev, ino, shown_top, max_files, max_bytes, every)
        handed = [False]

        def hand_on(batch: list[File]) -> None:
            handed[0] = True
            found(batch)

        try:
            tree = worker.walk(request, hand_on, stopped)
        except CommandError:
            self._give_back(worker)  # it answered: still in step
            raise
        except Cancelled:
            worker.stop()  # in the middle of its walk
            raise
        except (OSError, EOFError, ValueError):
            worker.stop()
            with self._lock:
                self.fell_back += 1
            if handed[0]:
                raise CommandError("unavailable", f"Walking {shown_top} failed") from None
            return None
        self._give_back(worker)
        return tree

    def _take(self) -> Worker | None:
        with self._lock:
            if self._closed:
                return None
            if self._idle:
                return self._idle.pop()
        try:
            return Worker()
        except OSError:
            return None

    def _give_back(self, worker: Worker) -> None:
        with self._lock:
            if self._closed:
                worker.stop()
            else:
                self._idle.append(worker)

    def _ask(self, request: Request | CheckRequest, count: int) -> Any:
        worker = self._take()
        if worker is None:
            return None
        try:
            answer = worker.ask(request, count)
        except (OSError, EOFError, ValueError):
            worker.stop()
            with self._lock:
                self.fell_back += 1
            return None
        with self._lock:
            self.sent += 1
        self._give_back(worker)
        return answer

    def close(self) -> None:
        """Stop the idle workers; busy ones stop when they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.stop()


if __name__ == "__main__":
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, 0, 10)  # the daemon's answers come first
    serve(sys.stdin.buffer, sys.stdout.buffer)
