"""The systemd journal as a log source: ``journalctl -o json``, shown as its
``short`` output, each entry's ``__CURSOR`` its follow cursor.

A tail runs ``journalctl -o json -n N``; a follow runs one
``journalctl -o json --follow`` for every watcher.  Both turn each entry into
the line ``journalctl`` itself prints (``Nov 26 01:34:20 box sshd[42]: ...``)
with :func:`entry_line`, so ``lastlog`` and ``lastlog -f`` show the same
lines.  A follow's cursors are the journal's own, so a client resumes right
after the entry it saw last even when the gateway was restarted meanwhile
(as long as the entry is among the last ``follow.replay_lines``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorProcess

from gateway.commands.child import decode_line, first_lines
from gateway.core.events import Sink
from gateway.core.flow import UNLIMITED, Flow

#: ``journalctl`` as the gateway runs it: JSON, every field in full, no pager.
JOURNALCTL: tuple[str, ...] = ("--no-pager", "--quiet", "--all", "--output", "json")
#: A journal cursor, as the ``after`` parameter accepts it.
CURSOR_PATTERN = (
    r"s=[0-9a-f]{32};i=[0-9a-f]{1,16};b=[0-9a-f]{32};m=[0-9a-f]{1,16};"
    r"t=[0-9a-f]{1,16};x=[0-9a-f]{1,16}"
)


def _text(value: Any) -> str | None:
    """A field's value as text: a string, bytes as a list of numbers (not
    UTF-8), or the first of several values (a field given more than once)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        if all(isinstance(b, int) for b in value):
            try:
                return bytes(value).decode("utf-8", "replace")
            except ValueError:
                return None
        return _text(value[0])
    return None


def entry_line(entry: Mapping[str, Any]) -> str:
    """One entry as ``journalctl -o short`` shows it, on one line (a message's
    own line breaks are shown as ``\\n``)."""
    try:
        usec = int(entry.get("__REALTIME_TIMESTAMP") or 0)
    except (TypeError, ValueError):
        usec = 0
    stamp = time.strftime("%b %d %H:%M:%S", time.localtime(usec / 1_000_000))
    host = _text(entry.get("_HOSTNAME"))
    ident = _text(entry.get("SYSLOG_IDENTIFIER")) or _text(entry.get("_COMM"))
    pid = _text(entry.get("SYSLOG_PID")) or _text(entry.get("_PID"))
    message = _text(entry.get("MESSAGE"))
    if message is None:
        message = "[no message]" if "MESSAGE" not in entry else "[unreadable message]"
    message = message.rstrip("\n").replace("\r\n", "\n").replace("\n", "\\n")
    head = stamp if host is None else f"{stamp} {host}"
    if ident is not None:
        head = f"{head} {ident}[{pid}]:" if pid is not None else f"{head} {ident}:"
    else:
        head += ":"
    return f"{head} {message}"


def parse_entry(raw: bytes | str) -> tuple[str | None, str]:
    """One line of ``journalctl -o json``: the entry's cursor and its line.

    A line that is not a JSON object (``journalctl`` said something else, or
    an entry longer than a line may be) is shown as it is, without a cursor.
    """
    try:
        entry = json.loads(raw)
    except ValueError:
        entry = None
    if not isinstance(entry, dict):
        return None, decode_line(raw) if isinstance(raw, bytes) else raw
    cursor = entry.get("__CURSOR")
    return (cursor if isinstance(cursor, str) else None), entry_line(entry)


def _seqnum(cursor: str) -> tuple[str, int] | None:
    fields = dict(part.partition("=")[::2] for part in cursor.split(";"))
    try:
        return fields["s"], int(fields["i"], 16)
    except (KeyError, ValueError):
        return None


def entries_apart(seen: str, oldest: str) -> int | None:
    """How many entries lie between cursor ``seen`` and ``oldest`` (not
    counting either), from their sequence numbers; ``None`` when the two are
    not numbered by the same journal (another machine, another journal file)."""
    a, b = _seqnum(seen), _seqnum(oldest)
    if a is None or b is None or a[0] != b[0]:
        return None
    return b[1] - a[1] - 1


def journal_argv(program: str, directory: str | None, *extra: str) -> tuple[str, ...]:
    """``journalctl`` for the system journal, or for the journal files in ``directory``."""
    where = ("--directory", directory) if directory else ()
    return (program, *JOURNALCTL, *where, *extra)


class JournalSource:
    """``lastlog`` from the journal: the system's, or the one in ``directory``."""

    def __init__(
        self, spawner: IReactorProcess, directory: str | None = None, program: str = "journalctl"
    ) -> None:
        self.spawner = spawner
        self.directory = directory
        self.program = program
        self.description = f"journal:{directory}" if directory else "journal"

    def prime_argv(self, n: int) -> tuple[str, ...]:
        """What starts a follow: the last ``n`` entries."""
        return journal_argv(self.program, self.directory, "--lines", str(n))

    def follow_argv(self, after: str | None) -> tuple[str, ...]:
        """A follow from right after the entry ``after`` (``None``: from now on)."""
        start = ("--after-cursor", after) if after is not None else ("--lines", "0")
        return journal_argv(self.program, self.directory, "--follow", *start)

    def note_for(self, source: str) -> str | None:
        return None

    def tail(self, n: int, sink: Sink, flow: Flow = UNLIMITED) -> Deferred[str]:
        argv = self.prime_argv(n)
        return first_lines(self.spawner, argv, n, sink, flow, self.description, line_of)


def line_of(raw: bytes) -> str:
    return parse_entry(raw)[1]


def named_lines(raws: Sequence[bytes | str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Follow output: the entries with a cursor, and the lines without one."""
    named: list[tuple[str, str]] = []
    plain: list[str] = []
    for raw in raws:
        cursor, line = parse_entry(raw)
        if cursor is None:
            plain.append(line)
        else:
            named.append((cursor, line))
    return named, plain
