"""CommandService: the one place commands are looked up, checked, run and logged.

It knows nothing of sockets.  A front-end hands in a :class:`Request` and a
sink for events, and gets back a Deferred that fires with the outcome (``"ok"``
or an error code) once the final :class:`Result` or :class:`Error` event has
been sent.  Cancelling that Deferred (the client went away) stops the command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gateway.core.audit import Entry
from gateway.core.audit import entry as audit_entry
from gateway.core.command import RESERVED_FIELDS, AnyCommand, Client, Request
from gateway.core.errors import INTERNAL_MESSAGE, CommandError
from gateway.core.events import Error, Event, Lines, Result, Sink
from gateway.core.metrics import CommandMetrics
from gateway.core.params import scoped, scoped_values
from gateway.core.ratelimit import RateLimiter
from gateway.core.scope import Identity, no_longer_accepted
from gateway.logfmt import Logger, printable

#: (A module's logger: an attribute's would be made anew at each use, a line per command.)
log = Logger(namespace="gateway.core.service")


class CommandService:
    def __init__(
        self,
        commands: Iterable[AnyCommand],
        clock: IReactorTime,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.limiter = limiter
        #: Where each command's audit record goes (``None``: no audit trail).
        self.audit: Callable[[Entry], None] | None = None
        #: Who a token's holder is now (its scope as last loaded; ``None``:
        #: removed).  Unset: identities are taken as they were proven.
        self.identities: Callable[[Identity], Identity | None] | None = None
        self._commands: dict[str, AnyCommand] = {}
        self._routes: dict[str, str] = {}
        self._posts: dict[str, str] = {}
        self._running: set[Deferred[str]] = set()
        #: Runs with no timeout (follows): they end only when stopped.
        self._open_ended: set[Deferred[str]] = set()
        self._idle_waiters: list[Deferred[None]] = []
        self.metrics = CommandMetrics()
        for command in commands:
            self.add(command)
        self._clock = clock
        self.started = clock.seconds()

    def add(self, command: AnyCommand) -> None:
        if command.name in self._commands:
            raise ValueError(f"duplicate command {command.name!r}")
        _check_declaration(command)
        route = command.route
        if route is not None:
            if route in self._routes:
                raise ValueError(f"{command.name}: route {route} is {self._routes[route]}'s")
            self._routes[route] = command.name
        if command.post is not None:
            if command.post.path in self._routes:
                raise ValueError(f"{command.name}: route {command.post.path} is taken")
            self._posts[command.post.path] = command.name
        self._commands[command.name] = command
        self.metrics.known.add(command.name)

    def replace(self, command: AnyCommand) -> None:
        """Swap in a new version of a command (config reload); runs in flight go on."""
        old = self._commands.get(command.name)
        if old is None:
            raise ValueError(f"no command {command.name!r} to replace")
        if command.route != old.route or (command.post is None) != (old.post is None):
            raise ValueError(f"{command.name}: a new version may not move its route")
        _check_declaration(command)
        self._commands[command.name] = command

    def remove(self, name: str) -> None:
        """Stop serving command ``name`` (config reload); runs in flight go on."""
        command = self._commands.pop(name)
        if command.route is not None:
            del self._routes[command.route]
        if command.post is not None:
            del self._posts[command.post.path]

    @property
    def commands(self) -> Sequence[AnyCommand]:
        return tuple(self._commands.values())

    def get(self, name: str) -> AnyCommand | None:
        return self._commands.get(name)

    def at_post_route(self, path: str) -> AnyCommand | None:
        """The command ``POST path`` runs (its body a parameter), if any."""
        name = self._posts.get(path)
        return self._commands[name] if name is not None else None

    def at_route(self, path: str) -> AnyCommand | None:
        """The command ``GET path`` runs, if any."""
        name = self._routes.get(path)
        return self._commands[name] if name is not None else None

    def text_frame(self, name: str) -> tuple[str, str] | None:
        command = self._commands.get(name)
        return command.frame if command is not None else None

    def _prepare(self, request: Request, identity: Identity) -> tuple[AnyCommand, Any]:
        command = self._commands.get(request.command)
        if command is None:
            raise CommandError("unknown_command", "Command not found.")
        scope = identity.scope
        scope.require(identity.shown, command.name)
        raw: Mapping[str, object] = (
            command.parse(request.rest) if request.rest is not None else request.args
        )
        args = command.prepare(raw)
        if not scope.full:
            fields = scoped(command.params)
            if fields:
                values = scoped_values(command.params, raw)
                scope.check_arguments(identity.shown, fields, values)  # (may run: asked above)
        return command, args

    def _identity(self, client: Client) -> Identity:
        """Who ``client`` is now: its token's scope as last (re)loaded, or
        ``unauthorized`` if its token was removed or has expired."""
        identity = client.identity
        if identity.how == "none":
            return identity
        current = self.identities(identity) if self.identities is not None else identity
        if current is None:
            raise no_longer_accepted(identity)
        expires = current.scope.expires
        if expires is not None and self._clock.seconds() >= expires:
            raise CommandError("unauthorized", f"{identity.shown} has expired")
        return current

    def execute(self, request: Request, client: Client, sink: Sink) -> Deferred[str]:
        """Run ``request`` for ``client``, sending events to ``sink``.

        The Deferred never fails: it fires with ``"ok"``, an error code, or
        ``"cancelled"`` when the caller cancelled it.
        """
        started = self._clock.seconds()
        timeout: float | None = 0.0
        audit = self.audit
        sent = [0]
        if audit is not None:
            sink = _counting(sink, sent)

        def finish(outcome: str) -> str:
            seconds = self._clock.seconds() - started
            self.metrics.record(request.command, outcome, seconds)
            if audit is not None:
                audit(audit_entry(started, client, request, outcome, sent[0], seconds))
            log.info(
                "{transport} {peer} {command}: {outcome} in {duration_ms:.1f} ms",
                transport=client.transport,
                peer=client.peer,
                command=printable(request.command, 40),
                outcome=outcome,
                duration_ms=seconds * 1000,
            )
            return outcome

        def fail(code: str, message: str, retry_after: int | None = None) -> str:
            sink(Error(code, message, retry_after))
            return finish(code)

        try:
            if self.limiter is not None:
                self.limiter.take(client.peer)
            identity = self._identity(client)
            command, args = self._prepare(request, identity)
        except CommandError as e:
            d: Deferred[str] = Deferred()
            d.callback(fail(e.code, e.message, e.retry_after))
            return d
        timeout = command.timeout_for(args)

        def succeeded(result: Result) -> str:
            sink(result)
            return finish("ok")

        def failed(f: Failure) -> str:
            if f.check(CancelledError):
                return finish("cancelled")  # the client went away: nobody to tell
            if f.check(TimeoutError):
                return fail("timeout", f"{command.name} timed out after {timeout:g} s")
            if isinstance(f.value, CommandError):
                return fail(f.value.code, f.value.message)
            log.failure("command {command} failed", f, command=request.command)
            return fail("internal", INTERNAL_MESSAGE)

        running: Deferred[Result] = maybeDeferred(command.run_as, identity, args, sink, client.flow)
        if timeout is not None and not running.called:  # done at once: nothing to time
            running.addTimeout(timeout, self._clock)
        outcome = running.addCallbacks(succeeded, failed)
        if not outcome.called:
            self._running.add(outcome)
            if timeout is None:
                self._open_ended.add(outcome)
            outcome.addBoth(self._finished, outcome)
        return outcome

    def _finished(self, outcome: str, d: Deferred[str]) -> str:
        self._running.discard(d)
        self._open_ended.discard(d)
        if not self._running:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.called:  # (a waiter may have been cancelled: timed out)
                    waiter.callback(None)
        return outcome

    def when_idle(self) -> Deferred[None]:
        """Fires once no command is running (at once if none is)."""

        def forget(d: Deferred[None]) -> None:
            if d in self._idle_waiters:
                self._idle_waiters.remove(d)

        d: Deferred[None] = Deferred(forget)
        if not self._running:
            d.callback(None)
        else:
            self._idle_waiters.append(d)
        return d

    @property
    def clock(self) -> IReactorTime:
        return self._clock

    def uptime(self) -> float:
        return self._clock.seconds() - self.started

    @property
    def running(self) -> int:
        """How many commands are in flight."""
        return len(self._running)

    def is_open_ended(self, outcome: Deferred[str]) -> bool:
        """Whether the run :meth:`execute` returned runs until stopped (a follow)."""
        return outcome in self._open_ended

    def stop_open_ended(self) -> None:
        """End what runs until stopped (follows): at shutdown, nothing waits for them."""
        for d in list(self._open_ended):
            d.cancel()

    def cancel_all(self) -> None:
        """Stop every command in flight (shutdown): children killed, reads stopped."""
        for d in list(self._running):
            d.cancel()


def _check_declaration(command: AnyCommand) -> None:
    """Refuse a declaration whose result fields would clash with the JSON envelope."""
    names = [f.name for f in command.result_fields]
    clash = RESERVED_FIELDS.intersection(names)
    if command.stream_key is not None:
        clash |= {command.stream_key} & (RESERVED_FIELDS | set(names))
    if clash or len(set(names)) != len(names):
        raise ValueError(f"{command.name}: result field names clash: {sorted(clash) or names}")


def _size(lines: Sequence[str]) -> int:
    """UTF-8 bytes of ``lines``, a newline each (one join and one check, in C;
    encoded only when not all ASCII)."""
    if not lines:
        return 0
    text = "\n".join(lines)
    return (len(text) if text.isascii() else len(text.encode("utf-8", "replace"))) + 1


def _counting(sink: Sink, sent: list[int]) -> Sink:
    """``sink``, adding to ``sent[0]`` the bytes of text it passes on (lines
    and a result's text, each with its newline): an audit record's size."""

    def counted(event: Event) -> None:
        if isinstance(event, Lines):
            sent[0] += _size(event.lines)
        elif isinstance(event, Result) and event.text:
            sent[0] += _size(event.text)
        sink(event)

    return counted
