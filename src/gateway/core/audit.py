"""Audit records: who ran what, how it went (pure: no I/O).

One record per command, whatever the transport: the time, the identity's
name (never a token) and how it was proven, the transport and peer, the
command and its arguments, the outcome, the bytes of output and the
duration.  :func:`json_line` makes the file's line; :func:`journal_fields`
the journal's structured fields.
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from gateway.core.command import Client, Request

#: A client's argument is cut to this many characters in a record.
MAX_ARG_CHARS = 512


def _cut(value: object) -> object:
    if isinstance(value, str) and len(value) > MAX_ARG_CHARS:
        return value[:MAX_ARG_CHARS] + "…"
    return value


_second: list[tuple[int, str]] = [(-1, "")]  # the last second formatted, and how


def _stamp(when: float) -> str:
    """``2026-11-26T02:05:11.262Z``: UTC, milliseconds (the second's part
    formatted once per second: there is a record per command)."""
    whole = int(when)
    last, text = _second[0]
    if whole != last:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second[0] = (whole, text)
    millis = int(when * 1000) % 1000
    return f"{text}.{millis:03d}Z"


class Entry(NamedTuple):
    """What one command's audit record is made of, taken when it ends.

    Cheap to take (a tuple, on the hot path); :meth:`record` makes the
    record itself when a batch of them is written.
    """

    when: float
    identity: str
    proof: str
    transport: str
    peer: str
    command: str
    rest: str | None
    args: Mapping[str, object]
    outcome: str
    sent: int
    seconds: float

    def cut_args(self) -> object:
        """The arguments as recorded: as typed after the command's name, or
        the named ones (at most 32), each cut to :data:`MAX_ARG_CHARS`."""
        if self.rest is not None:
            return _cut(self.rest)
        return {str(_cut(k)): _cut(v) for k, v in list(self.args.items())[:32]}

    def record(self) -> dict[str, Any]:
        return {
            "time": _stamp(self.when),
            "identity": self.identity,
            "proof": self.proof,
            "transport": self.transport,
            "peer": self.peer,
            "command": _cut(self.command),
            "args": self.cut_args(),
            "outcome": self.outcome,
            "bytes": self.sent,
            "duration_ms": round(self.seconds * 1000, 3),
        }


def entry(
    when: float,
    client: Client,
    request: Request,
    outcome: str,
    sent: int,
    seconds: float,
) -> Entry:
    """The audit entry of one command; ``sent`` is the bytes of its output."""
    identity = client.identity
    return Entry(
        when,
        identity.name,
        identity.how,
        client.transport,
        client.peer,
        request.command,
        request.rest,
        request.args,
        outcome,
        sent,
        seconds,
    )


#: What the audit trail is handed: an entry, or a record made already.
Record = Entry | Mapping[str, Any]


def as_record(rec: Record) -> Mapping[str, Any]:
    return rec.record() if isinstance(rec, Entry) else rec


#: One encoder for every record (``json.dumps`` with options makes one per call).
_ENCODE = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


#: A string as JSON, every non-ASCII and control character escaped (the
#: encoder's own function, in C).
_STRING: Callable[[str], str] = json.encoder.encode_basestring_ascii


def json_line(rec: Record) -> bytes:
    """One line of the audit file: JSON, every control character escaped."""
    if isinstance(rec, Entry):
        return _entry_line(rec)
    return (_ENCODE(rec) + "\n").encode()


def _entry_line(e: Entry) -> bytes:
    """What ``json_line(e.record())`` is, made without the record: the
    fields are known, so only the values are encoded (there is a line per
    command)."""
    if e.rest is not None:
        args = _STRING(str(_cut(e.rest)))
    else:
        args = _ENCODE(e.cut_args()) if e.args else "{}"
    command = str(_cut(e.command))
    milliseconds = round(e.seconds * 1000, 3)
    duration = (
        float.__repr__(milliseconds) if math.isfinite(milliseconds) else _ENCODE(milliseconds)
    )
    return (
        f'{{"time":"{_stamp(e.when)}","identity":{_STRING(e.identity)},'
        f'"proof":{_STRING(e.proof)},"transport":{_STRING(e.transport)},'
        f'"peer":{_STRING(e.peer)},"command":{_STRING(command)},"args":{args},'
        f'"outcome":{_STRING(e.outcome)},"bytes":{int(e.sent)},"duration_ms":{duration}}}\n'
    ).encode()


def journal_fields(rec: Record) -> dict[str, str]:
    """The journal's fields for ``rec`` (``GATEWAY_*``, searchable with journalctl)."""
    rec = as_record(rec)
    args = rec["args"]
    message = (
        f"audit: {rec['identity']} ran {json.dumps(rec['command'], ensure_ascii=True)} over "
        f"{rec['transport']} from {rec['peer']}: {rec['outcome']}"
    )
    return {
        "MESSAGE": message,
        "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "gateway-audit",
        "GATEWAY_IDENTITY": str(rec["identity"]),
        "GATEWAY_PROOF": str(rec["proof"]),
        "GATEWAY_TRANSPORT": str(rec["transport"]),
        "GATEWAY_PEER": str(rec["peer"]),
        "GATEWAY_COMMAND": str(rec["command"]),
        "GATEWAY_ARGS": json.dumps(args, ensure_ascii=True),
        "GATEWAY_OUTCOME": str(rec["outcome"]),
        "GATEWAY_BYTES": str(rec["bytes"]),
        "GATEWAY_DURATION_MS": str(rec["duration_ms"]),
    }


def journal_datagram(fields: Mapping[str, str]) -> bytes:
    """The journal's native protocol: ``KEY=value`` lines, or, for a value
    holding a newline, the key, its length (64-bit little-endian) and value."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)
