"""The WebSocket front-end: ``/ws`` on the HTTP site, with Autobahn.

Two subprotocols.  ``gateway.text`` (or none): each text frame is a command
line and each output line comes back as one text frame, exactly the text the
line server sends.  ``gateway.v1.json``: see :mod:`gateway.sessions.json_conversation`.  A
connection holds one quota slot from handshake to close; over quota the
handshake completes and the server closes with 1013 and the reason
``Too many connections. Bye!``.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import deferLater

from gateway.config import WebSocketConfig, parse_origin
from gateway.core.command import Client
from gateway.core.errors import CommandError
from gateway.core.flow import BACKLOG, BEHIND, ReadGate
from gateway.core.memo import LastRendered
from gateway.core.peers import peer_host
from gateway.core.quota import Slot, register_transport
from gateway.core.scope import ANONYMOUS, Identity
from gateway.core.service import CommandService
from gateway.frontends.admission import LINGER, Admission, is_busy
from gateway.logfmt import Logger, printable
from gateway.sessions.json_conversation import JSONConversation, reply
from gateway.sessions.line import LineConversation
from gateway.sessions.text import error_line, utf8

TRANSPORT = register_transport("websocket", order=2)
TEXT = "gateway.text"
JSON = "gateway.v1.json"
SUBPROTOCOLS = (TEXT, JSON)
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_INTERNAL_ERROR = 1011
#: Commands waiting their turn (text mode) before reading from the client stops.
MAX_PENDING = 32
#: What the handshake answer says in ``Server``: no library, no version.
SERVER = "gateway"


def text_frames(texts: Sequence[str]) -> tuple[bytes, int, int]:
    """Each of ``texts`` as one whole text frame, unmasked (a server's), in
    one block; with the payload octets in all and in the longest."""
    parts = []
    octets = longest = 0
    for text in texts:
        payload = utf8(text)
        n = len(payload)
        octets += n
        longest = max(longest, n)
        if n < 126:
            parts.append(bytes((0x81, n)))
        elif n < 0x10000:
            parts.append(struct.pack("!BBH", 0x81, 126, n))
        else:
            parts.append(struct.pack("!BBQ", 0x81, 127, n))
        parts.append(payload)
    return b"".join(parts), octets, longest


#: A followed log's batch goes to every watcher as the same lines (or the
#: same replies): its frames are made once, and each connection writes them.
_shared_frames: LastRendered[Sequence[str], tuple[bytes, int, int]] = LastRendered(
    lambda texts, _: text_frames(texts)
)


class SocketState(enum.Enum):
    """Where a WebSocket session is; :meth:`GatewayWebSocket._move` is the only way on."""

    HANDSHAKE = "handshake"  # upgraded, not yet open
    OPEN = "open"  # serving commands
    CLOSING = "closing"  # we said goodbye (exit, refusal, shutdown): nothing more is sent
    CLOSED = "closed"  # the connection is gone


MOVES: dict[SocketState, frozenset[SocketState]] = {
    SocketState.HANDSHAKE: frozenset({SocketState.OPEN, SocketState.CLOSED}),
    SocketState.OPEN: frozenset({SocketState.CLOSING, SocketState.CLOSED}),
    SocketState.CLOSING: frozenset({SocketState.CLOSED}),
    SocketState.CLOSED: frozenset(),
}


def origin_allowed(
    origin: str | None, host: str | None, secure: bool, allowed: Sequence[str]
) -> bool:
    """May a page from ``origin`` open a WebSocket to us (reached as ``host``)?

    No ``Origin`` header: not a browser, so no cross-site hijacking to fear.
    The console's own origin (our scheme, ``host`` and port) is always
    allowed; ``allowed`` adds more (``"*"`` any, ``"null"`` the null origin).
    """
    if not origin:
        return True
    if origin.strip() == "null":
        return "null" in allowed
    if "*" in allowed:
        return True
    theirs = parse_origin(origin)
    if theirs is None:
        return False
    own = parse_origin(f"{'https' if secure else 'http'}://{host}") if host else None
    return theirs == own or any(parse_origin(a) == theirs for a in allowed)


class GatewayWebSocket(WebSocketServerProtocol):
    log = Logger(namespace="gateway.frontends.websocket")
    factory: GatewayWebSocketFactory

    def __init__(self) -> None:
        super().__init__()
        self.mode = TEXT
        self.peer_host = "unknown"
        self.slot: Slot | None = None
        self.conversation: LineConversation | JSONConversation | None = None
        self.session_state = SocketState.HANDSHAKE
        self._preauthenticated = False
        self._identity = ANONYMOUS
        self._shutting_down = False
        self._gate: ReadGate | None = None
        self._abort_timer: IDelayedCall | None = None

    def onConnect(self, request: ConnectionRequest) -> Any:  # may answer later: a Deferred
        settings = self.factory.settings
        host = request.headers.get("host")
        if not origin_allowed(request.origin, host, self.factory.secure, settings.allowed_origins):
            self.log.info(
                "Refused WebSocket from origin {origin}", origin=printable(request.origin or "")
            )
            raise ConnectionDeny(403, "Origin not allowed")
        admission = self.factory.admission
        header = request.headers.get("authorization")
        local = admission.known_peer(self.transport) if header is None else None
        if local is not None:  # a local user, a verified client certificate
            self._preauthenticated = True
            self._identity = local
        elif admission.auth.enabled and header is not None:
            # A client that can set headers (not a browser) may log in here.
            peer = peer_host(self.transport.getPeer())  # type: ignore[union-attr]
            denial = admission.check_bearer(peer, header)
            if not isinstance(denial, Identity):
                e = denial.error
                deny = ConnectionDeny(401 if e.code == "unauthorized" else 429, e.message)
                if not denial.delay:
                    raise deny
                # A wrong token is answered slowly, more slowly each time, as
                # on every other way in.
                self.log.info("Wrong token in the WebSocket handshake from {peer}", peer=peer)
                return deferLater(admission.clock, denial.delay, _raise, deny)
            self._preauthenticated = True
            self._identity = denial
        return self._subprotocol(request)

    def _subprotocol(self, request: ConnectionRequest) -> str | None:
        offered = request.protocols or []
        for name in (JSON, TEXT):
            if name in offered:
                self.mode = name
                return name
        if offered:
            raise ConnectionDeny(400, f"Unsupported subprotocol; use {TEXT} or {JSON}")
        return None

    def onOpen(self) -> None:
        assert self.transport is not None
        self._move(SocketState.OPEN)
        self.peer_host = peer_host(self.transport.getPeer())
        self.log.info(
            "WebSocket connection from {peer} ({mode})", peer=self.peer_host, mode=self.mode
        )
        factory = self.factory
        admission = factory.admission
        flow = admission.make_flow(self._stalled)
        # The HTTP channel this connection was upgraded from is still the
        # transport's registered producer; the WebSocket takes over.
        transport: Any = self.transport
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        self.registerProducer(flow, True)  # paused when the client stops reading
        gate = self._gate = ReadGate.for_transport(transport)
        if gate is not None:
            # Nothing more is read from a client that does not read its answers.
            flow.watch(lambda: gate.hold(BEHIND, True), lambda: gate.hold(BEHIND, False))
        client = Client(TRANSPORT, self.peer_host, flow, self._identity)
        if self.mode == JSON:
            self.conversation = JSONConversation(
                factory.service,
                client,
                self._deliver,
                self._finish,
                factory.settings.max_in_flight,
                admission.login_auth,
                admission.login_timeout,
                idle=self._drained,
                authenticated=self._preauthenticated,
                send_all=self._deliver_all,
            )
        else:
            self.conversation = LineConversation(
                factory.service,
                client,
                self._deliver_all,
                self._finish,
                auth=admission.login_auth,
                login_timeout=admission.login_timeout,
                changed=self._changed,
                authenticated=self._preauthenticated,
            )
        factory.sessions.add(self)
        admission.hold(TRANSPORT, self.peer_host, self._is_gone, self._granted, self._refused)

    def _move(self, to: SocketState) -> None:
        if to not in MOVES[self.session_state]:
            raise RuntimeError(
                f"WebSocket session cannot go from {self.session_state.value} to {to.value}"
            )
        self.session_state = to

    def _is_gone(self) -> bool:
        return self.session_state is SocketState.CLOSED

    def _say_goodbye(self) -> bool:
        """Move to CLOSING if still open; ``True`` if this call did (send the close)."""
        if self.session_state is not SocketState.OPEN:
            return False
        self._move(SocketState.CLOSING)
        return True

    def dropConnection(self, abort: bool = False) -> None:
        # A TLS transport does not close while a producer is registered.
        transport: Any = self.transport
        if transport is not None and getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        if self._gate is not None:
            self._gate.open()
        if not abort and self._abort_timer is None and not self._is_gone():
            # A close ends in an abort after a bounded wait, whatever the
            # client does (never reads, never finishes TLS).
            self._abort_timer = self.factory.admission.clock.callLater(LINGER, self._abort)
        super().dropConnection(abort)

    def _abort(self) -> None:
        self._abort_timer = None
        transport: Any = self.transport
        if not self._is_gone() and transport is not None:
            transport.abortConnection()

    def _stalled(self) -> None:
        self.log.info("WebSocket client {peer} stopped reading; closing", peer=self.peer_host)
        if not self._is_gone():
            self.dropConnection(abort=True)

    def shutdown(self) -> None:
        """The daemon is stopping: finish what runs, then close with 1001."""
        self._shutting_down = True
        if self.conversation is not None:
            self.conversation.drain()
        else:
            self._drained()

    def _changed(self) -> None:
        conversation = self.conversation
        if self._gate is not None and isinstance(conversation, LineConversation):
            self._gate.hold(BACKLOG, conversation.waiting >= MAX_PENDING)
        if self._shutting_down and conversation is not None and not conversation.busy:
            self._drained()

    def _drained(self) -> None:
        if self._say_goodbye():
            # sendClose() refuses 1001; it is the registered "going away" code.
            self.sendCloseFrame(code=CLOSE_GOING_AWAY, reasonUtf8=b"Server shutting down")

    def _granted(self, slot: Slot) -> None:
        self.slot = slot
        assert self.conversation is not None
        self.conversation.start()

    def _refused(self, error: CommandError) -> None:
        message = error.message
        self.log.info("{message} (refused WebSocket {peer})", message=message, peer=self.peer_host)
        if self._say_goodbye():
            # sendClose() only takes 1000 or 3000-4999: 1013 (try again later)
            # and 1011 (internal error) are the registered codes.
            code = CLOSE_TRY_AGAIN_LATER if is_busy(error) else CLOSE_INTERNAL_ERROR
            self.sendCloseFrame(code=code, reasonUtf8=message.encode()[:123])

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """Autobahn's, without the cost of its debug line on every frame.

        Autobahn formats that line's arguments (``hltype``, ``hlval``) for each
        write whether or not debug is logged: a fifth of a ``lastlog`` round
        trip here.  An open connection with nothing queued writes straight to
        the transport and counts the octets as Autobahn does; anything else
        (a queue, chopping, octet logging, a handshake) is Autobahn's own path.
        """
        transport = self.transport
        if (
            sync
            or chopsize
            or self.send_queue
            or getattr(self, "logOctets", True)
            or self.state != self.STATE_OPEN
            or transport is None
        ):
            super().sendData(data, sync, chopsize)
            return
        transport.write(data)
        self.trafficStats.outgoingOctetsWireLevel += len(data)

    def _deliver(self, text: str) -> None:
        # Once a close has begun (either side) Autobahn refuses to send; what
        # still runs is cancelled when the close completes (onClose).
        if self.session_state is SocketState.OPEN and self.state == self.STATE_OPEN:
            self.sendMessage(utf8(text), isBinary=False)

    def _deliver_all(self, texts: Sequence[str]) -> None:
        """Each of ``texts`` as a text message, in one write when Autobahn
        would frame them plainly (no compression, fragmentation or masking
        set); a batch shared by many watchers is framed once for all."""
        if not texts or self.session_state is not SocketState.OPEN:
            return
        if self.state != self.STATE_OPEN:
            return
        options: Any = self  # set from the factory's options, at connection
        # All the frames in one block, unless an option makes Autobahn frame each its way.
        together = not (
            len(texts) == 1
            or self._perMessageCompress is not None
            or options.autoFragmentSize
            or options.maskServerFrames
            or self.trackedTimings
        )
        if together:
            framed = _shared_frames if isinstance(texts, tuple) else text_frames
            frames, octets, longest = framed(texts)
            if not 0 < options.maxMessagePayloadSize < longest:  # else Autobahn refuses it
                stats = self.trafficStats
                stats.outgoingWebSocketMessages += len(texts)
                stats.outgoingOctetsAppLevel += octets
                stats.outgoingOctetsWebSocketLevel += octets
                self.sendData(frames)
                return
        for text in texts:
            self._deliver(text)

    def _finish(self) -> None:
        """``exit`` (or a login that failed): a normal close, and the slot goes back."""
        self._release_slot()
        if self._say_goodbye():
            self.sendClose(CLOSE_NORMAL)

    def _release_slot(self) -> None:
        slot, self.slot = self.slot, None
        if slot is not None:
            slot.release()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        conversation = self.conversation
        if conversation is None or self.session_state is not SocketState.OPEN:
            return
        if isBinary:
            message = "Binary frames are not supported; send text."
            if isinstance(conversation, JSONConversation):
                self._deliver(reply(None, "error", code="bad_argument", message=message))
            else:
                self._deliver(error_line("bad_argument", message))
            return
        text = payload.decode("utf-8")  # Autobahn has checked it is UTF-8
        if isinstance(conversation, JSONConversation):
            conversation.receive(text)
        else:
            for line in text.split("\n"):
                conversation.submit(line)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._is_gone():
            return
        self._move(SocketState.CLOSED)
        if self.conversation is not None:
            self.log.info(
                "Lost WebSocket connection from {peer}: {code} {reason}",
                peer=self.peer_host,
                code=code,
                reason=printable(reason or ""),
            )
            self.conversation.stop()
        self._release_slot()
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        self._abort_timer = None
        self.factory.sessions.discard(self)


class GatewayWebSocketFactory(WebSocketServerFactory):
    protocol = GatewayWebSocket  # type: ignore[assignment]

    def __init__(
        self,
        admission: Admission,
        service: CommandService,
        settings: WebSocketConfig,
        secure: bool = False,
    ) -> None:
        super().__init__(reactor=admission.clock, server=SERVER)
        self.admission = admission
        self.service = service
        self.settings = settings
        self.secure = secure
        self.sessions: set[GatewayWebSocket] = set()
        self.configure(settings)

    def shutdown(self) -> None:
        for session in list(self.sessions):
            session.shutdown()

    def revoke(self, current: Callable[[Identity], Identity | None]) -> None:
        """Close the connections whose token a reload removed."""
        for session in list(self.sessions):
            if session.conversation is not None:
                session.conversation.revoke(current)

    def configure(self, settings: WebSocketConfig) -> None:
        """Apply (new) limits; connections opened from now on get them."""
        self.settings = settings
        self.setProtocolOptions(
            maxFramePayloadSize=settings.max_frame_bytes,
            maxMessagePayloadSize=settings.max_message_bytes,
            autoPingInterval=settings.auto_ping_interval,
            autoPingTimeout=settings.auto_ping_timeout,
            openHandshakeTimeout=settings.open_handshake_timeout,
            closeHandshakeTimeout=settings.close_handshake_timeout,
            # Origins are checked in onConnect, against the Host the client used.
            allowNullOrigin=True,
            # On a protocol error (a message too big, ...) close with its code
            # (1009, ...) so the client learns why, rather than just dropping.
            failByDrop=False,
            # GET /ws without an upgrade gets an error, not Autobahn's status page.
            webStatus=False,
        )


def _raise(error: Exception) -> None:
    raise error


def websocket_resource(factory: GatewayWebSocketFactory) -> Any:
    return WebSocketResource(factory)
