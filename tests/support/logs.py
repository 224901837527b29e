"""Capturing what the gateway logs, as events."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twisted.logger import ILogObserver, globalLogPublisher
from zope.interface import implementer


@implementer(ILogObserver)
class Recorder:
    """Appends every log event to ``events``."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)


@contextmanager
def recorded_events() -> Iterator[list[dict[str, Any]]]:
    """The events logged inside the ``with`` block."""
    events: list[dict[str, Any]] = []
    recorder = Recorder(events)
    globalLogPublisher.addObserver(recorder)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(recorder)
