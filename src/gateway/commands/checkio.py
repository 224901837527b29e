"""Opening the files a manifest lists, and checking the small ones (no
reactor here: the hash worker processes import it too).

A listed path is resolved (its directory once per run of entries), must lie
in the allowed roots (and in the caller's scope), and must be a regular file;
it is opened without following a final symlink, non-blocking, and checked
again by its descriptor, so a path swapped while it is resolved leads
nowhere.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence

from gateway.commands.manifest import FAILED, OK, UNREADABLE
from gateway.commands.paths import check_allowed, inside, resolve_allowed
from gateway.commands.treeio import FILE_FLAGS, digest_small, hasher
from gateway.core.errors import CommandError

#: Not checked here: too large for a worker's run; the caller hashes it.
LARGE = "large"

#: (outcome, why it could not be read, whether it is missing)
Checked = tuple[str, str, bool]


def os_error(e: OSError, path: str) -> CommandError:
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
    return open_resolved(resolve_allowed(path, roots, "hashed"), path, roots)


def open_resolved(real: str, path: str, roots: Sequence[str]) -> tuple[int, int]:
    """:func:`open_regular` of ``path`` whose resolved form ``real`` was
    checked to lie in ``roots`` already."""
    try:
        before = os.lstat(real)
    except OSError as e:
        raise os_error(e, path) from None
    if not stat.S_ISREG(before.st_mode):
        raise CommandError("not_a_file", f"Not a regular file: {path}")
    try:
        fd = os.open(real, FILE_FLAGS)
    except OSError as e:
        raise os_error(e, path) from None
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


class Resolved:
    """Resolves the paths of a manifest, each directory once.

    Sorted manifests list many files per directory: the directory is
    resolved (``realpath``) once, and only a file that is itself a symbolic
    link is resolved again.  What is opened is checked once more by its
    descriptor (:func:`open_resolved`), so a directory swapped meanwhile
    leads nowhere.
    """

    def __init__(self) -> None:
        self._dirs: dict[str, str] = {}

    def real(self, path: str) -> str:
        parent, name = os.path.split(path)
        real_parent = self._dirs.get(parent)
        if real_parent is None:
            try:
                real_parent = self._dirs[parent] = os.path.realpath(parent)
            except OSError:  # a link replaced while being read
                return os.path.realpath(path)
        if name in ("", ".", ".."):
            return os.path.realpath(path)
        real = os.path.join(real_parent, name)
        try:
            if stat.S_ISLNK(os.lstat(real).st_mode):
                return os.path.realpath(real)
        except OSError:
            pass  # missing: the open says so
        return real


#: How a reason not to read a listed file reads, as coreutils words it.
_WHY = {
    "not_found": "No such file or directory",
    "permission_denied": "Permission denied",
    "forbidden": "outside the allowed roots",
}


def why_unreadable(e: CommandError) -> str:
    if e.code == "not_a_file":
        return "Is a directory" if "directory" in e.message else "Not a regular file"
    return _WHY.get(e.code, e.message)


def open_listed(
    path: str,
    base: str,
    resolved: Resolved,
    roots: Sequence[str],
    scope_roots: Sequence[str] | None,
) -> tuple[int, int]:
    """A listed file opened, ``(fd, size)``, if it lies in ``roots`` and in
    ``scope_roots`` (the caller's, if it has any); else :class:`CommandError`."""
    full = where(path, base)
    real = resolved.real(full)
    check_allowed(real, full, roots)
    if scope_roots is not None and not any(inside(real, r) for r in scope_roots):
        raise CommandError("forbidden", "outside the roots of this identity")
    return open_resolved(real, full, roots)


def not_read(e: CommandError) -> Checked:
    """What a check says of a listed file it could not open."""
    return (UNREADABLE, why_unreadable(e), e.code == "not_found")


def check_small(
    entries: Sequence[tuple[str, str, str]],
    base: str,
    roots: Sequence[str],
    scope_roots: Sequence[str] | None,
    large: int,
) -> list[Checked]:
    """Each ``(path, algorithm, hex)`` checked, if smaller than ``large``
    bytes (else :data:`LARGE`: the caller hashes it, where it can stop)."""
    resolved = Resolved()
    makers = {algorithm: hasher(algorithm) for algorithm in {e[1] for e in entries}}
    out: list[Checked] = []
    for path, algorithm, expected in entries:
        try:
            fd, size = open_listed(path, base, resolved, roots, scope_roots)
        except CommandError as e:
            out.append(not_read(e))
            continue
        try:
            if size >= large:
                out.append((LARGE, "", False))
                continue
            digest = digest_small(fd, makers[algorithm], size)
        except OSError as e:
            out.append((UNREADABLE, e.strerror or "cannot read", False))
            continue
        finally:
            os.close(fd)
        out.append((OK if digest == expected else FAILED, "", False))
    return out


def where(path: str, base: str) -> str:
    """A listed path: absolute as it is, relative from ``base``."""
    if os.path.isabs(path):
        return path
    if not base:
        raise CommandError("bad_argument", f"{path} is relative: send dir= to say where it starts")
    return os.path.join(base, path)
