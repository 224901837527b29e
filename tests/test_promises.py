"""Promises the README makes that an attack once broke, each in memory.

Quota and liveness, memory under clients that do not read, secrets, the
browser-facing checks, parsing and logging, as listed in the hardening issue;
the end-to-end versions against the real process are in
``tests/e2e/test_promises.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.web.resource import Resource
from zope.interface import implementer

from gateway.cli import main
from gateway.commands.checkio import open_regular
from gateway.commands.comphash import ComphashCommand
from gateway.commands.lastlog import (
    OWN_LOG,
    AutoSource,
    KernelSource,
    LastlogCommand,
    kmsg_line,
)
from gateway.config import Config, ConfigError, HTTPConfig, TCPConfig, load
from gateway.core.auth import MAX_UNAUTHENTICATED_LINES, Authenticator
from gateway.core.command import Client
from gateway.core.errors import CommandError
from gateway.core.events import Event, Lines, Result
from gateway.core.flow import Flow
from gateway.core.peers import limit_key, normalise, peer_host
from gateway.core.quota import ClientQuota
from gateway.core.ratelimit import RateLimiter
from gateway.frontends.admission import LINGER, Admission
from gateway.frontends.http.site import GuardedSite, host_allowed
from gateway.frontends.line import MAX_PENDING, LineFactory, LineSession, LineState
from gateway.logfmt import JSONLinesObserver, RecentLog, TextObserver, redact
from gateway.sessions.json_conversation import Auth, JSONConversation, MessageError, parse

from .support.commands import Stub
from .support.fakes import FakeSpawner, call_now, run_now
from .support.services import make_service
from .support.websocket import Harness as WSHarness

TOKEN = "promise-token-0123456789"


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Every log line, exactly as the text observer writes it."""
    out = io.StringIO()
    observer = TextObserver(out, "debug")
    globalLogPublisher.addObserver(observer)
    lines: list[str] = []
    yield lines
    globalLogPublisher.removeObserver(observer)
    lines.extend(out.getvalue().splitlines())


def service(clock: Clock, quota: ClientQuota, limiter: RateLimiter | None = None) -> Any:
    return make_service(None, clock, quota, limiter=limiter, extra=[Stub(timeout=1000)])


@implementer(ISSLTransport)
class SilentTLSTransport(StringTransport):
    """A TLS connection whose handshake never happens: closing never completes."""

    def __init__(self, peer: str = "127.0.0.1") -> None:
        super().__init__(peerAddress=IPv4Address("TCP", peer, 4000))
        self.aborted = False

    def loseConnection(self) -> None:
        self.disconnecting = True  # and nothing more: no close_notify can be sent

    def abortConnection(self) -> None:
        self.aborted = True

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def getTcpNoDelay(self) -> bool:
        return False

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass

    def getTcpKeepAlive(self) -> bool:
        return False

    def loseWriteConnection(self) -> None:
        pass

    def getPeerCertificate(self) -> None:
        return None


class Lines_:
    def __init__(
        self,
        max_clients: int = 10,
        auth: Authenticator | None = None,
        login_timeout: float = 0.0,
        settings: TCPConfig | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.clock = Clock()
        self.quota = ClientQuota(max_clients)
        self.service = service(self.clock, self.quota, limiter)
        admission = Admission(self.quota, self.clock, auth, limiter, login_timeout)
        self.factory = LineFactory(admission, self.service, settings or TCPConfig())

    def connect(
        self, host: str = "127.0.0.1", transport: StringTransport | None = None
    ) -> tuple[LineSession, StringTransport]:
        session = self.factory.buildProtocol(None)
        t = transport or StringTransport(peerAddress=IPv4Address("TCP", host, 4000))
        session.makeConnection(t)
        return session, t


def out(t: StringTransport) -> list[str]:
    text: str = t.value().decode()
    t.clear()
    return text.splitlines()


# -- 1. closing always ends in an abort, TLS or not


def test_a_silent_tls_client_is_aborted_and_its_slot_freed() -> None:
    h = Lines_(auth=Authenticator([TOKEN], Clock()), login_timeout=1.0)
    t = SilentTLSTransport()
    session, _ = h.connect(transport=t)
    assert h.quota.snapshot().total_in_use == 1
    h.clock.advance(1.0)  # the login timeout says goodbye...
    assert t.disconnecting and h.quota.snapshot().total_in_use == 0
    assert not t.aborted
    h.clock.advance(LINGER)  # ...and the close ends in an abort
    assert t.aborted


def test_an_idle_tls_client_is_aborted_too() -> None:
    h = Lines_(settings=TCPConfig(idle_timeout=2.0))
    t = SilentTLSTransport()
    h.connect(transport=t)
    h.clock.advance(2.0)
    assert h.quota.snapshot().total_in_use == 0
    h.clock.advance(LINGER)
    assert t.aborted


# -- 2. the slot goes back when the server says goodbye


@pytest.mark.parametrize("goodbye", [b"exit\n", b"x" * 5000 + b"\n"])
def test_slot_is_free_at_goodbye_not_after_the_drain(goodbye: bytes) -> None:
    h = Lines_(max_clients=1)
    session, t = h.connect()
    session.dataReceived(goodbye + b"help\nhelp\n")  # unread input: the socket lingers
    assert session.state is LineState.DRAINING
    assert h.quota.snapshot().total_in_use == 0
    _, t2 = h.connect("127.0.0.2")  # served at once, not "Too many connections"
    assert out(t2) == []
    assert h.quota.snapshot().total_in_use == 1


def test_websocket_exit_frees_the_slot_before_the_close_completes(tmp_path: Path) -> None:
    h = WSHarness(tmp_path, max_clients=1)
    conn = h.connect(["gateway.text"])
    server = conn.server
    server.onMessage(b"exit", False)  # the server says goodbye; the client has not answered
    assert h.quota.snapshot().total_in_use == 0


# -- 3. what a client that has not logged in can cost


def test_unauthenticated_lines_are_bounded() -> None:
    auth = Authenticator([TOKEN], Clock())
    h = Lines_(auth=auth, login_timeout=10.0)
    session, t = h.connect()
    session.dataReceived(b"help with-a-secret-looking-word\n" * 50)
    answers = out(t)
    assert answers == ["Authentication required."] * MAX_UNAUTHENTICATED_LINES
    assert t.disconnecting and h.quota.snapshot().total_in_use == 0
    assert auth.pending_logins == 0


def test_unauthenticated_lines_are_logged_once_without_their_text() -> None:
    out_ = io.StringIO()
    observer = TextObserver(out_)
    globalLogPublisher.addObserver(observer)
    try:
        h = Lines_(auth=Authenticator([TOKEN], Clock()), login_timeout=10.0)
        session, _ = h.connect()
        session.dataReceived(b"help secret-looking-word\n" * 50)
    finally:
        globalLogPublisher.removeObserver(observer)
    log = out_.getvalue()
    assert "secret-looking-word" not in log
    assert log.count("before logging in: refused") == 1
    assert log.count("too many commands before logging in") == 1


def test_unauthenticated_lines_are_rate_limited() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 2, clock)
    h = Lines_(auth=Authenticator([TOKEN], clock), login_timeout=10.0, limiter=limiter)
    session, t = h.connect()
    session.dataReceived(b"help\nhelp\nhelp\n")
    answers = out(t)
    assert answers[:2] == ["Authentication required."] * 2
    assert answers[2].startswith("An error occurred: Too many commands from 127.0.0.1")
    assert t.disconnecting


def test_connections_waiting_to_log_in_are_capped() -> None:
    auth = Authenticator([TOKEN], Clock(), max_pending=3, max_pending_per_ip=2)
    h = Lines_(auth=auth, login_timeout=10.0)
    first, _ = h.connect("10.0.0.1")
    h.connect("10.0.0.1")
    _, t3 = h.connect("10.0.0.1")  # a third from the same address
    assert out(t3) == ["Too many clients waiting to log in; try again later. Bye!"]
    assert t3.disconnecting
    h.connect("10.0.0.2")
    _, t5 = h.connect("10.0.0.3")  # over the overall cap
    assert t5.disconnecting
    first.dataReceived(f"auth {TOKEN}\n".encode())  # one logs in: a place frees
    _, t6 = h.connect("10.0.0.3")
    assert not t6.disconnecting
    assert auth.pending_logins == 3
    assert h.quota.snapshot().total_in_use == 4


def test_json_websocket_unauthenticated_messages_are_bounded() -> None:
    auth = Authenticator([TOKEN], Clock())
    sent: list[dict[str, Any]] = []
    closed: list[bool] = []
    c = JSONConversation(
        service(Clock(), ClientQuota(10)),
        Client("websocket", "127.0.0.1"),
        lambda text: sent.append(json.loads(text)),
        lambda: closed.append(True),
        4,
        auth,
        10.0,
    )
    c.start()
    assert auth.pending_logins == 1
    for i in range(20):
        c.receive(json.dumps({"id": i, "line": "help"}))
    assert len(sent) == MAX_UNAUTHENTICATED_LINES and closed
    assert {m["code"] for m in sent} == {"unauthorized"}
    assert auth.pending_logins == 0


# -- 4. a client that sends but does not read


def test_line_server_runs_nothing_while_its_client_does_not_read() -> None:
    h = Lines_()
    session, t = h.connect()
    flow: Flow = session.conversation.client.flow  # type: ignore[union-attr]
    flow.pauseProducing()  # what the transport does when its buffer is full
    session.dataReceived(b"help\n" * (MAX_PENDING + 10))
    assert t.value() == b""  # nothing answered, nothing buffered for it
    assert t.producerState == "paused"  # and reading stopped
    flow.resumeProducing()  # the client reads again: every command is answered
    answered = [line for line in out(t) if line.startswith("help ")]
    assert len(answered) == MAX_PENDING + 10
    assert t.producerState == "producing"
    assert session.conversation is not None and not session.conversation.waiting


def test_websocket_stops_reading_while_its_client_does_not_read(tmp_path: Path) -> None:
    h = WSHarness(tmp_path)
    conn = h.connect(["gateway.v1.json"])
    server = conn.server
    server.conversation.client.flow.pauseProducing()
    gate = server._gate
    assert gate is not None and gate.closed
    server.conversation.client.flow.resumeProducing()
    assert not gate.closed


class Leaf(Resource):
    isLeaf = True

    def render_GET(self, request: object) -> bytes:
        return b"ok\n"


def pipelined_site() -> tuple[Any, StringTransport, list[int]]:
    served: list[int] = []

    class Count(Resource):
        isLeaf = True

        def render_GET(self, request: object) -> bytes:
            served.append(1)
            return b"ok\n"

        render_POST = render_GET

    root = Resource()
    root.putChild(b"healthz", Count())
    clock = Clock()
    site = GuardedSite(root, HTTPConfig(), clock)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    t = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
    channel.makeConnection(t)
    return channel, t, served


def test_http_pipelining_without_reading_is_not_answered_until_read() -> None:
    channel, t, served = pipelined_site()
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    channel.dataReceived(request)
    assert served == [1]
    channel.pauseProducing()  # the transport's buffer is full: the client does not read
    channel.dataReceived(request * 1000)
    assert served == [1]  # held, not answered into a buffer nobody reads
    assert t.producerState == "paused"
    channel.resumeProducing()  # the client read
    assert len(served) == 1001


# -- 5, 6. secrets in --check-config and config errors


def test_check_config_shows_no_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check-config"], {"GATEWAY_TOKEN": TOKEN}) == 0
    printed = capsys.readouterr().out
    assert TOKEN not in printed and '"***"' in printed


@pytest.mark.parametrize("value", ["[zq-hidden-zq", '["zq-hidden-zq-1234567890', "{zq-hidden-zq}"])
def test_a_bad_token_variable_is_not_echoed(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(None, {"GATEWAY_AUTH_TOKENS": value})
    assert "zq-hidden" not in str(info.value)
    assert "GATEWAY_AUTH_TOKENS" in str(info.value) or "auth.tokens" in str(info.value)


# -- 7. every spelling of auth is redacted


@pytest.mark.parametrize("sep", [" ", "\t", "  ", "\x0b", "\x0c", "\x1f", "\u2003", "\x85"])
def test_every_auth_spelling_is_redacted(sep: str) -> None:
    assert redact(f"auth{sep}{TOKEN}") == "auth ***"
    assert redact(f"  AUTH{sep}{TOKEN}") == "auth ***"


def test_tab_auth_line_is_not_logged_over_tcp() -> None:
    log = io.StringIO()
    observer = TextObserver(log)
    globalLogPublisher.addObserver(observer)
    try:
        h = Lines_(auth=Authenticator([TOKEN], Clock()))
        session, t = h.connect()
        session.dataReceived(f"auth\t{TOKEN}\nhelp\n".encode())
    finally:
        globalLogPublisher.removeObserver(observer)
    assert out(t)[0] == "Authenticated."
    assert TOKEN not in log.getvalue() and "auth ***" in log.getvalue()


def test_json_line_auth_after_login_is_an_auth_message_and_not_logged() -> None:
    assert parse(json.dumps({"id": 1, "line": f"auth {TOKEN}"})) == Auth(1, TOKEN)
    log = io.StringIO()
    observer = TextObserver(log)
    globalLogPublisher.addObserver(observer)
    sent: list[dict[str, Any]] = []
    try:
        c = JSONConversation(
            service(Clock(), ClientQuota(10)),
            Client("websocket", "127.0.0.1"),
            lambda text: sent.append(json.loads(text)),
            lambda: None,
            4,
            Authenticator([TOKEN], Clock()),
        )
        c.start()
        c.receive(json.dumps({"id": 1, "auth": TOKEN}))
        c.receive(json.dumps({"id": 2, "line": f"auth {TOKEN}"}))
    finally:
        globalLogPublisher.removeObserver(observer)
    assert sent[1] == {"id": 2, "type": "result", "result": {"authenticated": True}}
    assert TOKEN not in log.getvalue()


# -- 8. DNS rebinding: the Host header


@pytest.mark.parametrize(
    ("host", "allowed", "expected"),
    [
        (None, (), True),  # HTTP/1.0 tool, not a browser
        ("localhost:8080", (), True),
        ("LOCALHOST.:8080", (), True),
        ("console.localhost:8080", (), True),
        ("127.0.0.1:8080", (), True),
        ("127.0.0.9", (), True),
        ("[::1]:8080", (), True),
        ("192.0.2.7:8080", (), True),  # an address cannot be rebound
        ("attacker.example:8080", (), False),
        ("localhost.attacker.example", (), False),
        ("127.0.0.1.attacker.example", (), False),
        ("", (), False),
        ("gw.example.com:8080", ("gw.example.com",), True),
        ("a.gw.example.com", ("gw.example.com",), False),
        ("a.example.com", (".example.com",), True),
        ("example.com", (".example.com",), True),
        ("badexample.com", (".example.com",), False),
        ("anything.example", ("*",), True),
    ],
)
def test_host_allowed(host: str | None, allowed: tuple[str, ...], expected: bool) -> None:
    assert host_allowed(host, allowed) is expected


def test_foreign_host_is_refused_before_any_route() -> None:
    channel, t, served = pipelined_site()
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: attacker.example:8080\r\n\r\n")
    head, _, body = t.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 ")
    assert body == (
        b"error: Host not allowed: attacker.example:8080"
        b" (http.allowed_hosts lists the names served)\n"
    )
    assert served == []


def test_server_header_names_no_version() -> None:
    channel, t, _ = pipelined_site()
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head = t.value().partition(b"\r\n\r\n")[0].lower()
    assert b"\r\nserver: gateway\r\n" in head
    assert b"twisted" not in head


def test_allowed_hosts_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="http.allowed_hosts"):
        load(None, {"GATEWAY_HTTP_ALLOWED_HOSTS": "a b"})
    assert load(None, {"GATEWAY_HTTP_ALLOWED_HOSTS": "gw.example,.corp"}).http.allowed_hosts == (
        "gw.example",
        ".corp",
    )


# -- 9, 15. WebSocket header login


def ws_with_header(tmp_path: Path, token: str) -> tuple[WSHarness, Any]:
    h = WSHarness(tmp_path)
    h.admission.auth = Authenticator([TOKEN], h.clock)
    conn = h.connect(["gateway.text"], headers={"Authorization": f"Bearer {token}"})
    return h, conn


def test_wrong_token_in_the_websocket_header_is_answered_slowly(tmp_path: Path) -> None:
    h, conn = ws_with_header(tmp_path, "wrong-token-0000000000")
    assert not conn.opened and not conn.server.wasNotCleanReason  # held back
    h.clock.advance(0.25)
    h.flush()
    assert not conn.opened
    assert "Authentication required" in (conn.server.wasNotCleanReason or "")


def test_header_login_then_auth_line_says_already(tmp_path: Path) -> None:
    h, conn = ws_with_header(tmp_path, TOKEN)
    assert conn.opened
    h.send(conn, f"auth {TOKEN}")
    assert conn.messages == ["Already authenticated."]


def test_websocket_handshake_server_header_names_no_version(tmp_path: Path) -> None:
    h = WSHarness(tmp_path)
    conn = h.connect(["gateway.text"])
    assert conn.client.http_headers.get("server") == "gateway"


# -- 10. every JSON message gets one planned answer


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        '{"id": 1, "line": ' + "[" * 50_000 + "]" * 50_000 + "}",
        '{"id": "\\ud800", "line": "help"}',
        '{"id": 1, "\\ud800": 1}',
        '{"id": 1, "line": "help \\udfff"}',
        '{"id": 1, "command": "comphash", "args": {"path": "/tmp/\\ud800"}}',
    ],
)
def test_hostile_json_gets_one_error_and_the_connection_stays(text: str) -> None:
    sent: list[str] = []
    closed: list[bool] = []
    c = JSONConversation(
        service(Clock(), ClientQuota(10)),
        Client("websocket", "127.0.0.1"),
        sent.append,
        lambda: closed.append(True),
        4,
    )
    c.start()
    c.receive(text)
    assert len(sent) == 1 and not closed
    answer = json.loads(sent[0])
    assert answer["type"] == "error" and answer["code"] == "bad_argument"
    sent[0].encode("utf-8")  # always sendable
    c.receive('{"id": 2, "line": "help"}')
    assert json.loads(sent[-1])["type"] == "result"


def test_surrogate_messages_keep_a_usable_id() -> None:
    with pytest.raises(MessageError) as info:
        parse('{"id": 5, "line": "help \\ud800"}')
    assert info.value.id == 5
    with pytest.raises(MessageError) as info:
        parse('{"id": "\\ud800", "line": "help"}')
    assert info.value.id is None


def test_comphash_refuses_a_surrogate_path(tmp_path: Path) -> None:
    command = ComphashCommand(["/"], ["sha1"], "sha1", 1 << 20, 60.0, run_now, call_now)
    with pytest.raises(CommandError) as info:
        command.prepare({"path": "/tmp/\udc80x"})
    assert info.value.code == "bad_argument"


# -- 11. every client string is escaped in every log line


HOSTILE = "a\x1b[31mred\nforged line\r\x85next\x9bcsi\u2028sep\u2029para\ud800lone\x7fdel"


def event(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "log_format": "got {value}",
        "value": text,
        "log_level": LogLevel.info,
        "log_namespace": "t",
        "log_time": 0.0,
        **extra,
    }


def test_text_log_escapes_everything_from_a_client() -> None:
    out_ = io.StringIO()
    TextObserver(out_)(event(HOSTILE))
    written = out_.getvalue()
    assert written.count("\n") == 1 and written.endswith("\n")
    for raw in ("\x1b", "\r", "\x85", "\x9b", "\u2028", "\u2029", "\ud800", "\x7f"):
        assert raw not in written
    for shown in ("\\x1b", "\\x0a", "\\x85", "\\x9b", "\\u2028", "\\u2029", "\\ud800", "\\x7f"):
        assert shown in written
    written.encode("utf-8")


def test_json_log_escapes_everything_from_a_client() -> None:
    out_ = io.StringIO()
    JSONLinesObserver(out_)(event(HOSTILE, origin=HOSTILE))
    written = out_.getvalue()
    assert written.count("\n") == 1
    record = json.loads(written)
    for value in (record["message"], record["origin"]):
        assert not any(c in value for c in "\x1b\r\n\x85\x9b\u2028\u2029\ud800")
    written.encode("utf-8")


def test_log_paths_that_once_wrote_raw_text(tmp_path: Path) -> None:
    """Unknown JSON field, refused Origin, WebSocket close reason: all escaped."""
    log = io.StringIO()
    observer = TextObserver(log)
    globalLogPublisher.addObserver(observer)
    try:
        h = WSHarness(tmp_path)
        conn = h.connect(["gateway.v1.json"])
        h.send(conn, json.dumps({"id": 1, "x\u2028\x1by": 1}))
        conn.client.sendClose(4000, "bye\u2028\x85now")
        h.flush()
        refused = h.connect(["gateway.text"], origin="http://evil.example/\x1bx\u2028")
    finally:
        globalLogPublisher.removeObserver(observer)
    written = log.getvalue()
    assert "Unknown field" in written and "\u2028" not in written and "\x85" not in written
    assert "\x1b" not in written
    assert "\\u2028" in written
    assert (
        not refused.opened and "Refused WebSocket from origin http://evil.example/\\x1bx" in written
    )


def test_recent_log_keeps_escaped_lines() -> None:
    recent = RecentLog(keep=3)
    for i in range(5):
        recent(event(f"line {i}\nforged"))
    assert [line.split("] ", 1)[1] for line in recent.tail(10)] == [
        "got line 2\\x0aforged",
        "got line 3\\x0aforged",
        "got line 4\\x0aforged",
    ]
    assert len(recent.tail(1)) == 1


def test_recent_log_lines_are_the_text_logs_and_hold_nothing_alive() -> None:
    import gc
    import weakref

    class Connection:  # what a logger's source may be: a protocol, with its buffers
        pass

    source = Connection()
    gone = weakref.ref(source)
    recent = RecentLog(keep=10, level="info")
    events = [
        event("a {braced} value", log_source=source, log_logger=object()),
        event("quiet", log_level=LogLevel.debug),  # below the level: not kept
        event("said", log_system="tcp#1", log_level=LogLevel.warn),
    ]
    for e in events:
        recent(e)
    out_ = io.StringIO()
    text = TextObserver(out_, "info")
    for e in events:
        text(e)
    assert recent.tail(10) == out_.getvalue().splitlines()
    assert recent.tail(10)[1].endswith(" [tcp#1] got said")
    del source, events
    gc.collect()
    assert gone() is None


# -- 12. a request that broke a limit never reaches a route


def test_chunked_body_over_the_limit_gets_413_only() -> None:
    channel, t, served = pipelined_site()
    body = b"x" * 70_000
    chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    channel.dataReceived(
        b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunk
        + b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    assert served == []
    assert t.value().count(b"HTTP/1.1 ") == 1
    assert t.value().startswith(b"HTTP/1.1 413 ")


# -- 13. a path swapped while it is opened is an ordinary error


def test_comphash_race_is_never_internal(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.mkdir()
    (target / "f").write_bytes(b"data")
    link = tmp_path / "flip"
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            for make in (lambda: link.symlink_to(target), lambda: link.mkdir()):
                with contextlib.suppress(FileExistsError):
                    make()
                try:
                    if link.is_symlink():
                        link.unlink()
                    else:
                        os.rmdir(link)
                except OSError:
                    pass

    flipper = threading.Thread(target=flip)
    flipper.start()
    codes: set[str] = set()
    try:
        for _ in range(3000):
            try:
                fd, _size = open_regular(str(link / "f"), [str(tmp_path)])
                os.close(fd)
                codes.add("ok")
            except CommandError as e:
                codes.add(e.code)
    finally:
        stop.set()
        flipper.join()
    assert codes <= {"ok", "not_found", "not_a_file"}


# -- 14. one spelling per client address


def test_mapped_addresses_are_normalised() -> None:
    assert peer_host(IPv6Address("TCP", "::ffff:127.0.0.9", 1)) == "127.0.0.9"
    assert peer_host(IPv4Address("TCP", "127.0.0.9", 1)) == "127.0.0.9"
    assert normalise("::FFFF:7f00:9") == "127.0.0.9"
    assert normalise("2001:DB8:0:0::1") == "2001:db8::1"
    assert normalise("fe80::1%eth0") == "fe80::1"
    assert normalise("unix") == "unix"


def test_ipv6_limits_count_by_slash_64() -> None:
    assert limit_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert limit_key("::1") == "::1"
    assert limit_key("127.0.0.1") == "127.0.0.1"
    quota = ClientQuota(10, max_per_ip=1)
    quota.try_acquire("tcp", "2001:db8:1:2::1")
    with pytest.raises(Exception, match="Too many connections from 2001:db8:1:2::2"):
        quota.try_acquire("tcp", "2001:db8:1:2::2")
    quota.try_acquire("tcp", "2001:db8:1:3::1")  # another /64
    clock = Clock()
    limiter = RateLimiter(1.0, 1, clock)
    limiter.take("2001:db8::1")
    with pytest.raises(CommandError):
        limiter.take("2001:db8::ffff")
    auth = Authenticator([TOKEN], clock, max_failures=2)
    for peer in ("2001:db8::1", "2001:db8::2"):
        with pytest.raises(CommandError):
            auth.check(peer, "wrong-token-00000000")
    assert auth.locked("2001:db8::3") > 0


def test_a_mapped_client_is_one_client_for_the_quota() -> None:
    h = Lines_()
    h.quota.configure(10, 1)
    h.connect("127.0.0.9")
    session = h.factory.buildProtocol(None)
    t = StringTransport(peerAddress=IPv6Address("TCP", "::ffff:127.0.0.9", 4000))
    session.makeConnection(t)
    assert out(t) == ["Too many connections from 127.0.0.9. Bye!"]


# -- 16. lastlog on a machine with no system log


KMSG = (
    b"6,1,5000000,-;first message\n"
    b" SUBSYSTEM=acpi\n"
    b"4,2,6500001,-;second \\x1b message\n"
    b"garbage\n"
    b"6,3,7000000,c;third\n"
)


def test_kmsg_records_read_like_dmesg() -> None:
    assert kmsg_line(b"6,1,5000000,-;first message") == "[    5.000000] first message"
    assert kmsg_line(b" SUBSYSTEM=acpi") is None
    assert kmsg_line(b"garbage") is None


def test_kernel_source(tmp_path: Path) -> None:
    path = tmp_path / "kmsg"
    path.write_bytes(KMSG)
    source = KernelSource(run_now, str(path))
    lines: list[Event] = []
    name = source.tail(2, lines.append)
    assert lines == [Lines(("[    6.500001] second \\x1b message", "[    7.000000] third"))]
    assert name.result == f"the kernel ring buffer ({path})"


def run_lastlog(command: LastlogCommand, n: int = 10) -> tuple[list[str], Result]:
    events: list[Event] = []
    d = command.run(command.prepare({"lines": n}), events.append)
    result = d.result
    assert isinstance(result, Result)
    return [line for e in events if isinstance(e, Lines) for line in e.lines], result


def test_auto_falls_back_to_the_kernel_ring_buffer(tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_bytes(KMSG)
    auto = AutoSource(
        run_now, FakeSpawner().reactor, [str(tmp_path / "syslog")], "nojournal", kernel=str(kmsg)
    )
    lines, result = run_lastlog(LastlogCommand(auto, 10, 100, 10.0))
    assert lines[-1] == "[    7.000000] third"
    assert result.data["source"] == f"the kernel ring buffer ({kmsg})"
    assert result.text == (
        f"-- no system log found (tried {tmp_path}/syslog, nojournal); "
        f"these lines are from the kernel ring buffer ({kmsg})",
    )


def test_auto_falls_back_to_the_gateways_own_log(tmp_path: Path) -> None:
    recent = RecentLog()
    recent(event("the gateway started"))
    auto = AutoSource(
        run_now,
        FakeSpawner().reactor,
        [str(tmp_path / "syslog")],
        "nojournal",
        kernel=str(tmp_path / "no-kmsg"),
        own_log=recent.tail,
    )
    lines, result = run_lastlog(LastlogCommand(auto, 10, 100, 10.0))
    assert lines[0].endswith("got the gateway started")
    assert result.data["source"] == OWN_LOG
    assert "no system log found" in result.data["note"]


# -- 18. SIGHUP applies front-end limits that used to be read once


def test_reload_applies_stall_and_http_idle_timeouts() -> None:
    from twisted.internet.testing import MemoryReactorClock

    from gateway.app import Gateway

    reactor = MemoryReactorClock()
    gateway = Gateway(Config(), reactor)
    before = gateway.admission.make_flow(lambda: None)
    assert before._stall_timeout == 30.0
    assert gateway.site.timeOut == 60.0
    fresh = load(None, {"GATEWAY_LIMITS_STALL_TIMEOUT": "7", "GATEWAY_HTTP_IDLE_TIMEOUT": "9"})
    gateway.reload(fresh)
    assert gateway.admission.make_flow(lambda: None)._stall_timeout == 7.0
    assert gateway.lines.admission is gateway.sockets.admission is gateway.admission
    assert gateway.site.timeOut == 9.0
    channel = gateway.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    assert channel.timeOut == 9.0


def test_config_defaults_have_the_new_keys() -> None:
    config = Config()
    assert config.http.allowed_hosts == ()
    assert (config.auth.max_pending_logins, config.auth.max_pending_logins_per_ip) == (5, 2)


def test_an_http_close_that_never_finishes_is_aborted() -> None:
    clock = Clock()
    root = Resource()
    root.putChild(b"healthz", Leaf())
    site = GuardedSite(root, HTTPConfig(), clock)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    t = SilentTLSTransport()
    channel.makeConnection(t)
    channel.dataReceived(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")  # not kept alive
    assert t.disconnecting and not t.aborted
    clock.advance(channel.abortTimeout)
    assert t.aborted


def test_log_lines_are_flushed_once_a_turn_in_the_reactor_and_at_once_elsewhere() -> None:
    import threading

    from twisted.internet.task import Clock

    from gateway.logfmt import TurnFlush

    class Counting(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            self.flushes += 1
            super().flush()

    out, clock = Counting(), Clock()
    observer = TextObserver(out, "info", TurnFlush(out, clock.callLater))
    for n in range(3):
        observer({"log_format": "line {n}", "n": n, "log_level": LogLevel.info, "log_time": 0})
    assert out.getvalue().count("\n") == 3
    assert out.flushes == 0
    clock.advance(0)  # the end of the turn
    assert out.flushes == 1
    worker = threading.Thread(
        target=observer,
        args=({"log_format": "from a thread", "log_level": LogLevel.info, "log_time": 0},),
    )
    worker.start()
    worker.join()
    assert out.flushes == 2  # not left waiting for the reactor


def test_the_daemon_never_collects_start_ups_and_rarely_collects_all() -> None:
    import gc

    from gateway.cli import tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (before[0], 20, before[2])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_the_gateway_logger_emits_what_twisteds_emits() -> None:
    from twisted.logger import Logger as TwistedLogger
    from twisted.logger import LogLevel

    from gateway.logfmt import Logger

    events: list[dict[str, Any]] = []
    observer: Any = events.append
    ours = Logger(namespace="a.b", observer=observer)
    theirs = TwistedLogger(namespace="a.b", observer=observer)
    ours.info("{x} went {y:.1f}", x="it", y=1.25)
    theirs.info("{x} went {y:.1f}", x="it", y=1.25)
    mine, twisted = (
        {k: v for k, v in e.items() if k not in ("log_time", "log_logger")} for e in events
    )
    assert mine == twisted and mine["log_level"] is LogLevel.info
    events.clear()
    ours.emit("loud", "bad level")  # type: ignore[arg-type]
    assert events and "invalid log level" in events[0]["log_format"].lower()
