"""The admission layer: quota failures answered on every transport, tokens, reload."""

from __future__ import annotations

from hashlib import sha256
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gateway.config import TCPConfig, load
from gateway.core.auth import Authenticator
from gateway.core.quota import ClientQuota, Slot
from gateway.core.scope import ANONYMOUS, Identity, Scope
from gateway.frontends.admission import Admission, Denial, Proven
from gateway.frontends.line import LineFactory

from .support.logs import recorded_events
from .support.services import make_service
from .support.websocket import Harness as WSHarness

TOKEN = "admission-token-0123456789"
INTERNAL = "An error occurred: Internal error (details in the server log only)"


class BrokenQuota(ClientQuota):
    """A quota store that is down: every acquire fails with something unexpected."""

    def acquire(self, transport: str, peer: str) -> Deferred[Slot]:
        return fail(ConnectionRefusedError("quota store at 10.9.9.9:6379 is down"))


class RaisingQuota(ClientQuota):
    def acquire(self, transport: str, peer: str) -> Deferred[Slot]:
        raise RuntimeError("bug in the quota")


class LateQuota(ClientQuota):
    """Answers when the test says so."""

    def __init__(self) -> None:
        super().__init__(10)
        self.pending: list[Deferred[Slot]] = []

    def acquire(self, transport: str, peer: str) -> Deferred[Slot]:
        d: Deferred[Slot] = Deferred()
        self.pending.append(d)
        return d


def line_client(quota: ClientQuota) -> tuple[Any, StringTransport]:
    clock = Clock()
    factory = LineFactory(Admission(quota, clock), make_service(None, clock, quota), TCPConfig())
    session = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
    session.makeConnection(transport)
    return session, transport


def test_a_failing_quota_store_is_answered_on_the_line_server() -> None:
    for quota in (BrokenQuota(10), RaisingQuota(10)):
        with recorded_events() as events:
            _, t = line_client(quota)
        assert t.value().decode().splitlines() == [INTERNAL]
        assert t.disconnecting
        logged = [e for e in events if e.get("log_failure") is not None]
        assert len(logged) == 1  # the details go to the log, once
        assert "10.9.9.9" not in t.value().decode()


def test_a_failing_quota_store_closes_the_websocket_with_1011(tmp_path: Path) -> None:
    h = WSHarness(tmp_path)
    h.admission.quota = BrokenQuota(10)
    with recorded_events():
        conn = h.connect(["gateway.text"])
    assert conn.closed and conn.closed[0][0] == 1011
    assert conn.closed[0][1] == "Internal error (details in the server log only)"


def test_a_late_failure_after_the_client_left_is_quiet() -> None:
    quota = LateQuota()
    session, t = line_client(quota)
    session.connectionLost()
    with recorded_events():
        quota.pending[0].errback(ConnectionRefusedError("down"))
    assert t.value() == b""


def test_a_late_slot_after_the_client_left_goes_back() -> None:
    quota = LateQuota()
    session, _ = line_client(quota)
    session.connectionLost()
    slot = ClientQuota(1).try_acquire("tcp", "127.0.0.1")
    quota.pending[0].callback(slot)
    assert not slot.held


def test_check_bearer() -> None:
    clock = Clock()
    off = Admission(ClientQuota(1), clock)
    assert off.check_bearer("h", None) == ANONYMOUS
    on = Admission(ClientQuota(1), clock, Authenticator([TOKEN], clock, max_failures=2))
    assert on.check_bearer("h", f"Bearer {TOKEN}") == Identity("tokens[1]", "token")
    missing = on.check_bearer("h", None)
    assert isinstance(missing, Denial)
    assert (missing.error.code, missing.delay) == ("unauthorized", 0.0)
    wrong = on.check_bearer("h", "Bearer wrong-token-000000000")
    assert isinstance(wrong, Denial) and wrong.delay == 0.25 and wrong.retry_after is None
    on.check_bearer("h", "Bearer wrong-token-000000000")
    locked = on.check_bearer("h", f"Bearer {TOKEN}")
    assert isinstance(locked, Denial) and locked.error.code == "rate_limited"
    assert locked.retry_after == 300 and locked.delay == 0.0


def test_a_connection_that_sends_the_same_header_again_is_not_hashed_again() -> None:
    """A kept-alive HTTP connection sends its Authorization header with every
    request: checked once, then taken as it was, unless it changes, the
    tokens are reloaded or the identity expires."""
    clock = Clock()
    expiring = (
        sha256(b"expiring-token-0123456789").digest(),
        Identity("soon", "token", Scope(expires=100.0)),
    )
    auth = Authenticator([TOKEN, expiring], clock, max_failures=5)
    admission = Admission(ClientQuota(1), clock, auth)
    checks: list[str | None] = []
    check = auth.check

    def counted(peer: str, presented: str | None) -> Identity:
        checks.append(presented)
        return check(peer, presented)

    auth.check = counted  # type: ignore[method-assign]
    proven = Proven()
    good = f"Bearer {TOKEN}"
    for _ in range(3):
        assert admission.check_bearer("h", good, proven) == Identity("tokens[1]", "token")
    assert checks == [TOKEN]  # once
    assert isinstance(admission.check_bearer("h", "Bearer wrong-token-000000000", proven), Denial)
    assert isinstance(admission.check_bearer("h", None, proven), Denial)  # no header, no identity
    assert isinstance(admission.check_bearer("h", "Bearer tökén", proven), Denial)  # not ASCII
    assert len(checks) == 4  # each wrong one checked (and counted: the lockout is near)
    assert admission.check_bearer("h", good, proven) == Identity("tokens[1]", "token")
    assert len(checks) == 4  # the header it kept is still the one it proved
    other = Proven()  # another connection proves for itself
    assert admission.check_bearer("h", good, other) == Identity("tokens[1]", "token")
    assert len(checks) == 5
    auth.replace_tokens([expiring])  # SIGHUP: TOKEN removed
    removed = admission.check_bearer("h", good, proven)
    assert isinstance(removed, Denial) and removed.error.code == "unauthorized"
    soon = "Bearer expiring-token-0123456789"
    assert admission.check_bearer("h", soon, proven) == expiring[1]
    assert admission.check_bearer("h", soon, proven) == expiring[1]
    assert checks[-2:] == [TOKEN, "expiring-token-0123456789"]
    clock.advance(100)
    expired = admission.check_bearer("h", soon, proven)
    assert isinstance(expired, Denial) and expired.error.code == "unauthorized"
    assert checks[-1] == "expiring-token-0123456789"  # checked again, and refused


def test_http_requests_on_one_connection_check_their_token_once(tmp_path: Path) -> None:
    from gateway.config import HTTPConfig
    from gateway.frontends.http.routes import RestAPI
    from gateway.frontends.http.site import GuardedSite

    clock = Clock()
    quota = ClientQuota(10)
    auth = Authenticator([TOKEN], clock)
    digests: list[str] = []
    match = auth._match

    def counted(presented: str) -> Identity | None:
        digests.append(presented)
        return match(presented)

    auth._match = counted  # type: ignore[method-assign]
    service = make_service(tmp_path, clock, quota, log_text="one\ntwo\n")
    api = RestAPI(Admission(quota, clock, auth), service, HTTPConfig(), lambda scope: {})
    site = GuardedSite(api.resource(), HTTPConfig(), clock)

    def connection() -> tuple[Any, StringTransport]:
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        channel.makeConnection(transport)
        return channel, transport

    ask = (
        f"GET /lastlog?lines=1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    channel, transport = connection()
    channel.dataReceived(ask.encode() * 3)
    assert transport.value().count(b"200 OK") == 3 and digests == [TOKEN]
    wrong = ask.replace(TOKEN, "wrong-token-000000000").encode()
    channel.dataReceived(wrong)
    clock.advance(1)  # (a wrong token is answered slowly)
    assert transport.value().count(b"401 Unauthorized") == 1 and len(digests) == 2
    channel2, transport2 = connection()
    channel2.dataReceived(ask.encode())
    assert transport2.value().count(b"200 OK") == 1 and len(digests) == 3


def test_reload_reaches_every_admission_setting(tmp_path: Path) -> None:
    clock = Clock()
    admission = Admission.from_config(load(None, {}), clock)
    token_file = tmp_path / "tokens"
    token_file.write_text(TOKEN + "\n")
    admission.reload(
        load(
            None,
            {
                "GATEWAY_QUOTA_MAX_CLIENTS": "3",
                "GATEWAY_LIMITS_COMMANDS_PER_SECOND": "2",
                "GATEWAY_LIMITS_STALL_TIMEOUT": "4",
                "GATEWAY_AUTH_LOGIN_TIMEOUT": "5",
                "GATEWAY_AUTH_METRICS": "false",
                "GATEWAY_AUTH_TOKEN_FILE": str(token_file),
            },
        )
    )
    assert admission.quota.snapshot().max_clients == 3
    assert admission.limiter is not None and admission.limiter.rate == 2.0
    assert admission.make_flow(lambda: None)._stall_timeout == 4.0
    assert admission.login_timeout == 5.0
    assert admission.metrics_need_token is False
    assert admission.login_auth is not None
    assert admission.check_bearer("h", f"Bearer {TOKEN}") == Identity("tokens[1]", "token")


def test_a_new_transport_is_listed_by_stats_and_metrics() -> None:
    from gateway.core.metrics import CommandMetrics, render
    from gateway.core.quota import register_transport, transports, unregister_transport

    assert transports() == ("tcp", "http", "websocket")
    register_transport("serial-console-test", order=50)
    try:
        quota = ClientQuota(5)
        quota.try_acquire("serial-console-test", "ttyS0")
        snap = quota.snapshot()
        assert list(snap.in_use) == ["tcp", "http", "websocket", "serial-console-test"]
        assert snap.in_use["serial-console-test"] == 1
        text = render(snap, CommandMetrics(), 0, 1.0)
        assert 'gateway_clients_in_use{transport="serial-console-test"} 1' in text
    finally:
        unregister_transport("serial-console-test")
    assert transports() == ("tcp", "http", "websocket")


def test_no_delay_sets_tcp_nodelay_where_there_is_one() -> None:
    from gateway.frontends.admission import no_delay

    class TCP:
        def __init__(self, fails: bool = False) -> None:
            self.set: list[bool] = []
            self.fails = fails

        def setTcpNoDelay(self, enabled: bool) -> None:
            if self.fails:
                raise OSError(95, "Operation not supported")  # a unix socket
            self.set.append(enabled)

    tcp = TCP()
    no_delay(tcp)
    assert tcp.set == [True]
    no_delay(TCP(fails=True))  # said nothing, broke nothing
    no_delay(object())  # no such option at all
