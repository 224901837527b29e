"""The worker processes that hash a tree's small files: the same answers as a
thread, the same refusals, and a worker that dies costs nothing but time."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

import blake3
import pytest

from gateway.commands.hashworker import Workers, _read_message, _write_message, answer, serve
from gateway.commands.treeio import DIR_FLAGS, Cancelled, File, hash_small_files, walk
from gateway.core.errors import CommandError


def small_tree(top: Path) -> Path:
    (top / "sub").mkdir(parents=True)
    for i in range(20):
        (top / ("sub" if i % 2 else ".") / f"f{i}").write_bytes(b"%d\n" % i)
    return top


def walked(top: Path) -> tuple[int, list[File]]:
    fd = os.open(top, DIR_FLAGS)
    return fd, walk(fd, str(top), 1000, 1 << 30, threading.Event()).files


@pytest.mark.parametrize("algorithm", ["sha256", "md5", "blake3"])
def test_a_worker_answers_what_a_thread_answers(tmp_path: Path, algorithm: str) -> None:
    top = small_tree(tmp_path / "t")
    fd, files = walked(top)
    try:
        st = os.fstat(fd)
        here = hash_small_files(fd, files, algorithm, lambda: False)
        workers = Workers()
        try:
            there = workers.hash(str(top), st.st_dev, st.st_ino, algorithm, files)
            again = workers.hash(str(top), st.st_dev, st.st_ino, algorithm, files[:3])
        finally:
            workers.close()
        assert there == here and again == here[:3]
        assert workers.sent == 2 and workers.fell_back == 0  # one worker, reused
        expected = [
            blake3.blake3(Path(f.shown).read_bytes()).hexdigest()
            if algorithm == "blake3"
            else hashlib.new(algorithm, Path(f.shown).read_bytes()).hexdigest()
            for f in files
        ]
        assert [h for h, _ in there] == expected
    finally:
        os.close(fd)


def test_a_top_swapped_since_the_walk_is_refused(tmp_path: Path) -> None:
    top = small_tree(tmp_path / "t")
    fd, files = walked(top)
    st = os.fstat(fd)
    os.close(fd)
    os.rename(top, tmp_path / "elsewhere")
    small_tree(top)  # another directory, same path
    outcomes = answer(
        (str(top), st.st_dev, st.st_ino, "sha256", [(f.parts, f.size, f.dev, f.ino) for f in files])
    )
    assert outcomes == [(None, "replaced while being hashed")] * len(files)


def test_a_dead_worker_is_replaced_and_its_unit_done_here(tmp_path: Path) -> None:
    top = small_tree(tmp_path / "t")
    fd, files = walked(top)
    try:
        st = os.fstat(fd)
        workers = Workers()
        try:
            assert workers.hash(str(top), st.st_dev, st.st_ino, "sha256", files) is not None
            (worker,) = workers._idle
            worker.proc.kill()
            worker.proc.wait()
            assert workers.hash(str(top), st.st_dev, st.st_ino, "sha256", files) is None
            assert workers.fell_back == 1 and workers._idle == []
            assert workers.hash(str(top), st.st_dev, st.st_ino, "sha256", files) is not None
        finally:
            workers.close()
        assert workers.hash(str(top), st.st_dev, st.st_ino, "sha256", files) is None  # closed
    finally:
        os.close(fd)


def test_the_worker_loop_ends_when_its_input_does(tmp_path: Path) -> None:
    top = small_tree(tmp_path / "t")
    fd, files = walked(top)
    st = os.fstat(fd)
    os.close(fd)
    request = (
        str(top),
        st.st_dev,
        st.st_ino,
        "sha1",
        [(f.parts, f.size, f.dev, f.ino) for f in files],
    )
    stdin, stdout = io.BytesIO(), io.BytesIO()
    _write_message(stdin, request)
    _write_message(stdin, request)
    stdin.seek(0)
    serve(stdin, stdout)  # two answers, then the end of its input: it returns
    stdout.seek(0)
    first, second = _read_message(stdout), _read_message(stdout)
    assert first == second and len(first) == len(files)
    with pytest.raises(EOFError):
        _read_message(stdout)


def test_a_file_that_changes_size_after_the_walk_is_hashed_as_it_is_read(tmp_path: Path) -> None:
    top = tmp_path / "t"
    top.mkdir()
    (top / "grows").write_bytes(b"a" * 100)
    (top / "shrinks").write_bytes(b"b" * 100)
    fd, files = walked(top)
    try:
        (top / "grows").write_bytes(b"a" * 200_000)  # same inode, larger than the walk saw
        (top / "shrinks").write_bytes(b"b" * 10)
        outcomes = hash_small_files(fd, files, "sha256", lambda: False)
    finally:
        os.close(fd)
    # what sha256sum would print now: the bytes there when read, not a size remembered
    assert outcomes == [
        (hashlib.sha256(b"a" * 200_000).hexdigest(), ""),
        (hashlib.sha256(b"b" * 10).hexdigest(), ""),
    ]


def test_a_worker_checks_a_manifest_as_a_thread_does(tmp_path: Path) -> None:
    from gateway.commands.checkio import LARGE, check_small

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a").write_bytes(b"a")
    (mine / "big").write_bytes(b"x" * 5000)
    (tmp_path / "theirs").write_bytes(b"t")
    sha = lambda data: hashlib.sha256(data).hexdigest()  # noqa: E731
    entries = [
        ("a", "sha256", sha(b"a")),  # OK, relative to the base
        (str(mine / "a"), "sha256", sha(b"b")),  # FAILED
        ("gone", "sha256", sha(b"")),  # missing
        (str(tmp_path / "theirs"), "sha256", sha(b"t")),  # outside the caller's roots
        ("big", "sha256", sha(b"x" * 5000)),  # too large for a worker's run
        ("/proc/self/environ", "sha1", "0" * 40),  # never read
    ]
    roots, scope = (str(tmp_path),), (str(mine),)
    here = check_small(entries, str(mine), roots, scope, 4096)
    assert here == [
        ("OK", "", False),
        ("FAILED", "", False),
        ("FAILED open or read", "No such file or directory", True),
        ("FAILED open or read", "outside the allowed roots", False),
        (LARGE, "", False),
        ("FAILED open or read", "outside the allowed roots", False),  # /proc, whatever the roots
    ]
    workers = Workers()
    try:
        assert workers.check(entries, str(mine), roots, scope, 4096) == here
    finally:
        workers.close()


def test_a_worker_walks_as_the_daemon_walks(tmp_path: Path) -> None:
    top = small_tree(tmp_path / "t")
    os.symlink("sub", top / "link")
    os.mkfifo(top / "fifo")
    fd, files = walked(top)
    st = os.fstat(fd)
    here = walk(fd, str(top), 1000, 1 << 30, threading.Event())
    os.close(fd)
    workers = Workers()
    try:
        batches: list[list[File]] = []
        there = workers.walk(
            str(top),
            st.st_dev,
            st.st_ino,
            str(top),
            1000,
            1 << 30,
            4,
            batches.append,
            lambda: False,
        )
        assert there == here and there.files == files
        assert [len(b) for b in batches] == [4, 4, 4, 4, 4]  # handed on as it went
        assert [s.why for s in there.skipped] == ["not a regular file", "symbolic link"]

        with pytest.raises(CommandError) as refused:
            workers.walk(
                str(top), st.st_dev, st.st_ino, "/t", 5, 1 << 30, 4, batches.append, lambda: False
            )
        assert refused.value.message == "/t holds more than 5 files (comphash.max_files)"
        assert len(workers._idle) == 1  # it answered: still in step, kept

        with pytest.raises(Cancelled):  # the client left: the worker, mid-walk, is stopped
            workers.walk(
                str(top), st.st_dev, st.st_ino, "/t", 1000, 1 << 30, 4, batches.append, lambda: True
            )
        assert workers._idle == []
    finally:
        workers.close()


def test_a_worker_does_not_inherit_the_gateways_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_TOKEN", "a-secret-token-of-the-daemon")
    top = small_tree(tmp_path / "t")
    fd, files = walked(top)
    st = os.fstat(fd)
    os.close(fd)
    workers = Workers()
    try:
        assert workers.hash(str(top), st.st_dev, st.st_ino, "sha256", files) is not None
        (worker,) = workers._idle
        environ = Path(f"/proc/{worker.proc.pid}/environ").read_bytes()
        assert b"a-secret-token" not in environ and b"GATEWAY_TOKEN" not in environ
        assert b"PATH=" in environ  # the rest is kept
    finally:
        workers.close()
