"""The line TCP front-end: what ``nc 127.0.0.1 9999`` talks to.

Bytes in, command lines to the service, rendered lines out.  One command runs
at a time per connection; lines that arrive meanwhile wait their turn (and
reading pauses if too many wait, or while the client does not read its
answers).  The connection holds one quota slot from accept until the server
says goodbye or the client leaves, whichever comes first; closing always ends
in an abort after at most ``LINGER`` seconds, TLS or not, so no client can keep
a socket by never answering.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    ISSLTransport,
)
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config import TCPConfig
from gateway.core.command import Client
from gateway.core.errors import CommandError
from gateway.core.flow import BACKLOG, ReadGate
from gateway.core.peers import peer_host
from gateway.core.quota import Slot, register_transport
from gateway.core.scope import ANONYMOUS, Identity
from gateway.core.service import CommandService
from gateway.frontends.admission import LINGER, Admission, no_delay
from gateway.logfmt import Logger
from gateway.sessions.line import LineConversation
from gateway.sessions.text import encode_lines, error_line

TRANSPORT = register_transport("tcp", order=0)
#: Lines waiting behind a running command before reading pauses.
MAX_PENDING = 32


class LineState(enum.Enum):
    """Where a line connection is; :meth:`LineSession._move` is the only way on."""

    OPEN = "open"  # serving commands
    HALF_CLOSED = "half-closed"  # the client closed its side; what it sent still runs
    DRAINING = "draining"  # goodbye said: input is read and dropped until the close ends
    CLOSED = "closed"  # the connection is gone


#: The transitions there are; anything else is a bug, and says so.
MOVES: dict[LineState, frozenset[LineState]] = {
    LineState.OPEN: frozenset({LineState.HALF_CLOSED, LineState.DRAINING, LineState.CLOSED}),
    LineState.HALF_CLOSED: frozenset({LineState.DRAINING, LineState.CLOSED}),
    LineState.DRAINING: frozenset({LineState.CLOSED}),
    LineState.CLOSED: frozenset(),
}
#: States in which the session still answers: nothing is written after them.
SPEAKING = frozenset({LineState.OPEN, LineState.HALF_CLOSED})


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class LineSession(LineReceiver, TimeoutMixin):
    delimiter = b"\n"
    log = Logger(namespace="gateway.frontends.line")

    def __init__(self, admission: Admission, service: CommandService, settings: TCPConfig) -> None:
        self.admission = admission
        self.service = service
        self.clock = admission.clock
        self.flow = admission.make_flow(self._stalled)
        self.MAX_LENGTH = settings.max_line_length
        self.idle_timeout = settings.idle_timeout or None
        self.eof_grace = settings.eof_grace
        self.peer = "unknown"
        self.slot: Slot | None = None
        self.conversation: LineConversation | None = None
        self._gate: ReadGate | None = None
        self.state = LineState.OPEN
        self._linger: IDelayedCall | None = None
        self._eof_timer: IDelayedCall | None = None
        self._shutting_down = False

    # -- TimeoutMixin uses our clock, not the global reactor
    def callLater(self, period: float, func: Any) -> IDelayedCall:
        return self.clock.callLater(period, func)

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.peer = peer_host(self.transport.getPeer())
        self.log.info("Client connection from {peer}", peer=self.peer)
        no_delay(self.transport)
        self._gate = ReadGate.for_transport(self.transport)
        # Twisted pauses the flow when the client stops reading our output.
        self.transport.registerProducer(self.flow, True)  # type: ignore[attr-defined]
        # A local user known by its credentials needs no token (unix: listeners).
        local = self.admission.local_identity(self.transport)
        self.conversation = LineConversation(
            self.service,
            Client(TRANSPORT, self.peer, self.flow, local or ANONYMOUS),
            self._write,
            self._close,
            self._changed,
            self.admission.login_auth,
            self.admission.login_timeout,
            authenticated=local is not None,
        )
        self.setTimeout(self.idle_timeout)
        self.admission.hold(TRANSPORT, self.peer, self._is_gone, self._granted, self._refused)

    def handshakeCompleted(self) -> None:
        """TLS is up: a verified client certificate may say who the client is."""
        identity = self.admission.certificate_identity(self.transport)
        if identity is not None and self.conversation is not None:
            self.conversation.adopt(identity)

    def _move(self, to: LineState) -> None:
        if to not in MOVES[self.state]:
            raise RuntimeError(f"line session cannot go from {self.state.value} to {to.value}")
        self.state = to

    def _is_gone(self) -> bool:
        return self.state is LineState.CLOSED

    def _granted(self, slot: Slot) -> None:
        self.slot = slot
        assert self.conversation is not None
        self.conversation.start()

    def _refused(self, error: CommandError) -> None:
        self.log.info("{message} (refused {peer})", message=error.message, peer=self.peer)
        if self.state in SPEAKING:
            self._write([error_line(error.code, error.message)])
            self._close()

    def _write(self, lines: Sequence[str]) -> None:
        if lines and self.state in SPEAKING and self.transport is not None:
            self.transport.write(encode_lines(lines))

    def shutdown(self) -> None:
        """The daemon is stopping: finish what runs, then say so and close."""
        self._shutting_down = True
        if self.conversation is not None and self.state in SPEAKING:
            self.conversation.drain()

    def _changed(self) -> None:
        """The conversation moved on: manage reading, idleness and a finished client."""
        conversation = self.conversation
        if conversation is None or self.state not in SPEAKING:
            return
        if self._shutting_down and not conversation.busy:
            self._write(["Server shutting down."])
            self._close()
            return
        if self._gate is not None:
            self._gate.hold(BACKLOG, conversation.waiting >= MAX_PENDING)
        if conversation.busy:
            self.setTimeout(None)  # a client waiting for an answer is not idle
        elif self.state is LineState.HALF_CLOSED:
            self._close()
        else:
            self.setTimeout(self.idle_timeout)

    def _close(self) -> None:
        """Stop taking commands and close once what was written is sent.

        Input still arriving is read and dropped meanwhile: closing a socket
        with unread input resets it, and the reset can destroy the last answer
        (``line too long``, ``Too many connections. Bye!``) before the client
        reads it.
        """
        if self.conversation is not None:
            self.conversation.closed = True
        self.setTimeout(None)
        self._cancel_timers()
        # Goodbye said: the slot is for clients being served, not for a
        # socket that drains its last bytes.
        self._release_slot()
        if self.state not in SPEAKING:
            return
        input_done = self.state is LineState.HALF_CLOSED
        self._move(LineState.DRAINING)
        if self.transport is None:
            return
        # A TLS transport does not close while a producer is registered.
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
        if self._gate is not None:
            self._gate.open()
        # However the close starts, it ends in an abort: a client that never
        # reads, never finishes a TLS handshake or never closes its side
        # cannot keep the socket.
        self._linger = self.clock.callLater(LINGER, self._abort)
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if input_done or ISSLTransport.providedBy(self.transport) or half_close is None:
            # Nothing more can arrive; or TLS, whose half-close Twisted does
            # not do cleanly: close both ways (TLS sends close_notify first).
            self.transport.loseConnection()
            return
        half_close()

    def _release_slot(self) -> None:
        slot, self.slot = self.slot, None
        if slot is not None:
            slot.release()

    def _cancel_timers(self) -> None:
        for timer in (self._linger, self._eof_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._linger = self._eof_timer = None

    def _abort(self) -> None:
        self._linger = None
        if self.transport is not None and self.state is not LineState.CLOSED:
            abort = getattr(self.transport, "abortConnection", self.transport.loseConnection)
            abort()

    def dataReceived(self, data: bytes) -> None:
        if self.state is not LineState.OPEN:
            return  # draining after goodbye (or nothing can arrive)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self.state is not LineState.OPEN or self.conversation is None:
            return
        self.resetTimeout()
        self.conversation.submit(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.log.info("Line too long from {peer}, closing", peer=self.peer)
        self._write([error_line("bad_argument", "line too long")])
        self._close()

    def _stalled(self) -> None:
        self.log.info("Client {peer} stopped reading; closing", peer=self.peer)
        if self.transport is not None and self.state is not LineState.CLOSED:
            abort = getattr(self.transport, "abortConnection", self.transport.loseConnection)
            abort()

    def timeoutConnection(self) -> None:
        self.log.info("Closing idle connection from {peer}", peer=self.peer)
        self._write(
            [error_line("timeout", f"idle for {self.idle_timeout:g} s, closing the connection")]
        )
        self._close()

    def readConnectionLost(self) -> None:
        """The client closed its sending side (``nc -N``, or it went away).

        A full close and a half-close look the same from here, so commands
        already received get ``eof_grace`` seconds to answer; whatever still
        runs then is cancelled, as for a client that has left.
        """
        if self.state is LineState.DRAINING:
            if self.transport is not None:
                self.transport.loseConnection()
            return
        if self.state is not LineState.OPEN:
            return
        self._move(LineState.HALF_CLOSED)
        if self.conversation is not None and self.conversation.busy:
            self._eof_timer = self.clock.callLater(self.eof_grace, self._eof_expired)
        self._changed()

    def _eof_expired(self) -> None:
        self._eof_timer = None
        self.log.info("Client {peer} closed its side; cancelling what still runs", peer=self.peer)
        if self.conversation is not None:
            self.conversation.stop()
        self._close()

    def writeConnectionLost(self) -> None:
        """Never called for TCP (no such half-close notification)."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.state is LineState.CLOSED:
            return
        self._move(LineState.CLOSED)
        self.setTimeout(None)
        self._cancel_timers()
        self.log.info("Lost client connection. Reason: {reason}", reason=reason.getErrorMessage())
        if self.conversation is not None:
            self.conversation.stop()
        self._release_slot()
        sessions = getattr(self.factory, "sessions", None)
        if sessions is not None:
            sessions.discard(self)


class LineFactory(ServerFactory):
    noisy = False

    def __init__(self, admission: Admission, service: CommandService, settings: TCPConfig) -> None:
        self.admission = admission
        self.service = service
        self.settings = settings
        self.sessions: set[LineSession] = set()

    def buildProtocol(self, addr: IAddress | None) -> LineSession:
        session = LineSession(self.admission, self.service, self.settings)
        session.factory = self
        self.sessions.add(session)
        return session

    def shutdown(self) -> None:
        for session in list(self.sessions):
            session.shutdown()

    def revoke(self, current: Callable[[Identity], Identity | None]) -> None:
        """Close the connections whose token a reload removed."""
        for session in list(self.sessions):
            if session.conversation is not None:
                session.conversation.revoke(current)
