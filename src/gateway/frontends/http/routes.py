"""The REST front-end: Klein routes on ``twisted.web``.

Thin, like the line server: every command the service has is served at its
declared route (``GET /<name>``), its query checked against its declared
parameters; a metered command takes a quota slot; the route writes the service's events as
they come (``text/plain`` for curl, JSON on ``Accept: application/json`` or
``?format=json``).  Errors are ``error: <message>`` or RFC 9457
``application/problem+json`` with the stable code and its HTTP status.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Mapping
from http import HTTPStatus
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import PurePath
from typing import Any, ClassVar

from klein import Klein
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.server import Request as IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from gateway.config import HTTPConfig
from gateway.core.command import AnyCommand, BodyRoute, Client, Request
from gateway.core.errors import HTTP_STATUS, INTERNAL_MESSAGE, CommandError
from gateway.core.events import Dropped, Error, Event, Gap, Lines, Notice, Result
from gateway.core.flow import Flow
from gateway.core.memo import LastRendered
from gateway.core.metrics import CONTENT_TYPE as METRICS_TYPE
from gateway.core.metrics import render as render_metrics
from gateway.core.peers import peer_host
from gateway.core.quota import Slot, register_transport
from gateway.core.scope import FULL, Identity, Scope
from gateway.core.service import CommandService
from gateway.frontends.admission import Admission, is_busy
from gateway.logfmt import Logger
from gateway.sessions.text import dropped_line, gap_line, raw_bytes, text_block, utf8

TRANSPORT = register_transport("http", order=1)
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
PROBLEM = "application/problem+json"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream; charset=utf-8"
CONTENT_TYPES = {"text": TEXT, "json": JSON, "ndjson": NDJSON, "sse": SSE}
#: A command's answer's headers, by format: set as they will be sent (bytes,
#: in header case), with nothing to encode or look up for each request.
ANSWER_HEADERS = {
    fmt: (
        (b"Content-Type", [kind.encode()]),
        (b"X-Accel-Buffering", [b"no"]),  # stream through nginx too
        (b"Cache-Control", [b"no-store"]),
        (b"X-Content-Type-Options", [b"nosniff"]),
    )
    for fmt, kind in CONTENT_TYPES.items()
}
#: Routes that are not commands; no command may be served at one of them.
FIXED_ROUTES = frozenset({"/", "/healthz", "/metrics", "/openapi.json", "/ws", "/index.html"})


def peer_of(request: IRequest) -> str:
    return peer_host(request.getClientAddress())


def _single_args(request: IRequest) -> dict[str, str]:
    """The query as ``{name: value}``; a repeated name or non-UTF-8 is refused."""
    out: dict[str, str] = {}
    raw: Mapping[bytes, list[bytes]] = request.args or {}
    for key, values in raw.items():
        try:
            name = key.decode("utf-8")
            decoded = [v.decode("utf-8") for v in values]
        except UnicodeDecodeError:
            raise CommandError("bad_argument", "The query is not valid UTF-8.") from None
        if len(decoded) != 1:
            raise CommandError("bad_argument", f"Parameter {name!r} given more than once.")
        out[name] = decoded[0]
    return out


FORMATS = ("text", "json", "ndjson", "sse")


def response_format(request: IRequest) -> str:
    """``?format=`` decides (text, json, ndjson, sse); else the Accept header does."""
    raw: Mapping[bytes, list[bytes]] = request.args or {}
    fmt = raw.get(b"format")
    if fmt:
        chosen = fmt[-1].decode("ascii", "replace")
        return chosen if chosen in FORMATS else "text"
    accept = (request.getHeader("accept") or "").lower()
    if "text/plain" in accept:
        return "text"
    if "text/event-stream" in accept:
        return "sse"
    if "ndjson" in accept:
        return "ndjson"
    return "json" if "json" in accept else "text"


def wants_json(request: IRequest) -> bool:
    """Are errors told as problem+json (any format but text)?"""
    return response_format(request) != "text"


def query(request: IRequest, allowed: Iterable[str]) -> dict[str, str]:
    """Command arguments from the query; unknown names are refused."""
    args = _single_args(request)
    fmt = args.pop("format", None)
    if fmt is not None and fmt not in FORMATS:
        raise CommandError("bad_argument", f"format must be one of {', '.join(FORMATS)}")
    allowed = set(allowed)
    for name in args:
        if name not in allowed:
            raise CommandError("bad_argument", f"Unknown parameter: {name}")
    return args


def posted_args(request: IRequest, post: BodyRoute, names: Iterable[str]) -> dict[str, str]:
    """A ``POST`` route's arguments: the query's, the fixed ones, and the body
    (UTF-8 text) as ``post.param``.  The site has held the body to
    ``post.max_bytes`` already."""
    allowed = set(names) - {post.param, *post.fixed, *post.omits}
    args = query(request, allowed)
    content: Any = request.content
    content.seek(0)
    body = content.read()
    if not body:
        raise CommandError(
            "missing_argument", f"The {post.param} goes in the request body; none was sent."
        )
    try:
        args[post.param] = body.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError("bad_argument", "The body is not valid UTF-8.") from None
    args.update(post.fixed)
    return args


class ResponseWriter:
    """Writes one command's events to one HTTP response, as they arrive.

    ``fmt`` is ``text`` (the lines), ``json`` (one document: ``lines_key``
    names the array streamed lines go into, ``{"lines": [...], <result>}``; a
    failure after the first line ends it ``{"lines": [...], "error": {...}}``),
    ``ndjson`` (one object per line: ``{"line": ..., "cursor": ...}``, then
    ``{"result": {...}}`` or ``{"error": {...}}``) or ``sse`` (Server-Sent
    Events: one ``data:`` event per line with its cursor as ``id:``, a
    comment every ``keepalive`` seconds while quiet).  Lines a client lost
    and resume gaps are said in each format, never left out silently.
    """

    def __init__(
        self,
        request: IRequest,
        fmt: str,
        lines_key: str | None = None,
        clock: IReactorTime | None = None,
        keepalive: float = 15.0,
        always: bool = True,
    ) -> None:
        """``always``: the JSON document has the ``lines_key`` array even when
        nothing was streamed (else only once a line is)."""
        self.request = request
        self.fmt = fmt
        self.as_json = fmt != "text"
        self.lines_key = lines_key
        self._always = always
        self._array = False  # the lines array of a JSON document is open
        self.started = False
        self.gone = False
        self._first_item = True
        self._clock = clock
        self._keepalive = keepalive
        self._ping: LoopingCall | None = None

    def _lost(self, failure: Failure) -> None:
        self.gone = True
        self._finished(None)

    def _finished(self, result: object) -> None:
        if self._ping is not None and self._ping.running:
            self._ping.stop()

    def _start(self) -> None:
        if self.started:
            return
        self.started = True
        r = self.request
        r.setResponseCode(200)
        set_header = r.responseHeaders.setRawHeaders
        for name, values in ANSWER_HEADERS[self.fmt]:
            set_header(name, values)
        if self.fmt == "json" and self.lines_key and self._always:
            self._open_array()
        elif self.fmt == "sse" and self._clock is not None:
            ping = LoopingCall(self._comment)
            ping.clock = self._clock
            ping.start(self._keepalive, now=False)
            self._ping = ping
            # (other answers need not know: twisted.web drops what is
            # written to a client that has gone)
            r.notifyFinish().addCallbacks(self._finished, self._lost)

    def _open_array(self) -> None:
        assert self.lines_key is not None
        self._array = True
        self.request.write(b'{"%s":[' % self.lines_key.encode())

    def _comment(self) -> None:
        if not self.gone:
            self.request.write(b": keepalive\n\n")

    def __call__(self, event: Event) -> None:
        if self.gone:
            return
        if isinstance(event, Lines):
            self._start()
            self._lines(event)
        elif isinstance(event, Result):
            self._start()
            self._result(event)
        elif isinstance(event, Error):
            self._error(event)
        elif isinstance(event, (Dropped, Gap)):
            self._start()
            self._notice(event)
        elif isinstance(event, Notice) and self.fmt in ("ndjson", "sse"):
            # text/plain and one JSON document stay a manifest (the result lists it)
            self._start()
            if self.fmt == "ndjson":
                self.request.write((json.dumps({"notice": event.text}) + "\n").encode())
            else:
                self.request.write(utf8(f"event: notice\ndata: {event.text}\n\n"))

    def _lines(self, event: Lines) -> None:
        if not event.lines:
            return
        if self.fmt == "json":
            if not self._array:
                self._open_array()
            items = ",".join(json.dumps(line, ensure_ascii=False) for line in event.lines)
            self.request.write(utf8(items if self._first_item else "," + items))
            self._first_item = False
        else:
            self.request.write(_shared_stream(event, self.fmt))

    def _notice(self, event: Dropped | Gap) -> None:
        data: dict[str, object]
        if isinstance(event, Dropped):
            text, name, data = dropped_line(event.count), "dropped", {"dropped": event.count}
        else:
            text, name = gap_line(event.missing), "stale"
            data = {"stale": True, "missing": event.missing}
        if self.fmt == "ndjson":
            self.request.write(utf8(json.dumps(data) + "\n"))
        elif self.fmt == "sse":
            count = event.count if isinstance(event, Dropped) else event.missing
            shown = "" if count is None else str(count)
            self.request.write(utf8(f"event: {name}\ndata: {shown}\n\n"))
        else:  # a line of its own (inside the lines array for json)
            self._lines(Lines((text,)))

    def _result(self, result: Result) -> None:
        fmt = self.fmt
        if fmt == "text":
            if result.plain:
                self.request.write(text_block(result.plain))
            return
        document = json.dumps(result.document(), ensure_ascii=False)
        if fmt == "ndjson":
            self.request.write(utf8(f'{{"result":{document}}}\n'))
        elif fmt == "sse":
            self.request.write(utf8(f"event: result\ndata: {document}\n\n"))
        elif self._array:
            rest = document[1:]  # the fields after the lines array
            self.request.write(utf8("]" + ("," + rest if rest != "}" else "}")))
        else:
            self.request.write(utf8(document))

    def _error(self, error: Error) -> None:
        if not self.started:
            self.started = True
            headers = {}
            if error.retry_after is not None:
                headers["retry-after"] = str(error.retry_after)
            write_error(self.request, error.code, error.message, self.as_json, headers)
            return
        # Too late for a status code: finish the body so the failure shows.
        problem = json.dumps({"code": error.code, "message": error.message})
        if self.fmt == "json":
            tail = f'],"error":{problem}}}' if self._array else ""
            self.request.write(utf8(tail))
        elif self.fmt == "ndjson":
            self.request.write(utf8(f'{{"error":{problem}}}\n'))
        elif self.fmt == "sse":
            self.request.write(utf8(f"event: error\ndata: {problem}\n\n"))
        else:
            self.request.write(raw_bytes(f"error: {error.message}\n"))


def stream_bytes(event: Lines, fmt: Hashable) -> bytes:
    """``event``'s lines in a streaming format: ``text``, ``ndjson`` or ``sse``."""
    lines = event.lines
    if fmt == "text":
        return text_block(lines)
    if fmt == "ndjson":
        if event.cursors:
            return utf8(
                "".join(
                    json.dumps({"line": line, "cursor": cursor}, ensure_ascii=False) + "\n"
                    for line, cursor in zip(lines, event.cursors, strict=True)
                )
            )
        plain = (json.dumps({"line": line}, ensure_ascii=False) + "\n" for line in lines)
        return utf8("".join(plain))
    if event.cursors:
        return utf8(
            "".join(
                f"id: {cursor}\ndata: {line}\n\n"
                for line, cursor in zip(lines, event.cursors, strict=True)
            )
        )
    return utf8("".join(f"data: {line}\n\n" for line in lines))


#: A followed log's batch is one event for every watcher: rendered once per format.
_shared_stream: LastRendered[Lines, bytes] = LastRendered(stream_bytes)


def write_error(
    request: IRequest,
    code: str,
    message: str,
    as_json: bool,
    headers: Mapping[str, str] | None = None,
) -> None:
    status = HTTP_STATUS[code]
    request.setResponseCode(status)
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    request.setHeader("cache-control", "no-store")
    request.setHeader("x-content-type-options", "nosniff")
    if as_json:
        request.setHeader("content-type", PROBLEM)
        problem = {
            "type": "about:blank",
            "title": HTTPStatus(status).phrase,
            "status": status,
            "detail": message,
            "code": code,
        }
        body = utf8(json.dumps(problem, ensure_ascii=False))
    else:
        request.setHeader("content-type", TEXT)
        body = raw_bytes(f"error: {message}\n")
    request.setHeader("content-length", str(len(body)))
    request.write(body)


class Console:
    """The browser console's files, read once at start-up and served from memory."""

    TYPES: ClassVar[dict[str, str]] = {
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".svg": "image/svg+xml",
    }
    #: The page may talk to its own origin only, run only its own script, and
    #: may not be framed by another site.
    POLICY = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )

    def __init__(self, files: Mapping[str, tuple[str, bytes]]) -> None:
        self.files = dict(files)

    @classmethod
    def load(cls, directory: Traversable) -> Console:
        files = {}
        for path in sorted(directory.iterdir(), key=lambda p: p.name):
            kind = cls.TYPES.get(PurePath(path.name).suffix)
            if kind is not None and path.is_file():
                files[path.name] = (kind, path.read_bytes())
        if "index.html" not in files:
            raise FileNotFoundError(f"no index.html in {directory}")
        return cls(files)

    def render(self, request: IRequest, name: str) -> bytes:
        kind, body = self.files[name]
        request.setHeader("content-type", kind)
        request.setHeader("content-length", str(len(body)))
        request.setHeader("cache-control", "no-cache")
        request.setHeader("x-content-type-options", "nosniff")
        request.setHeader("content-security-policy", self.POLICY)
        request.setHeader("referrer-policy", "no-referrer")
        return body


def console_dir() -> Traversable:
    """The console's files: package data, wherever the package was installed."""
    return resources.files("gateway") / "web"


class CommandRoutes(Resource):
    """``GET``/``HEAD`` on a command's route goes straight to the command.

    Every command is served at its route, found in the service by path (one
    dict lookup), so a command added by a config reload is served at once.
    Everything else (other methods, the fixed routes, the console, unknown
    paths) goes to the Klein routes, whose matching costs the hot path
    noticeably more.
    """

    isLeaf = True

    def __init__(self, api: RestAPI, fallback: Resource) -> None:
        super().__init__()
        self.api = api
        self.fallback = fallback

    def render(self, request: IRequest) -> bytes | int:
        service = self.api.service
        path = request.path.decode("utf-8", "replace")
        posted = request.method == b"POST"
        if posted:
            command = service.at_post_route(path)
        else:
            command = service.at_route(path) if request.method in (b"GET", b"HEAD") else None
            if command is None and service.at_post_route(path) is not None:
                method = request.method.decode("ascii", "replace")
                write_error(
                    request,
                    "method_not_allowed",
                    f"Method {method} is not allowed here (allowed: POST)",
                    wants_json(request),
                    {"allow": "POST"},
                )
                return b""
        if command is None:
            rendered: bytes | int = self.fallback.render(request)
            return rendered
        try:
            answer = self.api._command(request, command, posted)
        except Exception:
            self.api.log.failure("route {path} failed", path=command.route)
            write_error(request, "internal", INTERNAL_MESSAGE, wants_json(request))
            return b""
        if isinstance(answer, bytes):
            if not answer and request.startedWriting:  # answered here and now
                request.finish()
                return NOT_DONE_YET
            return answer
        gone = [False]

        def lost(failure: Failure) -> None:
            gone[0] = True
            answer.cancel()

        def done(_: object) -> None:
            if not gone[0]:
                request.finish()

        def failed(failure: Failure) -> None:
            self.api.log.failure("route {path} failed", failure, path=command.route)
            if not gone[0]:
                if not request.startedWriting:
                    write_error(request, "internal", INTERNAL_MESSAGE, wants_json(request))
                request.finish()

        answer.addCallbacks(done, failed)
        if not answer.called:  # still running: a client that leaves cancels it
            request.notifyFinish().addErrback(lost)
        return NOT_DONE_YET


class RestAPI:
    app = Klein()
    log = Logger(namespace="gateway.frontends.http.routes")

    def __init__(
        self,
        admission: Admission,
        service: CommandService,
        settings: HTTPConfig,
        openapi: Callable[[Scope], Mapping[str, Any]],
        websocket: Any = None,
        console: Console | None = None,
    ) -> None:
        for command in service.commands:
            if command.route in FIXED_ROUTES:
                raise ValueError(f"{command.name}: route {command.route} is the gateway's own")
        self.admission = admission
        self.service = service
        self.settings = settings
        self._openapi = openapi
        #: What makes /healthz say "degraded" (the audit log failing, ...).
        self.problems: Callable[[], list[str]] = list
        self._websocket = websocket
        self._console = console
        self.shutting_down = False

    def _denied(
        self, request: IRequest, as_json: bool, peer: str | None = None
    ) -> Identity | Deferred[None]:
        """Who asks, if the request may go on; else the (delayed) 401 or 429 answer."""
        header = request.getHeader("authorization")
        channel = request.channel
        if header is None and channel is not None:
            known = self.admission.known_peer(channel.transport)
            if known is not None:  # a local user, a verified client certificate
                return known
        denial = self.admission.check_bearer(
            peer_of(request) if peer is None else peer,
            header,
            getattr(channel, "proven", None),  # (what this connection proved last)
        )
        if isinstance(denial, Identity):
            return denial
        e = denial.error
        if denial.retry_after is not None:
            headers = {"retry-after": str(denial.retry_after)}
        else:
            headers = {"www-authenticate": 'Bearer realm="gateway"'}
        # A wrong token is answered slowly, more slowly each time.
        return deferLater(
            self.admission.clock,
            denial.delay,
            write_error,
            request,
            e.code,
            e.message,
            as_json,
            headers,
        )

    def resource(self) -> Resource:
        """The site's root: command routes dispatched directly, the rest by Klein."""
        return CommandRoutes(self, self.app.resource())

    # -- command routes: GET /<name> for every command the service has (help is
    # /commands); each takes the query names its parameters declare.  Metered
    # commands hold one quota slot while they run; the others (help, stats)
    # take none, so monitoring keeps working when the quota is full.

    def _command(
        self, request: IRequest, command: AnyCommand, posted: bool = False
    ) -> Deferred[None] | bytes:
        fmt = response_format(request)
        as_json = fmt != "text"
        peer = peer_of(request)
        identity = self._denied(request, as_json, peer)
        if not isinstance(identity, Identity):
            return identity
        refusal = self.admission.auth.hold(identity)  # its max_clients, while the request runs
        if refusal is not None:
            write_error(request, refusal.code, refusal.message, as_json)
            return b""
        if identity.scope.max_clients is not None:
            auth = self.admission.auth
            request.notifyFinish().addBoth(lambda _: auth.release(identity))
        names = [p.name for p in command.params]
        try:
            if posted and command.post is not None:
                args = posted_args(request, command.post, names)
            else:
                args = query(request, names)
        except CommandError as e:
            write_error(request, e.code, e.message, as_json)
            return b""
        resume = request.getHeader("last-event-id")
        if resume and "after" in names and "after" not in args:
            args["after"] = resume  # an EventSource reconnecting: go on after what it saw
        run = Request(command.name, args=args)
        if not command.metered:
            client = Client(TRANSPORT, peer, identity=identity)
            writer = self._writer(request, fmt, command)
            return self.service.execute(run, client, writer).addCallback(lambda _: None)
        return self._metered(request, run, command, fmt, identity, peer)

    def _writer(self, request: IRequest, fmt: str, command: AnyCommand) -> ResponseWriter:
        return ResponseWriter(
            request,
            fmt,
            command.stream_key,
            self.admission.clock,
            self.settings.sse_keepalive,
            command.always_streams,
        )

    def _metered(
        self,
        request: IRequest,
        run: Request,
        command: AnyCommand,
        fmt: str,
        identity: Identity,
        peer: str,
    ) -> Deferred[None] | bytes:
        """Run ``run`` holding a quota slot, the client's reading pacing it.

        The common case, a slot granted at once and a command answered at
        once, is served here and now: ``b""`` (the answer written) and no
        Deferred of its own.  Otherwise a Deferred that fires once the
        answer is written; cancelling it (the client went away) stops the
        command and gives the slot back.
        """
        acquired = self.admission.acquire(TRANSPORT, peer)
        flow = self._flow(request, peer)
        slot: Slot | None = None
        running: Deferred[str] | None = None

        def start() -> Deferred[str]:
            # The slot is held: run, paused while the client does not read.
            # Failing to start (a bug) is the client's 500 and a run that ended.
            try:
                writer = self._writer(request, fmt, command)
                request.registerProducer(flow, True)
                return self.service.execute(run, Client(TRANSPORT, peer, flow, identity), writer)
            except Exception:
                self.log.failure("route {path} failed", path=command.route)
                if not request.startedWriting:
                    write_error(request, "internal", INTERNAL_MESSAGE, fmt != "text")
                return succeed("internal")

        if acquired.called and isinstance(acquired.result, Slot):  # granted at once
            slot = acquired.result
            running = start()
            if running.called:  # and answered at once
                self._finish(request, flow, slot)
                return b""

        def cancel(d: Deferred[None]) -> None:
            # The client went away: stop the command, give the slot back.
            if running is not None:
                running.cancel()
            if slot is not None:
                slot.release()

        done: Deferred[None] = Deferred(cancel)

        def finished(outcome: str) -> None:
            assert slot is not None
            self._finish(request, flow, slot)
            if not done.called:
                done.callback(None)

        if running is not None:  # granted; answering later
            running.addCallback(finished)
            return done

        def granted(got: Slot) -> None:
            nonlocal slot, running
            if done.called:  # cancelled while the quota was answering
                got.release()
                return
            slot = got
            running = start()
            running.addCallback(finished)

        def refused(failure: Failure) -> None:
            if done.called:
                return
            error = failure.value
            assert isinstance(error, CommandError)  # admission says what went wrong
            retry = {"retry-after": str(self.settings.retry_after)}
            headers = retry if is_busy(error) else {}
            write_error(request, error.code, error.message, fmt != "text", headers)
            done.callback(None)

        acquired.addCallbacks(granted, refused)
        return done

    def _flow(self, request: IRequest, peer: str) -> Flow:
        """The request's back-pressure: a client that stops reading is closed."""

        def stalled() -> None:
            self.log.info("HTTP client {peer} stopped reading; closing", peer=peer)
            transport: Any = request.channel.transport
            if transport is not None:
                transport.abortConnection()

        return self.admission.make_flow(stalled)

    @staticmethod
    def _finish(request: IRequest, flow: Flow, slot: Slot) -> None:
        """A run is over: its producer off the request, its slot back."""
        if request.producer is not None and request.channel is not None:
            request.unregisterProducer()
        flow.stopProducing()
        slot.release()

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: IRequest) -> bytes:
        if self.shutting_down:  # load balancers: take this one out
            write_error(request, "unavailable", "Server shutting down.", wants_json(request))
            return b""
        try:
            query(request, ())
        except CommandError as e:
            write_error(request, e.code, e.message, wants_json(request))
            return b""
        request.setHeader("cache-control", "no-store")
        problems = self.problems()
        if wants_json(request):
            request.setHeader("content-type", JSON)
            if problems:
                return json.dumps({"status": "degraded", "problems": problems}).encode()
            return b'{"status":"ok"}'
        request.setHeader("content-type", TEXT)
        if problems:
            return "".join(f"degraded: {p}\n" for p in problems).encode()
        return b"ok\n"

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: IRequest) -> Deferred[None] | bytes:
        if self.admission.metrics_need_token:
            identity = self._denied(request, wants_json(request))
            if not isinstance(identity, Identity):
                return identity
            if not identity.scope.may_run("stats"):  # the same figures as stats
                message = (
                    f"{identity.shown} may not read the metrics (stats is not among its commands)"
                )
                write_error(request, "forbidden", message, wants_json(request))
                return b""
        request.setHeader("content-type", METRICS_TYPE)
        request.setHeader("cache-control", "no-store")
        text = render_metrics(
            self.admission.quota.snapshot(),
            self.service.metrics,
            self.service.running,
            self.service.uptime(),
        )
        return text.encode()

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        """The API; with a valid token, only what that token may run (without
        one, the whole document: it describes, it grants nothing)."""
        scope = FULL
        header = request.getHeader("authorization")
        if header is not None and self.admission.auth.enabled:
            found = self.admission.check_bearer(peer_of(request), header)
            if isinstance(found, Identity):
                scope = found.scope
        request.setHeader("content-type", JSON)
        return json.dumps(self._openapi(scope), indent=2).encode()

    # -- the WebSocket and the browser console

    @app.route("/ws", methods=["GET"])
    def websocket(self, request: IRequest) -> Any:
        if self._websocket is None:
            raise NotFound()
        return self._websocket

    @app.route("/", methods=["GET"])
    def index(self, request: IRequest) -> bytes:
        return self._static(request, "index.html")

    @app.route("/<string:name>", methods=["GET"])
    def named(self, request: IRequest, name: str) -> Deferred[None] | bytes:
        """A command's route, else one of the console's files."""
        command = self.service.at_route("/" + name)
        if command is not None:
            return self._command(request, command)
        if name == "index.html":
            raise NotFound()  # one address for the page: /
        return self._static(request, name)

    def _static(self, request: IRequest, name: str) -> bytes:
        if self._console is None or name not in self._console.files:
            raise NotFound()
        return self._console.render(request, name)

    # -- errors: the same two formats everywhere, never a traceback

    @app.handle_errors(NotFound)
    def not_found(self, request: Any, failure: Failure) -> bytes:
        path = request.path.decode("utf-8", "replace")
        write_error(request, "not_found", f"No such route: {path}", wants_json(request))
        return b""

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self, request: Any, failure: Failure) -> bytes:
        methods = sorted(getattr(failure.value, "valid_methods", None) or ["GET", "HEAD"])
        method = request.method.decode("ascii", "replace")
        write_error(
            request,
            "method_not_allowed",
            f"Method {method} is not allowed here (allowed: {', '.join(methods)})",
            wants_json(request),
            {"allow": ", ".join(methods)},
        )
        return b""

    @app.handle_errors(Exception)
    def internal(self, request: Any, failure: Failure) -> bytes:
        self.log.failure("route failed", failure)
        write_error(request, "internal", INTERNAL_MESSAGE, wants_json(request))
        return b""
