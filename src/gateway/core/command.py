"""The shape every command has, and the request a front-end hands in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from gateway.core.errors import CommandError
from gateway.core.events import Result, Sink
from gateway.core.flow import UNLIMITED, Flow
from gateway.core.params import Param


@dataclass(frozen=True, slots=True)
class Request:
    """A command to run.

    From a command line, ``rest`` is the unparsed text after the command name;
    from a structured front-end (HTTP query, JSON message), ``args`` holds the
    named arguments and ``rest`` is ``None``.
    """

    command: str
    args: Mapping[str, object] = field(default_factory=dict)
    rest: str | None = None

    @classmethod
    def from_line(cls, line: str) -> Request | None:
        """Split ``"comphash -a md5 /a b"`` into name and rest; blank -> ``None``."""
        text = line.strip()
        if not text:
            return None
        parts = text.split(None, 1)
        return cls(command=parts[0].lower(), rest=parts[1] if len(parts) > 1 else "")


@dataclass(frozen=True, slots=True)
class Client:
    """Who asks: the transport name (``tcp``, ``http``, ``websocket``) and peer."""

    transport: str
    peer: str
    #: The connection's back-pressure (what a client not reading pauses).
    flow: Flow = field(default=UNLIMITED, compare=False, repr=False)


class Command(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def params(self) -> tuple[Param, ...]:
        """The parameters, declared once: parsing, validation, help, HTTP, OpenAPI."""

    @property
    def usage(self) -> str: ...
    @property
    def summary(self) -> str: ...
    @property
    def timeout(self) -> float: ...
    @property
    def frame(self) -> tuple[str, str] | None:
        """Lines a line-oriented front-end prints around the output, once per run."""

    def parse(self, rest: str) -> Mapping[str, object]:
        """Named arguments from the text after the command name."""

    def prepare(self, args: Mapping[str, object]) -> Any:
        """Validated arguments, or raise :class:`CommandError`."""

    def run(self, args: Any, sink: Sink, flow: Flow) -> Deferred[Result]:
        """Run; stream events to ``sink``; fire with the final result.

        Cancelling the Deferred must stop the work (kill a child, stop a read).
        A command that streams much output pauses while ``flow`` is paused.
        """


def reject_unknown(name: str, args: Mapping[str, object], known: frozenset[str]) -> None:
    unknown = sorted(set(args) - known)
    if unknown:
        raise CommandError("bad_argument", f"{name}: unknown argument {unknown[0]!r}")


def no_arguments(name: str, rest: str) -> Mapping[str, object]:
    if rest.strip():
        raise CommandError("bad_argument", f"{name} takes no arguments")
    return {}
