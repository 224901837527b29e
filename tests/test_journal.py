"""The journal as a log source: its entries as journalctl shows them, its
cursors as follow cursors (resumed by name, gaps counted by sequence number)."""

from __future__ import annotations

import json
import time

from twisted.internet.task import Clock

from gateway.commands.follow import Followers
from gateway.commands.journal import (
    JournalSource,
    entries_apart,
    entry_line,
    named_lines,
    parse_entry,
)
from gateway.commands.lastlog import LastlogCommand, prime_file
from gateway.core.follow import Feed, Stale, Watcher
from gateway.core.service import CommandService

from .support.fakes import FakeSpawner, run_now
from .test_follow import follow_lines

S = "d4b82928cc344b4794905c14a56cdb9e"
B = "0123456789abcdef0123456789abcdef"


def cursor(i: int, seqnum_id: str = S) -> str:
    return f"s={seqnum_id};i={i:x};b={B};m=3e8;t=66123f151172f;x=d7d0f560e708eadb"


def stamp(usec: int) -> str:
    return time.strftime("%b %d %H:%M:%S", time.localtime(usec / 1_000_000))


USEC = 1795656860636975


def test_an_entry_reads_as_journalctl_short_shows_it() -> None:
    entry = {
        "__REALTIME_TIMESTAMP": str(USEC),
        "_HOSTNAME": "box",
        "SYSLOG_IDENTIFIER": "sshd",
        "_PID": "42",
        "MESSAGE": "Accepted publickey",
    }
    assert entry_line(entry) == f"{stamp(USEC)} box sshd[42]: Accepted publickey"
    assert entry_line({**entry, "SYSLOG_PID": "7"}).endswith(" sshd[7]: Accepted publickey")
    del entry["_PID"]
    assert entry_line(entry) == f"{stamp(USEC)} box sshd: Accepted publickey"
    del entry["SYSLOG_IDENTIFIER"]
    assert entry_line({**entry, "_COMM": "cron"}) == f"{stamp(USEC)} box cron: Accepted publickey"
    assert entry_line(entry) == f"{stamp(USEC)} box: Accepted publickey"


def test_odd_messages_stay_one_line() -> None:
    base = {"__REALTIME_TIMESTAMP": str(USEC), "SYSLOG_IDENTIFIER": "app"}
    assert entry_line({**base, "MESSAGE": "one\ntwo\r\nthree\n"}).endswith("app: one\\ntwo\\nthree")
    # Not UTF-8: journalctl gives the bytes as numbers.
    assert entry_line({**base, "MESSAGE": [104, 105, 255]}).endswith("app: hi\ufffd")
    # A field given twice: its values as a list.
    assert entry_line({**base, "MESSAGE": ["first", "second"]}).endswith("app: first")
    assert entry_line({**base, "MESSAGE": None}).endswith("app: [unreadable message]")
    assert entry_line(base).endswith("app: [no message]")
    assert entry_line({"MESSAGE": "m", "__REALTIME_TIMESTAMP": "x"}) == f"{stamp(0)}: m"


def test_journalctl_output_lines_parse_to_cursor_and_line() -> None:
    raw = json.dumps({"__CURSOR": cursor(5), "MESSAGE": "hi", "__REALTIME_TIMESTAMP": "0"})
    assert parse_entry(raw.encode()) == (cursor(5), f"{stamp(0)}: hi")
    assert parse_entry(b"-- No entries --") == (None, "-- No entries --")
    assert parse_entry(b"[1, 2]") == (None, "[1, 2]")
    assert parse_entry(b'{"MESSAGE": "no cursor"}')[0] is None
    named, plain = named_lines([raw.encode(), b"not json"])
    assert named == [(cursor(5), f"{stamp(0)}: hi")] and plain == ["not json"]


def test_entries_apart_counts_by_sequence_number_within_one_journal() -> None:
    assert entries_apart(cursor(0x10), cursor(0x20)) == 15
    assert entries_apart(cursor(4), cursor(5)) == 0
    assert entries_apart(cursor(4), cursor(5, "f" * 32)) is None  # another journal
    assert entries_apart("nonsense", cursor(5)) is None
    assert entries_apart(cursor(4).replace("i=4", "i=zz"), cursor(5)) is None


def watch(feed: Feed, after: str | None, last: int = 0) -> tuple[list[str], list[Stale]]:
    got: list[str] = []
    gaps: list[Stale] = []
    watcher = Watcher(
        lambda entries: got.extend(feed.cursor(n) for n, _ in entries),
        lambda n: None,
        lambda text: None,
        100,
    )
    feed.attach(watcher, last, after, gaps.append)
    return got, gaps


def test_a_feed_of_named_lines_resumes_by_name_and_forgets_old_names() -> None:
    feed = Feed(3, names_apart=entries_apart)
    feed.append_named([(cursor(i), f"line {i}") for i in range(1, 6)])
    # Kept: 3, 4, 5 (and only their names).
    got, gaps = watch(feed, cursor(3))
    assert got == [cursor(4), cursor(5)] and gaps == []
    got, gaps = watch(feed, cursor(5))
    assert got == [] and gaps == []
    got, gaps = watch(feed, None, last=2)
    assert got == [cursor(4), cursor(5)]
    # Just before the oldest kept: nothing missing.
    got, gaps = watch(feed, cursor(2))
    assert got == [cursor(3), cursor(4), cursor(5)] and gaps == []
    # Older: the gap counted by sequence number.
    got, gaps = watch(feed, cursor(1))
    assert got == [cursor(3), cursor(4), cursor(5)] and gaps == [Stale(1)]
    # From another journal (or the future): unknown.
    assert watch(feed, cursor(1, "e" * 32))[1] == [Stale(None)]
    assert watch(feed, cursor(99))[1] == [Stale(None)]
    assert feed.cursor(1) != cursor(1)  # forgotten with its line
    # Watchers attached earlier get new lines with their names.
    feed.append_named([(cursor(6), "line 6")])
    assert feed.cursor(feed.replay_for(1, None)[0][0][0]) == cursor(6)


def test_a_feed_without_names_apart_calls_an_unknown_name_stale() -> None:
    feed = Feed(10)
    feed.append_named([(cursor(1), "a")])
    assert watch(feed, cursor(7))[1] == [Stale(None)]
    assert watch(feed, "deadbeef-1")[1] == [Stale(None)]


def entry_json(i: int, message: str) -> bytes:
    return json.dumps(
        {"__CURSOR": cursor(i), "__REALTIME_TIMESTAMP": "0", "MESSAGE": message}
    ).encode()


def test_a_journal_follow_is_primed_then_follows_from_right_after_the_last_entry() -> None:
    clock = Clock()
    spawner = FakeSpawner()
    followers = Followers(clock, run_now, 100, prime_file)
    source = JournalSource(spawner.reactor, "/var/log/remote", program="true")
    service = CommandService([LastlogCommand(source, 10, 1000, 10.0, followers, 50)], clock)
    out = follow_lines(service, "lastlog -f 2")
    (prime,) = spawner.processes
    assert prime.args[-7:] == [
        "--all",
        "--output",
        "json",
        "--directory",
        "/var/log/remote",
        "--lines",
        "100",
    ]
    prime.out(b"\n".join(entry_json(i, f"m{i}") for i in range(1, 4)) + b"\n")
    prime.exit(0)
    prime_, follow = spawner.processes
    assert follow.args[-3:] == ["--follow", "--after-cursor", cursor(3)]
    assert out == ["Begin lastlog", f"{stamp(0)}: m2", f"{stamp(0)}: m3"]
    follow.out(entry_json(4, "live") + b"\n")
    assert out[-1] == f"{stamp(0)}: live"
    # Another watcher, resuming: the same child, cursors are the journal's.
    assert follow_lines(service, f"lastlog -f --after {cursor(2)}") == [
        "Begin lastlog",
        f"{stamp(0)}: m3",
        f"{stamp(0)}: live",
    ]
    assert len(spawner.processes) == 2
    assert followers.running == {"journal:/var/log/remote": 2}


def test_an_empty_journal_is_followed_from_now_on() -> None:
    clock = Clock()
    spawner = FakeSpawner()
    followers = Followers(clock, run_now, 100, prime_file)
    source = JournalSource(spawner.reactor, program="true")
    service = CommandService([LastlogCommand(source, 10, 1000, 10.0, followers, 50)], clock)
    out = follow_lines(service, "lastlog -f")
    spawner.processes[0].exit(0)
    follow = spawner.processes[1]
    assert follow.args[-3:] == ["--follow", "--lines", "0"]
    assert out == ["Begin lastlog"]


def test_a_journal_that_cannot_be_read_is_an_error() -> None:
    clock = Clock()
    spawner = FakeSpawner()
    followers = Followers(clock, run_now, 100, prime_file)
    source = JournalSource(spawner.reactor, "/nope", program="true")
    service = CommandService([LastlogCommand(source, 10, 1000, 10.0, followers, 50)], clock)
    out = follow_lines(service, "lastlog -f")
    spawner.processes[0].err(b"Failed to open /nope: No such file or directory\n")
    spawner.processes[0].exit(1)
    assert out == [
        "An error occurred: Log command journal:/nope failed (exit status 1): "
        "Failed to open /nope: No such file or directory"
    ]
    assert len(spawner.processes) == 1 and followers.running == {}
