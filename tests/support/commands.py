"""Commands whose behaviour the test controls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred

from gateway.core.command import Command
from gateway.core.errors import CommandError
from gateway.core.events import Lines, Result, Sink


class Stub(Command[Mapping[str, object]]):
    """A command whose run the test controls."""

    summary = "for tests"
    on_http = False

    def __init__(self, name: str = "stub", timeout: float = 5.0) -> None:
        self.name = name
        self.timeout = timeout
        self.runs: list[Deferred[Result]] = []
        self.cancelled = 0

    def parse(self, rest: str) -> Mapping[str, object]:
        if rest == "bad":
            raise CommandError("bad_argument", "bad stub")
        return {"rest": rest}

    def prepare(self, args: Mapping[str, object]) -> Mapping[str, object]:
        return args

    def run(self, args: Mapping[str, object], sink: Sink, flow: Any = None) -> Deferred[Result]:
        if args.get("rest") == "boom":
            raise RuntimeError("secret detail")
        if args.get("rest") == "fail":
            raise CommandError("not_found", "No such file: /x")
        sink(Lines(("working",)))

        def cancel(d: Deferred[Result]) -> None:
            self.cancelled += 1

        d: Deferred[Result] = Deferred(cancel)
        self.runs.append(d)
        return d


class ControlledSource:
    """A log source whose answer the test gives."""

    description = "controlled"

    def __init__(self) -> None:
        self.calls: list[tuple[int, Sink, Deferred[str]]] = []
        self.cancelled = 0

    def note_for(self, source: str) -> str | None:
        return None

    def tail(self, n: int, sink: Sink, flow: Any = None) -> Deferred[str]:
        def cancel(d: Deferred[str]) -> None:
            self.cancelled += 1

        d: Deferred[str] = Deferred(cancel)
        self.calls.append((n, sink, d))
        return d
