"""The ``gateway.v1.json`` WebSocket subprotocol, without any WebSocket.

Requests::

    {"id": 7, "command": "comphash", "args": {"path": "/etc/hostname"}}
    {"id": 7, "line": "comphash /etc/hostname"}
    {"id": 7, "cancel": true}
    {"id": 7, "auth": "<token>"}      (first, when the gateway has tokens)

Replies carry the request's ``id``::

    {"id": 7, "type": "line", "text": "..."}
    {"id": 7, "type": "progress", "done": N, "total": M}
    {"id": 7, "type": "notice", "text": "# skipped: /srv/x (symbolic link)"}
    {"id": 7, "type": "result", "result": {..., "text": [...], "summary": "..."}}
    {"id": 7, "type": "error", "code": "...", "message": "..."}
    {"id": 7, "type": "cancelled"}

A result holds the command's declared fields plus its text form (``text``,
the lines after any streamed ones) and a one-line ``summary``, so a client
shows any command without knowing it.  A message that cannot be understood
gets an ``error`` reply (with ``"id": null`` when it has no usable id); the
connection stays open.  Several commands may run at once, up to a limit per
connection.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from gateway.core.auth import REQUIRED, Authenticator
from gateway.core.command import Client, Request
from gateway.core.errors import CommandError
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
from gateway.core.scope import Identity
from gateway.core.service import CommandService
from gateway.logfmt import Logger, is_auth_line, printable
from gateway.sessions.login import Login, revocation

Id = int | str
FIELDS = frozenset({"id", "command", "args", "line", "cancel", "auth"})


class MessageError(Exception):
    def __init__(self, id: Id | None, message: str, code: str = "bad_argument") -> None:
        super().__init__(message)
        self.id = id
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Run:
    id: Id
    request: Request
    text: str  # what the client asked, for the log


@dataclass(frozen=True)
class Cancel:
    id: Id


@dataclass(frozen=True)
class Auth:
    id: Id
    token: str

    def __repr__(self) -> str:
        return f"Auth(id={self.id!r}, token='***')"


def _has_lone_surrogate(value: object) -> bool:
    """Does any string in ``value`` (keys included) hold an unpaired surrogate?

    JSON's ``"\\ud800"`` escape decodes to one; no UTF-8 text can carry it, so
    it could be neither answered nor logged nor used as a path.
    """
    if isinstance(value, str):
        return any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def parse(text: str) -> Run | Cancel | Auth:
    """One client message -> what to do, or :class:`MessageError`."""
    try:
        message = json.loads(text)
    except ValueError as e:
        raise MessageError(None, f"Malformed JSON: {e}") from None
    except RecursionError:
        raise MessageError(None, "Malformed JSON: nested too deeply.") from None
    if not isinstance(message, dict):
        raise MessageError(None, "A message must be a JSON object.")
    if "id" not in message:
        raise MessageError(None, "Missing id.")
    id = message["id"]
    if _has_lone_surrogate(message):
        usable = None if _has_lone_surrogate(id) else id
        if not isinstance(usable, (int, str)) or isinstance(usable, bool):
            usable = None
        raise MessageError(usable, "The message holds an unpaired surrogate (\\ud800-\\udfff).")
    if (
        isinstance(id, bool)
        or not isinstance(id, (int, str))
        or (isinstance(id, str) and not 0 < len(id) <= 64)
    ):
        raise MessageError(None, "id must be an integer or a string of 1 to 64 characters.")
    unknown = sorted(set(message) - FIELDS)
    if unknown:
        raise MessageError(id, f"Unknown field: {unknown[0]}")
    if "auth" in message:
        token = message["auth"]
        if not isinstance(token, str) or set(message) != {"id", "auth"}:
            raise MessageError(id, 'An auth message is {"id": ..., "auth": "<token>"}.')
        return Auth(id, token)
    if "cancel" in message:
        if message["cancel"] is not True or set(message) != {"id", "cancel"}:
            raise MessageError(id, 'A cancel message is {"id": ..., "cancel": true}.')
        return Cancel(id)
    if "line" in message:
        line = message["line"]
        if not isinstance(line, str) or set(message) != {"id", "line"}:
            raise MessageError(id, "line must be a string, alone with id.")
        if is_auth_line(line):  # what the console sends when a user types "auth ..."
            words = line.split()
            return Auth(id, words[1] if len(words) == 2 else "")
        request = Request.from_line(line)
        if request is None:
            raise MessageError(id, "The line is empty.")
        return Run(id, request, line)
    command = message.get("command")
    if not isinstance(command, str) or not command:
        raise MessageError(id, "A message needs command, line or cancel.")
    args = message.get("args", {})
    if not isinstance(args, dict) or not all(isinstance(v, (str, int)) for v in args.values()):
        raise MessageError(id, "args must be an object of strings, integers and booleans.")
    return Run(id, Request(command.lower(), args=args), command)


def reply(id: Id | None, type: str, **fields: Any) -> str:
    return json.dumps({"id": id, "type": type, **fields}, ensure_ascii=False)


def _line_replies(event: Lines, id: Hashable) -> tuple[str, ...]:
    if event.cursors:
        return tuple(
            reply(id, "line", text=line, cursor=cursor)  # type: ignore[arg-type]
            for line, cursor in zip(event.lines, event.cursors, strict=True)
        )
    return tuple(reply(id, "line", text=line) for line in event.lines)  # type: ignore[arg-type]


#: A followed log's batch is one event for every watcher: its replies are made
#: once per request id (most watchers of a batch use the same id).
_line_replies_shared: LastRendered[Lines, tuple[str, ...]] = LastRendered(_line_replies)


def event_replies(id: Id, event: Event) -> Sequence[str]:
    if isinstance(event, Lines):
        return _line_replies_shared(event, id)
    if isinstance(event, Following):
        return [reply(id, "following")]
    if isinstance(event, Dropped):
        return [reply(id, "dropped", count=event.count)]
    if isinstance(event, Gap):
        return [reply(id, "stale", missing=event.missing)]
    if isinstance(event, Notice):
        return [reply(id, "notice", text=event.text)]
    if isinstance(event, Progress):
        if event.files_total is None:
            return [reply(id, "progress", done=event.done, total=event.total)]
        return [
            reply(
                id,
                "progress",
                done=event.done,
                total=event.total,
                files_done=event.files_done,
                files_total=event.files_total,
            )
        ]
    if isinstance(event, Result):
        return [reply(id, "result", result=event.document())]
    if isinstance(event, Error):
        extra = {} if event.retry_after is None else {"retry_after": event.retry_after}
        return [reply(id, "error", code=event.code, message=event.message, **extra)]
    raise TypeError(f"not an event: {event!r}")


class JSONConversation:
    """Commands with ids, several at once, over any message transport."""

    log = Logger(namespace="gateway.frontends.websocket")

    def __init__(
        self,
        service: CommandService,
        client: Client,
        send: Callable[[str], None],
        close: Callable[[], None],
        max_in_flight: int,
        auth: Authenticator | None = None,
        login_timeout: float = 0.0,
        idle: Callable[[], None] = lambda: None,
        authenticated: bool = False,
        send_all: Callable[[Sequence[str]], None] | None = None,
    ) -> None:
        """``idle`` is called when the last running command of a draining
        conversation finishes; ``authenticated``: the front-end checked a
        token; ``send_all`` sends several messages at once (a batch of a
        followed log's lines), each in turn by ``send`` if not given."""
        self._idle = idle
        self._send_all = send_all if send_all is not None else self._send_each
        self.draining = False
        self.service = service
        self.client = client
        self._send = send
        self._close = close
        self.max_in_flight = max_in_flight
        self._auth = auth if auth is not None and auth.enabled else None
        self._login = Login(
            self._auth, client.peer, service.clock, login_timeout, self._too_late, authenticated
        )
        self.running: dict[Id, Deferred[str]] = {}
        self._waiting: list[str] = []
        self._started = False
        self.closed = False

    def start(self) -> None:
        self._started = True
        refusal = self._login.begin()
        if refusal is None and self._auth is not None and self._login.authenticated:
            refusal = self._login.claim(self.client.identity)  # a token in the handshake
        if refusal is not None:
            self._send(reply(None, "error", code=refusal.code, message=refusal.message))
            self.stop()
            self._close()
            return
        waiting, self._waiting = self._waiting, []
        for text in waiting:
            self.receive(text)

    @property
    def authenticated(self) -> bool:
        return self._login.authenticated

    def _too_late(self) -> None:
        if not self.closed:
            self._send(reply(None, "error", code="unauthorized", message=REQUIRED))
            self.stop()
            self._close()

    @property
    def busy(self) -> bool:
        return bool(self.running)

    def drain(self) -> None:
        """Shutting down: refuse new commands, let running ones finish."""
        self.draining = True
        if not self.running:
            self._idle()

    def receive(self, text: str) -> None:
        if self.closed:
            return
        if self.draining:
            self._send(reply(None, "error", code="unavailable", message="Server shutting down."))
            return
        if not self._started:
            self._waiting.append(text)
            return
        try:
            action = parse(text)
        except MessageError as e:
            self.log.info(
                "Bad message from {peer}: {why}", peer=self.client.peer, why=printable(e.message)
            )
            self._send(reply(e.id, "error", code=e.code, message=e.message))
            return
        if isinstance(action, Auth):
            self._authenticate(action)
        elif not self.authenticated:
            self._unauthenticated(action.id)
        elif isinstance(action, Cancel):
            self._cancel(action.id)
        else:
            self._run(action)

    def _unauthenticated(self, id: Id) -> None:
        """A request before logging in: refused, and what it may cost is bounded."""
        error, close = self._login.refuse(self.service.limiter)
        self._send(reply(id, "error", code=error.code, message=error.message))
        if close:
            self.stop()
            self._close()

    def _authenticate(self, action: Auth) -> None:
        self.log.info("CMD received from {peer}: auth ***", peer=self.client.peer)
        if self._auth is None or self.authenticated:
            self._send(reply(action.id, "result", result={"authenticated": True}))
            return
        try:
            identity = self._auth.check(self.client.peer, action.token)
        except CommandError as e:
            answer = reply(action.id, "error", code=e.code, message=e.message)
            if e.code == "rate_limited":
                self._send(answer)
                self.stop()
                self._close()
                return
            delay = self._auth.delay(self.client.peer)
            self.service.clock.callLater(delay, self._send_unless_closed, answer)
            return
        self._login.succeeded()
        refusal = self._login.claim(identity)
        if refusal is not None:
            self._send(reply(action.id, "error", code=refusal.code, message=refusal.message))
            self.stop()
            self._close()
            return
        self.client = dataclasses.replace(self.client, identity=identity)
        self._send(reply(action.id, "result", result={"authenticated": True}))

    def _send_each(self, texts: Sequence[str]) -> None:
        for text in texts:
            self._send(text)

    def _send_unless_closed(self, text: str) -> None:
        if not self.closed:
            self._send(text)

    def _cancel(self, id: Id) -> None:
        running = self.running.pop(id, None)
        if running is None:
            message = f"No command with id {json.dumps(id)} is running."
            self._send(reply(id, "error", code="bad_argument", message=message))
            return
        outcome: list[str] = []

        def seen(result: str) -> str:
            outcome.append(result)
            return result

        running.addCallback(seen)  # the service's outcome never fails
        running.cancel()
        if outcome != ["ok"]:  # a follow ends with its result instead: one final event
            self._send(reply(id, "cancelled"))

    def _run(self, run: Run) -> None:
        if run.id in self.running:
            message = f"A command with id {json.dumps(run.id)} is already running."
            self._send(reply(run.id, "error", code="bad_argument", message=message))
            return
        if len(self.running) >= self.max_in_flight:
            message = f"Too many commands running at once (at most {self.max_in_flight})."
            self._send(reply(run.id, "error", code="bad_argument", message=message))
            return
        self.log.info(
            "CMD received from {peer}: {line}", peer=self.client.peer, line=printable(run.text)
        )

        def sink(event: Event) -> None:
            if self.closed:
                return
            self._send_all(event_replies(run.id, event))
            if isinstance(event, Result) and event.close:
                self.stop()
                self._close()

        running = self.service.execute(run.request, self.client, sink)
        if running.called:
            return
        self.running[run.id] = running

        def done(outcome: str) -> str:
            if self.running.get(run.id) is running:
                del self.running[run.id]
                if self.draining and not self.running:
                    self._idle()
            return outcome

        running.addCallback(done)

    def revoke(self, current: Callable[[Identity], Identity | None]) -> bool:
        """Close, saying why, if the client's token is no longer accepted
        (``current`` says: a reload removed it); ``True`` if it was closed."""
        error = None if self.closed else revocation(self.client, current)
        if error is None:
            return False
        self._send(reply(None, "error", code=error.code, message=error.message))
        self.stop()
        self._close()
        return True

    def stop(self) -> None:
        """The connection is ending: cancel everything still running."""
        self.closed = True
        self._login.leave()
        self._waiting.clear()
        running, self.running = self.running, {}
        for d in running.values():
            d.cancel()
