"""The stack's own ceiling: the gateway's lastlog work, served by the bare stack.

``web PORT LOG``: a bare ``twisted.web`` resource answering ``GET /lastlog``
with the last 10 lines of LOG; ``ws PORT LOG``: a bare Autobahn server
answering each message with ``Begin lastlog``, the last 10 lines and ``End
lastlog``, one message each (as the gateway's text WebSocket does).  Each
answer reads the file's last 4 KiB again, in the reactor thread: no cache,
no thread, no quota, no logging, no checks.  What the gateway does beyond
this is its own cost.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site


def last_lines(path: str, n: int = 10) -> list[bytes]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - 4096))
        tail = f.read()
    return tail.splitlines()[-n:]


def web(port: int, path: str) -> None:
    class Lastlog(Resource):
        isLeaf = True

        def render_GET(self, request: object) -> bytes:
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")  # type: ignore[attr-defined]
            return b"\n".join(last_lines(path)) + b"\n"

    site = Site(Lastlog())
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    reactor.listenTCP(port, site, interface="127.0.0.1")  # type: ignore[attr-defined]


def ws(port: int, path: str) -> None:
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

    class Lastlog(WebSocketServerProtocol):
        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.sendMessage(b"Begin lastlog")
            for line in last_lines(path):
                self.sendMessage(line)
            self.sendMessage(b"End lastlog")

    factory = WebSocketServerFactory(f"ws://127.0.0.1:{port}")
    factory.protocol = Lastlog
    reactor.listenTCP(port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]


if __name__ == "__main__":
    kind, port_text, log = sys.argv[1:4]
    {"web": web, "ws": ws}[kind](int(port_text), log)
    reactor.run()  # type: ignore[attr-defined]
