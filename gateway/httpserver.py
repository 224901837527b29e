"""A ``twisted.web`` site with the limits an exposed daemon needs.

``twisted.web`` on its own has an idle timeout but no deadline for receiving
a request (a slowloris client sending one header byte at a time keeps its
connection forever), no body limit, and answers oversized headers with a bare
``400``.  :class:`GuardedChannel` adds a per-request deadline and clear
``408`` / ``413`` / ``414`` / ``431`` answers; :class:`GuardedRequest` caps the
body.  Routes never see a request that broke a limit.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from gateway.commands.base import peer_host
from gateway.config import HTTPConfig

STATUS_TEXT = {
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}


def refuse(channel: HTTPChannel, status: int, message: str) -> None:
    """Answer ``status`` with ``error: message`` and close, outside any route."""
    body = f"error: {message}\n".encode()
    head = (
        b"HTTP/1.1 %d %s\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % (status, STATUS_TEXT[status], len(body))
    )
    if channel.transport is not None:
        channel.transport.write(head + body)
    channel.loseConnection()


class GuardedChannel(HTTPChannel):
    log = Logger(namespace="gateway.http")
    settings = HTTPConfig()
    clock: IReactorTime

    def __init__(self) -> None:
        super().__init__()
        self._deadline: IDelayedCall | None = None
        self._refused = False
        self._lines = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        self.MAX_LENGTH = self.settings.max_header_bytes
        self.totalHeadersSize = self.settings.max_header_bytes
        self._start_deadline()

    def _start_deadline(self) -> None:
        self._stop_deadline()
        self._deadline = self.clock.callLater(self.settings.request_timeout, self._too_slow)

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
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
        refuse(self, status, message)

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._deadline is None and not self._handlingRequest:
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

    def allContentReceived(self) -> None:
        self._stop_deadline()
        self._lines = 0
        super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadline()
        super().connectionLost(reason)


class GuardedRequest(Request):
    def gotLength(self, length: int | None) -> None:
        self._body_bytes = 0
        if length is not None and length > self._limit():
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
        channel: Any = self.channel
        return int(channel.settings.max_body_bytes)

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

    protocol = GuardedChannel  # type: ignore[assignment]

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.settings = self.settings
        channel.clock = self.clock
        return channel

    def log(self, request: Any) -> None:
        """No access log: the command service logs each command once."""
