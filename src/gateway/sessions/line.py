"""One client's commands on a line-oriented transport, one after another.

The line server and the WebSocket text mode are the same conversation over
different bytes: command lines come in, the answers go out as text lines in
the order the commands were sent, and ``exit`` ends it.  This class is that
conversation, with no transport: the front-end hands it lines and gives it
``write`` and ``close`` callbacks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from gateway.core.auth import REQUIRED, Authenticator
from gateway.core.command import Client, Request
from gateway.core.errors import CommandError
from gateway.core.events import Event, Following, Result
from gateway.core.scope import Identity
from gateway.core.service import CommandService
from gateway.logfmt import Logger, is_auth_line, printable, redact
from gateway.sessions.login import Login, revocation
from gateway.sessions.text import TextRenderer, error_line


def _nothing() -> None:
    pass


class LineConversation:
    log = Logger(namespace="gateway.sessions.line")
    __slots__ = (
        "_auth",
        "_changed",
        "_close",
        "_live",
        "_login",
        "_pending",
        "_running",
        "_started",
        "_unwatch",
        "_write",
        "client",
        "closed",
        "draining",
        "service",
    )

    def __init__(
        self,
        service: CommandService,
        client: Client,
        write: Callable[[Sequence[str]], None],
        close: Callable[[], None],
        changed: Callable[[], None] = lambda: None,
        auth: Authenticator | None = None,
        login_timeout: float = 0.0,
        authenticated: bool = False,
    ) -> None:
        """``changed`` is called whenever ``busy`` or ``waiting`` may have changed.

        With an enabled ``auth``, the first line must be ``auth <token>``, within
        ``login_timeout`` seconds (0: no limit), unless the front-end has
        already checked a token (``authenticated``).  A client that has not
        logged in is answered ``Authentication required.``, rate limited, logged
        once, and closed after a few lines.
        """
        self.service = service
        self.client = client
        self._write = write
        self._close = close
        self._changed = changed
        self._auth = auth if auth is not None and auth.enabled else None
        # Made only when tokens are on: idle clients are many.
        self._login = (
            Login(
                self._auth, client.peer, service.clock, login_timeout, self._too_late, authenticated
            )
            if self._auth is not None
            else None
        )
        self._unwatch: Callable[[], None] | None = None
        # A list, not a deque: an empty deque costs 600 bytes per idle client.
        self._pending: list[bytes | str] = []
        self._running: Deferred[Any] | None = None
        self._live = False  # the running command follows a log until stopped
        self._started = False
        self.closed = False
        self.draining = False

    @property
    def busy(self) -> bool:
        """A command runs or waits."""
        return self._running is not None or bool(self._pending)

    @property
    def waiting(self) -> int:
        return len(self._pending)

    @property
    def authenticated(self) -> bool:
        return self._login is None or self._login.authenticated

    def start(self) -> None:
        """Begin running commands (once the client holds its quota slot)."""
        self._started = True
        login = self._login
        refusal = login.begin() if login is not None else None
        if refusal is None and login is not None and login.authenticated:
            refusal = login.claim(self.client.identity)  # a token in the handshake
        if refusal is not None:
            self._write([error_line(refusal.code, refusal.message)])
            self._end()
            return
        self._next()

    def _release_login(self) -> None:
        if self._login is not None:
            self._login.leave()

    def _too_late(self) -> None:
        if self.closed:
            return
        self._write([error_line("unauthorized", REQUIRED)])
        self._end()

    def adopt(self, identity: Identity) -> None:
        """The transport proved who the client is (a verified certificate):
        logged in as ``identity``, no token needed."""
        if self._login is None or self.closed or self.client.identity.how != "none":
            return
        self.client = dataclasses.replace(self.client, identity=identity)
        was_in = self._login.authenticated
        self._login.succeeded()
        if self._started and not was_in:  # (before start, start claims its place)
            refusal = self._login.claim(identity)
            if refusal is not None:
                self._write([error_line(refusal.code, refusal.message)])
                self._end()

    def revoke(self, current: Callable[[Identity], Identity | None]) -> bool:
        """Close, saying why, if the client's token is no longer accepted
        (``current`` says: a reload removed it); ``True`` if it was closed."""
        error = None if self.closed else revocation(self.client, current)
        if error is None:
            return False
        self._write([error_line(error.code, error.message)])
        self.stop()
        self._close()
        return True

    def _end(self) -> None:
        self.closed = True
        self._pending.clear()
        self._release_login()
        self._stop_watching()
        self._close()

    def submit(self, line: bytes | str) -> None:
        """Queue one command line (bytes are decoded as UTF-8 when its turn comes)."""
        if self.closed or self.draining:
            return
        if isinstance(line, bytes):
            line = line.rstrip(b"\r")
        if self._live and self._running is not None:
            # Following a log: "stop" or an empty line ends it (End lastlog),
            # "exit" ends it and then the connection; anything else waits.
            raw = line.strip().lower()
            word = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            if word in ("", "stop", "exit"):
                self._live = False
                self._running.cancel()
                if word == "exit":
                    self._pending.append(line)
                    self._next()
                return
        if not line.strip():
            return
        self._pending.append(line)
        self._next()

    def drain(self) -> None:
        """Shutting down: take no more commands, let the running one finish.

        ``changed`` is called once nothing runs any more.
        """
        self.draining = True
        self._pending.clear()
        self._changed()

    def stop(self) -> None:
        """The client is gone: drop what waits, cancel what runs."""
        self.closed = True
        self._pending.clear()
        self._release_login()
        self._stop_watching()
        running, self._running = self._running, None
        if running is not None:
            running.cancel()

    def _next(self) -> None:
        while (
            self._started
            and not self.closed
            and not self.draining
            and self._running is None
            and self._pending
        ):
            if self.client.flow.paused:
                # The client is not reading what it asked for: run nothing more
                # until it does (what it sends meanwhile waits, then reading stops).
                self._wait_for_reader()
                break
            raw = self._pending.pop(0)
            peer = self.client.peer
            if isinstance(raw, bytes):
                try:
                    raw = raw.decode("utf-8")
                except UnicodeDecodeError:
                    self.log.info("CMD received from {peer}: (not UTF-8)", peer=peer)
                    self._write([error_line("bad_argument", "Command line is not valid UTF-8.")])
                    continue
            if is_auth_line(raw):
                self.log.info("CMD received from {peer}: {line}", peer=peer, line=redact(raw))
                self._authenticate(raw)
                continue
            if not self.authenticated:
                self._unauthenticated()
                continue
            self.log.info("CMD received from {peer}: {line}", peer=peer, line=printable(raw))
            request = Request.from_line(raw)
            if request is not None:
                self._run(request)
        self._changed()

    def _wait_for_reader(self) -> None:
        if self._unwatch is None:
            self._unwatch = self.client.flow.watch(_nothing, self._reader_caught_up)

    def _reader_caught_up(self) -> None:
        self._stop_watching()
        self._next()

    def _stop_watching(self) -> None:
        unwatch, self._unwatch = self._unwatch, None
        if unwatch is not None:
            unwatch()

    def _unauthenticated(self) -> None:
        """A command before logging in: refused, and what it may cost is bounded."""
        assert self._login is not None
        error, close = self._login.refuse(self.service.limiter)
        self._write([error_line(error.code, error.message)])
        if close:
            self._end()

    def _authenticate(self, line: str) -> None:
        words = line.split()
        presented = words[1] if len(words) == 2 and words[0].lower() == "auth" else None
        if self._auth is None:
            self._write(["Authentication is off: no token is needed."])
            return
        if self.authenticated:
            self._write(["Already authenticated."])
            return
        try:
            identity = self._auth.check(self.client.peer, presented)
        except CommandError as e:
            answer = error_line(e.code, e.message)
            if e.code == "rate_limited":
                self._write([answer])
                self._end()
                return
            # Hold the answer back, longer after each failure: guessing is slow.
            delay = self._auth.delay(self.client.peer)
            wait: Deferred[None] = deferLater(self.service.clock, delay, self._write, [answer])
            self._running = wait

            def done(_: object) -> None:
                if self._running is wait:
                    self._running = None
                    self._next()
                    self._changed()

            wait.addBoth(done)
            return
        assert self._login is not None
        self._login.succeeded()
        refusal = self._login.claim(identity)
        if refusal is not None:
            self._write([error_line(refusal.code, refusal.message)])
            self._end()
            return
        self.client = dataclasses.replace(self.client, identity=identity)
        self._write(["Authenticated."])

    def _run(self, request: Request) -> None:
        renderer = TextRenderer(self.service.text_frame(request.command))

        def sink(event: Event) -> None:
            if self.closed:
                return
            if isinstance(event, Following):
                self._live = True
            self._write(renderer.render(event))
            if isinstance(event, Result) and event.close:
                self.closed = True
                self._pending.clear()
                self._close()

        running = self.service.execute(request, self.client, sink)
        if running.called:  # finished at once: the loop in _next goes on
            return
        self._running = running
        if self.service.is_open_ended(running):
            self._live = True  # "stop" ends it, even before its first line

        def done(outcome: str) -> None:
            if self._running is running:
                self._running = None
                self._live = False
                self._next()

        running.addCallback(done)
