"""The shape every command has, and the request a front-end hands in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred

from gateway.core.events import Result, Sink
from gateway.core.flow import UNLIMITED, Flow
from gateway.core.params import Param, parse_line, usage
from gateway.core.scope import ANONYMOUS, Identity


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
    #: Who it proved to be (everyone is ``anonymous`` when no token is asked).
    identity: Identity = field(default=ANONYMOUS, compare=False)


@dataclass(frozen=True, slots=True)
class BodyRoute:
    """``POST <path>``: the request body is the parameter ``param`` (a
    manifest to check), with ``fixed`` arguments added to the query's, and a
    body limit of its own."""

    path: str
    param: str
    fixed: Mapping[str, str]
    max_bytes: int
    summary: str = ""
    #: Parameters this route does not take (the body stands in for them, or
    #: they make no sense with it).
    omits: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a command's JSON result, declared once (OpenAPI, docs).

    ``schema`` is the field's JSON Schema (``{"type": "integer"}``, or a
    nested object for structured fields); ``required`` says whether every
    successful result carries it.
    """

    name: str
    schema: Mapping[str, Any]
    help: str = ""
    required: bool = True


#: Keys every JSON result carries besides the command's own fields: the text
#: form (what a line client reads after any streamed lines) and a one-line
#: summary, so a client can show any command's result without knowing it.
RESERVED_FIELDS = frozenset({"text", "summary", "error"})

A = TypeVar("A")


class Command(Protocol[A]):
    """What a command is, declared once; every front-end derives its surface from it.

    ``A`` is the type of the validated arguments: :meth:`prepare` builds it and
    :meth:`run` receives it, so mypy checks the link.  A command subclasses
    this and sets what differs; the defaults fit a metered command served at
    ``GET /<name>`` with options parsed from its declared ``params``.
    """

    name: str
    summary: str
    timeout: float
    #: The parameters, declared once: parsing, validation, help, HTTP, OpenAPI.
    params: tuple[Param, ...] = ()
    #: The fields of the JSON result (besides ``text`` and ``summary``).
    result_fields: tuple[Field, ...] = ()
    #: Lines a line-oriented front-end prints around the output, once per run.
    frame: tuple[str, str] | None = None
    #: The JSON array streamed lines go into in a one-document HTTP answer
    #: (``{"lines": [...], ...}``); ``None``: the command streams no lines.
    stream_key: str | None = None
    #: Whether every answer has that array (else only those that stream lines:
    #: ``comphash -r`` has one, a single file's hash none).
    always_streams: bool = True
    #: Whether ``GET`` on :attr:`route` runs it (``exit`` is not: it ends a connection).
    on_http: bool = True
    #: The HTTP path when it is not ``/<name>`` (``help`` is ``/commands``).
    http_path: str | None = None
    #: Whether a request (HTTP) holds a quota slot while the command runs.
    metered: bool = True
    #: A ``POST`` route whose body is one of the parameters, if any.
    post: BodyRoute | None = None

    @property
    def usage(self) -> str:
        return usage(self.name, self.params)

    @property
    def route(self) -> str | None:
        """The HTTP path: ``http_path`` if set, else ``/<name>`` (``None`` if off HTTP)."""
        if not self.on_http:
            return None
        return self.http_path or f"/{self.name}"

    def timeout_for(self, args: A) -> float | None:
        """How long a run with ``args`` may take; ``None``: until it is stopped (a follow)."""
        return self.timeout

    def parse(self, rest: str) -> Mapping[str, object]:
        """Named arguments from the text after the command name."""
        return parse_line(self.name, self.params, rest)

    def prepare(self, args: Mapping[str, object]) -> A:
        """Validated arguments, or raise :class:`CommandError`."""
        ...

    def run(self, args: A, sink: Sink, flow: Flow) -> Deferred[Result]:
        """Run; stream events to ``sink``; fire with the final result.

        Cancelling the Deferred must stop the work (kill a child, stop a read).
        A command that streams much output pauses while ``flow`` is paused.
        """
        ...

    def run_as(self, identity: Identity, args: A, sink: Sink, flow: Flow) -> Deferred[Result]:
        """:meth:`run` for ``identity`` (whose scope allowed it): a command
        whose answer depends on who asks (``help``) overrides this."""
        return self.run(args, sink, flow)


AnyCommand = Command[Any]
