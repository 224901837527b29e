"""Following a log: the feed and its watchers, the file reader, lastlog -f on a line."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from gateway.commands.follow import (
    COALESCE_MOST,
    COALESCE_SECONDS,
    POLL_SECONDS,
    SETTLE_MOST,
    SETTLE_SECONDS,
    FileReader,
    Followers,
    coalesce,
)
from gateway.commands.lastlog import CommandSource, FileSource, LastlogCommand, prime_file
from gateway.commands.registry import Runners, build_service, reconfigure
from gateway.config import Config, merge
from gateway.core.command import Client
from gateway.core.events import Dropped, Event, Following, Gap, Lines, Result
from gateway.core.flow import Flow
from gateway.core.follow import Entry, Feed, Stale, Watcher, lines_of
from gateway.core.metrics import render
from gateway.core.params import compile_pattern
from gateway.core.quota import ClientQuota
from gateway.core.service import CommandService
from gateway.sessions.line import LineConversation

from .support.fakes import FakeSpawner, call_now, run_now


class Seen:
    """What one watcher's client was sent."""

    def __init__(self) -> None:
        self.lines: list[Entry] = []
        self.dropped: list[int] = []
        self.notices: list[str] = []

    def watcher(self, flow: Flow | None = None, limit: int = 100, grep: object = None) -> Watcher:
        return Watcher(
            self.lines.extend,
            self.dropped.append,
            self.notices.append,
            limit,
            flow if flow is not None else Flow(),
            grep,
        )

    @property
    def texts(self) -> list[str]:
        return [t for _, t in self.lines]


def test_a_new_watcher_gets_the_last_lines_then_every_new_one() -> None:
    feed = Feed(replay=5)
    feed.append([f"l{i}" for i in range(8)])
    seen = Seen()
    assert feed.attach(seen.watcher(), 2, None) is None
    feed.append(["new"])
    assert seen.texts == ["l6", "l7", "new"]
    assert feed.stats.delivered == 3


def test_resuming_after_a_cursor_continues_without_gap_or_duplicate() -> None:
    feed = Feed(replay=100)
    feed.append(["a", "b", "c"])
    first = Seen()
    watcher = first.watcher()
    feed.attach(watcher, 10, None)
    last_seen = feed.cursor(first.lines[-1][0])
    feed.detach(watcher)
    feed.append(["d", "e"])
    again = Seen()
    assert feed.attach(again.watcher(), 10, last_seen) is None
    assert again.texts == ["d", "e"]


def test_a_cursor_older_than_what_is_kept_says_how_many_may_be_missing() -> None:
    feed = Feed(replay=3)
    feed.append(["1", "2"])
    cursor = feed.cursor(1)
    feed.append(["3", "4", "5", "6"])  # kept: 4, 5, 6
    seen = Seen()
    gaps: list[Stale] = []
    assert feed.attach(seen.watcher(), 10, cursor, gaps.append) == Stale(2)  # 2 and 3
    assert gaps == [Stale(2)] and seen.texts == ["4", "5", "6"]
    other = Seen()
    assert feed.attach(other.watcher(), 10, "ffff-1") == Stale(None)  # another run's
    assert feed.attach(Seen().watcher(), 10, "garbage") == Stale(None)


def test_a_watcher_that_does_not_read_loses_the_oldest_and_is_told_how_many() -> None:
    feed = Feed(replay=10)
    slow_flow = Flow()
    slow, fast = Seen(), Seen()
    feed.attach(slow.watcher(slow_flow, limit=3), 0, None)
    feed.attach(fast.watcher(), 0, None)
    slow_flow.pauseProducing()
    feed.append([str(i) for i in range(10)])
    assert fast.texts == [str(i) for i in range(10)]  # the others are not held up
    assert slow.texts == [] and feed.stats.dropped == 7
    slow_flow.resumeProducing()
    assert slow.dropped == [7]
    assert slow.texts == ["7", "8", "9"]


def test_grep_applies_to_replay_and_live_lines() -> None:
    feed = Feed(replay=10)
    feed.append(["error: x", "ok", "error: y"])
    seen = Seen()
    feed.attach(seen.watcher(grep=compile_pattern("^error")), 10, None)
    feed.append(["fine", "error: z"])
    assert seen.texts == ["error: x", "error: y", "error: z"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(1, 5)),
            st.tuples(st.just("pause"), st.just(0)),
            st.tuples(st.just("resume"), st.just(0)),
            st.tuples(st.just("reconnect"), st.just(0)),
        ),
        max_size=40,
    ),
    st.integers(1, 20),
    st.integers(1, 6),
)
def test_every_line_arrives_once_or_the_gap_is_stated(
    ops: Sequence[tuple[str, int]], replay: int, queue: int
) -> None:
    """Any interleaving of appends, a client that stops reading, and
    reconnects with the last cursor: each line is received exactly once, or
    its loss is stated (a drop count or a stale resume)."""
    feed = Feed(replay=replay)
    written = 0
    received: list[int] = []
    stated = 0  # lines said to be lost
    flow = Flow()
    gaps: list[Stale] = []

    def deliver(entries: Sequence[Entry]) -> None:
        received.extend(n for n, _ in entries)

    def dropped(n: int) -> None:
        nonlocal stated
        stated += n

    def connect(after: str | None) -> Watcher:
        w = Watcher(deliver, dropped, lambda t: None, queue, flow, None)
        feed.attach(w, 0, after, gaps.append)
        return w

    first = 1
    watcher = connect(None)
    for op, n in ops:
        if op == "append":
            feed.append([f"x{written + i}" for i in range(n)])
            written += n
        elif op == "pause":
            flow.pauseProducing()
        elif op == "resume":
            flow.resumeProducing()
        else:
            feed.detach(watcher)  # the connection drops, with whatever was queued
            if received:
                watcher = connect(feed.cursor(received[-1]))
            else:  # nothing seen, no cursor: a fresh start, from now on
                first = written + 1
                watcher = connect(None)
    flow.resumeProducing()
    assert received == sorted(set(received))  # in order, no duplicates
    missing = set(range(first, written + 1)) - set(received)
    gap_total = sum(g.missing or 0 for g in gaps)
    assert len(missing) <= stated + gap_total


# -- the file reader: appends, rotation, truncation


def follow_file(path: Path, clock: Clock) -> tuple[Feed, FileReader]:
    lines, offset, identity = prime_file(str(path), 10)
    feed = Feed(replay=100)
    feed.append_numbered(lines)
    reader = FileReader(str(path), feed, clock)
    reader.start(offset, identity)
    return feed, reader


def test_the_reader_follows_appends_rotation_and_truncation(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_text("old 1\nold 2\npart")
    clock = Clock()
    feed, reader = follow_file(log, clock)
    watchers = [Seen() for _ in range(10)]
    for seen in watchers:
        feed.attach(seen.watcher(), 10, None)
    with open(log, "a") as f:
        f.write("ial\nnew 1\n")
    clock.advance(POLL_SECONDS)
    log.rename(tmp_path / "syslog.1")  # rotation: the old file gets one last line...
    with open(tmp_path / "syslog.1", "a") as f:
        f.write("last of old\n")
    log.write_text("fresh 1\n")  # ...and a new file appears at the path
    for _ in range(3):
        clock.advance(POLL_SECONDS)
    log.write_text("")  # truncated in place
    clock.advance(POLL_SECONDS)
    with open(log, "a") as f:
        f.write("after truncation\n")
    clock.advance(POLL_SECONDS)
    for seen in watchers:
        assert seen.texts == [
            "old 1",
            "old 2",
            "partial",
            "new 1",
            "last of old",
            "fresh 1",
            "after truncation",
        ]
        assert seen.notices == [
            f"-- {log} was replaced; following the new file",
            f"-- {log} was truncated; following from its start",
        ]
    reader.stop()


def test_one_reader_per_file_stopped_with_the_last_watcher(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_text("a\n")
    clock = Clock()
    followers = Followers(clock, run_now, 100, prime_file)
    watchers: list[tuple[Feed, Watcher]] = []
    for _ in range(3):
        got: list[Feed] = []
        followers.feed(str(log)).addCallback(got.append)
        feed = got[0]
        watcher = Seen().watcher()
        feed.attach(watcher, 5, None)
        watchers.append((feed, watcher))
    assert watchers[0][0] is watchers[1][0] is watchers[2][0]
    assert followers.running == {str(log): 3}
    for feed, watcher in watchers:
        followers.leave(str(log), feed, watcher)
    assert followers.running == {}


# -- lastlog -f on a line transport


def conversation(tmp_path: Path, clock: Clock) -> tuple[LineConversation, list[str], Path]:
    log = tmp_path / "syslog"
    log.write_text("".join(f"line {i}\n" for i in range(20)))
    followers = Followers(clock, run_now, 100, prime_file)
    command = LastlogCommand(FileSource(str(log), run_now), 10, 1000, 10.0, followers, 50)
    service = CommandService([command], clock)
    out: list[str] = []
    c = LineConversation(service, Client("tcp", "h"), out.extend, lambda: None)
    c.start()
    return c, out, log


def test_lastlog_f_streams_until_stop_and_the_connection_goes_on(tmp_path: Path) -> None:
    clock = Clock()
    c, out, log = conversation(tmp_path, clock)
    c.submit("lastlog -f 2")
    assert out == ["Begin lastlog", "line 18", "line 19"]
    with open(log, "a") as f:
        f.write("live 1\n")
    clock.advance(POLL_SECONDS)
    c.submit("lastlog 1")  # waits its turn
    assert out[-1] == "live 1"
    c.submit("stop")
    assert out == [
        "Begin lastlog",
        "line 18",
        "line 19",
        "live 1",
        "End lastlog",  # the follow ended, and the queued command ran
        "Begin lastlog",
        "live 1",
        "End lastlog",
    ]
    clock.advance(20)  # no timeout ever ended the follow: it was stopped
    assert "An error occurred" not in " ".join(out)


def test_an_empty_line_stops_a_follow_and_grep_filters_it(tmp_path: Path) -> None:
    clock = Clock()
    c, out, log = conversation(tmp_path, clock)
    c.submit("lastlog -f -g 1$ 20")  # of the last 20, those that match; then new ones
    assert out == ["Begin lastlog", "line 1", "line 11"]
    with open(log, "a") as f:
        f.write("skip\nhit 21\n")
    clock.advance(POLL_SECONDS)
    c.submit("")
    assert out == ["Begin lastlog", "line 1", "line 11", "hit 21", "End lastlog"]


def test_a_follow_of_a_source_that_cannot_follow_is_a_clear_error(tmp_path: Path) -> None:
    clock = Clock()
    command = LastlogCommand(FileSource("/x", run_now), 10, 1000, 10.0, None, 50)  # no readers
    service = CommandService([command], clock)
    out: list[str] = []
    c = LineConversation(service, Client("tcp", "h"), out.extend, lambda: None)
    c.start()
    c.submit("lastlog -f")
    assert out == ["An error occurred: Following is not available for /x (a file or a command is)"]


def test_cursors_gaps_and_drops_reach_the_events(tmp_path: Path) -> None:
    clock = Clock()
    log = tmp_path / "syslog"
    log.write_text("".join(f"line {i}\n" for i in range(5)))
    followers = Followers(clock, run_now, 3, prime_file)
    command = LastlogCommand(FileSource(str(log), run_now), 10, 1000, 10.0, followers, 2)
    events: list[Event] = []
    flow = Flow()
    d = command.run(command.prepare({"follow": "1", "after": "0-1"}), events.append, flow)
    assert isinstance(events[0], Gap) and events[0].missing is None  # another run's cursor
    assert isinstance(events[1], Lines) and events[1].lines == ("line 2", "line 3", "line 4")
    # a cursor is the file's identity and the offset just after the line
    assert [c.split("-")[1] for c in events[1].cursors] == ["21", "28", "35"]
    assert isinstance(events[2], Following)
    flow.pauseProducing()
    with open(log, "a") as f:
        f.write("a\nb\nc\nd\n")
    clock.advance(POLL_SECONDS)
    flow.resumeProducing()
    assert events[3:] == [Dropped(2), Lines(("c", "d"), events[4].cursors)]  # type: ignore[union-attr]
    d.cancel()
    assert isinstance(d.result, Result) and d.result.data["count"] == 5
    assert followers.running == {}
    assert os.path.exists(log)


def test_max_followers_caps_watchers_and_metrics_count_them(tmp_path: Path) -> None:
    clock = Clock()
    log = tmp_path / "syslog"
    log.write_text("a\nb\n")
    followers = Followers(clock, run_now, 100, prime_file)
    followers.max_watchers = 2
    command = LastlogCommand(FileSource(str(log), run_now), 10, 1000, 10.0, followers, 1)
    service = CommandService([command], clock)
    service.metrics.sources.append(followers.samples)
    outs: list[list[str]] = []
    for _ in range(3):
        out: list[str] = []
        c = LineConversation(service, Client("tcp", "h"), out.extend, lambda: None)
        c.start()
        c.submit("lastlog -f 1")
        outs.append(out)
    assert outs[2] == ["Too many followers (quota.max_followers = 2)."]
    slow = Flow()
    stalled = LastlogCommand(FileSource(str(log), run_now), 10, 1000, 10.0, followers, 1)
    followers.max_watchers = 0
    d = stalled.run(stalled.prepare({"follow": True, "lines": "1"}), lambda e: None, slow)
    slow.pauseProducing()
    with open(log, "a") as f:
        f.write("c\nd\ne\n")
    clock.advance(POLL_SECONDS)
    text = render(ClientQuota(1).snapshot(), service.metrics, 0, 1.0)
    source = f'source="{log}"'
    assert "gateway_follow_readers 1" in text
    assert f"gateway_follow_watchers{{{source}}} 3" in text
    assert f"gateway_follow_lines_dropped_total{{{source}}} 2" in text  # the stalled one's
    assert f"gateway_follow_lines_delivered_total{{{source}}} 9" in text  # 3 x (b, then c d e)
    d.cancel()


def test_a_burst_larger_than_one_read_is_read_at_once_not_a_poll_later(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_text("")
    clock = Clock()
    feed, reader = follow_file(log, clock)
    seen = Seen()
    feed.attach(seen.watcher(limit=10**6), 0, None)
    with open(log, "a") as f:
        f.write("".join(f"{i} {'z' * 100}\n" for i in range(30000)))  # ~3 MB
    clock.advance(POLL_SECONDS)  # one look reads 1 MiB...
    for _ in range(5):
        clock.advance(0)  # ...and the rest follows at once, a turn at a time
    assert len(seen.lines) == 30000
    reader.stop()


def test_a_reload_that_changes_the_source_moves_the_follows(tmp_path: Path) -> None:
    clock = Clock()
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    first.write_text("a1\n")
    second.write_text("b1\n")
    followers = Followers(clock, run_now, 100, prime_file)
    spawner = FakeSpawner()
    runners = Runners(run_now, run_now, call_now, spawner.reactor, followers)
    config = merge(Config(), {"lastlog": {"source": str(first)}})
    service = build_service(config, clock, ClientQuota(10), runners)
    out: list[str] = []
    c = LineConversation(service, Client("tcp", "h"), out.extend, lambda: None)
    c.start()
    c.submit("lastlog -f 1")
    assert out == ["Begin lastlog", "a1"]
    reconfigure(service, merge(Config(), {"lastlog": {"source": str(second)}}), runners)
    assert out[-1] == f"-- the log source is now {second} (configuration reloaded)"
    assert followers.running == {str(second): 1}  # the old reader stopped with its last watcher
    with open(second, "a") as f:
        f.write("b2\n")
    with open(first, "a") as f:
        f.write("a2\n")
    clock.advance(POLL_SECONDS)
    assert out[-1] == "b2" and "a2" not in out
    reconfigure(service, merge(Config(), {"lastlog": {"source": "command:tail -F c"}}), runners)
    assert out[-1] == "-- the log source is now command:tail -F c (configuration reloaded)"
    (child,) = spawner.processes
    child.out(b"c1\n")  # its backlog: not sent to a follow that moved here
    clock.advance(SETTLE_SECONDS)
    child.out(b"c2\n")
    assert out[-1] == "c2" and "c1" not in out
    followers.move(None, "the kernel ring buffer")  # a source that cannot be followed
    assert out[-2:] == [
        "-- the log source is now the kernel ring buffer, which cannot be followed",
        "End lastlog",
    ]
    assert child.signals == ["KILL"] and followers.running == {}


def test_a_hundred_watchers_of_a_command_source_share_one_child() -> None:
    clock = Clock()
    spawner = FakeSpawner()
    followers = Followers(clock, run_now, 100, prime_file)
    source = CommandSource(["journalctl", "-n", "{lines}"], spawner.reactor, ["tail", "-F", "x"])
    command = LastlogCommand(source, 10, 1000, 10.0, followers, 50)
    service = CommandService([command], clock)
    outs = []
    for _ in range(100):
        out: list[str] = []
        c = LineConversation(service, Client("tcp", "h"), out.extend, lambda: None)
        c.start()
        c.submit("lastlog -f")
        outs.append(out)
    (child,) = spawner.processes  # one child, however many watch
    assert child.args[-3].endswith("/tail") and child.args[-2:] == ["-F", "x"]
    child.out(b"one\ntwo\n")  # its backlog
    clock.advance(SETTLE_SECONDS)
    child.out(b"three\n")
    assert all(out == ["Begin lastlog", "one", "two", "three"] for out in outs)
    child.exit(0)  # the command ended: so do the follows, told why
    assert all(
        out[-2:] == ["-- the log command ended (exit status 0)", "End lastlog"] for out in outs
    )
    assert followers.running == {}


def test_the_last_watcher_of_a_command_source_stops_its_child() -> None:
    clock = Clock()
    spawner = FakeSpawner()
    followers = Followers(clock, run_now, 100, prime_file)
    command = LastlogCommand(
        CommandSource(["tail", "-F", "x"], spawner.reactor), 10, 1000, 10.0, followers, 50
    )
    service = CommandService([command], clock)
    out: list[str] = []
    c = LineConversation(service, Client("tcp", "h"), out.extend, lambda: None)
    c.start()
    c.submit("lastlog -f")
    (child,) = spawner.processes
    c.submit("stop")  # before the child's backlog was read
    assert out == ["Begin lastlog", "End lastlog"]
    assert child.signals == []
    clock.advance(SETTLE_SECONDS)  # read: nobody watches, so it stops
    assert child.signals == ["KILL"] and followers.running == {}


def follow_lines(service: CommandService, line: str) -> list[str]:
    out: list[str] = []
    c = LineConversation(service, Client("tcp", "h"), out.extend, lambda: None)
    c.start()
    c.submit(line)
    return out


def test_a_command_sources_backlog_primes_the_feed_and_is_not_all_sent() -> None:
    clock = Clock()
    spawner = FakeSpawner()
    followers = Followers(clock, run_now, 100, prime_file)
    source = CommandSource(["tail", "-n", "{lines}", "-F", "x"], spawner.reactor)
    service = CommandService([LastlogCommand(source, 10, 1000, 10.0, followers, 50)], clock)
    out = follow_lines(service, "lastlog -f 2")
    (child,) = spawner.processes
    assert child.args[-4:] == ["-n", "100", "-F", "x"]  # {lines}: the replay kept
    child.out(b"b1\nb2\n")
    clock.advance(SETTLE_SECONDS / 2)
    child.out(b"b3\nb4\n")  # still the backlog: the output was not quiet yet
    assert out == []
    clock.advance(SETTLE_SECONDS)
    assert out == ["Begin lastlog", "b3", "b4"]
    child.out(b"live\n")
    assert out[-1] == "live"
    assert follow_lines(service, "lastlog -f 3") == ["Begin lastlog", "b3", "b4", "live"]


def test_a_command_that_never_goes_quiet_is_followed_after_two_seconds() -> None:
    clock = Clock()
    spawner = FakeSpawner()
    followers = Followers(clock, run_now, 100, prime_file)
    source = CommandSource(["yes"], spawner.reactor)
    service = CommandService([LastlogCommand(source, 10, 1000, 10.0, followers, 50)], clock)
    out = follow_lines(service, "lastlog -f 1")
    (child,) = spawner.processes
    for _ in range(int(SETTLE_MOST / (SETTLE_SECONDS / 2))):
        child.out(b"y\n")
        clock.advance(SETTLE_SECONDS / 2)
    assert out[:2] == ["Begin lastlog", "y"]


def test_a_command_that_ends_before_it_is_followed_is_an_error() -> None:
    clock = Clock()
    spawner = FakeSpawner()
    followers = Followers(clock, run_now, 100, prime_file)
    source = CommandSource(["tail", "-F", "nope"], spawner.reactor)
    service = CommandService([LastlogCommand(source, 10, 1000, 10.0, followers, 50)], clock)
    out = follow_lines(service, "lastlog -f")
    (child,) = spawner.processes
    child.err(b"tail: cannot open 'nope'\n")
    child.exit(1)
    assert out == [
        "An error occurred: The log command ended before it could be followed "
        "(exit status 1): tail: cannot open 'nope'"
    ]
    assert followers.running == {}
    clock.advance(SETTLE_MOST)  # nothing left to go off
    assert followers.running == {}


def test_a_batch_is_one_lines_event_for_every_watcher() -> None:
    feed = Feed(replay=10)
    got: list[list[Lines]] = [[], []]
    for events in got:

        def deliver(entries: Sequence[Entry], events: list[Lines] = events) -> None:
            events.append(lines_of(feed, entries))

        feed.attach(Watcher(deliver, print, print, 10), 0, None)
    feed.append(["a", "b"])
    first, second = got[0][0], got[1][0]
    assert first is second  # rendered once by each front-end, for all
    assert first.lines == ("a", "b") and first.cursors == (feed.cursor(1), feed.cursor(2))
    queued = lines_of(feed, list(feed.replay_for(2, None)[0]))  # not a batch: its own event
    assert queued == first and queued is not first


def test_reads_wait_longer_with_more_watchers_but_never_long() -> None:
    assert coalesce(0) == coalesce(1) == COALESCE_SECONDS
    assert coalesce(100) == COALESCE_SECONDS
    assert coalesce(1000) == 0.025
    assert coalesce(1_000_000) == COALESCE_MOST <= 0.05
