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
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import blake3
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gateway.commands import manifest as manifests
from gateway.commands.checkio import (
    LARGE,
    Checked,
    Resolved,
    check_small,
    not_read,
    open_listed,
    open_regular,
    os_error,
)
from gateway.commands.hashworker import Workers
from gateway.commands.mapped import Stopped, hash_mapped
from gateway.commands.paths import check_allowed, resolve_allowed
from gateway.commands.tree import UNIT_FILES, InOrder, SharedFd, in_order, units_of
from gateway.commands.treeio import (
    DIR_FLAGS,
    Cancelled,
    DirectoryCursor,
    File,
    Outcome,
    Tree,
    hash_small_files,
    open_in_tree,
    walk,
)
from gateway.core.command import BodyRoute, Command, Field
from gateway.core.errors import CommandError
from gateway.core.events import Lines, Notice, Progress, Result, Sink
from gateway.core.flow import UNLIMITED, Flow
from gateway.core.params import Param, validate
from gateway.core.scope import Identity

RunInThread = Callable[[Callable[[], Any]], "Deferred[Any]"]
CallFromThread = Callable[..., None]


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

    A large file hashed by BLAKE3 on several threads is mapped while that is
    safe (under a read lease, in the page cache: :mod:`.mapped`); every
    other file is read, and so is the rest of a mapped one once someone
    wants to write it.
    """
    digest = new_hasher(algorithm, threads)
    done = 0
    if algorithm == "blake3" and threads != 1:
        try:
            done = hash_mapped(fd, digest, stop, progress, progress_every)
        except Stopped:
            raise Cancelled() from None
        if done:
            os.lseek(fd, done, os.SEEK_SET)
    view = _buffer(chunk_for(algorithm, chunk_size, threads))
    next_report = done + progress_every
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
    #: ``-r``: every regular file below the directory ``path``.
    recursive: bool = False
    #: ``-c``: check the manifest at ``path`` (or ``manifest``, its text).
    check: bool = False
    #: ``-a`` given: a check takes every line for this algorithm.
    algorithm_given: bool = False
    ignore_missing: bool = False
    strict: bool = False
    quiet: bool = False
    manifest: str | None = None
    #: Where a manifest's relative paths start (default: the manifest's directory).
    base: str | None = None


def format_size(n: int) -> str:
    """``4.0 GiB``: a size for people (the exact count is in the result)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _comment(kind: str, path: str, why: str) -> str:
    """A ``#`` line in a manifest (``sha256sum -c`` skips it): what was not hashed."""
    return f"# {kind}: {manifests.shown_name(path)} ({why})"


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


#: A result lists at most this many skipped files (all are counted).
MAX_LISTED = 1000


class ComphashCommand(Command[ComphashArgs]):
    name = "comphash"
    #: ``-r`` and ``-c`` stream one line per file: in a one-document JSON
    #: answer they go in ``lines``; a single file's answer has none.
    stream_key = "lines"
    always_streams = False

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
        workers: int = 4,
        max_files: int = 100_000,
        max_bytes: int = 1 << 40,
        max_manifest_bytes: int = 64 << 20,
        hash_workers: Workers | None = None,
    ) -> None:
        """``threads``: the most threads one hash uses (0: one per core): a
        BLAKE3 hash of one file, or the files of a tree or a manifest, each
        bounded by ``workers``, the size of the pool behind ``run_in_thread``."""
        self.threads = threads
        self.width = max(1, min(threads or os.cpu_count() or 1, workers))
        #: Processes for a tree's small files (:mod:`.hashworker`); ``None``: threads.
        self.hash_workers = hash_workers if self.width > 1 else None
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.max_manifest_bytes = max_manifest_bytes
        self.post = BodyRoute(
            "/comphash/check",
            "manifest",
            {"check": "1"},
            max_manifest_bytes,
            "check the files a manifest (the body) lists, as sha256sum -c does",
            omits=("path", "recursive"),
        )
        self.roots = tuple(os.path.realpath(r) for r in allowed_roots)
        self.algorithms = tuple(algorithms)
        self.default_algorithm = default_algorithm
        self.chunk_size = chunk_size
        self.timeout = timeout
        self._run_in_thread = run_in_thread
        self._call_from_thread = call_from_thread
        self.summary = (
            f"hash of a file, of a tree (-r), or check a manifest (-c);"
            f" default {default_algorithm} ({', '.join(self.algorithms)})"
        )
        self.params = (
            Param(
                "algorithm",
                "choice",
                "the hash algorithm (-c: what every line uses; default: each line says)",
                default=default_algorithm,
                choices=self.algorithms,
                flag="-a",
                metavar="ALGO",
                noun="an algorithm name",
                scope="algorithms",
            ),
            Param("recursive", "flag", "every regular file below the directory PATH", flag="-r"),
            Param(
                "check",
                "flag",
                "read checksums from the manifest PATH (or MANIFEST) and check them",
                flag="-c",
            ),
            Param(
                "ignore_missing",
                "flag",
                "-c: say nothing of missing files",
                flag="--ignore-missing",
            ),
            Param(
                "strict", "flag", "-c: fail when a line is improperly formatted", flag="--strict"
            ),
            Param(
                "quiet", "flag", "-c: print only the lines that did not check OK", flag="--quiet"
            ),
            Param(
                "dir",
                "path",
                "-c: where the manifest's relative paths start (default: its directory)",
                flag="--dir",
                metavar="DIR",
                noun="a directory",
            ),
            Param(
                "manifest",
                "string",
                "-c: the manifest's text instead of a path (the body of POST /comphash/check)",
                flag="--manifest",
                metavar="MANIFEST",
                noun="a manifest",
            ),
            Param(
                "path",
                "path",
                "absolute path of a regular file (-r: a directory; -c: a manifest)",
                required=True,
                missing="Please provide a path.",
                unless="manifest",
            ),
        )
        #: With a manifest's text, no path is asked for.
        self._params_for_text = tuple(p for p in self.params if p.name != "path")
        self.result_fields = (
            Field("path", {"type": "string"}, "the file, tree or manifest, as asked"),
            Field(
                "algorithm",
                {"type": "string", "enum": list(self.algorithms)},
                required=False,
            ),
            Field(
                "hex", {"type": "string", "pattern": "^[0-9a-f]+$"}, "the digest", required=False
            ),
            Field("size", {"type": "integer", "minimum": 0}, "bytes hashed", required=False),
            Field("files", {"type": "integer", "minimum": 0}, "-r: files hashed", required=False),
            Field("bytes", {"type": "integer", "minimum": 0}, "-r: bytes hashed", required=False),
            Field(
                "skipped",
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"path": {"type": "string"}, "why": {"type": "string"}},
                        "required": ["path", "why"],
                        "additionalProperties": False,
                    },
                },
                f"-r, -c: what was not hashed, and why (the first {MAX_LISTED})",
                required=False,
            ),
            Field(
                "ok",
                {"type": "boolean"},
                "-c: what sha256sum -c's exit status 0 means",
                required=False,
            ),
            Field("checked", {"type": "integer", "minimum": 0}, "-c: entries read", required=False),
            Field("failed", {"type": "integer", "minimum": 0}, "-c: did NOT match", required=False),
            Field(
                "missing",
                {"type": "integer", "minimum": 0},
                "-c: files that do not exist",
                required=False,
            ),
            Field(
                "unreadable",
                {"type": "integer", "minimum": 0},
                "-c: listed files not read (the missing among them)",
                required=False,
            ),
            Field(
                "malformed",
                {"type": "integer", "minimum": 0},
                "-c: improperly formatted lines",
                required=False,
            ),
        )

    def prepare(self, args: Mapping[str, object]) -> ComphashArgs:
        with_text = args.get("manifest") is not None and args.get("path") is None
        checked = validate(self.name, self._params_for_text if with_text else self.params, args)
        recursive, check = bool(checked["recursive"]), bool(checked["check"])
        manifest = checked.get("manifest")
        if recursive and check:
            raise CommandError("bad_argument", "-r and -c do not go together")
        if not check:
            for name in ("ignore_missing", "strict", "quiet"):
                if checked[name]:
                    flag = "--" + name.replace("_", "-")
                    raise CommandError("bad_argument", f"{flag} is meaningful only with -c")
            for name in ("dir", "manifest"):
                if checked.get(name) is not None:
                    raise CommandError("bad_argument", f"--{name} is meaningful only with -c")
        path = checked.get("path")
        if manifest is not None and path is not None:
            raise CommandError("bad_argument", "a manifest comes from PATH or MANIFEST, not both")
        return ComphashArgs(
            path=path if path is not None else "-",
            algorithm=checked["algorithm"],
            recursive=recursive,
            check=check,
            algorithm_given="algorithm" in args,
            ignore_missing=bool(checked["ignore_missing"]),
            strict=bool(checked["strict"]),
            quiet=bool(checked["quiet"]),
            manifest=manifest,
            base=checked.get("dir"),
        )

    def run_as(
        self, identity: Identity, args: ComphashArgs, sink: Sink, flow: Flow = UNLIMITED
    ) -> Deferred[Result]:
        """A check reads paths from a manifest: each must lie in the caller's
        roots too, and each line's algorithm be one it may use."""
        if args.check:
            return self._check(args, sink, flow, identity)
        return self.run(args, sink, flow)

    def run(self, args: ComphashArgs, sink: Sink, flow: Flow = UNLIMITED) -> Deferred[Result]:
        if args.recursive:
            return self._tree(args, sink, flow)
        if args.check:
            return self._check(args, sink, flow, None)
        return self._single(args, sink)

    # -- one file

    def _single(self, args: ComphashArgs, sink: Sink) -> Deferred[Result]:
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

        return self._relay(self._run_in_thread(work), outer)

    @staticmethod
    def _relay(work: Deferred[Any], outer: Deferred[Result]) -> Deferred[Result]:
        def relay(result: Result | Failure) -> None:
            if outer.called:
                return  # cancelled meanwhile; the thread has stopped or will
            if isinstance(result, Failure):
                outer.errback(result)
            else:
                outer.callback(result)

        work.addBoth(relay)
        return outer

    # -- a tree

    def _open_tree(self, path: str) -> int:
        """The directory ``path``, opened (``O_NOFOLLOW``) and checked to lie in the roots."""
        real = resolve_allowed(path, self.roots, "hashed")
        try:
            fd = os.open(real, DIR_FLAGS)
        except OSError as e:
            if e.errno == errno.ENOTDIR:
                raise CommandError(
                    "not_a_file", f"Not a directory: {path} (-r hashes a tree)"
                ) from None
            raise os_error(e, path) from None
        try:
            check_allowed(os.readlink(f"/proc/self/fd/{fd}"), path, self.roots)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _tree(self, args: ComphashArgs, sink: Sink, flow: Flow) -> Deferred[Result]:
        """Walk the tree in a thread, hashing what it finds as it goes (held
        back until the walk ends, when its limits are known), then stream
        the lines in order."""
        stop = threading.Event()
        files: list[File] = []  # in order; grows as the walk goes (on the reactor)
        top: list[SharedFd] = []
        where: list[tuple[str, int, int]] = []  # the top's real path, device, inode
        tally = {"files": 0, "bytes": 0, "done": 0}
        skipped: list[dict[str, str]] = []
        progress = {"next": 0, "total": 0, "bytes": 0}

        def hash_unit(unit: range) -> list[Outcome]:
            """(hex, "") or (None, why) for each file of ``unit``."""
            lower_priority()
            chosen = [files[i] for i in unit]
            small = all(f.size < self.chunk_size for f in chosen)
            if small and self.hash_workers is not None:
                real, dev, ino = where[0]
                answer = self.hash_workers.hash(real, dev, ino, args.algorithm, chosen)
                if stop.is_set():
                    raise Cancelled()
                if answer is not None:
                    return answer
            fd = top[0].acquire()
            try:
                if small:
                    out = hash_small_files(fd, chosen, args.algorithm, stop.is_set)
                else:
                    out = [self._hash_one(fd, f, args.algorithm, stop) for f in chosen]
            finally:
                top[0].release()
            if stop.is_set():
                raise Cancelled()
            return out

        def emit(unit: range, outcomes: list[Outcome]) -> None:
            lines: list[str] = []
            for i, (hexdigest, why) in zip(unit, outcomes, strict=True):
                file = files[i]
                tally["done"] += 1
                if hexdigest is None:
                    if lines:
                        sink(Lines(tuple(lines)))
                        lines = []
                    sink(Notice(_comment("unreadable", file.shown, why)))
                    if len(skipped) < MAX_LISTED:
                        skipped.append({"path": file.shown, "why": why})
                    continue
                lines.append(checksum_line(hexdigest, file.shown))
                tally["files"] += 1
                tally["bytes"] += file.size
            if lines:
                sink(Lines(tuple(lines)))
            done, total = tally["done"], progress["total"]
            if done >= progress["next"] or done == total:
                progress["next"] = done + max(1, total // 100)
                sink(Progress(tally["bytes"], progress["bytes"], done, total))

        runner: InOrder[Outcome] = InOrder(
            hash_unit, self._run_in_thread, emit, self.width, flow, stop, held=True
        )

        def cancel(_: Deferred[Result]) -> None:
            stop.set()
            listing.cancel()
            runner.done.cancel()

        outer: Deferred[Result] = Deferred(cancel)

        def found(batch: list[File]) -> None:  # on the reactor, in the walk's order
            if stop.is_set():
                return
            start = len(files)
            files.extend(batch)
            runner.add(
                [range(start + u.start, start + u.stop) for u in units_of([f.size for f in batch])]
            )

        def listed() -> Tree:
            lower_priority()
            shared = SharedFd(self._open_tree(args.path))
            fd = shared.acquire()
            top.append(shared)  # closed by the reactor once all is done (or cancelled)
            try:
                if stop.is_set():
                    shared.close()
                    raise Cancelled()
                st = os.fstat(fd)
                real = os.readlink(f"/proc/self/fd/{fd}")
                where.append((real, st.st_dev, st.st_ino))
                if self.hash_workers is not None:  # the walk in a process of its own
                    tree = self.hash_workers.walk(
                        real,
                        st.st_dev,
                        st.st_ino,
                        args.path,
                        self.max_files,
                        self.max_bytes,
                        UNIT_FILES,
                        lambda batch: self._call_from_thread(found, batch),
                        stop.is_set,
                    )
                    if tree is not None:
                        return tree
                return walk(
                    fd,
                    args.path,
                    self.max_files,
                    self.max_bytes,
                    stop,
                    lambda batch: self._call_from_thread(found, batch),
                    UNIT_FILES,
                )
            finally:
                shared.release()

        def walked(tree: Tree) -> Deferred[Result]:
            # Every batch the walk found came through call_from_thread before
            # this result did: ``files`` is whole.
            progress["total"], progress["bytes"] = len(files), tree.bytes
            sink(Progress(0, tree.bytes, 0, len(files)))
            runner.close()
            runner.release()

            def then(_: None) -> Result:
                return finished(tree)

            return runner.done.addCallback(then)

        def walk_failed(failure: Failure) -> Failure:
            runner.fail(failure)  # stop what started; the failure goes on
            return failure

        def finished(tree: Tree) -> Result:
            for s in tree.skipped:
                sink(Notice(_comment("skipped", s.shown, s.why)))
                if len(skipped) < MAX_LISTED:
                    skipped.append({"path": s.shown, "why": s.why})
            count, size = tally["files"], tally["bytes"]
            not_hashed = tally["done"] - count + len(tree.skipped)
            summary = f"{args.algorithm} of {_files(count)} under {args.path} ({format_size(size)})"
            if not_hashed:
                summary += f", {not_hashed} skipped"
            return Result(
                command=self.name,
                data={
                    "path": args.path,
                    "algorithm": args.algorithm,
                    "files": count,
                    "bytes": size,
                    "skipped": skipped,
                },
                text=(f"# {summary}",),
                body=(),  # text/plain stays a manifest
                summary=summary,
            )

        def closed(result: Any) -> Any:
            if top:
                top[0].close()
            return result

        listing: Deferred[Tree] = self._run_in_thread(listed)
        work: Deferred[Result] = listing.addCallback(walked)
        work.addErrback(walk_failed)
        return self._relay(work.addBoth(closed), outer)

    def _hash_one(self, top_fd: int, file: File, algorithm: str, stop: threading.Event) -> Outcome:
        cursor = DirectoryCursor(top_fd)
        try:
            opened = open_in_tree(cursor, file)
        except OSError as e:
            return (None, e.strerror or "cannot open")
        finally:
            cursor.close()
        try:
            return (hash_fd(opened, algorithm, self.chunk_size, stop)[0], "")
        except OSError as e:
            return (None, e.strerror or "cannot read")
        finally:
            os.close(opened)

    # -- a manifest

    def _check(
        self, args: ComphashArgs, sink: Sink, flow: Flow, identity: Identity | None
    ) -> Deferred[Result]:
        stop = threading.Event()
        running: list[Deferred[Any]] = []

        def cancel(_: Deferred[Result]) -> None:
            stop.set()
            for d in running:
                d.cancel()

        outer: Deferred[Result] = Deferred(cancel)
        scope = identity.scope if identity is not None else None
        scope_roots = scope.roots if scope is not None else None
        shown_manifest = "standard input" if args.manifest is not None else args.path
        counts = {"ok": 0, "failed": 0, "unreadable": 0, "missing": 0, "done": 0}
        problems: list[str] = []  # what coreutils says on stderr, in order
        skipped: list[dict[str, str]] = []

        def read() -> tuple[manifests.Manifest, str]:
            lower_priority()
            if args.manifest is not None:
                text = args.manifest
                base = args.base
            else:
                fd, size = open_regular(args.path, self.roots)
                try:
                    if size > self.max_manifest_bytes:
                        raise CommandError(
                            "bad_argument",
                            f"Manifest too large: {args.path} ({format_size(size)};"
                            f" comphash.max_manifest_bytes is {self.max_manifest_bytes})",
                        )
                    with open(fd, "rb", closefd=False) as f:
                        raw = f.read(self.max_manifest_bytes + 1)
                finally:
                    os.close(fd)
                text = raw.decode("utf-8", "surrogateescape")
                base = args.base or os.path.dirname(args.path)
            lines = text.split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            found = manifests.parse_manifest(
                lines, args.algorithm if args.algorithm_given else None
            )
            for entry in found.entries:
                self._allowed_algorithm(entry, identity)
            return found, base or ""

        def check_unit(found: manifests.Manifest, base: str, unit: range) -> list[Checked]:
            """(outcome, why, missing) for each entry of ``unit``: small files by
            a worker process (or here), large ones here, where a stop is seen."""
            lower_priority()
            entries = [found.entries[i] for i in unit]
            listed = [(e.path, e.algorithm, e.hex) for e in entries]
            out: list[Checked] | None = None
            if self.hash_workers is not None:
                out = self.hash_workers.check(
                    listed, base, self.roots, scope_roots, self.chunk_size
                )
            if out is None:
                out = check_small(listed, base, self.roots, scope_roots, self.chunk_size)
            for k, (outcome, _, _) in enumerate(out):
                if stop.is_set():
                    raise Cancelled()
                if outcome == LARGE:
                    out[k] = self._check_large(entries[k], base, scope_roots, stop)
            if stop.is_set():
                raise Cancelled()
            return out

        def parsed(found_and_base: tuple[manifests.Manifest, str]) -> Deferred[Result]:
            found, base = found_and_base
            total = len(found.entries)
            sink(Progress(0, total, 0, total))
            step = {"next": 0}

            def emit(unit: range, outcomes: list[tuple[str, str, bool]]) -> None:
                lines: list[str] = []
                for i, (outcome, why, missing) in zip(unit, outcomes, strict=True):
                    entry = found.entries[i]
                    counts["done"] += 1
                    if outcome == manifests.OK:
                        counts["ok"] += 1
                        if args.quiet:
                            continue
                    elif outcome == manifests.FAILED:
                        counts["failed"] += 1
                    else:
                        counts["unreadable"] += 1
                        counts["missing"] += missing
                        if missing and args.ignore_missing:
                            continue
                        problems.append(f"comphash: {manifests.shown_name(entry.path)}: {why}")
                        if len(skipped) < MAX_LISTED:
                            skipped.append({"path": entry.path, "why": why})
                    lines.append(manifests.check_line(entry.path, outcome))
                if lines:
                    sink(Lines(tuple(lines)))
                done = counts["done"]
                if done >= step["next"] or done == total:
                    step["next"] = done + max(1, total // 100)
                    sink(Progress(done, total, done, total))

            d = in_order(
                units_of([0] * total),  # sizes unknown until opened: by count
                lambda unit: check_unit(found, base, unit),
                self._run_in_thread,
                emit,
                self.width,
                flow,
                stop,
            )
            running.append(d)

            def then(_: None) -> Result:
                return finished(found)

            return d.addCallback(then)

        def finished(found: manifests.Manifest) -> Result:
            tally = manifests.Tally(
                entries=len(found.entries),
                ok=counts["ok"],
                failed=counts["failed"],
                unreadable=counts["unreadable"],
                missing=counts["missing"],
                malformed=found.malformed,
                ignore_missing=args.ignore_missing,
                strict=args.strict,
            )
            warnings = [*problems, *tally.warnings(shown_manifest)]
            verdict = "OK" if tally.passed else "FAILED"
            summary = (
                f"check of {shown_manifest}: {verdict} ({tally.ok} OK, {tally.failed} failed,"
                f" {tally.unreadable} not read)"
            )
            return Result(
                command=self.name,
                data={
                    "path": args.path,
                    "ok": tally.passed,
                    "checked": tally.entries,
                    "failed": tally.failed,
                    "missing": tally.missing,
                    "unreadable": tally.unreadable,
                    "malformed": tally.malformed,
                    "skipped": skipped,
                },
                text=(*warnings, f"# {summary}"),  # the last line says it is done
                body=tuple(warnings),  # text/plain: what sha256sum -c says, nothing more
                summary=summary,
            )

        reading = self._run_in_thread(read)
        running.append(reading)
        work = reading.addCallback(lambda found: None if stop.is_set() else parsed(found))
        return self._relay(work, outer)

    def _check_large(
        self,
        entry: manifests.Entry,
        base: str,
        scope_roots: Sequence[str] | None,
        stop: threading.Event,
    ) -> Checked:
        """One large listed file, hashed in this thread (BLAKE3 on its threads,
        mapped where safe; stopped between chunks)."""
        try:
            fd, _ = open_listed(entry.path, base, Resolved(), self.roots, scope_roots)
        except CommandError as e:
            return not_read(e)
        try:
            hexdigest, _ = hash_fd(fd, entry.algorithm, self.chunk_size, stop, threads=self.threads)
        except OSError as e:
            return (manifests.UNREADABLE, e.strerror or "cannot read", False)
        finally:
            os.close(fd)
        return (manifests.OK if hexdigest == entry.hex else manifests.FAILED, "", False)

    def _allowed_algorithm(self, entry: manifests.Entry, identity: Identity | None) -> None:
        if entry.algorithm not in self.algorithms:
            raise CommandError(
                "bad_argument",
                f"line {entry.number} uses {entry.algorithm}, which is not one of"
                f" comphash.algorithms ({', '.join(self.algorithms)})",
            )
        if identity is None:
            return
        allowed = identity.scope.algorithms
        if allowed is not None and entry.algorithm not in allowed:
            raise CommandError(
                "forbidden",
                f"{identity.shown} may not use {entry.algorithm} (line {entry.number};"
                f" its algorithms: {', '.join(sorted(allowed))})",
            )
