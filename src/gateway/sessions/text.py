"""How events read on a line-oriented transport (netcat, WebSocket text mode).

The wording of the original line server is kept: ``Command not found.``,
``Please provide a path.``, ``An error occurred: <message>``, and
``Begin lastlog`` / ``End lastlog`` around the lines, once per command.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.core.events import (
    Dropped,
    Error,
    Event,
    Following,
    Gap,
    Lines,
    Notice,
    Progress,
    Result,
)
from gateway.core.memo import LastRendered

#: Errors whose message is printed as is, without ``An error occurred:``.
BARE_CODES = frozenset({"unknown_command", "missing_argument", "quota_exceeded", "unauthorized"})


def error_line(code: str, message: str) -> str:
    return message if code in BARE_CODES else f"An error occurred: {message}"


def dropped_line(count: int) -> str:
    lines = "line" if count == 1 else "lines"
    return f"... {count} {lines} dropped (not read in time) ..."


def gap_line(missing: int | None) -> str:
    if missing is None:
        return (
            "... the cursor is from an earlier run: lines may be missing; from the oldest kept ..."
        )
    lines = "line" if missing == 1 else "lines"
    return f"... {missing} {lines} may be missing (older than what this follow may replay) ..."


class TextRenderer:
    """Turns one command's events into output lines; one renderer per run."""

    def __init__(self, frame: tuple[str, str] | None = None) -> None:
        self._frame = frame
        self._begun = False

    def _begin(self) -> list[str]:
        if self._frame is None or self._begun:
            return []
        self._begun = True
        return [self._frame[0]]

    def _end(self) -> list[str]:
        if self._frame is None or not self._begun:
            return []
        return [self._frame[1]]

    def render(self, event: Event) -> Sequence[str]:
        if isinstance(event, Lines):
            if self._begun or self._frame is None:
                return event.lines  # as it is: shared by every follower of a batch
            return [*self._begin(), *event.lines]
        if isinstance(event, Result):
            return [*self._begin(), *event.text, *self._end()]
        if isinstance(event, Error):
            return [error_line(event.code, event.message), *self._end()]
        if isinstance(event, Following):
            return self._begin()  # live now: said at once, even with no line yet
        if isinstance(event, Progress):
            return []
        if isinstance(event, Dropped):
            return [*self._begin(), dropped_line(event.count)]
        if isinstance(event, Gap):
            return [*self._begin(), gap_line(event.missing)]
        if isinstance(event, Notice):
            return [*self._begin(), event.text]
        raise TypeError(f"not an event: {event!r}")


def raw_bytes(text: str) -> bytes:
    """``text`` as UTF-8, a file name's undecodable bytes given back as they
    were (so a manifest line names the file ``sha256sum`` names); any other
    unencodable character becomes ``?``."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def utf8(text: str) -> bytes:
    """``text`` as valid UTF-8 (JSON, a WebSocket text frame): a file name's
    undecodable bytes become U+FFFD, as ``b3sum`` shows them."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return raw_bytes(text).decode("utf-8", "replace").encode("utf-8")


def text_block(lines: Sequence[str]) -> bytes:
    """``lines`` as text, each ended by ``\\n`` (a file name's raw bytes kept)."""
    return raw_bytes("".join(f"{line}\n" for line in lines))


_encoded: LastRendered[Sequence[str], bytes] = LastRendered(lambda lines, _: text_block(lines))


def encode_lines(lines: Sequence[str]) -> bytes:
    """One ``\\n``-terminated UTF-8 block, so a batch of lines is one write.

    The same batch sent to many followers is the same tuple: it is encoded
    once, for all of them.
    """
    if isinstance(lines, tuple):
        return _encoded(lines)
    return text_block(lines)
