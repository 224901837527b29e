"""The WebSocket front-end in memory: a real Autobahn client against the server
protocol over ``twisted.test.iosim``, plus the pure parts (origins, messages)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from gateway.commands.builtin import ExitCommand
from gateway.config import WebSocketConfig
from gateway.core.command import Client
from gateway.core.events import Result
from gateway.core.service import CommandService
from gateway.frontends.websocket import origin_allowed
from gateway.sessions.json_conversation import Cancel, JSONConversation, MessageError, Run, parse

from .support.commands import Stub
from .support.websocket import Harness

# -- origins


@pytest.mark.parametrize(
    ("origin", "host", "secure", "allowed", "expected"),
    [
        (None, "127.0.0.1:8080", False, (), True),  # not a browser
        ("", "127.0.0.1:8080", False, (), True),
        ("http://127.0.0.1:8080", "127.0.0.1:8080", False, (), True),  # the console itself
        ("http://LOCALHOST:8080", "localhost:8080", False, (), True),
        ("http://127.0.0.1", "127.0.0.1:80", False, (), True),  # default port written out
        ("http://127.0.0.1:80", "127.0.0.1", False, (), True),
        ("https://gw.example", "gw.example:443", True, (), True),
        ("http://gw.example", "gw.example", True, (), False),  # scheme differs
        ("http://127.0.0.1:9000", "127.0.0.1:8080", False, (), False),  # port differs
        ("http://evil.example", "127.0.0.1:8080", False, (), False),
        ("http://127.0.0.1:8080.evil.example", "127.0.0.1:8080", False, (), False),
        ("null", "127.0.0.1:8080", False, (), False),
        ("null", "127.0.0.1:8080", False, ("null",), True),
        ("http://admin.example", "127.0.0.1:8080", False, ("http://admin.example:80",), True),
        ("https://admin.example", "127.0.0.1:8080", False, ("http://admin.example",), False),
        ("http://anything.example", "127.0.0.1:8080", False, ("*",), True),
        ("not an origin", "127.0.0.1:8080", False, (), False),
        ("http://127.0.0.1:8080/path", "127.0.0.1:8080", False, (), False),
    ],
)
def test_origin_allowed(
    origin: str | None, host: str, secure: bool, allowed: tuple[str, ...], expected: bool
) -> None:
    assert origin_allowed(origin, host, secure, allowed) is expected


# -- gateway.v1.json messages


@pytest.mark.parametrize(
    ("text", "id", "message"),
    [
        ("{nope", None, "Malformed JSON: "),
        ("[1, 2]", None, "A message must be a JSON object."),
        ('{"line": "help"}', None, "Missing id."),
        ('{"id": true, "line": "help"}', None, "id must be an integer or a string"),
        ('{"id": [], "line": "help"}', None, "id must be an integer or a string"),
        ('{"id": "", "line": "help"}', None, "id must be an integer or a string"),
        ('{"id": 1, "line": "help", "colour": 1}', 1, "Unknown field: colour"),
        ('{"id": 1}', 1, "A message needs command, line or cancel."),
        ('{"id": 1, "line": 5}', 1, "line must be a string"),
        ('{"id": 1, "line": "  "}', 1, "The line is empty."),
        ('{"id": 1, "cancel": false}', 1, "A cancel message is"),
        ('{"id": 1, "cancel": true, "line": "x"}', 1, "A cancel message is"),
        ('{"id": 1, "command": "lastlog", "args": [1]}', 1, "args must be an object"),
        ('{"id": 1, "command": "lastlog", "args": {"lines": null}}', 1, "args must be an object"),
    ],
)
def test_bad_messages(text: str, id: object, message: str) -> None:
    with pytest.raises(MessageError) as info:
        parse(text)
    assert info.value.id == id
    assert info.value.message.startswith(message)


def test_good_messages() -> None:
    run = parse('{"id": 7, "command": "comphash", "args": {"path": "/etc/hostname"}}')
    assert isinstance(run, Run) and run.id == 7
    assert (run.request.command, dict(run.request.args)) == ("comphash", {"path": "/etc/hostname"})
    run = parse('{"id": "a", "line": "comphash /my file"}')
    assert isinstance(run, Run) and (run.request.command, run.request.rest) == (
        "comphash",
        "/my file",
    )
    assert parse('{"id": 7, "cancel": true}') == Cancel(7)


def make_conversation(
    max_in_flight: int = 3,
) -> tuple[JSONConversation, Stub, list[dict[str, Any]], list[str]]:
    stub = Stub(timeout=1000)
    service = CommandService([stub, ExitCommand()], Clock())
    sent: list[dict[str, Any]] = []
    closed: list[str] = []
    c = JSONConversation(
        service,
        Client("websocket", "h"),
        lambda t: sent.append(json.loads(t)),
        lambda: closed.append("x"),
        max_in_flight,
    )
    c.start()
    return c, stub, sent, closed


def test_several_in_flight_with_ids_and_cancel() -> None:
    c, stub, sent, _ = make_conversation()
    c.receive('{"id": 1, "line": "stub"}')
    c.receive('{"id": 2, "line": "stub"}')
    assert sent == [
        {"id": 1, "type": "line", "text": "working"},
        {"id": 2, "type": "line", "text": "working"},
    ]
    c.receive('{"id": 1, "cancel": true}')
    assert stub.cancelled == 1 and sent[-1] == {"id": 1, "type": "cancelled"}
    stub.runs[1].callback(Result("stub", {"n": 2}))
    assert sent[-1] == {"id": 2, "type": "result", "result": {"n": 2, "text": [], "summary": ""}}
    assert c.running == {}


def test_conversation_errors_keep_the_connection() -> None:
    c, stub, sent, closed = make_conversation(max_in_flight=1)
    c.receive("garbage")
    assert sent[-1]["id"] is None and sent[-1]["type"] == "error"
    c.receive('{"id": 1, "line": "stub"}')
    c.receive('{"id": 1, "line": "stub"}')
    assert sent[-1] == {
        "id": 1,
        "type": "error",
        "code": "bad_argument",
        "message": "A command with id 1 is already running.",
    }
    c.receive('{"id": 2, "line": "stub"}')
    assert sent[-1]["message"] == "Too many commands running at once (at most 1)."
    c.receive('{"id": 9, "cancel": true}')
    assert sent[-1]["message"] == "No command with id 9 is running."
    c.receive('{"id": 1, "cancel": true}')
    c.receive('{"id": 3, "command": "nope"}')
    assert sent[-1] == {
        "id": 3,
        "type": "error",
        "code": "unknown_command",
        "message": "Command not found.",
    }
    assert not closed


def test_exit_closes_and_stop_cancels() -> None:
    c, stub, sent, closed = make_conversation()
    c.receive('{"id": 1, "line": "stub"}')
    c.receive('{"id": 2, "command": "exit"}')
    assert sent[-1] == {"id": 2, "type": "result", "result": {"text": [], "summary": ""}}
    assert closed == ["x"] and stub.cancelled == 1


def test_messages_wait_for_the_quota() -> None:
    stub = Stub(timeout=1000)
    sent: list[str] = []
    c = JSONConversation(
        CommandService([stub], Clock()), Client("websocket", "h"), sent.append, lambda: None, 4
    )
    c.receive('{"id": 1, "line": "stub"}')
    assert sent == []
    c.start()
    assert len(sent) == 1


# -- the real protocol, in memory


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_text_mode_speaks_like_netcat(h: Harness) -> None:
    conn = h.connect(["gateway.text"])
    assert conn.opened and conn.client.websocket_protocol_in_use == "gateway.text"
    h.send(conn, "test")
    h.send(conn, "lastlog 2")
    h.send(conn, "comphash")
    assert conn.messages == [
        "Command not found.",
        "Begin lastlog",
        "entry 18",
        "entry 19",
        "End lastlog",
        "Please provide a path.",
    ]
    h.send(conn, "exit")
    assert conn.closed == [(1000, None)]
    assert h.quota.snapshot().total_in_use == 0


def test_no_subprotocol_is_text_mode(h: Harness) -> None:
    conn = h.connect()
    assert conn.client.websocket_protocol_in_use is None
    h.send(conn, "nope")
    assert conn.messages == ["Command not found."]


def test_json_mode(h: Harness, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    conn = h.connect(["gateway.v1.json"])
    h.send(conn, json.dumps({"id": 1, "command": "lastlog", "args": {"lines": 1}}))
    h.send(conn, json.dumps({"id": "b", "line": f"comphash {tmp_path}/f"}))
    replies = [json.loads(m) for m in conn.messages]
    assert replies[0] == {"id": 1, "type": "line", "text": "entry 19"}
    assert replies[1] == {
        "id": 1,
        "type": "result",
        "result": {
            "count": 1,
            "source": str(tmp_path / "syslog"),
            "text": [],
            "summary": f"1 line from {tmp_path / 'syslog'}",
        },
    }
    assert {"id": "b", "type": "progress", "done": 1, "total": 1} in replies
    assert (
        replies[-1]["type"] == "result"
        and replies[-1]["result"]["hex"] == "11f6ad8ec52a2984abaafd7c3b516503785c2072"
    )


def test_json_errors_keep_the_connection(h: Harness) -> None:
    conn = h.connect(["gateway.v1.json"])
    h.send(conn, "{broken")
    h.send(conn, '{"line": "help"}')
    h.send(conn, '{"id": 1, "line": "lastlog abc"}')
    h.send(conn, b"\x00\x01", binary=True)
    replies = [json.loads(m) for m in conn.messages]
    assert [r["type"] for r in replies] == ["error"] * 4
    assert replies[1]["message"] == "Missing id."
    assert replies[2] == {
        "id": 1,
        "type": "error",
        "code": "bad_argument",
        "message": "lines must be an integer from 1 to 1000",
    }
    assert replies[3]["message"] == "Binary frames are not supported; send text."
    assert not conn.closed


def test_binary_frame_in_text_mode(h: Harness) -> None:
    conn = h.connect(["gateway.text"])
    h.send(conn, b"\xff", binary=True)
    assert conn.messages == ["An error occurred: Binary frames are not supported; send text."]


def test_over_quota_closes_with_1013(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_clients=1)
    first = h.connect(["gateway.text"])
    second = h.connect(["gateway.text"])
    assert second.opened  # the handshake completed...
    assert second.closed == [(1013, "Too many connections. Bye!")]  # ...then the refusal
    assert h.quota.snapshot().refused["websocket"] == 1
    h.send(first, "exit")
    assert h.quota.snapshot().total_in_use == 0


def test_foreign_origin_is_refused(h: Harness) -> None:
    conn = h.connect(["gateway.text"], origin="http://evil.example")
    assert not conn.opened
    assert h.quota.snapshot().granted["websocket"] == 0


def test_own_origin_is_accepted(h: Harness) -> None:
    conn = h.connect(["gateway.v1.json"], origin="http://127.0.0.1:8080")
    assert conn.opened


def test_unknown_subprotocol_is_refused(h: Harness) -> None:
    conn = h.connect(["chat.v2"])
    assert not conn.opened


def test_closing_mid_command_cancels_and_frees_the_slot(h: Harness) -> None:
    conn = h.connect(["gateway.v1.json"])
    h.send(conn, '{"id": 1, "line": "stub"}')
    assert h.quota.snapshot().in_use["websocket"] == 1
    conn.client.sendClose(1000)
    h.flush()
    assert h.stub.cancelled == 1
    assert h.quota.snapshot().total_in_use == 0


def test_dropped_connection_frees_the_slot(h: Harness) -> None:
    conn = h.connect(["gateway.text"])
    h.send(conn, "stub")
    conn.client.transport.loseConnection()
    h.flush()
    assert h.stub.cancelled == 1
    assert h.quota.snapshot().total_in_use == 0


def test_message_size_limit(tmp_path: Path) -> None:
    h = Harness(tmp_path, settings=WebSocketConfig(max_message_bytes=1000, max_frame_bytes=1000))
    conn = h.connect(["gateway.text"])
    h.send(conn, "x" * 5000)
    assert conn.closed and conn.closed[0][0] == 1009  # message too big
    assert h.quota.snapshot().total_in_use == 0


def test_cancel_over_the_wire(h: Harness) -> None:
    conn = h.connect(["gateway.v1.json"])
    h.send(conn, '{"id": 5, "line": "stub"}')
    h.send(conn, '{"id": 5, "cancel": true}')
    assert json.loads(conn.messages[-1]) == {"id": 5, "type": "cancelled"}
    assert h.stub.cancelled == 1


# -- the session's state: one enum, one place that moves it


def test_websocket_states_and_nothing_after_goodbye(h: Harness) -> None:
    from gateway.frontends.websocket import SocketState

    conn = h.connect(["gateway.text"])
    server = conn.server

    def state() -> SocketState:
        return server.session_state  # type: ignore[no-any-return]

    assert state() is SocketState.OPEN
    server.onMessage(b"stub", False)
    server.onMessage(b"exit", False)  # waits its turn behind stub
    h.stub.runs[0].callback(Result("stub", text=("late",)))
    assert state() is SocketState.CLOSING
    server._deliver("never sent")
    server._deliver_all(("nor", "these"))
    h.flush()
    assert conn.messages == ["working", "late"]
    assert conn.closed and conn.closed[0][0] == 1000
    assert state() is SocketState.CLOSED
    with pytest.raises(RuntimeError, match="cannot go from closed to open"):
        server._move(SocketState.OPEN)


def test_frames_written_straight_are_counted_as_autobahn_counts_them(h: Harness) -> None:
    conn = h.connect(["gateway.text"])
    server = conn.server
    before = server.trafficStats.outgoingOctetsWireLevel
    written: list[bytes] = []
    write = server.transport.write

    def recording(data: bytes) -> None:
        written.append(data)
        write(data)

    server.transport.write = recording
    h.send(conn, "lastlog 2")
    assert conn.messages == ["Begin lastlog", "entry 18", "entry 19", "End lastlog"]
    assert len(written) == 2  # the lines in one write, End lastlog in another; no queue
    assert server.trafficStats.outgoingWebSocketMessages >= 4
    assert server.trafficStats.outgoingOctetsWireLevel - before == sum(map(len, written))
    server.send_queue.append((b"", False))  # something queued: Autobahn's own path keeps order
    server.sendData(b"\x81\x01x")
    assert server.send_queue[-1] == (b"\x81\x01x", False)


# -- a batch framed once for every connection


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_text_frames_are_autobahns_frames(h: Harness, size: int) -> None:
    from gateway.frontends.websocket import text_frames

    conn = h.connect(["gateway.text"])
    server = conn.server
    sent: list[bytes] = []
    server.transport.write = sent.append
    text = "é" * (size // 2) + "x" * (size % 2)
    server.sendFrame(opcode=1, payload=text.encode())
    frames, octets, longest = text_frames([text, "two"])
    assert frames == b"".join(sent) + b"\x81\x03two"
    assert (octets, longest) == (len(text.encode()) + 3, max(len(text.encode()), 3))


def test_a_batch_is_framed_once_for_every_connection(h: Harness) -> None:
    conns = [h.connect(["gateway.text"]) for _ in range(3)]
    writes: list[list[bytes]] = []
    for conn in conns:
        got: list[bytes] = []
        write = conn.server.transport.write

        def recording(data: bytes, got: list[bytes] = got, write: Any = write) -> None:
            got.append(data)
            write(data)

        conn.server.transport.write = recording
        writes.append(got)
    batch = ("one", "two", "three")
    for conn in conns:
        conn.server._deliver_all(batch)
    h.flush()
    for conn, got in zip(conns, writes, strict=True):
        assert conn.messages[-3:] == ["one", "two", "three"]
        assert len(got) == 1
    assert writes[0][0] is writes[1][0] is writes[2][0]  # the same bytes, made once


def test_messages_too_big_or_compressed_go_through_autobahn(h: Harness) -> None:
    conn = h.connect(["gateway.text"])
    server = conn.server
    sent: list[bytes] = []
    server.transport.write = sent.append
    server.maxMessagePayloadSize = 4
    with pytest.raises(Exception, match="exceeding payload limit"):
        server._deliver_all(("fine", "too long"))
    assert sent == [b"\x81\x04fine"]  # what fits went, each message on its own
    server.maxMessagePayloadSize = 0
    sent.clear()
    server.autoFragmentSize = 2
    server._deliver_all(("abc", "d"))
    assert sent[0].startswith(b"\x01\x02ab")  # fragmented, as Autobahn does it
