"""Hostile input, generated: parsers and protocols never fail in an unplanned
way, answers do not depend on how bytes are chunked, and the quota stays exact
through any sequence of connects, commands, aborts and disconnects."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from gateway.commands.builtin import HelpCommand
from gateway.commands.lastlog import LastlogCommand
from gateway.config import TCPConfig
from gateway.core.command import Client, Request
from gateway.core.errors import HTTP_STATUS, CommandError
from gateway.core.events import Error, Event, Lines, Progress, Result
from gateway.core.peers import limit_key, normalise
from gateway.core.quota import ClientQuota
from gateway.core.service import CommandService
from gateway.frontends.admission import Admission
from gateway.frontends.http.site import host_allowed, host_name
from gateway.frontends.line import LineFactory
from gateway.logfmt import JSONLinesObserver, TextObserver, redact
from gateway.sessions.json_conversation import (
    Auth,
    Cancel,
    JSONConversation,
    MessageError,
    Run,
    parse,
)

from .support.services import make_service

WORDS = [
    "lastlog",
    "comphash",
    "help",
    "stats",
    "exit",
    "-a",
    "sha1",
    "md5",
    "/",
    "/etc/hostname",
    "5",
    "abc",
    "auth",
]
SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def build_service(tmp: Path, clock: Clock, quota: ClientQuota) -> CommandService:
    if not (tmp / "file").exists():
        (tmp / "file").write_bytes(b"data")
    log = b"one\ntwo\n\xff\xfe binary \x00 line\nlast\n"
    return make_service(tmp, clock, quota, log_text=log, roots=[str(tmp)])


command_lines = st.one_of(
    st.text(max_size=80),
    st.lists(st.sampled_from(WORDS) | st.text(max_size=8), max_size=6).map(" ".join),
)


@settings(max_examples=300, suppress_health_check=SUPPRESS, deadline=None)
@given(line=command_lines)
def test_any_command_line_gets_one_planned_answer(tmp_path: Path, line: str) -> None:
    clock = Clock()
    service = build_service(tmp_path, clock, ClientQuota(10))
    request = Request.from_line(line)
    if request is None:
        assert not line.strip()
        return
    events: list[Event] = []
    outcome: list[str] = []
    service.execute(request, Client("tcp", "h"), events.append).addCallback(outcome.append)
    assert outcome, "every command ends"
    final = events[-1]
    assert isinstance(final, (Result, Error))
    assert all(isinstance(e, (Lines, Progress)) for e in events[:-1])
    if isinstance(final, Error):
        assert final.code in HTTP_STATUS and final.code != "internal", final


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(max_size=200)
    | st.from_regex(r'\{"id": ?[0-9]+, ?"(line|command|cancel|auth)": .*\}')
)
def test_any_websocket_message_parses_or_is_refused(text: str) -> None:
    try:
        action = parse(text)
    except MessageError as e:
        assert e.code == "bad_argument" and e.message
        return
    assert isinstance(action, (Run, Cancel, Auth))


def feed(chunks: list[bytes], tmp: Path) -> tuple[bytes, bool]:
    clock = Clock()
    quota = ClientQuota(10)
    factory = LineFactory(
        Admission(quota, clock), build_service(tmp, clock, quota), TCPConfig(max_line_length=64)
    )
    session = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
    session.makeConnection(transport)
    for chunk in chunks:
        session.dataReceived(chunk)
    session.connectionLost(Failure(ConnectionDone()))
    assert quota.snapshot().total_in_use == 0
    return transport.value(), transport.disconnecting


stream = st.lists(
    st.sampled_from([w.encode() for w in WORDS])
    | st.binary(max_size=12)
    | st.sampled_from([b"\n", b"\r\n", b" "]),
    max_size=30,
).map(b"".join)


@settings(max_examples=200, suppress_health_check=SUPPRESS, deadline=None)
@given(data=stream, cuts=st.lists(st.integers(0, 400), max_size=12))
def test_line_server_answers_do_not_depend_on_chunking(
    tmp_path: Path, data: bytes, cuts: list[int]
) -> None:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert feed(chunks, tmp_path) == feed([data], tmp_path)


# -- the quota across transports, as a state machine


class QuotaMachine(RuleBasedStateMachine):
    """Clients of three transports come and go; the quota must stay exact."""

    MAX = 4

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        from treq.testing import StubTreq

        from gateway.config import HTTPConfig
        from gateway.frontends.http.routes import RestAPI

        from .support.commands import ControlledSource
        from .support.websocket import Harness

        self.tmp = Path(tempfile.mkdtemp())
        self.ws = Harness(self.tmp, max_clients=self.MAX)
        self.quota = self.ws.quota
        self.clock = self.ws.clock
        self.source = ControlledSource()
        self.ws.service.replace(LastlogCommand(self.source, 10, 1000, 10_000.0))
        self.lines = LineFactory(self.ws.admission, self.ws.service, TCPConfig())
        self.treq: Any = StubTreq(
            RestAPI(self.ws.admission, self.ws.service, HTTPConfig(), lambda scope: {}).resource()
        )
        self.tcp: list[tuple[Any, StringTransport]] = []
        self.sockets: list[Any] = []
        self.requests: list[Any] = []
        self.done: set[Any] = set()

    def holders(self) -> int:
        tcp = sum(1 for s, _ in self.tcp if s.slot is not None)
        ws = sum(1 for c in self.sockets if c.server.slot is not None)
        http = sum(1 for d in self.requests if not self.answered(d))
        return tcp + ws + http

    @invariant()
    def quota_is_exact(self) -> None:
        snap = self.quota.snapshot()
        assert snap.total_in_use == self.holders() <= self.MAX

    @rule()
    def tcp_connects(self) -> None:
        session = self.lines.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        session.makeConnection(transport)
        if transport.disconnecting:  # refused
            session.connectionLost(Failure(ConnectionDone()))
        else:
            self.tcp.append((session, transport))

    @precondition(lambda self: self.tcp)
    @rule(
        i=st.integers(0, 100),
        line=st.sampled_from([b"help\n", b"lastlog\n", b"exit\n", b"x" * 5000]),
    )
    def tcp_sends(self, i: int, line: bytes) -> None:
        session, transport = self.tcp[i % len(self.tcp)]
        session.dataReceived(line)
        if transport.disconnecting:
            session.connectionLost(Failure(ConnectionDone()))
            self.tcp.remove((session, transport))

    @precondition(lambda self: self.tcp)
    @rule(i=st.integers(0, 100))
    def tcp_drops(self, i: int) -> None:
        session, transport = self.tcp.pop(i % len(self.tcp))
        session.connectionLost(Failure(ConnectionDone()))

    @rule(mode=st.sampled_from(["gateway.text", "gateway.v1.json"]))
    def websocket_connects(self, mode: str) -> None:
        conn = self.ws.connect([mode])
        if not conn.closed:
            self.sockets.append(conn)

    @precondition(lambda self: self.sockets)
    @rule(i=st.integers(0, 100), how=st.sampled_from(["close", "drop", "exit"]))
    def websocket_leaves(self, i: int, how: str) -> None:
        conn = self.sockets.pop(i % len(self.sockets))
        if how == "close":
            conn.client.sendClose(1000)
        elif how == "drop":
            conn.client.transport.loseConnection()
        else:
            text = (
                "exit"
                if conn.client.websocket_protocol_in_use == "gateway.text"
                else '{"id": 1, "line": "exit"}'
            )
            conn.client.sendMessage(text.encode())
        self.ws.flush()

    def answered(self, d: Any) -> bool:
        return d in self.done

    @rule()
    def http_request_starts(self) -> None:
        d = self.treq.get("http://127.0.0.1/lastlog")
        d.addBoth(lambda _: self.done.add(d))
        self.requests.append(d)

    @precondition(lambda self: any(d not in self.done for d in self.requests))
    @rule(i=st.integers(0, 100), finish=st.booleans())
    def http_request_ends(self, i: int, finish: bool) -> None:
        pending = [d for d in self.requests if not self.answered(d)]
        d = pending[i % len(pending)]
        if finish and self.source.calls:
            for _, _, done in self.source.calls:
                if not done.called:
                    done.callback("controlled")
        else:
            d.cancel()  # the client hangs up
        self.treq.flush()
        self.requests = [r for r in self.requests if not self.answered(r)]

    def teardown(self) -> None:
        for session, _ in self.tcp:
            session.connectionLost(Failure(ConnectionDone()))
        for conn in self.sockets:
            conn.client.transport.loseConnection()
        self.ws.flush()
        for d in self.requests:
            if not self.answered(d):
                d.cancel()
        self.treq.flush()
        assert self.quota.snapshot().total_in_use == 0


QuotaMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_quota_state_machine = QuotaMachine.TestCase


def test_unknown_error_codes_are_refused() -> None:
    import pytest

    with pytest.raises(ValueError):
        CommandError("made_up", "x")


# -- what the hardening issue found, kept found


#: Strings a client can send that once reached a log line raw or broke a reply:
#: C0/C1 controls, line and paragraph separators, lone surrogates.
nasty_text = st.text(
    st.characters(codec=None, min_codepoint=0, max_codepoint=0x3000)
    | st.sampled_from(["\x1b", "\x85", "\x9b", "\u2028", "\u2029", "\ud800", "\udfff", "\n"]),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(text=nasty_text)
def test_any_client_text_is_one_clean_log_line(text: str) -> None:
    for observer_class in (TextObserver, JSONLinesObserver):
        out = io.StringIO()
        observer_class(out)(
            {
                "log_format": "CMD received from {peer}: {line}",
                "peer": text,
                "line": text,
                "log_level": LogLevel.info,
                "log_namespace": "gateway.test",
                "log_time": 0.0,
            }
        )
        written = out.getvalue()
        written.encode("utf-8")  # never a lone surrogate: the writer cannot fail
        assert written.count("\n") == 1 and written.endswith("\n")
        body = written[:-1]
        assert not any(
            ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in body
        ), repr(body)


@settings(max_examples=200, deadline=None)
@given(
    message=st.recursive(
        st.none() | st.booleans() | st.integers() | nasty_text,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(nasty_text, inner, max_size=3),
        max_leaves=8,
    ),
    id=st.integers(0, 5) | nasty_text,
    field=st.sampled_from(["line", "command", "auth", "cancel", "args"]),
    depth=st.integers(0, 3000),
)
def test_any_json_message_gets_exactly_one_answer(
    message: object, id: object, field: str, depth: int
) -> None:
    sent: list[str] = []
    closed: list[bool] = []
    c = JSONConversation(
        CommandService([HelpCommand(lambda: ())], Clock()),
        Client("websocket", "127.0.0.1"),
        sent.append,
        lambda: closed.append(True),
        4,
    )
    c.start()
    text = json.dumps({"id": id, field: message})
    if depth > 2000:  # nested deeper than the parser goes
        text = "[" * depth * 40 + "]" * depth * 40
    c.receive(text)
    for reply_text in sent:
        reply_text.encode("utf-8")  # always sendable as a text frame
    types = [json.loads(reply_text)["type"] for reply_text in sent]
    assert [t for t in types if t != "line"] in (["result"], ["error"]), types
    assert not closed  # the connection stays open


@settings(max_examples=200, deadline=None)
@given(sep=st.sampled_from([c for c in map(chr, range(0x3001)) if c.isspace()]), token=nasty_text)
def test_every_auth_spelling_the_parser_takes_is_redacted(sep: str, token: str) -> None:
    line = f"auth{sep}{token}"
    request = Request.from_line(line)
    if request is not None and request.command == "auth":
        assert redact(line) == "auth ***"


@settings(max_examples=300, deadline=None)
@given(host=st.none() | nasty_text, allowed=st.lists(nasty_text, max_size=3))
def test_host_check_never_fails_unplanned(host: str | None, allowed: list[str]) -> None:
    assert host_allowed(host, allowed) in (True, False)
    if host is not None and "*" not in allowed and host_name(host).endswith(".attacker.example"):
        assert not host_allowed(host, [a for a in allowed if "attacker" not in a])


@settings(max_examples=200, deadline=None)
@given(host=nasty_text | st.ip_addresses().map(str))
def test_address_normalising_never_fails(host: str) -> None:
    assert isinstance(normalise(host), str) and isinstance(limit_key(normalise(host)), str)
    assert normalise(normalise(host)) == normalise(host)
