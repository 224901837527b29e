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
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import blake3

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
