"""Tokens on every transport: pure checks, then each front-end in memory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent

from gateway.config import ConfigError, TCPConfig, load, redacted
from gateway.core.auth import Authenticator, bearer
from gateway.core.errors import CommandError
from gateway.core.quota import ClientQuota
from gateway.frontends.admission import Admission
from gateway.frontends.line import LineFactory

from .support.logs import recorded_events
from .support.services import make_service

TOKEN = "s3cret-token-0123456789"
OTHER = "another-token-abcdefghij"


@pytest.fixture
def logged() -> Iterator[list[str]]:
    texts: list[str] = []
    with recorded_events() as events:
        yield texts
    texts.extend(formatEvent(e) + repr(e) for e in events)


# -- the pure part


def test_any_configured_token_works() -> None:
    auth = Authenticator([TOKEN, OTHER], Clock())
    auth.check("a", TOKEN)
    auth.check("a", OTHER)
    with pytest.raises(CommandError) as info:
        auth.check("a", TOKEN[:-1])
    assert (info.value.code, info.value.message) == ("unauthorized", "Authentication required.")
    assert TOKEN not in info.value.message


def test_no_tokens_means_off() -> None:
    assert not Authenticator([], Clock()).enabled


def test_failures_slow_down_then_lock_out_one_address() -> None:
    clock = Clock()
    auth = Authenticator([TOKEN], clock, max_failures=3, window=60, lockout=300)
    delays = []
    for _ in range(2):
        with pytest.raises(CommandError):
            auth.check("1.2.3.4", "wrong-guess-0000000")
        delays.append(auth.delay("1.2.3.4"))
    assert delays == [0.25, 0.5]  # slower each time
    with pytest.raises(CommandError):
        auth.check("1.2.3.4", "wrong-guess-0000000")
    with pytest.raises(CommandError) as info:
        auth.check("1.2.3.4", TOKEN)  # even the right token, while locked out
    assert info.value.code == "rate_limited"
    assert info.value.message == "Too many failed attempts; try again in 300 s."
    auth.check("5.6.7.8", TOKEN)  # others are not affected
    clock.advance(301)
    auth.check("1.2.3.4", TOKEN)


def test_a_missing_token_is_not_a_failed_guess() -> None:
    auth = Authenticator([TOKEN], Clock(), max_failures=1)
    for _ in range(5):
        with pytest.raises(CommandError):
            auth.check("a", None)
    auth.check("a", TOKEN)


def test_failures_age_out() -> None:
    clock = Clock()
    auth = Authenticator([TOKEN], clock, max_failures=2, window=10)
    with pytest.raises(CommandError):
        auth.check("a", "x" * 20)
    clock.advance(11)
    with pytest.raises(CommandError) as info:
        auth.check("a", "x" * 20)
    assert info.value.code == "unauthorized"  # a fresh window, not a lockout


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        (None, None),
    ],
)
def test_bearer(header: str | None, token: str | None) -> None:
    assert bearer(header) == token


def test_config_tokens(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# operators\n{OTHER}\n\n")
    config = load(None, {"GATEWAY_TOKEN": TOKEN, "GATEWAY_AUTH_TOKEN_FILE": str(token_file)})
    assert config.auth.all_tokens() == (TOKEN, OTHER)
    assert TOKEN not in json.dumps(redacted(config))
    with pytest.raises(ConfigError) as info:
        load(None, {"GATEWAY_TOKEN": "short"})
    assert "at least 16 characters" in str(info.value) and "short" not in str(info.value)
    bad = tmp_path / "bad.toml"
    bad.write_text('[auth]\ntokens = "not-a-list-but-secret"\n')
    with pytest.raises(ConfigError) as info:
        load(str(bad))
    assert "secret" not in str(info.value)
    with pytest.raises(ConfigError, match="auth.token_file: cannot read"):
        load(None, {"GATEWAY_AUTH_TOKEN_FILE": str(tmp_path / "missing")}).auth.all_tokens()


# -- the line server


class TCPHarness:
    def __init__(self, login_timeout: float = 10.0) -> None:
        self.clock = Clock()
        self.quota = ClientQuota(10)
        self.auth = Authenticator([TOKEN], self.clock, max_failures=3)
        self.service = make_service(None, self.clock, self.quota)
        self.admission = Admission(self.quota, self.clock, self.auth, login_timeout=login_timeout)
        self.factory = LineFactory(self.admission, self.service, TCPConfig())

    def connect(self, host: str = "10.0.0.1") -> tuple[Any, StringTransport]:
        session = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 4000))
        session.makeConnection(transport)
        return session, transport


def lines(t: StringTransport) -> list[str]:
    out: list[str] = t.value().decode().splitlines()
    t.clear()
    return out


def test_tcp_needs_auth_first(logged: list[str]) -> None:
    h = TCPHarness()
    s, t = h.connect()
    s.dataReceived(b"stats\n")
    assert lines(t) == ["Authentication required."]
    s.dataReceived(f"auth {TOKEN}\n".encode())
    assert lines(t) == ["Authenticated."]
    s.dataReceived(b"stats\n")
    assert lines(t)[0].startswith("clients: 1/10")
    assert not any(TOKEN in text for text in logged)


def test_tcp_wrong_token_is_answered_slowly_then_locked_out(logged: list[str]) -> None:
    h = TCPHarness()
    s, t = h.connect()
    s.dataReceived(b"auth wrong-token-000000000\nhelp\n")
    assert lines(t) == []  # the answer is held back
    h.clock.advance(0.25)
    assert lines(t) == ["Authentication required.", "Authentication required."]
    s.dataReceived(b"auth wrong-token-000000001\n")
    h.clock.advance(0.5)
    s.dataReceived(b"auth wrong-token-000000002\n")
    h.clock.advance(1.0)
    assert lines(t) == ["Authentication required.", "Authentication required."]
    s.dataReceived(f"auth {TOKEN}\n".encode())
    assert lines(t) == ["An error occurred: Too many failed attempts; try again in 299 s."]
    assert t.disconnecting
    assert not any("wrong-token" in text for text in logged)
    other, t2 = h.connect("10.0.0.2")  # another address is not locked out
    other.dataReceived(f"auth {TOKEN}\n".encode())
    assert lines(t2) == ["Authenticated."]


def test_tcp_login_timeout() -> None:
    h = TCPHarness(login_timeout=10.0)
    s, t = h.connect()
    h.clock.advance(10)
    assert lines(t) == ["Authentication required."]
    assert t.disconnecting


def test_tcp_auth_line_when_auth_is_off() -> None:
    h = TCPHarness()
    h.auth.replace_tokens([])
    s, t = h.connect()
    s.dataReceived(b"auth whatever-token-000000\n")
    assert lines(t) == ["Authentication is off: no token is needed."]


# -- HTTP


def http_harness() -> Any:
    from treq.testing import StubTreq

    from gateway.config import HTTPConfig
    from gateway.frontends.http.routes import RestAPI

    clock = Clock()
    quota = ClientQuota(10)
    service = make_service(None, clock, quota)
    auth = Authenticator([TOKEN], clock, max_failures=2)
    api = RestAPI(Admission(quota, clock, auth), service, HTTPConfig(), lambda scope: {})
    return StubTreq(api.resource()), clock, api


def get(
    stub: Any, clock: Clock, path: str, token: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    d = stub.get("http://127.0.0.1" + path, headers=headers)
    clock.advance(10)
    stub.flush()
    results: list[Any] = []
    d.addCallback(results.append)
    response = results[0]
    body: list[bytes] = []
    stub.content(response).addCallback(body.append)
    return (
        response.code,
        {k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()},
        body[0],
    )


def test_http_bearer() -> None:
    stub, clock, _ = http_harness()
    code, headers, body = get(stub, clock, "/stats")
    assert (code, body) == (401, b"error: Authentication required.\n")
    assert headers["www-authenticate"] == 'Bearer realm="gateway"'
    assert get(stub, clock, "/stats", TOKEN)[0] == 200
    assert get(stub, clock, "/healthz")[0] == 200  # always open
    assert get(stub, clock, "/metrics")[0] == 401  # follows auth.metrics
    assert get(stub, clock, "/metrics", TOKEN)[0] == 200
    assert TOKEN.encode() not in get(stub, clock, "/stats?format=json", TOKEN)[2]


def test_http_lockout_is_429_with_retry_after() -> None:
    stub, clock, _ = http_harness()
    assert get(stub, clock, "/commands", "wrong-token-0000000000")[0] == 401
    assert get(stub, clock, "/commands", "wrong-token-0000000001")[0] == 401
    code, headers, body = get(stub, clock, "/commands", TOKEN)
    assert code == 429 and int(headers["retry-after"]) > 200


def test_http_metrics_open_when_configured() -> None:
    stub, clock, api = http_harness()
    api.admission.metrics_need_token = False
    assert get(stub, clock, "/metrics")[0] == 200


# -- WebSocket


def ws_harness(tmp_path: Path) -> Any:
    from .support.websocket import Harness

    h = Harness(tmp_path)
    h.admission.auth = Authenticator([TOKEN], h.clock)
    h.admission.login_timeout = 10.0
    return h


def test_websocket_text_auth(tmp_path: Path) -> None:
    h = ws_harness(tmp_path)
    conn = h.connect(["gateway.text"])
    h.send(conn, "help")
    h.send(conn, f"auth {TOKEN}")
    h.send(conn, "nope")
    assert conn.messages == ["Authentication required.", "Authenticated.", "Command not found."]


def test_websocket_json_auth(tmp_path: Path) -> None:
    h = ws_harness(tmp_path)
    conn = h.connect(["gateway.v1.json"])
    h.send(conn, '{"id": 1, "line": "help"}')
    h.send(conn, json.dumps({"id": 2, "auth": TOKEN}))
    h.send(conn, '{"id": 3, "command": "nope"}')
    replies = [json.loads(m) for m in conn.messages]
    assert replies[0] == {
        "id": 1,
        "type": "error",
        "code": "unauthorized",
        "message": "Authentication required.",
    }
    assert replies[1] == {"id": 2, "type": "result", "result": {"authenticated": True}}
    assert replies[2]["code"] == "unknown_command"


def test_websocket_wrong_token_is_answered_later(tmp_path: Path) -> None:
    h = ws_harness(tmp_path)
    conn = h.connect(["gateway.v1.json"])
    h.send(conn, '{"id": 1, "auth": "wrong-token-000000000"}')
    assert conn.messages == []
    h.clock.advance(0.25)
    h.flush()
    assert json.loads(conn.messages[0])["code"] == "unauthorized"


def test_websocket_login_timeout(tmp_path: Path) -> None:
    h = ws_harness(tmp_path)
    conn = h.connect(["gateway.text"])
    h.clock.advance(10)
    h.flush()
    assert conn.messages == ["Authentication required."]
    assert conn.closed and conn.closed[0][0] == 1000
    assert h.quota.snapshot().total_in_use == 0
