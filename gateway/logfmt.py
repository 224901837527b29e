"""Log observers: human text (default) or one JSON object per line."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import IO, Any, ClassVar

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
)
from zope.interface import implementer

_CONTROL = {i: f"\\x{i:02x}" for i in range(32)} | {0x7F: "\\x7f"}


def redact(line: str) -> str:
    """A command line fit for the log: an ``auth`` line never shows its token."""
    if line.lstrip()[:5].lower() in ("auth", "auth "):
        return "auth ***"
    return line


def printable(text: str, limit: int = 200) -> str:
    """``text`` with control characters escaped and cut to ``limit`` (for logs)."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return text.translate(_CONTROL)


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes each event as one JSON object on one line."""

    _SKIP = frozenset({"format", "message", "time", "system", "isError", "why", "failure"})

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(),
            "level": level.name if isinstance(level, type(LogLevel.info)) else "info",
            "namespace": event.get("log_namespace", ""),
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if key.startswith("log_") or key in self._SKIP:
                continue
            if isinstance(value, (str, int, float, bool)) or value is None:
                record[key] = value
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        self._out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._out.flush()


@implementer(ILogObserver)
class TextObserver:
    """``2026-11-25T16:52:01+0000 [namespace#info] message``, one line per event.

    Like Twisted's text observer, but the level filter is one comparison and
    the timestamp is formatted once a second, not once an event: logging is
    on the hot path (one event per command).
    """

    _ORDER: ClassVar[dict[str, int]] = {"debug": 0, "info": 1, "warn": 2, "error": 3, "critical": 4}

    def __init__(self, out: IO[str], level: str = "info") -> None:
        self._out = out
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
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback()}"
        system = event.get("log_system") or f"{event.get('log_namespace', '-')}#{name}"
        text = text.replace("\n", "\n\t")
        self._out.write(f"{self._time(event.get('log_time', 0.0))} [{system}] {text}\n")
        self._out.flush()


def make_observer(fmt: str, level: str, out: IO[str]) -> ILogObserver:
    if fmt == "json":
        predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
        return FilteringLogObserver(JSONLinesObserver(out), [predicate])
    return TextObserver(out, level)
