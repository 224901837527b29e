"""Log observers: human text (default) or one JSON object per line."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
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


def make_observer(fmt: str, level: str, out: IO[str]) -> ILogObserver:
    base: ILogObserver = JSONLinesObserver(out) if fmt == "json" else textFileLogObserver(out)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    return FilteringLogObserver(base, [predicate])
