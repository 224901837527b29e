"""Where a path a client sends may point: under the allowed roots, never /proc or /sys.

Shared by ``comphash`` and declared commands' ``path`` parameters, so both
resolve and refuse paths by the same rules.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from gateway.core.errors import CommandError

#: Never read through the gateway, whatever the roots (``/proc/self/environ``
#: would show the daemon's environment).
PSEUDO_FILESYSTEMS: tuple[str, ...] = ("/proc", "/sys")


def inside(path: str, root: str) -> bool:
    """Is the resolved ``path`` ``root`` or below it (``/srv/data_x`` is not in ``/srv/data``)?

    Both are absolute and normalized (``realpath``): no ``..``, no doubled or
    trailing slash, so comparing strings is exact.
    """
    if path == root or root == "/":
        return path.startswith("/")
    return path.startswith(root) and path[len(root) : len(root) + 1] == "/"


def check_allowed(real: str, shown: str, roots: Sequence[str], use: str = "hashed") -> None:
    """Raise ``forbidden`` unless the resolved path ``real`` is under one of ``roots``."""
    for pseudo in PSEUDO_FILESYSTEMS:
        if inside(real, pseudo):
            message = f"Path is under {pseudo}, which is never {use}: {shown}"
            raise CommandError("forbidden", message)
    if not any(inside(real, root) for root in roots):
        raise CommandError("forbidden", f"Path is outside the allowed roots: {shown}")


def resolve_allowed(path: str, roots: Sequence[str], use: str) -> str:
    """``path`` with every symlink and ``..`` resolved, if that is under ``roots``.

    ``roots`` must be resolved absolute directories.  The path need not exist.
    """
    try:
        real = os.path.realpath(path)
    except OSError as e:  # a link replaced between realpath's lstat and readlink
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise CommandError("not_found", f"No such file: {path}") from None
        raise CommandError("not_a_file", f"Path changed while being resolved: {path}") from None
    check_allowed(real, path, roots, use)
    return real
