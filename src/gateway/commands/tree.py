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
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gateway.core.errors import CommandError
from gateway.core.flow import Flow

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY

#: Directories deeper than this are skipped with a notice: the walk holds one
#: descriptor per level.
MAX_DEPTH = 256


class Cancelled(Exception):
    """The work was asked to stop."""


@dataclass(frozen=True, slots=True)
class File:
    """A regular file found by the walk."""

    shown: str  # the path as printed: the directory as asked, then the names below it
    parts: tuple[str, ...]  # the names from the top down to the file's own
    size: int
    dev: int
    ino: int


@dataclass(frozen=True, slots=True)
class Skipped:
    """Something the walk did not hash, and why."""

    shown: str
    why: str


@dataclass(frozen=True)
class Tree:
    files: list[File]
    skipped: list[Skipped]
    bytes: int


def shown_below(top: str, parts: Sequence[str]) -> str:
    """``top/a/b`` as ``find top`` prints it (one slash however ``top`` ends)."""
    base = top.rstrip("/") or ("/" if top.startswith("/") else "")
    rel = "/".join(parts)
    if not base:
        return rel
    return base + rel if base.endswith("/") else f"{base}/{rel}"


def _sort_key(item: File | Skipped) -> bytes:
    return os.fsencode(item.shown)


def walk(
    top_fd: int,
    shown_top: str,
    max_files: int,
    max_bytes: int,
    stop: threading.Event,
) -> Tree:
    """Every regular file below the directory ``top_fd``, sorted; refuses
    (``bad_argument``) a tree over ``max_files`` files or ``max_bytes`` bytes."""
    files: list[File] = []
    skipped: list[Skipped] = []
    total = 0
    # One frame per open directory: its names, its descriptor, the subdirectories left.
    frames: list[tuple[tuple[str, ...], int, list[str]]] = []

    def enter(parts: tuple[str, ...], fd: int) -> None:
        nonlocal total
        subdirs: list[str] = []
        try:
            with os.scandir(fd) as entries:
                listed = list(entries)
        except OSError as e:
            skipped.append(
                Skipped(shown_below(shown_top, parts), f"unreadable directory: {e.strerror}")
            )
            if fd != top_fd:
                os.close(fd)
            return
        for entry in listed:
            name = entry.name
            here = (*parts, name)
            try:
                if entry.is_symlink():
                    skipped.append(Skipped(shown_below(shown_top, here), "symbolic link"))
                elif entry.is_dir(follow_symlinks=False):
                    subdirs.append(name)
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    files.append(
                        File(shown_below(shown_top, here), here, st.st_size, st.st_dev, st.st_ino)
                    )
                    total += st.st_size
                else:
                    skipped.append(Skipped(shown_below(shown_top, here), "not a regular file"))
            except OSError as e:  # gone since it was listed
                skipped.append(Skipped(shown_below(shown_top, here), e.strerror or "vanished"))
        if len(files) > max_files:
            raise CommandError(
                "bad_argument",
                f"{shown_top} holds more than {max_files} files (comphash.max_files)",
            )
        if total > max_bytes:
            raise CommandError(
                "bad_argument",
                f"{shown_top} holds more than {max_bytes} bytes (comphash.max_bytes)",
            )
        frames.append((parts, fd, subdirs))

    try:
        enter((), top_fd)
        while frames:
            if stop.is_set():
                raise Cancelled()
            parts, fd, subdirs = frames[-1]
            if not subdirs:
                frames.pop()
                if fd != top_fd:
                    os.close(fd)
                continue
            name = subdirs.pop()
            here = (*parts, name)
            if len(here) > MAX_DEPTH:
                skipped.append(
                    Skipped(shown_below(shown_top, here), f"nested deeper than {MAX_DEPTH}")
                )
                continue
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                skipped.append(
                    Skipped(shown_below(shown_top, here), f"unreadable directory: {e.strerror}")
                )
                continue
            enter(here, child)
    finally:
        for _, fd, _ in frames:
            if fd != top_fd:
                os.close(fd)
    files.sort(key=_sort_key)
    skipped.sort(key=_sort_key)
    return Tree(files, skipped, total)


class DirectoryCursor:
    """Opens the directories of a run of files, reusing what the last one opened.

    Sorted files share their directories, so a batch opens each directory
    once.  Each is opened relative to its parent's descriptor (``O_NOFOLLOW``).
    """

    def __init__(self, top_fd: int) -> None:
        self._top = top_fd
        self._open: list[tuple[str, int]] = []

    def directory(self, parts: Sequence[str]) -> int:
        """The descriptor of the directory ``parts`` (from the top)."""
        keep = 0
        for (name, _), want in zip(self._open, parts, strict=False):
            if name != want:
                break
            keep += 1
        while len(self._open) > keep:
            os.close(self._open.pop()[1])
        fd = self._open[-1][1] if self._open else self._top
        for name in parts[keep:]:
            fd = os.open(name, DIR_FLAGS, dir_fd=fd)
            self._open.append((name, fd))
        return fd

    def close(self) -> None:
        while self._open:
            os.close(self._open.pop()[1])


def open_in_tree(cursor: DirectoryCursor, file: File) -> int:
    """``file`` opened without leaving the tree; ``OSError`` if it cannot be,
    or if it is no longer the regular file the walk found."""
    dir_fd = cursor.directory(file.parts[:-1])
    fd = os.open(file.parts[-1], FILE_FLAGS, dir_fd=dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (file.dev, file.ino):
        os.close(fd)
        raise FileChanged()
    return fd


class FileChanged(OSError):
    """Replaced by another file (or a link, a FIFO) since the walk found it."""

    def __init__(self) -> None:
        super().__init__(0, "replaced while being hashed")


#: A unit of work: files hashed one after the other by one thread.
UNIT_FILES = 64
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
    filling: bool = False  # fill() is on the stack (work that finished at once)
    again: bool = False  # and was asked again meanwhile


def in_order(
    units: Sequence[range],
    work: Callable[[range], list[T]],
    run_in_thread: Callable[[Callable[[], Any]], Deferred[Any]],
    emit: Callable[[range, list[T]], None],
    width: int,
    flow: Flow,
    stop: threading.Event,
) -> Deferred[None]:
    """Run ``work`` on each unit in threads, at most ``width`` at once, and
    ``emit`` the results in the units' order as soon as each is next.

    While ``flow`` is paused (the client does not read) no unit starts, so
    what waits in memory stays bounded; a unit finished early waits for
    those before it (at most ``4 * width`` units ahead).  Cancelling the
    Deferred sets ``stop`` (work checks it) and starts nothing more.
    """
    state: _Run[T] = _Run({})
    watching: list[Callable[[], None]] = []

    def cancel(_: Deferred[None]) -> None:
        state.stopped = True
        stop.set()

    done: Deferred[None] = Deferred(cancel)
    ahead = 4 * max(1, width)

    def fill() -> None:
        if state.filling:  # a unit finished synchronously: the loop below goes on
            state.again = True
            return
        if watching:
            watching.pop()()
        state.filling = True
        try:
            while _start_more():
                pass
        finally:
            state.filling = False
        if state.emitted == len(units) and not done.called:
            done.callback(None)

    def _start_more() -> bool:
        """Start what may start; whether to look again."""
        state.again = False
        while (
            not state.stopped
            and state.running < width
            and state.started < len(units)
            and state.started - state.emitted < ahead
        ):
            if flow.paused:
                watching.append(flow.watch(lambda: None, fill))
                return False
            index = state.started
            state.started += 1
            state.running += 1
            unit = units[index]
            run_in_thread(lambda unit=unit: work(unit)).addBoth(finished, index)  # type: ignore[misc]
        return state.again

    def finished(outcome: list[T] | Failure, index: int) -> None:
        state.running -= 1
        if state.stopped:
            return
        if isinstance(outcome, Failure):
            state.stopped = True
            stop.set()
            if not done.called:
                done.errback(outcome)
            return
        state.results[index] = outcome
        while state.emitted in state.results:
            i = state.emitted
            emit(units[i], state.results.pop(i))
            state.emitted += 1
            if state.stopped:  # emit may cancel (the client went away)
                return
        fill()

    fill()
    return done


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
