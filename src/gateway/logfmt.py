"""Logging: the gateway's ``Logger``, and observers for human text (default)
or one JSON object per line."""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any, ClassVar

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
)
from twisted.logger import Logger as _TwistedLogger
from zope.interface import implementer

_LEVELS = frozenset(LogLevel.iterconstants())


class Logger(_TwistedLogger):
    """Twisted's ``Logger``, with a cheaper check of the level.

    Twisted's ``emit`` checks that the level is one of ``LogLevel``'s by
    listing (and sorting) the constants for every event: 3 us of a command's
    log line, which is on every hot path.  The same check here is one set
    lookup; an invalid level is still reported as Twisted reports it.
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        if level not in _LEVELS:
            super().emit(level, format, **kwargs)  # Twisted's own complaint
            return
        event = kwargs
        event.update(
            log_logger=self,
            log_level=level,
            log_namespace=self.namespace,
            log_source=self.source,
            log_format=format,
            log_time=time.time(),
        )
        trace = event.get("log_trace")
        if trace is not None:
            trace.append((self, self.observer))  # type: ignore[attr-defined]
        self.observer(event)


#: What a log line never holds raw: C0 and C1 controls, DEL, the Unicode line
#: and paragraph separators (a line break to many viewers), and lone
#: surrogates (not encodable: the log writer would fail and the event vanish).
_ESCAPES: dict[int, str] = (
    {i: f"\\x{i:02x}" for i in (*range(0x20), *range(0x7F, 0xA0))}
    | {0x2028: "\\u2028", 0x2029: "\\u2029"}
    | {i: f"\\u{i:04x}" for i in range(0xD800, 0xE000)}
)


_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def escape(text: str) -> str:
    """``text`` safe to write as (part of) one log line."""
    if _UNSAFE.search(text) is None:  # nearly always: no copy, no per-character lookup
        return text
    return text.translate(_ESCAPES)


def message(event: dict[str, Any]) -> str:
    """The event's message, formatted (not yet escaped).

    The common event (a ``log_format`` of plain ``{name}`` and ``{name:spec}``
    fields) is formatted by ``str.format_map`` in C; anything else, or any
    failure, by Twisted's ``formatEvent`` (calls in fields, missing fields,
    ``log_text``), which says what went wrong rather than raising.
    """
    fmt = event.get("log_format")
    if fmt is not None and "(" not in fmt:
        try:
            return str(fmt.format_map(event))
        except Exception:
            pass
    return formatEvent(event)


def is_auth_line(line: str) -> bool:
    """Is this command line an ``auth`` line, however it is spaced?

    Split exactly as the command parser splits (any Unicode whitespace), so
    that every spelling the parser would take as ``auth`` is recognised here.
    """
    words = line.split(None, 1)
    return bool(words) and words[0].lower() == "auth"


def redact(line: str) -> str:
    """A command line fit for the log: an ``auth`` line never shows its token."""
    return "auth ***" if is_auth_line(line) else line


def printable(text: str, limit: int = 200) -> str:
    """``text`` escaped (see :func:`escape`) and cut to ``limit`` (for logs)."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return escape(text)


class TurnFlush:
    """Flushes a log stream once per reactor turn instead of once per line.

    Logging is on the hot path (a line per command); a flush is a system
    call.  Lines logged in the reactor's thread are flushed by a call at the
    end of the turn, so they reach the journal or the file a moment later and
    together; a line logged from any other thread is flushed at once.
    """

    def __init__(self, out: IO[str], call_later: Callable[..., object]) -> None:
        self._out = out
        self._call_later = call_later
        self._thread = threading.get_ident()
        self._pending = False

    def __call__(self) -> None:
        if threading.get_ident() != self._thread:
            self._out.flush()
        elif not self._pending:
            self._pending = True
            self._call_later(0, self.flush)

    def flush(self) -> None:
        self._pending = False
        self._out.flush()


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes each event as one JSON object on one line."""

    _SKIP = frozenset({"format", "message", "time", "system", "isError", "why", "failure"})

    def __init__(self, out: IO[str], flush: Callable[[], None] | None = None) -> None:
        self._out = out
        self._flush = flush or out.flush

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(),
            "level": level.name if isinstance(level, type(LogLevel.info)) else "info",
            "namespace": event.get("log_namespace", ""),
            "message": escape(message(event)),
        }
        for key, value in event.items():
            if key.startswith("log_") or key in self._SKIP:
                continue
            if isinstance(value, str):
                record[key] = escape(value)
            elif isinstance(value, (int, float, bool)) or value is None:
                record[key] = value
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = "\n".join(map(escape, failure.getTraceback().split("\n")))
        self._out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._flush()


@implementer(ILogObserver)
class TextObserver:
    """``2026-11-25T16:52:01+0000 [namespace#info] message``, one line per event.

    Like Twisted's text observer, but the level filter is one comparison and
    the timestamp is formatted once a second, not once an event: logging is
    on the hot path (one event per command).
    """

    _ORDER: ClassVar[dict[str, int]] = {"debug": 0, "info": 1, "warn": 2, "error": 3, "critical": 4}

    def __init__(
        self,
        out: IO[str] | io.TextIOBase,
        level: str = "info",
        flush: Callable[[], None] | None = None,
    ) -> None:
        self._out = out
        self._flush = flush or out.flush
        self._minimum = self._ORDER[level]
        self._second = -1
        self._stamp = ""

    def _time(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            local = datetime.fromtimestamp(second).astimezone()
            self._stamp = local.strftime("%Y-%m-%dT%H:%M:%S%z")
        return self._stamp

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        name = level.name if level is not None else "info"
        if self._ORDER.get(name, 1) < self._minimum:
            return
        self._out.write(self.line(event, name))
        self._flush()

    def line(self, event: dict[str, Any], level: str) -> str:
        """The event as text: one line, and an indented traceback if any.

        Whatever the event's fields hold (client text included), the message
        is escaped here, so no code path can write a raw control character,
        line break or unencodable character into the log.
        """
        text = escape(message(event))
        failure = event.get("log_failure")
        if failure is not None:
            # Each traceback line indented: nothing in it can pass for an entry.
            lines = failure.getTraceback().rstrip("\n").split("\n")
            text = "\n\t".join([text, *map(escape, lines)])
        system = event.get("log_system") or f"{event.get('log_namespace', '-')}#{level}"
        system = escape(str(system))
        return f"{self._time(event.get('log_time', 0.0))} [{system}] {text}\n"


class _Lines(io.TextIOBase):
    """A file-like sink that keeps the last lines written to it."""

    def __init__(self, keep: int) -> None:
        self.lines: deque[str] = deque(maxlen=keep)

    def write(self, text: str) -> int:
        self.lines.extend(text.rstrip("\n").split("\n"))
        return len(text)


@implementer(ILogObserver)
class RecentLog:
    """The gateway's own last log lines, in memory (a ``lastlog`` source of last
    resort on machines with no system log).

    Logging is on the hot path, so an event is kept as its time, level,
    names and message, formatted (not yet escaped) but not made a line until
    someone asks: a tuple of strings, which holds nothing else alive and
    which the garbage collector soon stops looking at.
    """

    def __init__(self, keep: int = 1000, level: str = "info") -> None:
        self._events: deque[tuple[float, str, object, object, str]] = deque(maxlen=keep)
        self._minimum = TextObserver._ORDER[level]

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        name = level.name if level is not None else "info"
        if TextObserver._ORDER.get(name, 1) < self._minimum:
            return
        self._events.append(
            (
                event.get("log_time", 0.0),
                name,
                event.get("log_namespace", "-"),
                event.get("log_system"),
                message(event),
            )
        )

    def tail(self, n: int) -> list[str]:
        events = list(self._events)[-n:] if n > 0 else []
        sink = _Lines(len(events) or 1)
        text = TextObserver(sink, "debug")
        for when, level, namespace, system, said in events:
            text(
                {
                    "log_time": when,
                    "log_level": LogLevel.levelWithName(level),
                    "log_namespace": namespace,
                    "log_system": system,
                    "log_format": "{said}",
                    "said": said,
                }
            )
        return list(sink.lines)[-n:] if n > 0 else []


def make_observer(
    fmt: str, level: str, out: IO[str], flush: Callable[[], None] | None = None
) -> ILogObserver:
    """``flush``: how a line is flushed (default: at once)."""
    if fmt == "json":
        predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
        return FilteringLogObserver(JSONLinesObserver(out, flush), [predicate])
    return TextObserver(out, level, flush)
