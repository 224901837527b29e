"""The WebSocket front-end in memory: a real Autobahn client over ``iosim``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.test import iosim

from gateway.config import WebSocketConfig
from gateway.core.quota import ClientQuota
from gateway.frontends.admission import Admission
from gateway.frontends.websocket import GatewayWebSocketFactory

from .commands import Stub
from .services import make_service


class Recorder(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.opened.append(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.messages.append(payload.decode())

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.closed.append((code, reason))


class Harness:
    def __init__(
        self, tmp_path: Path, max_clients: int = 10, settings: WebSocketConfig | None = None
    ) -> None:
        self.clock = Clock()
        self.quota = ClientQuota(max_clients)
        self.root = tmp_path
        self.stub = Stub(timeout=1000)
        self.service = make_service(
            tmp_path,
            self.clock,
            self.quota,
            log_text="".join(f"entry {i}\n" for i in range(20)),
            roots=[str(tmp_path)],
            algorithms=["sha1"],
            extra=[self.stub],
        )
        self.admission = Admission(self.quota, self.clock)
        self.factory = GatewayWebSocketFactory(
            self.admission, self.service, settings or WebSocketConfig()
        )
        self.pumps: list[iosim.IOPump] = []

    def connect(
        self,
        protocols: list[str] | None = None,
        origin: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        client_factory: Any = WebSocketClientFactory(
            "ws://127.0.0.1:8080/ws",
            protocols=protocols,
            origin=origin,
            headers=headers,
            reactor=self.clock,
        )
        client_factory.protocol = Recorder
        client_factory.opened, client_factory.messages, client_factory.closed = [], [], []
        server = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
        client = client_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
        server_t = iosim.FakeTransport(
            server, isServer=True, peerAddress=IPv4Address("TCP", "127.0.0.1", 40000)
        )
        client_t = iosim.FakeTransport(client, isServer=False)
        pump = iosim.connect(server, server_t, client, client_t, greet=False)
        self.pumps.append(pump)
        self.flush()
        client_factory.client = client
        client_factory.server = server
        return client_factory

    def flush(self) -> None:
        for _ in range(5):
            for pump in self.pumps:
                pump.flush()
            self.clock.advance(0)

    def send(self, conn: Any, text: str | bytes, binary: bool = False) -> None:
        conn.client.sendMessage(text.encode() if isinstance(text, str) else text, isBinary=binary)
        self.flush()
