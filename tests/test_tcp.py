import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gateway.config import TCPConfig
from gateway.core.events import Result
from gateway.core.quota import ClientQuota, Slot
from gateway.frontends.admission import Admission
from gateway.frontends.line import MAX_PENDING, LineFactory, LineSession

from .support.commands import Stub
from .support.logs import recorded_events
from .support.services import make_service


class Harness:
    def __init__(self, tmp_path: Path, max_clients: int = 10, quota: Any = None) -> None:
        self.clock = Clock()
        self.quota = quota or ClientQuota(max_clients)
        self.log = tmp_path / "syslog"
        self.stub = Stub(timeout=10_000)
        snap_quota = self.quota if isinstance(self.quota, ClientQuota) else ClientQuota(1)
        self.service = make_service(
            tmp_path,
            self.clock,
            snap_quota,
            log_text="".join(f"Aug 29 15:02:{i:02d} lab cron[1]: line {i}\n" for i in range(20)),
            extra=[self.stub],
        )
        self.factory = LineFactory(Admission(self.quota, self.clock), self.service, TCPConfig())

    def connect(self, host: str = "127.0.0.1") -> tuple[LineSession, StringTransport]:
        session = self.factory.buildProtocol(IPv4Address("TCP", host, 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        session.makeConnection(transport)
        return session, transport


def output(transport: StringTransport) -> list[str]:
    text: str = transport.value().decode()
    transport.clear()
    return text.splitlines()


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    with recorded_events() as events:
        yield events


def test_seed_transcript(h: Harness, tmp_path: Path) -> None:
    hostname = tmp_path / "hostname"
    hostname.write_text("lab\n")
    session, t = h.connect()
    session.dataReceived(b"test\n")
    assert output(t) == ["Command not found."]
    session.dataReceived(b"lastlog\n")
    lines = output(t)
    assert lines[0] == "Begin lastlog" and lines[-1] == "End lastlog"
    assert lines[1:-1] == [f"Aug 29 15:02:{i:02d} lab cron[1]: line {i}" for i in range(10, 20)]
    session.dataReceived(f"comphash {hostname}\n".encode())
    expected = hashlib.sha1(b"lab\n").hexdigest()
    assert output(t) == [f"File hash is: {expected}"]
    session.dataReceived(b"comphash\n")
    assert output(t) == ["Please provide a path."]
    session.dataReceived(b"comphash /dev/zero\n")
    assert output(t) == ["An error occurred: Not a regular file: /dev/zero"]
    assert not t.disconnecting
    session.dataReceived(b"exit\n")
    assert t.disconnecting
    session.connectionLost(Failure(ConnectionDone()))
    assert h.quota.snapshot().total_in_use == 0


def test_crlf_blank_lines_and_chunking(h: Harness) -> None:
    session, t = h.connect()
    for byte in b"\r\n   \r\nlastlog 2\r\ntest\r\n":
        session.dataReceived(bytes([byte]))
    assert output(t) == [
        "Begin lastlog",
        "Aug 29 15:02:18 lab cron[1]: line 18",
        "Aug 29 15:02:19 lab cron[1]: line 19",
        "End lastlog",
        "Command not found.",
    ]


@pytest.mark.parametrize("line", [b"lastlog abc", b"lastlog -5", b"lastlog 99999999"])
def test_bad_lastlog_counts(h: Harness, line: bytes) -> None:
    session, t = h.connect()
    session.dataReceived(line + b"\n")
    assert output(t) == ["An error occurred: lines must be an integer from 1 to 1000"]
    session.dataReceived(b"lastlog 1\n")  # still serving
    assert output(t)[1] == "Aug 29 15:02:19 lab cron[1]: line 19"


def test_megabyte_line_without_newline(h: Harness) -> None:
    session, t = h.connect()
    session.dataReceived(b"x" * 1_000_000)
    assert output(t) == ["An error occurred: line too long"]
    assert t.disconnecting
    session.dataReceived(b"help\n")  # ignored once closing
    assert output(t) == []
    session.connectionLost(Failure(ConnectionDone()))
    assert h.quota.snapshot().total_in_use == 0
    other, t2 = h.connect()  # the daemon serves others
    other.dataReceived(b"test\n")
    assert output(t2) == ["Command not found."]


def test_invalid_utf8_and_binary(h: Harness) -> None:
    session, t = h.connect()
    session.dataReceived(b"comphash /tmp/\xff\xfe\n")
    assert output(t) == ["An error occurred: Command line is not valid UTF-8."]
    session.dataReceived(b"\x00\x01\x02\x7f\n")
    assert output(t) == ["Command not found."]
    session.dataReceived(b"comphash /tmp/a\x00b\n")
    assert output(t) == ["An error occurred: Path contains a NUL byte."]
    assert not t.disconnecting


def test_over_quota_is_told_and_closed(tmp_path: Path, logged: list[dict[str, Any]]) -> None:
    h = Harness(tmp_path, max_clients=1)
    first, t1 = h.connect()
    second, t2 = h.connect()
    assert output(t2) == ["Too many connections. Bye!"]
    assert t2.disconnecting
    second.dataReceived(b"help\n")  # nothing runs for a refused client
    assert output(t2) == []
    second.connectionLost(Failure(ConnectionDone()))
    snap = h.quota.snapshot()
    assert (snap.total_in_use, snap.refused["tcp"]) == (1, 1)
    first.connectionLost(Failure(ConnectionDone()))
    assert h.quota.snapshot().total_in_use == 0
    assert any("Too many connections. Bye!" in str(e.get("message")) for e in logged)


def test_idle_timeout(h: Harness) -> None:
    session, t = h.connect()
    h.clock.advance(299)
    session.dataReceived(b"test\n")
    h.clock.advance(299)
    assert not t.disconnecting
    output(t)
    h.clock.advance(2)
    assert output(t) == ["An error occurred: idle for 300 s, closing the connection"]
    assert t.disconnecting


def test_running_command_is_not_idle(h: Harness) -> None:
    session, t = h.connect()
    session.dataReceived(b"stub\n")
    h.clock.advance(1000)
    assert not t.disconnecting
    h.stub.runs[0].callback(Result("stub"))
    h.clock.advance(301)
    assert t.disconnecting


def test_disconnect_mid_command_cancels_it_and_frees_the_slot(h: Harness) -> None:
    session, t = h.connect()
    session.dataReceived(b"stub\n")
    assert h.quota.snapshot().total_in_use == 1
    session.connectionLost(Failure(ConnectionLost()))
    assert h.stub.cancelled == 1
    assert h.quota.snapshot().total_in_use == 0
    session.connectionLost(Failure(ConnectionLost()))  # twice is harmless
    assert h.quota.snapshot().total_in_use == 0


def test_pipelined_commands_run_in_order(h: Harness) -> None:
    session, t = h.connect()
    session.dataReceived(b"stub\ntest\nstub\n")
    assert output(t) == ["working"]  # the first runs; the others wait
    h.stub.runs[0].callback(Result("stub", text=("first",)))
    assert output(t) == ["first", "Command not found.", "working"]
    h.stub.runs[1].callback(Result("stub", text=("second",)))
    assert output(t) == ["second"]


def test_exit_drops_what_follows(h: Harness) -> None:
    session, t = h.connect()
    session.dataReceived(b"exit\ntest\n")
    assert output(t) == []
    assert t.disconnecting


def test_reading_pauses_when_too_many_lines_wait(h: Harness) -> None:
    session, t = h.connect()
    session.dataReceived(b"stub\n" + b"test\n" * MAX_PENDING)
    assert t.producerState == "paused"
    h.stub.runs[0].callback(Result("stub"))
    assert t.producerState == "producing"
    assert output(t) == ["working"] + ["Command not found."] * MAX_PENDING


def test_half_close_finishes_then_closes(h: Harness) -> None:
    session, t = h.connect()
    session.dataReceived(b"stub\ntest\n")
    session.readConnectionLost()
    assert not t.disconnecting
    h.clock.advance(4.9)
    h.stub.runs[0].callback(Result("stub", text=("done",)))
    assert output(t) == ["working", "done", "Command not found."]
    assert t.disconnecting
    h.clock.advance(10)
    assert h.stub.cancelled == 0


def test_half_close_with_nothing_left_closes_at_once(h: Harness) -> None:
    session, t = h.connect()
    session.dataReceived(b"help\n")
    session.readConnectionLost()
    assert t.disconnecting


def test_closed_client_cancels_what_still_runs_after_the_grace(h: Harness) -> None:
    session, t = h.connect()
    session.dataReceived(b"stub\nhelp\n")
    session.readConnectionLost()
    h.clock.advance(5)
    assert h.stub.cancelled == 1
    assert output(t) == ["working"]  # help never ran
    assert t.disconnecting
    session.connectionLost(Failure(ConnectionDone()))
    assert h.quota.snapshot().total_in_use == 0


class SlowQuota:
    """A quota that answers later, as a cluster-wide one would."""

    def __init__(self) -> None:
        self.inner = ClientQuota(10)
        self.waiting: list[tuple[Deferred[Slot], str, str]] = []

    def acquire(self, transport: str, peer: str) -> Deferred[Slot]:
        d: Deferred[Slot] = Deferred()
        self.waiting.append((d, transport, peer))
        return d

    def grant(self) -> None:
        d, transport, peer = self.waiting.pop(0)
        d.callback(self.inner.try_acquire(transport, peer))

    def snapshot(self) -> Any:
        return self.inner.snapshot()


def test_asynchronous_quota_holds_lines_until_granted(tmp_path: Path) -> None:
    quota = SlowQuota()
    h = Harness(tmp_path, quota=quota)
    session, t = h.connect()
    session.dataReceived(b"test\n")
    assert output(t) == []
    quota.grant()
    assert output(t) == ["Command not found."]


def test_slot_granted_after_disconnect_is_given_back(tmp_path: Path) -> None:
    quota = SlowQuota()
    h = Harness(tmp_path, quota=quota)
    session, t = h.connect()
    session.connectionLost(Failure(ConnectionDone()))
    quota.grant()
    assert quota.snapshot().total_in_use == 0


def test_seed_log_events(h: Harness, logged: list[dict[str, Any]]) -> None:
    from twisted.logger import formatEvent

    session, t = h.connect()
    session.dataReceived(b"test\x1b[31m\n")
    session.connectionLost(Failure(ConnectionDone()))
    messages = [formatEvent(e) for e in logged]
    assert "Client connection from 127.0.0.1" in messages
    assert "CMD received from 127.0.0.1: test\\x1b[31m" in messages  # no terminal escapes in logs
    assert "Lost client connection. Reason: Connection was closed cleanly." in messages


def test_hundred_clients_against_ten(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_clients=10)
    sessions = [h.connect() for _ in range(100)]
    told = [output(t) for _, t in sessions]
    assert told.count(["Too many connections. Bye!"]) == 90
    assert told.count([]) == 10
    assert h.quota.snapshot().total_in_use == 10
    for session, _ in sessions:
        session.connectionLost(Failure(ConnectionDone()))
    snap = h.quota.snapshot()
    assert (snap.total_in_use, snap.granted["tcp"], snap.refused["tcp"]) == (0, 10, 90)


# -- the connection's state: one enum, one place that moves it


def test_states_follow_the_connection(h: Harness) -> None:
    from gateway.frontends.line import LineState

    session, t = h.connect()

    def state() -> LineState:  # read afresh each time (no narrowing across calls)
        return session.state

    assert state() is LineState.OPEN
    session.dataReceived(b"stub\n")  # a command that keeps running
    session.readConnectionLost()  # nc -N: the client closed its side
    assert state() is LineState.HALF_CLOSED
    h.stub.runs[0].callback(Result("stub", text=("done",)))
    assert output(t) == ["working", "done"]
    assert state() is LineState.DRAINING  # answered, then goodbye
    session.connectionLost(Failure(ConnectionDone()))
    assert state() is LineState.CLOSED


def test_nothing_is_written_after_goodbye(h: Harness) -> None:
    from gateway.frontends.line import LineState

    session, t = h.connect()
    session.dataReceived(b"stub\nexit\n")
    h.stub.runs[0].callback(Result("stub", text=("late",)))
    written = output(t)
    assert written == ["working", "late"] and session.state is LineState.DRAINING
    session.dataReceived(b"help\n")  # read and dropped
    session.timeoutConnection()  # nor an idle notice
    assert output(t) == []


def test_an_impossible_move_is_a_loud_bug(h: Harness) -> None:
    from gateway.frontends.line import LineState

    session, _ = h.connect()
    session.connectionLost(Failure(ConnectionDone()))
    with pytest.raises(RuntimeError, match="cannot go from closed to open"):
        session._move(LineState.OPEN)
