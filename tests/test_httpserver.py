"""Request limits of the HTTP site, byte by byte over an in-memory transport."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from gateway.config import HTTPConfig
from gateway.frontends.http.site import GuardedSite


class Ok(Resource):
    isLeaf = True

    def render_GET(self, request: object) -> bytes:
        return b"ok\n"

    render_POST = render_GET


def connect(settings: HTTPConfig | None = None) -> tuple[object, StringTransport, Clock]:
    clock = Clock()
    root = Resource()
    root.putChild(b"healthz", Ok())
    site = GuardedSite(root, settings or HTTPConfig(), clock)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
    channel.makeConnection(transport)
    return channel, transport, clock


def status_of(transport: StringTransport) -> tuple[int, bytes]:
    head, _, body = transport.value().partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def test_ordinary_request_passes() -> None:
    channel, t, _ = connect()
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")  # type: ignore[attr-defined]
    code, body = status_of(t)
    assert code == 200 and body.endswith(b"ok\n")
    assert not t.disconnecting


def test_huge_query_string_is_414() -> None:
    channel, t, _ = connect()
    channel.dataReceived(b"GET /lastlog?x=" + b"a" * 100_000 + b" HTTP/1.1\r\n")  # type: ignore[attr-defined]
    assert status_of(t) == (414, b"error: request line too long (limit 16384 bytes)\n")
    assert t.disconnecting


def test_huge_headers_are_431() -> None:
    channel, t, _ = connect()
    headers = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"v" * 100) for i in range(200))
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + headers + b"\r\n")  # type: ignore[attr-defined]
    assert status_of(t) == (431, b"error: request headers too large (limit 16384 bytes)\n")
    assert t.disconnecting


def test_one_giant_header_line_is_431() -> None:
    channel, t, _ = connect()
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"v" * 20_000 + b"\r\n")  # type: ignore[attr-defined]
    assert status_of(t)[0] == 431


def test_declared_big_body_is_413() -> None:
    channel, t, _ = connect()
    channel.dataReceived(  # type: ignore[attr-defined]
        b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\n\r\n"
    )
    assert status_of(t) == (413, b"error: request body too large (limit 65536 bytes)\n")
    assert t.disconnecting


def test_chunked_big_body_is_413() -> None:
    channel, t, _ = connect(HTTPConfig(max_body_bytes=1000))
    channel.dataReceived(  # type: ignore[attr-defined]
        b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (600, b"z" * 600)
    channel.dataReceived(chunk)  # type: ignore[attr-defined]
    assert t.value() == b""
    channel.dataReceived(chunk)  # type: ignore[attr-defined]
    assert status_of(t)[0] == 413


def test_slowloris_is_408() -> None:
    channel, t, clock = connect()
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\n")  # type: ignore[attr-defined]
    for _ in range(9):
        clock.advance(1)
        channel.dataReceived(b"X: y\r\n")  # type: ignore[attr-defined]  # a trickle
    assert t.value() == b""
    clock.advance(1.1)
    assert status_of(t) == (408, b"error: request not received within 10 s\n")
    assert t.disconnecting


def test_kept_alive_connection_gets_a_new_deadline_per_request() -> None:
    channel, t, clock = connect()
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")  # type: ignore[attr-defined]
    t.clear()
    clock.advance(30)  # idle between requests: the idle timeout's business, not a 408
    assert t.value() == b"" and not t.disconnecting
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\n")  # type: ignore[attr-defined]
    clock.advance(10.1)
    assert status_of(t)[0] == 408


@pytest.mark.parametrize("size", [1024, 4096])
def test_limits_follow_the_config(size: int, tmp_path: Path) -> None:
    channel, t, _ = connect(HTTPConfig(max_header_bytes=size))
    channel.dataReceived(b"GET /" + b"a" * size + b" HTTP/1.1\r\n")  # type: ignore[attr-defined]
    assert status_of(t) == (414, f"error: request line too long (limit {size} bytes)\n".encode())
