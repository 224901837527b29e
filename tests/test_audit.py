"""The audit trail: one record per command, written off the reactor, to a
file or the journal; a failing disk is counted and reported, never fatal."""

from __future__ import annotations

import errno
import json
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from gateway.auditlog import AuditLog, FileTarget, JournalTarget
from gateway.commands.follow import Followers
from gateway.commands.lastlog import prime_file
from gateway.commands.registry import Runners, build_service
from gateway.config import Config, merge
from gateway.core.audit import Entry, entry, journal_datagram, journal_fields, json_line
from gateway.core.command import Client, Request
from gateway.core.quota import ClientQuota
from gateway.core.scope import Identity, Scope

from .support.fakes import FakeSpawner, call_now, run_now


def record(
    when: float, client: Client, request: Request, outcome: str, sent: int, seconds: float
) -> dict[str, Any]:
    """The record of one command, made at once."""
    return entry(when, client, request, outcome, sent, seconds).record()


def wait_until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.01)


def test_a_record_names_the_identity_and_cuts_long_arguments() -> None:
    ops = Identity("ops", "token", Scope(commands=frozenset({"lastlog"})))
    rec = record(
        0.5, Client("tcp", "10.0.0.1", identity=ops), Request("lastlog", rest="5"), "ok", 12, 0.25
    )
    assert rec == {
        "time": "1970-01-01T00:00:00.500Z",
        "identity": "ops",
        "proof": "token",
        "transport": "tcp",
        "peer": "10.0.0.1",
        "command": "lastlog",
        "args": "5",
        "outcome": "ok",
        "bytes": 12,
        "duration_ms": 250.0,
    }
    long = record(0, Client("http", "h"), Request("comphash", {"path": "/" + "a" * 600}), "x", 0, 0)
    assert long["identity"] == "anonymous" and long["proof"] == "none"
    assert len(long["args"]["path"]) == 513 and long["args"]["path"].endswith("…")


def test_an_entry_is_taken_now_and_made_a_record_when_written(tmp_path: Path) -> None:
    """The service hands over an entry (cheap, on the hot path); the file
    gets the same record as one made at once."""
    ops = Identity("ops", "token", Scope())
    client = Client("http", "10.0.0.1", identity=ops)
    request = Request("lastlog", {"lines": "5", "k" * 600: "v"})
    taken = entry(1.25, client, request, "ok", 40, 0.002)
    assert taken.record() == record(1.25, client, request, "ok", 40, 0.002)
    assert json_line(taken) == json_line(taken.record())
    assert journal_fields(taken) == journal_fields(taken.record())
    path = tmp_path / "audit.jsonl"
    audit = started(FileTarget(str(path)))
    try:
        audit.record(taken)
        wait_until(lambda: audit.written == 1)
    finally:
        audit.stopService()
    written = json.loads(path.read_text())
    assert written["identity"] == "ops" and written["proof"] == "token"
    assert written["args"]["lines"] == "5" and len(written["args"]) == 2
    assert written["time"] == "1970-01-01T00:00:01.250Z" and written["duration_ms"] == 2.0


_text = (
    st.text(max_size=20)
    | st.text(st.characters(codec="utf-8"), max_size=600)
    # lone surrogates (a WebSocket client's JSON may hold them)
    | st.text(st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010), max_size=8)
)


@settings(max_examples=300, deadline=None)
@given(
    when=st.floats(0, 4e9),
    names=st.tuples(_text, _text, _text, _text, _text, _text),
    rest=st.none() | _text,
    args=st.dictionaries(_text, _text | st.integers() | st.booleans(), max_size=40),
    sent=st.integers(0, 2**40),
    seconds=st.floats(0, 1e6) | st.sampled_from([float("inf"), float("nan")]),
)
def test_an_entrys_line_is_exactly_what_the_json_encoder_makes_of_its_record(
    when: float,
    names: tuple[str, str, str, str, str, str],
    rest: str | None,
    args: dict[str, object],
    sent: int,
    seconds: float,
) -> None:
    """The audit file's line for an entry is made field by field (fast); it
    must be byte for byte what encoding the whole record makes."""
    identity, proof, transport, peer, command, outcome = names
    e = Entry(when, identity, proof, transport, peer, command, rest, args, outcome, sent, seconds)
    expected = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode(e.record())
    assert json_line(e) == (expected + "\n").encode()
    assert json_line(e).count(b"\n") == 1


def test_a_json_line_is_one_line_whatever_the_client_sent() -> None:
    rec = record(0, Client("tcp", "h"), Request('x\n{"forged": 1}\x1b[2J', rest="a\rb"), "e", 0, 0)
    line = json_line(rec)
    assert line.count(b"\n") == 1 and line.endswith(b"\n") and b"\x1b" not in line
    assert json.loads(line)["command"] == 'x\n{"forged": 1}\x1b[2J'


def parse_datagram(data: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    while data:
        line, sep, rest = data.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            data = rest
        else:
            (size,) = struct.unpack("<Q", rest[:8])
            fields[line.decode()] = rest[8 : 8 + size].decode()
            data = rest[8 + size + 1 :]
    return fields


def test_journal_fields_use_the_native_protocol_even_for_newlines() -> None:
    rec = record(0, Client("websocket", "h"), Request("lastlog", rest="1\nFORGED=1"), "ok", 0, 0)
    fields = parse_datagram(journal_datagram(journal_fields(rec)))
    assert fields["GATEWAY_ARGS"] == json.dumps("1\nFORGED=1")
    assert "FORGED" not in fields
    assert fields["SYSLOG_IDENTIFIER"] == "gateway-audit"
    assert fields["MESSAGE"] == 'audit: anonymous ran "lastlog" over websocket from h: ok'
    raw = journal_datagram({"MESSAGE": "two\nlines"})
    assert raw == b"MESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\n"


def started(target: Any) -> AuditLog:
    audit = AuditLog(target, lambda f, *a, **kw: f(*a, **kw), time.monotonic)
    audit.startService()
    return audit


def test_records_are_appended_in_order_and_the_file_reopened_after_rotation(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    audit = started(FileTarget(str(path)))
    try:
        for i in range(100):
            audit.record({"n": i})
        wait_until(lambda: audit.written == 100)
        assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == list(range(100))
        assert oct(path.stat().st_mode & 0o777) == "0o640"
        path.rename(tmp_path / "audit.jsonl.1")  # logrotate, then SIGHUP
        audit.reopen()
        audit.record({"n": "after"})
        wait_until(lambda: audit.written == 101)
        assert path.read_text() == '{"n":"after"}\n'
    finally:
        audit.stopService()


class FailingTarget:
    description = "a full disk"

    def __init__(self) -> None:
        self.full = True
        self.got: list[Mapping[str, Any]] = []

    def open(self) -> None:
        pass

    @staticmethod
    def encode(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        return list(records)

    def write(self, records: list[Mapping[str, Any]]) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.got.extend(records)

    def close(self) -> None:
        pass


def test_a_full_disk_is_counted_reported_and_recovered_from() -> None:
    target = FailingTarget()
    complaints: list[str] = []
    audit = AuditLog(
        target,  # type: ignore[arg-type]
        lambda f, fmt, **kw: complaints.append(fmt.format(**kw)),
        time.monotonic,
    )
    audit.startService()
    try:
        audit.record({"n": 1})
        wait_until(lambda: audit.failed == 1)
        assert audit.problem == "audit log failing (a full disk: No space left on device)"
        assert complaints == [
            "cannot write the audit log to a full disk: No space left on device "
            "(1 records not written, 0 lost so far)"
        ]
        target.full = False
        audit.record({"n": 2})
        wait_until(lambda: audit.written == 1)
        assert audit.problem is None and target.got == [{"n": 2}]
        assert complaints[-1] == "audit log writing again to {target}".format(target="a full disk")
    finally:
        audit.stopService()


def test_a_full_queue_loses_records_and_says_so_without_waiting() -> None:
    audit = AuditLog(FailingTarget(), lambda *a, **kw: None, time.monotonic, max_queue=2)  # type: ignore[arg-type]
    for i in range(5):  # the writer is not running: nothing is taken from the queue
        audit.record({"n": i})
    assert audit.lost == 3


def test_records_reach_the_journal_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    audit = started(JournalTarget(path))
    try:
        rec = record(0, Client("tcp", "h"), Request("stats", rest=""), "ok", 3, 0.001)
        audit.record(rec)
        fields = parse_datagram(server.recv(65536))
        assert fields["GATEWAY_COMMAND"] == "stats" and fields["GATEWAY_BYTES"] == "3"
        assert fields["GATEWAY_IDENTITY"] == "anonymous"
    finally:
        audit.stopService()
        server.close()


def test_the_service_records_every_command_with_its_outcome_and_size(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_text("one\ntwo\n")
    clock = Clock()
    runners = Runners(
        run_now, run_now, call_now, FakeSpawner().reactor, Followers(clock, run_now, 10, prime_file)
    )
    service = build_service(
        merge(Config(), {"lastlog": {"source": str(log)}}), clock, ClientQuota(10), runners
    )
    entries: list[Entry] = []
    service.audit = entries.append
    viewer = Identity("viewer", "token", Scope(commands=frozenset({"lastlog"})))
    service.identities = lambda identity: identity
    client = Client("tcp", "h", identity=viewer)
    for line in ("lastlog 2", "comphash /etc/hostname", "nope"):
        request = Request.from_line(line)
        assert request is not None
        service.execute(request, client, lambda event: None)
    records = [e.record() for e in entries]  # (made when a batch is written)
    assert [(r["command"], r["outcome"], r["bytes"]) for r in records] == [
        ("lastlog", "ok", len("one\ntwo\n")),
        ("comphash", "forbidden", 0),
        ("nope", "unknown_command", 0),
    ]
    assert {r["identity"] for r in records} == {"viewer"}


def test_stamps_stay_right_across_seconds_with_the_second_kept() -> None:
    from gateway.core.audit import _stamp

    assert [_stamp(t) for t in (1764123911.262, 1764123911.9999, 1764123912.0, 1764123911.5)] == [
        "2025-11-26T02:25:11.262Z",
        "2025-11-26T02:25:11.999Z",
        "2025-11-26T02:25:12.000Z",
        "2025-11-26T02:25:11.500Z",  # back in time (a clock step): formatted again
    ]


@settings(max_examples=300, deadline=None)
@given(st.lists(_text, max_size=20))
def test_the_bytes_counted_are_the_utf8_bytes_of_the_lines_sent(lines: list[str]) -> None:
    from gateway.core.service import _size

    sent = "".join(f"{line}\n" for line in lines).encode("utf-8", "replace")
    assert _size(lines) == _size(tuple(lines)) == len(sent)
