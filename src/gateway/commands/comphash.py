"""``comphash [-a ALGO] <path>``: the hash of a regular file.

The file is checked and opened so that nothing can block the daemon or leak
what it must not: symlinks are resolved and the result must lie inside
``comphash.allowed_roots`` (compared with ``os.path.commonpath``); ``/proc`` and
``/sys`` are refused; anything that is not a regular file is refused before it
is opened; the open is non-blocking and does not follow a final symlink, and
the descriptor is checked again with ``fstat`` so nothing can be swapped in.
Reading happens in chunks in a bounded thread pool and stops between chunks
when the run is cancelled.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import blake3
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gateway.commands.paths import check_allowed, resolve_allowed
from gateway.core.command import Command, Field
from gateway.core.errors import CommandError
from gateway.core.events import Progress, Result, Sink
from gateway.core.flow import UNLIMITED, Flow
from gateway.core.params import Param, validate

OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY

RunInThread = Callable[[Callable[[], Any]], "Deferred[Any]"]
CallFromThread = Callable[..., None]


class Cancelled(Exception):
    """The reader was asked to stop between two chunks."""


def _os_error(e: OSError, path: str) -> CommandError:
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        return CommandError("not_found", f"No such file: {path}")
    if e.errno in (errno.EACCES, errno.EPERM):
        return CommandError("permission_denied", f"Permission denied: {path}")
    if e.errno == errno.ELOOP:
        return CommandError("not_a_file", f"Not a regular file: {path} (symbolic link)")
    return CommandError("not_a_file", f"Cannot open {path}: {e.strerror}")


def open_regular(path: str, roots: Sequence[str]) -> tuple[int, int]:
    """Open ``path`` for hashing; return ``(fd, size)`` or raise CommandError.

    ``roots`` must be resolved absolute directories.  A path swapped while it
    is being resolved or opened is an ordinary error, never an internal one.
    """
    real = resolve_allowed(path, roots, "hashed")
    try:
        before = os.lstat(real)
    except OSError as e:
        raise _os_error(e, path) from None
    if not stat.S_ISREG(before.st_mode):
        raise CommandError("not_a_file", f"Not a regular file: {path}")
    try:
        fd = os.open(real, OPEN_FLAGS)
    except OSError as e:
        raise _os_error(e, path) from None
    try:
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (
            before.st_dev,
            before.st_ino,
        ):
            raise CommandError("not_a_file", f"File changed while being opened: {path}")
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            opened = real
        # A parent directory swapped for a symlink between realpath and open.
        check_allowed(opened, path, roots)
        return fd, after.st_size
    except BaseException:
        os.close(fd)
        raise


_local = threading.local()

#: One read for BLAKE3 on several threads: large enough to spread, small enough
#: to stay in the cache (16 MiB ran at 2.4 GB/s here, 4 MiB at 3.4).
BLAKE3_CHUNK = 4 * 1024 * 1024


def new_hasher(algorithm: str, threads: int = 1) -> Any:
    """A hash object: hashlib's, or BLAKE3 with up to ``threads`` threads
    (0: one per core)."""
    if algorithm == "blake3":
        return blake3.blake3(max_threads=threads or blake3.blake3.AUTO)
    return hashlib.new(algorithm)


def chunk_for(algorithm: str, chunk_size: int, threads: int) -> int:
    """How much one read takes: BLAKE3 on several threads wants large updates."""
    if algorithm == "blake3" and threads != 1:
        return max(chunk_size, BLAKE3_CHUNK)
    return chunk_size


def lower_priority() -> None:
    """Let this (hashing) thread yield the CPU to the reactor thread.

    Linux gives each thread its own nice value; a bulk hash then never
    delays the answers of the event loop, even on a single core.
    """
    if getattr(_local, "niced", False):
        return
    _local.niced = True
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _buffer(size: int) -> memoryview:
    """This thread's read buffer, kept between hashes.

    Allocating a fresh 1 MiB buffer per hash makes glibc raise its mmap
    threshold and carve them from the heap instead, where they fragment and
    the daemon's resident memory creeps up under load.
    """
    buf: bytearray | None = getattr(_local, "buffer", None)
    if buf is None or len(buf) != size:
        buf = _local.buffer = bytearray(size)
    return memoryview(buf)


def hash_fd(
    fd: int,
    algorithm: str,
    chunk_size: int,
    stop: threading.Event,
    progress: Callable[[int], None] | None = None,
    progress_every: int = 0,
    threads: int = 1,
) -> tuple[str, int]:
    """Hash the open file ``fd`` to its end; return ``(hexdigest, bytes)``.

    Checks ``stop`` before each chunk and raises :class:`Cancelled` when set.
    Calls ``progress(done)`` each ``progress_every`` bytes (0: never).
    BLAKE3 uses up to ``threads`` threads per chunk (0: one per core).

    The file is read, not mapped: a mapped file that shrinks while it is
    hashed kills the process with SIGBUS, and a network or FUSE filesystem
    can stall page faults where a read can be interrupted between chunks.
    """
    digest = new_hasher(algorithm, threads)
    view = _buffer(chunk_for(algorithm, chunk_size, threads))
    done = 0
    next_report = progress_every
    with open(fd, "rb", buffering=0, closefd=False) as f:
        while True:
            if stop.is_set():
                raise Cancelled()
            n = f.readinto(view)
            if not n:
                break
            digest.update(view[:n])
            done += n
            if progress is not None and progress_every and done >= next_report:
                progress(done)
                next_report = done + progress_every
    return digest.hexdigest(), done


def checksum_line(hexdigest: str, path: str) -> str:
    """``<hex>  <path>``, as ``sha1sum`` prints it (so ``sha1sum -c`` reads it).

    Like coreutils, a path holding a backslash or newline is escaped and the
    line starts with a backslash.
    """
    if "\\" in path or "\n" in path or "\r" in path:
        escaped = path.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return f"\\{hexdigest}  {escaped}"
    return f"{hexdigest}  {path}"


@dataclass(frozen=True)
class ComphashArgs:
    path: str
    algorithm: str


def format_size(n: int) -> str:
    """``4.0 GiB``: a size for people (the exact count is in the result)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class ComphashCommand(Command[ComphashArgs]):
    name = "comphash"

    def __init__(
        self,
        allowed_roots: Sequence[str],
        algorithms: Sequence[str],
        default_algorithm: str,
        chunk_size: int,
        timeout: float,
        run_in_thread: RunInThread,
        call_from_thread: CallFromThread,
        threads: int = 0,
    ) -> None:
        """``threads``: the most threads one BLAKE3 hash uses (0: one per core)."""
        self.threads = threads
        self.roots = tuple(os.path.realpath(r) for r in allowed_roots)
        self.algorithms = tuple(algorithms)
        self.default_algorithm = default_algorithm
        self.chunk_size = chunk_size
        self.timeout = timeout
        self._run_in_thread = run_in_thread
        self._call_from_thread = call_from_thread
        self.summary = f"hash of a file (default {default_algorithm}; {', '.join(self.algorithms)})"
        self.params = (
            Param(
                "algorithm",
                "choice",
                "the hash algorithm",
                default=default_algorithm,
                choices=self.algorithms,
                flag="-a",
                metavar="ALGO",
                noun="an algorithm name",
                scope="algorithms",
            ),
            Param(
                "path",
                "path",
                "absolute path of a regular file",
                required=True,
                missing="Please provide a path.",
            ),
        )
        self.result_fields = (
            Field("path", {"type": "string"}, "the file, as asked"),
            Field("algorithm", {"type": "string", "enum": list(self.algorithms)}),
            Field("hex", {"type": "string", "pattern": "^[0-9a-f]+$"}, "the digest"),
            Field("size", {"type": "integer", "minimum": 0}, "bytes hashed"),
        )

    def prepare(self, args: Mapping[str, object]) -> ComphashArgs:
        checked = validate(self.name, self.params, args)
        return ComphashArgs(path=checked["path"], algorithm=checked["algorithm"])

    def run(self, args: ComphashArgs, sink: Sink, flow: Flow = UNLIMITED) -> Deferred[Result]:
        stop = threading.Event()
        outer: Deferred[Result] = Deferred(lambda _: stop.set())

        def work() -> Result:
            lower_priority()
            fd, size = open_regular(args.path, self.roots)
            try:
                self._call_from_thread(report, 0, size)

                def step(done: int) -> None:
                    self._call_from_thread(report, done, size)

                every = max(self.chunk_size, size // 100)
                try:
                    hexdigest, done = hash_fd(
                        fd, args.algorithm, self.chunk_size, stop, step, every, self.threads
                    )
                except OSError as e:  # EIO, a file on a vanished mount, ...
                    raise CommandError(
                        "unavailable", f"Cannot read {args.path}: {e.strerror}"
                    ) from None
            finally:
                os.close(fd)
            self._call_from_thread(report, done, done)
            return Result(
                command=self.name,
                data={
                    "path": args.path,
                    "algorithm": args.algorithm,
                    "hex": hexdigest,
                    "size": done,
                },
                text=(f"File hash is: {hexdigest}",),
                body=(checksum_line(hexdigest, args.path),),
                summary=f"{args.algorithm} of {args.path} ({format_size(done)})",
            )

        def report(done: int, total: int) -> None:
            if not outer.called:
                sink(Progress(done, total))

        def relay(result: Result | Failure) -> None:
            if outer.called:
                return  # cancelled meanwhile; the thread has stopped or will
            if isinstance(result, Failure):
                outer.errback(result)
            else:
                outer.callback(result)

        self._run_in_thread(work).addBoth(relay)
        return outer
