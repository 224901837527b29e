"""A ``twisted.web`` site with the limits an exposed daemon needs.

``twisted.web`` on its own has an idle timeout but no deadline for receiving
a request (a slowloris client sending one header byte at a time keeps its
connection forever), no body limit, and answers oversized headers with a bare
``400``.  :class:`GuardedChannel` adds a per-request deadline and clear
``408`` / ``413`` / ``414`` / ``431`` answers; :class:`GuardedRequest` caps the
body and checks the ``Host`` header (DNS rebinding).  Routes never see a
request that broke a limit.  A client that pipelines requests without reading
the answers is not read from until it does, so its answers cannot pile up in
memory.  Every close ends in an abort after a bounded wait.
"""

from __future__ import annotations

import functools
import ipaddress
import weakref
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, datetimeToString
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from gateway.config import HTTPConfig
from gateway.core.peers import peer_host
from gateway.frontends.admission import LINGER, Proven, no_delay
from gateway.frontends.http.routes import wants_json, write_error
from gateway.logfmt import Logger, printable

#: What ``Server`` says: no library, no version.
SERVER = b"gateway"


def host_name(host: str) -> str:
    """The name in a ``Host`` header, without port, brackets or final dot, lower case."""
    host = host.strip()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end].lower() if end > 0 else host.lower()
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".").lower()


def host_allowed(host: str | None, allowed: Sequence[str]) -> bool:
    """May a request that names ``host`` be served (DNS rebinding)?

    A page on an attacker's site can make its own DNS name point at
    127.0.0.1; the browser then sends that name as ``Host``.  So a name is
    served only when it is ours: ``localhost`` and ``*.localhost``, an IP
    address (which no DNS answer can rebind), or one of ``allowed`` (an exact
    name, ``.example.com`` for the name and any below it, ``*`` for any).  No
    ``Host`` at all (HTTP/1.0 tools) is not a browser and is served.
    """
    return _host_allowed(host, tuple(allowed))


@functools.lru_cache(maxsize=256)
def _host_allowed(host: str | None, allowed: tuple[str, ...]) -> bool:
    if host is None:
        return True
    name = host_name(host)
    if not name:
        return False
    if "*" in allowed or name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
        return True
    except ValueError:
        pass
    for entry in allowed:
        want = entry.strip().rstrip(".").lower()
        if want.startswith("."):
            if name == want[1:] or name.endswith(want):
                return True
        elif name == want:
            return True
    return False


STATUS_TEXT = {
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}


def refusal(status: int, message: str) -> bytes:
    """A whole ``status`` answer with ``error: message``, for outside any route."""
    body = f"error: {message}\n".encode()
    head = (
        b"HTTP/1.1 %d %s\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % (status, STATUS_TEXT[status], len(body))
    )
    return head + body


class GuardedChannel(HTTPChannel):
    log = Logger(namespace="gateway.frontends.http.routes")
    settings = HTTPConfig()
    clock: IReactorTime

    def __init__(self) -> None:
        super().__init__()
        #: When the request being received must be in (``None``: none is
        #: being received), and the timer that checks it.  The timer is not
        #: cancelled when a request comes in time: it is left to run out and
        #: set again only if a request is due by then, so a kept-alive
        #: connection pays no timer per request (a cancel and a new timer
        #: cost a few microseconds of every answer).
        self._due: float | None = None
        self._deadline: IDelayedCall | None = None
        self._refused = False
        self._lines = 0
        self._held: list[bytes] = []
        self._closing: IDelayedCall | None = None
        self._answered = 0  # requests received whole on this connection
        self._stopping = False
        self._lost = False
        self._host: Any = None
        #: What this connection's requests proved with their ``Authorization``.
        self.proven = Proven()

    def connectionMade(self) -> None:
        super().connectionMade()
        no_delay(self.transport)
        self.MAX_LENGTH = self.settings.max_header_bytes
        self.totalHeadersSize = self.settings.max_header_bytes
        self._start_deadline()

    def getHost(self) -> Any:
        """This end's address, asked of the socket once per connection, not
        once per request (``twisted.web`` asks it for each)."""
        host = self._host
        if host is None:
            host = self._host = super().getHost()
        return host

    def _start_deadline(self) -> None:
        wait = LINGER if self._stopping else self.settings.request_timeout
        due = self.clock.seconds() + wait
        self._due = due
        timer = self._deadline
        if timer is None:
            self._deadline = self.clock.callLater(wait, self._deadline_passed)
        elif timer.getTime() > due:  # sooner than the timer is set for (stopping)
            timer.reset(wait)

    @property
    def open(self) -> bool:
        """Still ours: not closed, not handed over to a WebSocket."""
        return self.transport is not None and not self._lost

    def stop(self) -> None:
        """The daemon stops: finish what is asked, then close.

        A connection made just before the listener closed may not have sent
        its request yet: it still gets ``LINGER`` seconds to do so and is
        answered (with ``Connection: close``).  A kept-alive connection between
        requests is closed now, as HTTP allows.
        """
        self._stopping = True
        if self._refused:
            return  # closing already
        if self._handlingRequest:
            self.persistent = False  # closed once this answer is sent
            for request in self.requests:
                if not request.startedWriting:
                    request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return
        if self._answered and self._due is None:
            self._close_within(LINGER)
        else:
            self._start_deadline()

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        if self._stopping:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return bool(super().checkPersistence(request, version))

    def _stop_deadline(self) -> None:
        self._due = None  # (the timer, when it runs out, finds nothing due)

    def _drop_deadline(self) -> None:
        self._due = None
        timer, self._deadline = self._deadline, None
        if timer is not None and timer.active():
            timer.cancel()

    def _deadline_passed(self) -> None:
        self._deadline = None
        due = self._due
        if due is None:
            return
        left = due - self.clock.seconds()
        if left > 0:  # a later request's deadline: wait for it
            self._deadline = self.clock.callLater(left, self._deadline_passed)
            return
        self._too_slow()

    def _too_slow(self) -> None:
        self._due = None
        if self._handlingRequest:
            return
        self.log.info("Request from {peer} too slow, closing", peer=self._peer())
        self._refuse(408, f"request not received within {self.settings.request_timeout:g} s")

    def _peer(self) -> str:
        return peer_host(self.transport.getPeer() if self.transport is not None else None)

    def _refuse(self, status: int, message: str) -> None:
        if self._refused:
            return
        self._refused = True
        self._stop_deadline()
        if self.transport is not None:
            self.transport.write(refusal(status, message))
        self._close_within(LINGER)  # nothing more to say: a short wait

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._waitingForTransport and not self._handlingRequest:
            # The client has not read our last answers: do not read (and
            # answer) its next requests until it does.  Reading is paused, so
            # what is held is at most what had already arrived.
            self._held.append(data)
            self._networkProducer.pauseProducing()
            return
        if self._due is None and not self._handlingRequest:
            self._start_deadline()  # a new request starts on a kept-alive connection
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._headers_too_large()
            return
        self._lines += 1
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._headers_too_large()

    def _headers_too_large(self) -> None:
        limit = self.settings.max_header_bytes
        if self._lines == 0:  # still on the request line
            self._refuse(414, f"request line too long (limit {limit} bytes)")
        else:
            self._refuse(431, f"request headers too large (limit {limit} bytes)")

    def resumeProducing(self) -> None:
        super().resumeProducing()
        if self._held and not self._waitingForTransport and not self._handlingRequest:
            data = b"".join(self._held)
            self._held = []
            self.dataReceived(data)

    def allContentReceived(self) -> None:
        self._stop_deadline()
        self._lines = 0
        self._answered += 1
        if self._refused:
            return  # answered 413 (or another refusal): the route never runs
        super().allContentReceived()
        if self.transport is None:  # handed over to a WebSocket: its timer must not keep us
            self._drop_deadline()

    def loseConnection(self) -> None:
        """Close once what was written is sent, or abort after ``abortTimeout``.

        A client that stops reading its answer (or never finishes TLS) would
        otherwise keep the socket for ever once the daemon wants it closed.
        """
        self._close_within(self.abortTimeout)

    def _close_within(self, seconds: float) -> None:
        if self._closing is None and self.transport is not None:
            self._closing = self.clock.callLater(seconds, self._abort_close)
        super().loseConnection()

    def _abort_close(self) -> None:
        self._closing = None
        transport: Any = self.transport
        if transport is not None:
            self.log.info("Closing {peer} did not finish; aborting", peer=self._peer())
            transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._drop_deadline()
        if self._closing is not None and self._closing.active():
            self._closing.cancel()
        self._closing = None
        super().connectionLost(reason)


class GuardedRequest(Request):
    log = Logger(namespace="gateway.frontends.http.routes")

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if name in (b"Server", "Server", b"server", "server"):
            value = SERVER
        super().setHeader(name, value)

    def process(self) -> None:
        """Find the resource and render it, as ``twisted.web`` does, once
        the ``Host`` is known to be ours.

        ``Server`` and ``Date`` are set as they are sent, the date made once
        a second (``twisted.web`` formats it for every request, and sets both
        through :meth:`setHeader`'s conversions: 4 us of every answer).
        No resource here encodes its answers (gzip), so there is no encoder
        to look up.
        """
        channel: Any = self.channel
        self.site = channel.site
        headers = self.responseHeaders
        headers.setRawHeaders(b"server", [SERVER])
        headers.setRawHeaders(b"date", [channel.site.date()])
        host = self.getHeader("host")
        allowed = channel.settings.allowed_hosts
        if not host_allowed(host, allowed):
            self.log.info(
                "Refused request from {peer} for Host {host} (not one of ours)",
                peer=peer_host(self.getClientAddress()),
                host=printable(host or ""),
            )
            write_error(
                self,
                "forbidden",
                f"Host not allowed: {host} (http.allowed_hosts lists the names served)",
                wants_json(self),
            )
            self.finish()
            return
        if self.path == b"*":  # OPTIONS *: twisted.web's own answer
            super().process()
            return
        self.prepath = []
        self.postpath = [unquote_to_bytes(part) for part in self.path[1:].split(b"/")]
        try:
            self.render(self.site.getResourceFor(self))
        except BaseException:
            self.processingFailed(Failure())

    def gotLength(self, length: int | None) -> None:
        self._body_bytes = 0
        self._body_limit: int | None = None  # looked up once a body comes
        if length and length > self._limit():
            self._too_large()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if getattr(self, "_body_refused", False):
            return
        self._body_bytes += len(data)
        if self._body_bytes > self._limit():
            self._too_large()
            return
        super().handleContentChunk(data)

    def _limit(self) -> int:
        """``http.max_body_bytes``, or the route's own limit (a manifest to check).

        Asked only for a request with a body (while its request line is still
        at hand): a GET pays nothing for it."""
        if self._body_limit is None:
            channel: Any = self.channel
            path = getattr(channel, "_path", b"").split(b"?", 1)[0]
            own = channel.site.body_limit(path.decode("utf-8", "replace"))
            self._body_limit = int(channel.settings.max_body_bytes if own is None else own)
        return self._body_limit

    def _too_large(self) -> None:
        self._body_refused = True
        channel: Any = self.channel
        channel._refuse(413, f"request body too large (limit {self._limit()} bytes)")


class GuardedSite(Site):
    """A Site whose connections carry the configured limits."""

    noisy = False

    def __init__(self, resource: IResource, settings: HTTPConfig, reactor: Any) -> None:
        super().__init__(
            resource, requestFactory=GuardedRequest, timeout=settings.idle_timeout, reactor=reactor
        )
        self.settings = settings
        self.clock = reactor
        self.stopping = False
        self._channels: weakref.WeakSet[GuardedChannel] = weakref.WeakSet()
        #: The body limit of a path that has its own (``None``: ``http.max_body_bytes``).
        self.body_limit: Callable[[str], int | None] = lambda path: None
        self._date_second = -1
        self._date = b""

    protocol = GuardedChannel  # type: ignore[assignment]

    def configure(self, settings: HTTPConfig) -> None:
        """New limits (SIGHUP); connections opened from now on get them."""
        self.settings = settings
        self.timeOut = settings.idle_timeout

    def date(self) -> bytes:
        """The ``Date`` of an answer sent now (made once a second)."""
        second = int(self.clock.seconds())
        if second != self._date_second:
            self._date_second = second
            self._date = datetimeToString(second)
        return self._date

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.settings = self.settings
        channel.clock = self.clock
        self._channels.add(channel)
        if self.stopping:
            channel._stopping = True
        return channel

    def stop(self) -> None:
        """Answer what each connection asks (or is about to), then close it."""
        self.stopping = True
        for channel in list(self._channels):
            if channel.open:
                channel.stop()

    @property
    def connections(self) -> int:
        """HTTP connections still open (not those handed to a WebSocket)."""
        return sum(1 for channel in list(self._channels) if channel.open)

    def log(self, request: Any) -> None:
        """No access log: the command service logs each command once."""
