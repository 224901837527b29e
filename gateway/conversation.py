"""One client's commands on a line-oriented transport, one after another.

The line server and the WebSocket text mode are the same conversation over
different bytes: command lines come in, the answers go out as text lines in
the order the commands were sent, and ``exit`` ends it.  This class is that
conversation, with no transport: the front-end hands it lines and gives it
``write`` and ``close`` callbacks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gateway.commands.base import Client, Request
from gateway.events import Event, Result
from gateway.logfmt import printable
from gateway.service import CommandService
from gateway.text import TextRenderer, error_line


class LineConversation:
    log = Logger(namespace="gateway.conversation")

    def __init__(
        self,
        service: CommandService,
        client: Client,
        write: Callable[[list[str]], None],
        close: Callable[[], None],
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        """``changed`` is called whenever ``busy`` or ``waiting`` may have changed."""
        self.service = service
        self.client = client
        self._write = write
        self._close = close
        self._changed = changed
        self._pending: deque[bytes | str] = deque()
        self._running: Deferred[str] | None = None
        self._started = False
        self.closed = False

    @property
    def busy(self) -> bool:
        """A command runs or waits."""
        return self._running is not None or bool(self._pending)

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        """Begin running commands (once the client holds its quota slot)."""
        self._started = True
        self._next()

    def submit(self, line: bytes | str) -> None:
        """Queue one command line (bytes are decoded as UTF-8 when its turn comes)."""
        if self.closed:
            return
        if isinstance(line, bytes):
            line = line.rstrip(b"\r")
        if not line.strip():
            return
        self._pending.append(line)
        self._next()

    def stop(self) -> None:
        """The client is gone: drop what waits, cancel what runs."""
        self.closed = True
        self._pending.clear()
        running, self._running = self._running, None
        if running is not None:
            running.cancel()

    def _next(self) -> None:
        while self._started and not self.closed and self._running is None and self._pending:
            raw = self._pending.popleft()
            peer = self.client.peer
            if isinstance(raw, bytes):
                try:
                    raw = raw.decode("utf-8")
                except UnicodeDecodeError:
                    self.log.info("CMD received from {peer}: (not UTF-8)", peer=peer)
                    self._write([error_line("bad_argument", "Command line is not valid UTF-8.")])
                    continue
            self.log.info("CMD received from {peer}: {line}", peer=peer, line=printable(raw))
            request = Request.from_line(raw)
            if request is not None:
                self._run(request)
        self._changed()

    def _run(self, request: Request) -> None:
        renderer = TextRenderer(self.service.text_frame(request.command))

        def sink(event: Event) -> None:
            if self.closed:
                return
            self._write(renderer.render(event))
            if isinstance(event, Result) and event.close:
                self.closed = True
                self._pending.clear()
                self._close()

        running = self.service.execute(request, self.client, sink)
        if running.called:  # finished at once: the loop in _next goes on
            return
        self._running = running

        def done(outcome: str) -> None:
            if self._running is running:
                self._running = None
                self._next()

        running.addCallback(done)
