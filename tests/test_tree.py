"""comphash -r and -c in process: the walk, the in-order runner, and what a
tree or a manifest may not do (leave the tree, block on a FIFO, read a file
it cannot, go on after the client left)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gateway.commands.tree import UNIT_FILES, SharedFd, in_order, units_of
from gateway.commands.treeio import (
    DIR_FLAGS,
    MAX_DEPTH,
    Cancelled,
    DirectoryCursor,
    FileChanged,
    open_in_tree,
    shown_below,
    walk,
)
from gateway.core.errors import CommandError
from gateway.core.events import Event, Lines, Notice, Progress, Result
from gateway.core.flow import Flow
from gateway.core.scope import Identity, Scope

from .test_comphash import make_command


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def opened(path: Path) -> Iterator[int]:
    fd = os.open(path, DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


def tree_of(top: Path, names: dict[str, bytes]) -> Path:
    for name, data in names.items():
        path = top / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return top


# -- the walk


def test_shown_paths_are_what_find_prints() -> None:
    assert shown_below("/srv/rel", ["a", "b"]) == "/srv/rel/a/b"
    assert shown_below("/srv/rel/", ["a"]) == "/srv/rel/a"
    assert shown_below("/", ["etc"]) == "/etc"


def test_the_walk_sorts_by_bytes_and_skips_what_is_not_a_regular_file(tmp_path: Path) -> None:
    top = tree_of(tmp_path / "t", {"b": b"", "a.txt": b"1", "a/x": b"22", "a0": b"", "A": b""})
    os.symlink("b", top / "link")
    os.mkfifo(top / "fifo")
    with opened(top) as fd:
        found = walk(fd, str(top), 100, 1 << 30, threading.Event())
    # C-locale order: "A" < "a.txt" < "a/x" ('.' < '/') < "a0" ('/' < '0') < "b"
    assert [f.shown[len(str(top)) + 1 :] for f in found.files] == ["A", "a.txt", "a/x", "a0", "b"]
    assert found.bytes == 3
    assert [(s.shown[len(str(top)) + 1 :], s.why) for s in found.skipped] == [
        ("fifo", "not a regular file"),
        ("link", "symbolic link"),
    ]


def test_the_walk_refuses_trees_over_the_limits(tmp_path: Path) -> None:
    top = tree_of(tmp_path / "t", {f"f{i}": b"x" * 10 for i in range(5)})
    with opened(top) as fd:
        with pytest.raises(CommandError) as e:
            walk(fd, "/t", 4, 1 << 30, threading.Event())
        assert e.value == CommandError(
            "bad_argument", "/t holds more than 4 files (comphash.max_files)"
        )
        with pytest.raises(CommandError) as e:
            walk(fd, "/t", 100, 49, threading.Event())
        assert e.value.message == "/t holds more than 49 bytes (comphash.max_bytes)"


def test_an_unreadable_directory_and_one_too_deep_are_skipped_with_a_reason(
    tmp_path: Path,
) -> None:
    top = tree_of(tmp_path / "t", {"ok": b"1"})
    deep = top
    for _ in range(MAX_DEPTH + 1):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "bottom").write_bytes(b"")
    with opened(top) as fd:
        found = walk(fd, "/t", 100, 1 << 30, threading.Event())
    assert [f.shown for f in found.files] == ["/t/ok"]
    assert [s.why for s in found.skipped] == [f"nested deeper than {MAX_DEPTH}"]


def test_the_walk_stops_when_asked(tmp_path: Path) -> None:
    top = tree_of(tmp_path / "t", {"a/b": b"", "c/d": b""})
    stop = threading.Event()
    stop.set()
    with opened(top) as fd, pytest.raises(Cancelled):
        walk(fd, "/t", 100, 1 << 30, stop)


# -- opening inside the tree


def test_a_directory_swapped_for_a_symlink_cannot_lead_outside(tmp_path: Path) -> None:
    outside = tree_of(tmp_path / "outside", {"secret": b"s"})
    top = tree_of(tmp_path / "t", {"sub/secret": b"t"})
    with opened(top) as fd:
        found = walk(fd, "/t", 100, 1 << 30, threading.Event())
        (top / "sub" / "secret").unlink()
        (top / "sub").rmdir()
        os.symlink(outside, top / "sub")  # after the walk, before the hash
        cursor = DirectoryCursor(fd)
        with pytest.raises(OSError):  # ELOOP: the link is not followed
            open_in_tree(cursor, found.files[0])
        cursor.close()


def test_a_file_replaced_after_the_walk_is_not_hashed(tmp_path: Path) -> None:
    top = tree_of(tmp_path / "t", {"f": b"first"})
    with opened(top) as fd:
        found = walk(fd, "/t", 100, 1 << 30, threading.Event())
        os.link(top / "f", tmp_path / "kept")  # so its inode number is not reused
        (top / "f").unlink()
        (top / "f").write_bytes(b"second")  # another inode
        cursor = DirectoryCursor(fd)
        with pytest.raises(FileChanged):
            open_in_tree(cursor, found.files[0])
        os.unlink(top / "f")
        os.mkfifo(top / "f")  # and a FIFO is never opened for reading into a block
        with pytest.raises(OSError):
            open_in_tree(cursor, found.files[0])
        cursor.close()


def test_the_cursor_opens_each_directory_once_per_run(tmp_path: Path) -> None:
    top = tree_of(tmp_path / "t", {"a/b/1": b"", "a/b/2": b"", "a/c/3": b""})
    with opened(top) as fd:
        cursor = DirectoryCursor(fd)
        first = cursor.directory(("a", "b"))
        assert cursor.directory(("a", "b")) == first  # reused
        other = cursor.directory(("a", "c"))
        assert os.listdir(other) == ["3"]
        assert cursor.directory(()) == fd
        cursor.close()


def test_a_shared_descriptor_is_closed_after_its_last_user(tmp_path: Path) -> None:
    fd = os.open(tmp_path, DIR_FLAGS)
    shared = SharedFd(fd)
    assert shared.acquire() == fd
    shared.close()  # the reactor is done; a thread still works
    os.fstat(fd)  # still open
    with pytest.raises(Cancelled):
        shared.acquire()  # no new user after the close
    shared.release()
    with pytest.raises(OSError):
        os.fstat(fd)


# -- the runner


def test_units_are_runs_of_small_files_and_large_ones_alone() -> None:
    assert units_of([]) == []
    n = UNIT_FILES
    assert units_of([1] * (2 * n + 2)) == [range(0, n), range(n, 2 * n), range(2 * n, 2 * n + 2)]
    big = 8 * 1024 * 1024
    assert units_of([10, big, 10, 10]) == [range(0, 1), range(1, 2), range(2, 4)]


class Threads:
    """run_in_thread whose work finishes when the test says, in any order."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, work: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiting.append((work, d))
        return d

    def finish(self, index: int) -> None:
        work, d = self.waiting.pop(index)
        try:
            d.callback(work())
        except Exception:
            d.errback(Failure())


def test_units_run_at_most_width_at_once_and_come_out_in_order() -> None:
    threads = Threads()
    emitted: list[int] = []
    done: list[object] = []
    units = [range(i, i + 1) for i in range(6)]
    d = in_order(
        units,
        lambda unit: [unit.start * 10],
        threads,
        lambda unit, out: emitted.extend(out),
        2,
        Flow(),
        threading.Event(),
    )
    d.addBoth(done.append)
    assert len(threads.waiting) == 2  # the width
    threads.finish(1)  # unit 1 before unit 0: held back
    assert emitted == [] and len(threads.waiting) == 2
    threads.finish(0)
    assert emitted == [0, 10]
    while threads.waiting:
        threads.finish(len(threads.waiting) - 1)
    assert emitted == [0, 10, 20, 30, 40, 50] and done == [None]


def test_a_paused_client_starts_no_more_units() -> None:
    threads = Threads()
    flow = Flow()
    emitted: list[int] = []
    units = [range(i, i + 1) for i in range(4)]
    in_order(
        units,
        lambda u: [u.start],
        threads,
        lambda u, o: emitted.extend(o),
        1,
        flow,
        threading.Event(),
    )
    flow.pauseProducing()
    threads.finish(0)
    assert emitted == [0] and threads.waiting == []  # nothing new while it does not read
    flow.resumeProducing()
    assert len(threads.waiting) == 1
    threads.finish(0)
    assert emitted == [0, 1]


def test_cancelling_stops_the_work_and_emits_nothing_more() -> None:
    threads = Threads()
    stop = threading.Event()
    emitted: list[int] = []
    units = [range(i, i + 1) for i in range(4)]
    d = in_order(
        units, lambda u: [u.start], threads, lambda u, o: emitted.extend(o), 2, Flow(), stop
    )
    d.addErrback(lambda f: None)
    d.cancel()
    assert stop.is_set()
    threads.finish(0)
    threads.finish(0)
    assert emitted == [] and threads.waiting == []


def test_a_failing_unit_fails_the_run() -> None:
    threads = Threads()
    failures: list[Failure] = []

    def work(unit: range) -> list[int]:
        raise CommandError("unavailable", "disk gone")

    d = in_order(
        [range(0, 1), range(1, 2)], work, threads, lambda u, o: None, 2, Flow(), threading.Event()
    )
    d.addErrback(failures.append)
    threads.finish(0)
    assert failures and failures[0].value == CommandError("unavailable", "disk gone")


# -- the command


def run_events(
    command: Any, line: str, identity: Identity | None = None
) -> tuple[list[Event], Any]:
    events: list[Event] = []
    outcome: list[Any] = []
    args = command.prepare(command.parse(line))
    if identity is None:
        d = command.run(args, events.append)
    else:
        d = command.run_as(identity, args, events.append)
    d.addBoth(outcome.append)
    return events, outcome[0]


def lines_of(events: list[Event]) -> list[str]:
    return [line for e in events if isinstance(e, Lines) for line in e.lines]


def test_a_tree_reports_progress_in_files_and_bytes(tmp_path: Path) -> None:
    top = tree_of(tmp_path / "t", {f"f{i:03d}": b"x" * i for i in range(150)})
    command = make_command([str(tmp_path)])
    events, result = run_events(command, f"-r -a sha256 {top}")
    assert isinstance(result, Result) and result.data["files"] == 150
    assert lines_of(events) == [f"{sha256(b'x' * i)}  {top}/f{i:03d}" for i in range(150)]
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[0] == Progress(0, sum(range(150)), 0, 150)
    assert progress[-1] == Progress(sum(range(150)), sum(range(150)), 150, 150)


@pytest.mark.skipif(not hasattr(os, "seteuid"), reason="needs seteuid")
def test_an_unreadable_file_is_said_and_the_rest_is_hashed(tmp_path: Path) -> None:
    # under /tmp itself: pytest's own directories are closed to other users
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        unreadable_file_case(base)
    finally:
        shutil.rmtree(base)


def unreadable_file_case(base: Path) -> None:
    os.chmod(base, 0o755)
    top = tree_of(base / "t", {"a": b"a", "locked": b"no", "z": b"z"})
    os.chmod(top, 0o755)
    os.chmod(top / "locked", 0)
    command = make_command([str(base)])
    as_root = os.geteuid() == 0
    if as_root:
        os.seteuid(65534)  # root reads anything: be nobody for the hash
    try:
        events, result = run_events(command, f"-r -a sha256 {top}")
    finally:
        if as_root:
            os.seteuid(0)
    assert lines_of(events) == [f"{sha256(b'a')}  {top}/a", f"{sha256(b'z')}  {top}/z"]
    assert [e.text for e in events if isinstance(e, Notice)] == [
        f"# unreadable: {top}/locked (Permission denied)"
    ]
    assert result.data["skipped"] == [{"path": f"{top}/locked", "why": "Permission denied"}]
    assert result.data["files"] == 2 and result.summary.endswith(", 1 skipped")


def test_a_check_keeps_to_the_callers_roots_and_algorithms(tmp_path: Path) -> None:
    mine = tree_of(tmp_path / "mine", {"a": b"a"})
    theirs = tree_of(tmp_path / "theirs", {"b": b"b"})
    manifest = tmp_path / "mine" / "SUMS"
    manifest.write_text(f"{sha256(b'a')}  a\n{sha256(b'b')}  {theirs}/b\n")
    command = make_command([str(tmp_path)])
    scoped = Identity("releases", "token", Scope(roots=(str(mine),)))
    events, result = run_events(command, f"-c {manifest}", scoped)
    assert lines_of(events) == ["a: OK", f"{theirs}/b: FAILED open or read"]
    assert result.data["skipped"] == [{"path": f"{theirs}/b", "why": "outside the allowed roots"}]
    assert result.data["ok"] is False

    only_sha1 = Identity("old", "token", Scope(algorithms=frozenset({"sha1"})))
    events, failure = run_events(command, f"-c {manifest}", only_sha1)
    assert failure.value == CommandError(
        "forbidden", 'token "old" may not use sha256 (line 1; its algorithms: sha1)'
    )
    md5 = make_command([str(tmp_path)], algorithms=["sha1"])
    events, failure = run_events(md5, f"-c {manifest}")
    assert failure.value.code == "bad_argument"
    assert (
        failure.value.message
        == "line 1 uses sha256, which is not one of comphash.algorithms (sha1)"
    )


def test_cancelling_a_tree_stops_it_and_closes_what_it_opened(tmp_path: Path) -> None:
    top = tree_of(tmp_path / "t", {f"f{i}": b"x" for i in range(200)})
    threads = Threads()
    command = make_command([str(tmp_path)], run_in_thread=threads)
    events: list[Event] = []
    before = len(os.listdir("/proc/self/fd"))
    d = command.run(command.prepare(command.parse(f"-r {top}")), events.append)
    d.addErrback(lambda f: None)
    threads.finish(0)  # the walk; units are now running
    assert len(threads.waiting) >= 1
    d.cancel()
    while threads.waiting:
        with contextlib.suppress(Exception):
            threads.finish(0)
    assert not [e for e in events if isinstance(e, Lines)]
    assert len(os.listdir("/proc/self/fd")) == before  # the tree's descriptor is closed


def test_prepare_refuses_flags_that_do_not_go_together(tmp_path: Path) -> None:
    command = make_command([str(tmp_path)])
    for line, message in [
        ("-r -c /x", "-r and -c do not go together"),
        ("--quiet /x", "--quiet is meaningful only with -c"),
        ("--ignore-missing /x", "--ignore-missing is meaningful only with -c"),
        ("--dir /srv /x", "--dir is meaningful only with -c"),
        ("-c --manifest x /x", "a manifest comes from PATH or MANIFEST, not both"),
    ]:
        with pytest.raises(CommandError) as e:
            command.prepare(command.parse(line))
        assert e.value == CommandError("bad_argument", message), line
    with pytest.raises(CommandError) as e:
        command.prepare({"check": "1"})
    assert e.value == CommandError("missing_argument", "Please provide a path.")
    args = command.prepare({"check": "1", "manifest": "x"})
    assert args.check and args.manifest == "x" and args.path == "-"


def test_while_held_one_thread_is_left_to_the_walk_and_nothing_is_emitted() -> None:
    from gateway.commands.tree import InOrder

    threads = Threads()
    emitted: list[int] = []
    runner: InOrder[int] = InOrder(
        lambda u: [u.start],
        threads,
        lambda u, o: emitted.extend(o),
        2,
        Flow(),
        threading.Event(),
        held=True,
    )
    runner.add([range(i, i + 1) for i in range(4)])
    assert len(threads.waiting) == 1  # width 2, less the walk's thread
    threads.finish(0)
    assert emitted == [] and len(threads.waiting) == 1  # kept, not emitted, next started
    runner.close()
    runner.release()
    assert emitted == [0] and len(threads.waiting) == 2  # all of the width now
    while threads.waiting:
        threads.finish(0)
    assert emitted == [0, 1, 2, 3] and runner.done.called
