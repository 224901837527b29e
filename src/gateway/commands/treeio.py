"""Opening and hashing the files of a tree by descriptor (no reactor here:
the hash worker processes import it too).

Each directory is opened relative to its parent's descriptor and each file
relative to its directory's, all with ``O_NOFOLLOW``: no symbolic link, and
no directory swapped for one after the walk, leads outside the tree.  A file
is hashed only if it is still the regular file the walk found (same device
and inode).
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import blake3

from gateway.core.errors import CommandError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY


class File(NamedTuple):
    """A regular file found by the walk (a tuple: a tree makes thousands)."""

    shown: str  # the path as printed: the directory as asked, then the names below it
    parts: tuple[str, ...]  # the names from the top down to the file's own
    size: int
    dev: int
    ino: int


class DirectoryCursor:
    """Opens the directories of a run of files, reusing what the last one opened.

    Sorted files share their directories, so a batch opens each directory
    once.  Each is opened relative to its parent's descriptor (``O_NOFOLLOW``).
    """

    def __init__(self, top_fd: int) -> None:
        self._top = top_fd
        self._open: list[tuple[str, int]] = []
        self._last: tuple[Sequence[str], int] = ((), top_fd)

    def directory(self, parts: Sequence[str]) -> int:
        """The descriptor of the directory ``parts`` (from the top)."""
        if parts == self._last[0]:
            return self._last[1]  # the same as the file before: most files
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
        self._last = (tuple(parts), fd)
        return fd

    def close(self) -> None:
        self._last = ((), self._top)
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


def hasher(algorithm: str) -> Callable[[], Any]:
    """What makes a new hash object for ``algorithm`` (the named constructor
    where hashlib has one: quicker than ``hashlib.new`` a thousand times)."""
    if algorithm == "blake3":
        return blake3.blake3
    if algorithm in hashlib.algorithms_guaranteed and hasattr(hashlib, algorithm):
        made: Callable[[], Any] = getattr(hashlib, algorithm)
        return made
    return lambda: hashlib.new(algorithm)


def digest_small(fd: int, new: Callable[[], Any], size: int) -> str:
    """The hash of a small file (``size`` as the walk saw it), read to its end
    in one or two reads, with no file object: a tree has thousands."""
    digest = new()
    want = size + 1
    data = os.read(fd, want)
    digest.update(data)
    if len(data) == want:  # it grew since the walk: the rest too
        while more := os.read(fd, 1 << 16):
            digest.update(more)
    return str(digest.hexdigest())


#: What hashing one file gave: its hex digest, or ``None`` and why not.
Outcome = tuple[str | None, str]


def hash_small_files(
    top_fd: int, files: Sequence[File], algorithm: str, stopped: Callable[[], bool]
) -> list[Outcome]:
    """Each of ``files`` (small ones, below the directory ``top_fd``) hashed."""
    cursor = DirectoryCursor(top_fd)
    new = hasher(algorithm)
    out: list[Outcome] = []
    try:
        for file in files:
            if stopped():
                break
            try:
                fd = open_in_tree(cursor, file)
            except OSError as e:
                out.append((None, e.strerror or "cannot open"))
                continue
            try:
                out.append((digest_small(fd, new, file.size), ""))
            except OSError as e:
                out.append((None, e.strerror or "cannot read"))
            finally:
                os.close(fd)
    finally:
        cursor.close()
    return out


#: Directories deeper than this are skipped with a notice: the walk holds one
#: descriptor per level.
MAX_DEPTH = 256


class Cancelled(Exception):
    """The work was asked to stop."""


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
    found: Callable[[list[File]], None] | None = None,
    every: int = 256,
) -> Tree:
    """Every regular file below the directory ``top_fd``, sorted; refuses
    (``bad_argument``) a tree over ``max_files`` files or ``max_bytes`` bytes.

    The walk goes depth first through each directory's names in byte order (a
    directory's name counting as if it ended in ``/``), which yields the files
    already in the order of their whole paths: ``found`` is handed them in
    runs of ``every`` as the walk goes, so hashing need not wait for its end.
    """
    files: list[File] = []
    skipped: list[Skipped] = []
    total = 0
    handed = 0
    # One frame per open directory: its names, its descriptor, what is left in
    # it (sorted, last first): (key, name, a File or None for a directory).
    frames: list[tuple[tuple[str, ...], int, list[tuple[bytes, str, File | None]]]] = []

    def enter(parts: tuple[str, ...], fd: int) -> None:
        nonlocal total
        pending: list[tuple[bytes, str, File | None]] = []
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
        # The shown path of what is in this directory: its own, then the name.
        prefix = shown_below(shown_top, (*parts, ""))
        for entry in listed:
            name = entry.name
            try:
                if entry.is_symlink():
                    skipped.append(Skipped(prefix + name, "symbolic link"))
                elif entry.is_dir(follow_symlinks=False):
                    pending.append((name.encode("utf-8", "surrogateescape") + b"/", name, None))
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    file = File(prefix + name, (*parts, name), st.st_size, st.st_dev, st.st_ino)
                    pending.append((name.encode("utf-8", "surrogateescape"), name, file))
                    total += st.st_size
                else:
                    skipped.append(Skipped(prefix + name, "not a regular file"))
            except OSError as e:  # gone since it was listed
                skipped.append(Skipped(prefix + name, e.strerror or "vanished"))
        if total > max_bytes:
            raise CommandError(
                "bad_argument",
                f"{shown_top} holds more than {max_bytes} bytes (comphash.max_bytes)",
            )
        pending.sort(reverse=True)
        frames.append((parts, fd, pending))

    try:
        enter((), top_fd)
        while frames:
            if stop.is_set():
                raise Cancelled()
            parts, fd, pending = frames[-1]
            if not pending:
                frames.pop()
                if fd != top_fd:
                    os.close(fd)
                continue
            _, name, file = pending.pop()
            if file is not None:
                files.append(file)
                if len(files) > max_files:
                    raise CommandError(
                        "bad_argument",
                        f"{shown_top} holds more than {max_files} files (comphash.max_files)",
                    )
                if found is not None and len(files) - handed >= every:
                    found(files[handed:])
                    handed = len(files)
                continue
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
    if found is not None and len(files) > handed:
        found(files[handed:])
    skipped.sort(key=_sort_key)
    return Tree(files, skipped, total)
