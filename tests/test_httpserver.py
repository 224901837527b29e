"""Request limits of the HTTP site, byte by byte over an in-memory transport."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from gateway.config import HTTPConfig
from gateway.frontends.admission import LINGER
from gateway.frontends.http.site import GuardedSite


class Ok(Resource):
    isLeaf = True

    def render_GET(self, request: object) -> bytes:
        return b"ok\n"

    render_POST = render_GET


class Later(Resource):
    """Answers when the test says so."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Any] = []

    def render_GET(self, request: Any) -> int:
        self.waiting.append(request)
        return NOT_DONE_YET


def site_for(
    settings: HTTPConfig | None = None, later: Later | None = None
) -> tuple[GuardedSite, Clock]:
    clock = Clock()
    root = Resource()
    root.putChild(b"healthz", Ok())
    if later is not None:
        root.putChild(b"later", later)
    return GuardedSite(root, settings or HTTPConfig(), clock), clock


def connect_to(site: GuardedSite) -> tuple[Any, StringTransport]:
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
    channel.makeConnection(transport)
    return channel, transport


def connect(settings: HTTPConfig | None = None) -> tuple[object, StringTransport, Clock]:
    site, clock = site_for(settings)
    channel, transport = connect_to(site)
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


def deadline_timers(clock: Clock) -> int:
    return len([call for call in clock.getDelayedCalls() if "deadline" in repr(call)])


def test_a_request_begun_before_the_last_deadline_ran_out_gets_its_whole_time() -> None:
    # The first request's timer is still set (for t=10) when the second
    # request starts at t=5: the second is refused at t=15, not at t=10.
    channel, t, clock = connect()
    channel.dataReceived(GET)  # type: ignore[attr-defined]
    t.clear()
    clock.advance(5)
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\n")  # type: ignore[attr-defined]
    clock.advance(9.9)
    assert t.value() == b"" and not t.disconnecting
    clock.advance(0.2)
    assert status_of(t) == (408, b"error: request not received within 10 s\n")


def test_requests_in_time_keep_at_most_one_deadline_timer() -> None:
    channel, t, clock = connect()
    for _ in range(100):
        clock.advance(0.3)
        channel.dataReceived(GET)  # type: ignore[attr-defined]
        assert deadline_timers(clock) == 1 and not t.disconnecting
    clock.advance(10)  # it runs out with no request due: nothing is set again
    assert deadline_timers(clock) == 0 and not t.disconnecting
    assert t.value().count(b"200 OK") == 100


def test_a_closed_connection_leaves_no_deadline_timer() -> None:
    channel, t, clock = connect()
    channel.dataReceived(GET)  # type: ignore[attr-defined]
    assert deadline_timers(clock) == 1
    channel.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
    assert deadline_timers(clock) == 0


def test_a_request_half_in_at_the_stop_gets_linger_not_what_is_left() -> None:
    site, clock = site_for()
    channel, t = connect_to(site)
    channel.dataReceived(GET)
    t.clear()
    clock.advance(1)
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\n")  # due at t=11
    site.stop()  # now due at t=1+LINGER
    clock.advance(LINGER - 0.1)
    assert t.value() == b""
    clock.advance(0.2)
    assert status_of(t)[0] == 408 and t.disconnecting


@pytest.mark.parametrize("size", [1024, 4096])
def test_limits_follow_the_config(size: int, tmp_path: Path) -> None:
    channel, t, _ = connect(HTTPConfig(max_header_bytes=size))
    channel.dataReceived(b"GET /" + b"a" * size + b" HTTP/1.1\r\n")  # type: ignore[attr-defined]
    assert status_of(t) == (414, f"error: request line too long (limit {size} bytes)\n".encode())


# -- stopping: every request that reached the daemon is answered, then the
# connection closes; no connection is dropped with nothing said.

GET = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"


def closed_by_us(channel: Any, t: StringTransport) -> None:
    """The transport was asked to close: what the reactor then does."""
    assert t.disconnecting
    channel.connectionLost(Failure(ConnectionDone()))


def test_a_request_arriving_after_the_stop_is_answered_and_closed() -> None:
    site, _ = site_for()
    channel, t = connect_to(site)  # accepted just before the listener closed
    site.stop()
    assert site.connections == 1  # the stop waits for it
    channel.dataReceived(GET)
    code, _ = status_of(t)
    assert code == 200 and b"Connection: close" in t.value()
    closed_by_us(channel, t)
    assert site.connections == 0


def test_a_silent_new_connection_gets_linger_not_the_request_timeout() -> None:
    site, clock = site_for()
    channel, t = connect_to(site)
    site.stop()
    clock.advance(LINGER - 0.1)
    assert t.value() == b""
    clock.advance(0.2)
    assert status_of(t)[0] == 408 and t.disconnecting


def test_a_connection_made_after_the_stop_is_stopping_too() -> None:
    site, clock = site_for()
    site.stop()
    channel, t = connect_to(site)
    clock.advance(LINGER + 0.1)
    assert status_of(t)[0] == 408 and t.disconnecting


def test_a_kept_alive_connection_between_requests_closes_at_once() -> None:
    site, _ = site_for()
    channel, t = connect_to(site)
    channel.dataReceived(GET)
    assert b"Connection: close" not in t.value() and not t.disconnecting
    site.stop()
    closed_by_us(channel, t)
    assert site.connections == 0


def test_a_request_running_at_the_stop_is_finished_then_closed() -> None:
    later = Later()
    site, _ = site_for(later=later)
    channel, t = connect_to(site)
    channel.dataReceived(b"GET /later HTTP/1.1\r\nHost: localhost\r\n\r\n")
    site.stop()
    assert not t.disconnecting and site.connections == 1
    request = later.waiting.pop()
    request.write(b"done\n")
    request.finish()
    assert status_of(t) == (200, b"5\r\ndone\n\r\n0\r\n\r\n")
    assert b"Connection: close" in t.value()
    closed_by_us(channel, t)


def test_a_connection_handed_to_a_websocket_is_not_waited_for() -> None:
    site, _ = site_for()
    channel, _ = connect_to(site)
    assert site.connections == 1
    channel.transport = None  # what the WebSocket upgrade does
    assert site.connections == 0


def test_a_connection_handed_to_a_websocket_keeps_no_deadline_timer() -> None:
    # The timer would hold the channel (and its request) for the rest of
    # request_timeout: memory for every WebSocket just opened.
    class Takeover(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> int:
            request.channel.transport = None  # what Autobahn's resource does
            return NOT_DONE_YET

    site, clock = site_for()
    site.resource.putChild(b"ws", Takeover())
    channel, _ = connect_to(site)
    channel.dataReceived(b"GET /ws HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert deadline_timers(clock) == 0


def test_the_local_address_is_asked_once_per_connection() -> None:
    from gateway.frontends.http.site import GuardedChannel

    asked: list[int] = []

    class Counting(StringTransport):
        def getHost(self) -> Any:
            asked.append(1)
            return super().getHost()

    channel = GuardedChannel()
    channel.clock = Clock()
    channel.makeConnection(Counting())
    first = channel.getHost()
    assert channel.getHost() is first and len(asked) == 1
    channel.connectionLost(Failure(ConnectionDone()))


def headers_of(transport: StringTransport) -> dict[bytes, bytes]:
    head = transport.value().partition(b"\r\n\r\n")[0]
    pairs = (line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    return {name.lower(): value for name, value in pairs}


def test_every_answer_has_our_server_and_the_date_of_its_second() -> None:
    site, clock = site_for()
    clock.advance(1_795_000_000.25)
    channel, t = connect_to(site)
    channel.dataReceived(GET)
    first = headers_of(t)
    assert first[b"server"] == b"gateway"
    assert first[b"date"] == b"Wed, 18 Nov 2026 11:06:40 GMT"
    t.clear()
    clock.advance(0.7)  # the same second
    channel.dataReceived(GET)
    assert headers_of(t)[b"date"] == first[b"date"]
    t.clear()
    clock.advance(0.1)  # the next one
    channel.dataReceived(GET)
    assert headers_of(t)[b"date"] == b"Wed, 18 Nov 2026 11:06:41 GMT"


def test_a_refused_host_is_answered_with_server_and_date_too() -> None:
    site, clock = site_for()
    channel, t = connect_to(site)
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: attacker.example\r\n\r\n")
    assert status_of(t)[0] == 403
    headers = headers_of(t)
    assert headers[b"server"] == b"gateway"
    assert headers[b"date"] == b"Thu, 01 Jan 1970 00:00:00 GMT"


def test_a_request_for_star_is_twisted_webs_own_answer() -> None:
    channel, t, _ = connect()
    channel.dataReceived(b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n")  # type: ignore[attr-defined]
    assert status_of(t)[0] == 200 and headers_of(t)[b"server"] == b"gateway"


def test_a_resource_that_breaks_is_a_500_and_the_connection_serves_on() -> None:
    class Broken(Resource):
        isLeaf = True

        def render_GET(self, request: object) -> bytes:
            raise RuntimeError("broken")

    site, _ = site_for()
    site.resource.putChild(b"broken", Broken())
    channel, t = connect_to(site)
    channel.dataReceived(b"GET /broken HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status_of(t)[0] == 500
    t.clear()
    channel.dataReceived(GET)
    assert status_of(t) == (200, b"ok\n")
