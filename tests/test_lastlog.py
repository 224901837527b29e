import io
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python.failure import Failure

from gateway.commands.journal import JournalSource
from gateway.commands.lastlog import (
    INLINE_MAX_BYTES,
    AutoSource,
    CommandSource,
    FileSource,
    LastlogCommand,
    tail_cached,
    tail_lines,
)
from gateway.core.errors import CommandError
from gateway.core.events import Event, Lines, Result

from .support.fakes import FakeSpawner, run_now


def tail(data: bytes, n: int, block: int = 7) -> list[str]:
    return tail_lines(io.BytesIO(data), n, block=block)


@pytest.mark.parametrize(
    ("data", "n", "expected"),
    [
        (b"", 10, []),
        (b"a\n", 10, ["a"]),
        (b"a\nb\nc\n", 2, ["b", "c"]),
        (b"a\nb\nc", 2, ["b", "c"]),  # final line without newline counts
        (b"a\r\nb\r\n", 5, ["a", "b"]),  # CRLF logs
        (b"\n\n\n", 2, ["", ""]),
        (b"one line that is much longer than a block\nx\n", 1, ["x"]),
        (
            b"one line that is much longer than a block\nx\n",
            2,
            ["one line that is much longer than a block", "x"],
        ),
        (b"bad \xff\xfe bytes\n", 1, ["bad \ufffd\ufffd bytes"]),
    ],
)
def test_tail_lines(data: bytes, n: int, expected: list[str]) -> None:
    assert tail(data, n) == expected


@given(
    lines=st.lists(
        st.text(
            alphabet=st.characters(blacklist_characters="\n\r", blacklist_categories=["Cs"]),
            max_size=20,
        ),
        max_size=40,
    ),
    n=st.integers(1, 50),
    block=st.integers(1, 64),
    final_newline=st.booleans(),
)
def test_tail_matches_splitlines_for_any_block_size(
    lines: list[str], n: int, block: int, final_newline: bool
) -> None:
    data = "\n".join(lines).encode()
    if lines and final_newline:
        data += b"\n"
    expected = data.decode().split("\n")
    if expected and expected[-1] == "":
        expected.pop()
    assert tail(data, n, block) == expected[-n:]


class CountingFile(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        out = super().read(size)
        self.read_bytes += len(out)
        return out


def test_tail_reads_only_the_end_of_a_big_file() -> None:
    f = CountingFile((b"x" * 99 + b"\n") * 100_000)
    assert tail_lines(f, 10, block=4096) == ["x" * 99] * 10
    assert f.read_bytes <= 4096  # 10 MB file, one block read


def test_tail_bounds_a_file_without_newlines() -> None:
    f = CountingFile(b"y" * 5_000_000)
    assert tail_lines(f, 10, block=65536, max_bytes=1_000_000) == []
    assert f.read_bytes < 1_100_000


def test_long_lines_are_cut() -> None:
    (line,) = tail(b"z" * 200_000 + b"\n", 1, block=65536)
    assert len(line) == 64 * 1024


def test_file_source_streams_lines(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_text("".join(f"line {i}\n" for i in range(30)))
    events: list[Event] = []
    d = FileSource(str(log), run_now).tail(3, events.append)
    assert events == [Lines(("line 27", "line 28", "line 29"))]
    assert d.result == str(log)


def test_file_source_errors(tmp_path: Path) -> None:
    def error(path: Path) -> CommandError:
        failures: list[object] = []
        FileSource(str(path), run_now).tail(3, lambda e: None).addErrback(failures.append)
        return failures[0].value  # type: ignore[attr-defined,no-any-return]

    missing = error(tmp_path / "nope")
    assert (missing.code, missing.message) == (
        "unavailable",
        f"Log file not found: {tmp_path}/nope",
    )
    assert error(tmp_path).code == "unavailable"  # a directory


def test_file_source_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "secret.log"
    log.write_text("x\n")

    def denied(*a: object, **k: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("builtins.open", denied)
    monkeypatch.setattr("os.open", denied)  # the reactor's own read, too
    failures: list[object] = []
    FileSource(str(log), run_now).tail(3, lambda e: None).addErrback(failures.append)
    err = failures[0].value  # type: ignore[attr-defined]
    assert (err.code, err.message) == ("permission_denied", f"Permission denied: {log}")


def make_lastlog(source: object, max_lines: int = 1000) -> LastlogCommand:
    return LastlogCommand(source, 10, max_lines, 10.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text", ["abc", "-5", "0", "99999999", "1.5", "+3", "\u0663", "5 6", "1001"]
)
def test_lastlog_rejects_bad_counts(text: str) -> None:
    command = make_lastlog(None)
    with pytest.raises(CommandError) as info:
        command.prepare(command.parse(text))
    assert info.value.code == "bad_argument"
    assert info.value.message == "lines must be an integer from 1 to 1000"


@pytest.mark.parametrize("value", [0, -1, 1001, True, 2.0, None, "x"])
def test_lastlog_rejects_bad_structured_counts(value: object) -> None:
    with pytest.raises(CommandError):
        make_lastlog(None).prepare({"lines": value})


def test_lastlog_accepts_counts() -> None:
    command = make_lastlog(None)
    assert command.prepare(command.parse("")).lines == 10
    assert command.prepare(command.parse(" 25 ")).lines == 25
    assert command.prepare({"lines": 1000}).lines == 1000
    with pytest.raises(CommandError, match="unknown argument 'colour'"):
        command.prepare({"colour": "red"})


def test_command_source_streams_and_substitutes_lines() -> None:
    spawner = FakeSpawner()
    events: list[Event] = []
    d = CommandSource(["echo", "-n", "{lines}"], spawner.reactor).tail(3, events.append)
    (child,) = spawner.processes
    assert child.args[0].endswith("/setsid")  # in a process group of its own
    assert child.args[1] == "--" and child.args[2].endswith("/echo")
    assert child.args[3:] == ["-n", "3"]
    assert child.stdin_closed
    assert "GATEWAY" not in " ".join(child.env)  # the daemon's environment stays home
    child.out(b"one\ntw")
    assert events == [Lines(("one",))]
    child.out(b"o\n")
    assert events[-1] == Lines(("two",))
    child.out(b"three")
    child.exit(0)
    assert events[-1] == Lines(("three",))
    assert d.result == "echo"


def test_command_source_stops_the_child_once_it_has_enough() -> None:
    spawner = FakeSpawner()
    events: list[Event] = []
    CommandSource(["yes"], spawner.reactor).tail(2, events.append)
    (child,) = spawner.processes
    child.out(b"y\ny\ny\ny\n")
    assert events == [Lines(("y", "y"))]
    assert child.signals == ["KILL"]
    child.exit(signal=9)


def test_command_source_failure_is_unavailable_with_stderr() -> None:
    spawner = FakeSpawner()
    d = CommandSource(["false"], spawner.reactor).tail(2, lambda e: None)
    child = spawner.processes[0]
    child.err(b"journal: no such file\nmore\n")
    child.exit(1)
    failure: list[Failure] = []
    d.addErrback(failure.append)
    err = failure[0].value
    assert isinstance(err, CommandError)
    assert err.code == "unavailable"
    assert err.message == "Log command false failed (exit status 1): journal: no such file"


def test_command_source_cancel_kills_the_child() -> None:
    spawner = FakeSpawner()
    d = CommandSource(["sleep"], spawner.reactor).tail(2, lambda e: None)
    d.addErrback(lambda f: None)
    d.cancel()
    child = spawner.processes[0]
    assert child.signals == ["KILL"]
    child.exit(signal=9)  # reaped later: nothing more happens


def test_command_source_missing_program() -> None:
    with pytest.raises(CommandError, match="Log command not found: no-such-program-here"):
        CommandSource(["no-such-program-here"], FakeSpawner().reactor).tail(2, lambda e: None)


def test_auto_source_prefers_files_then_journal(tmp_path: Path) -> None:
    second = tmp_path / "messages"
    second.write_text("m\n")
    auto = AutoSource(run_now, FakeSpawner().reactor, files=[str(tmp_path / "syslog"), str(second)])
    picked = auto.pick()
    assert isinstance(picked, FileSource) and picked.path == str(second)
    assert auto.pick() is picked  # the same source each time: its last answer is kept
    journal = tmp_path / "journal"
    journal.mkdir()
    auto = AutoSource(
        run_now,
        FakeSpawner().reactor,
        [str(tmp_path / "nope")],
        "true",
        [str(journal)],
        kernel=None,
    )
    with pytest.raises(CommandError, match="No log source found"):
        auto.pick()  # journalctl is there, but the journal is empty
    (journal / "machine-id").mkdir()
    picked = auto.pick()
    assert isinstance(picked, JournalSource) and picked.program == "true"


def test_auto_source_names_what_it_tried(tmp_path: Path) -> None:
    auto = AutoSource(
        run_now,
        FakeSpawner().reactor,
        files=[str(tmp_path / "a"), str(tmp_path / "b")],
        journal="nojournal",
        kernel=str(tmp_path / "kmsg"),
    )
    with pytest.raises(CommandError) as info:
        auto.pick()
    assert info.value.code == "unavailable"
    assert (
        info.value.message
        == f"No log source found (tried {tmp_path}/a, {tmp_path}/b, nojournal, {tmp_path}/kmsg)"
    )


def test_lastlog_run_counts_lines(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_bytes(b"a\nb\n")
    events: list[Event] = []
    command = make_lastlog(FileSource(str(log), run_now))
    d = command.run(command.prepare({"lines": 5}), events.append)
    assert events == [Lines(("a", "b"))]
    assert d.result == Result(
        command="lastlog", data={"count": 2, "source": str(log)}, summary=f"2 lines from {log}"
    )


def test_real_file_source_on_disk_is_never_read_whole(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    with open(log, "wb") as f:
        f.truncate(512 * 1024 * 1024)  # sparse: 512 MiB of NULs, no newline
        f.seek(0, os.SEEK_END)
        f.write(b"\nlast\n")
    events: list[Event] = []
    FileSource(str(log), run_now).tail(1, events.append)
    assert events == [Lines(("last",))]


def test_unchanged_file_is_answered_without_reading_it_again(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("a\nb\nc\n")
    reads: list[int] = []

    def counting(f: Any) -> Any:
        reads.append(1)
        return run_now(f)

    source = FileSource(str(log), counting)
    read_now = source._read_now

    def counting_now(n: int) -> Any:  # a page-cached read in the reactor counts too
        reads.append(1)
        return read_now(n)

    source._read_now = counting_now  # type: ignore[method-assign]
    events: list[Event] = []
    source.tail(3, events.append)
    source.tail(2, events.append)  # fewer lines of the same file: from the last answer
    assert len(reads) == 1
    assert events == [Lines(("a", "b", "c")), Lines(("b", "c"))]
    source.tail(5, events.append)  # more than was read: read again
    assert len(reads) == 2
    with open(log, "a") as f:
        f.write("d\n")  # the log moved on
    source.tail(1, events.append)
    assert len(reads) == 3 and events[-1] == Lines(("d",))
    log.unlink()
    log.write_text("rotated\n")  # a new file under the same name
    source.tail(1, events.append)
    assert events[-1] == Lines(("rotated",))


@given(
    lines=st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")), max_size=300),
    partial=st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"")),
    n=st.integers(min_value=1, max_value=60),
)
@settings(max_examples=150, deadline=None)
def test_a_cached_tail_read_in_the_reactor_says_what_the_thread_would(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes], partial: bytes, n: int
) -> None:
    path = tmp_path_factory.mktemp("tail") / "log"
    data = b"".join(line + b"\n" for line in lines) + partial
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        now = tail_cached(fd, len(data), n)
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        expected = tail_lines(f, n)
    if len(data) <= INLINE_MAX_BYTES - 16 * 1024:
        assert now == expected  # just written: in the page cache
    else:
        assert now is None or now == expected


def test_a_tail_beyond_the_inline_bound_is_left_to_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"x" * (INLINE_MAX_BYTES + 10) + b"\n")  # one line longer than the bound
    fd = os.open(path, os.O_RDONLY)
    try:
        assert tail_cached(fd, INLINE_MAX_BYTES + 11, 1) is None
    finally:
        os.close(fd)


def test_a_file_source_answers_a_changed_cached_file_without_a_thread(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"one\ntwo\n")
    threads: list[object] = []

    def in_thread(f: Any) -> Any:
        threads.append(f)
        return run_now(f)

    source = FileSource(str(path), in_thread)
    got: list[object] = []
    source.tail(5, got.append)
    with open(path, "ab") as f:
        f.write(b"three\n")  # the log grows: read again, here
    source.tail(5, got.append)
    assert [e.lines for e in got if isinstance(e, Lines)] == [
        ("one", "two"),
        ("one", "two", "three"),
    ]
    assert threads == []
    source.path = str(tmp_path / "missing")  # an error is the thread's to tell
    source._cached = None
    failures: list[Any] = []
    source.tail(5, got.append).addErrback(failures.append)
    assert len(threads) == 1 and failures[0].value.code == "unavailable"


def test_a_file_source_with_a_clock_looks_at_the_file_once_per_reactor_turn(
    tmp_path: Path,
) -> None:
    from twisted.internet.task import Clock

    path = tmp_path / "log"
    path.write_bytes(b"one\n")
    clock = Clock()
    source = FileSource(str(path), run_now, clock)
    got: list[object] = []
    source.tail(5, got.append)
    with open(path, "ab") as f:
        f.write(b"two\n")
    source.tail(5, got.append)  # the same turn: the file as it was at its start
    clock.advance(0)  # the next turn looks again
    source.tail(5, got.append)
    assert [e.lines for e in got if isinstance(e, Lines)] == [("one",), ("one",), ("one", "two")]
