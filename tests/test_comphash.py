import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import blake3
import pytest

from gateway.commands.checkio import open_regular
from gateway.commands.comphash import (
    BLAKE3_CHUNK,
    ComphashArgs,
    ComphashCommand,
    checksum_line,
    chunk_for,
    hash_fd,
)
from gateway.commands.treeio import Cancelled
from gateway.core.errors import CommandError
from gateway.core.events import Event, Progress, Result

from .support.fakes import call_now, run_now

MiB = 1024 * 1024


def make_command(roots: list[str], **kw: object) -> ComphashCommand:
    options: dict[str, object] = {
        "allowed_roots": roots,
        "algorithms": ["sha1", "sha256", "md5"],
        "default_algorithm": "sha1",
        "chunk_size": MiB,
        "timeout": 60.0,
        "run_in_thread": run_now,
        "call_from_thread": call_now,
    }
    options.update(kw)
    return ComphashCommand(**options)  # type: ignore[arg-type]


def run(command: ComphashCommand, line: str) -> tuple[list[Event], object]:
    events: list[Event] = []
    outcome: list[object] = []
    command.run(command.prepare(command.parse(line)), events.append).addBoth(outcome.append)
    return events, outcome[0]


def error_of(command: ComphashCommand, line: str) -> CommandError:
    try:
        events, outcome = run(command, line)
    except CommandError as e:
        return e
    value = getattr(outcome, "value", None)
    assert isinstance(value, CommandError), outcome
    return value


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "hello.txt").write_bytes(b"hello\n")
    return data


# -- parsing


@pytest.mark.parametrize(
    ("rest", "expected"),
    [
        ("/a", {"path": "/a"}),
        ("/my file.txt", {"path": "/my file.txt"}),
        ("  /spaced  ", {"path": "/spaced"}),
        ("-a sha256 /a b", {"algorithm": "sha256", "path": "/a b"}),
        ("--algorithm md5 /x", {"algorithm": "md5", "path": "/x"}),
        ("--algorithm=md5 /x", {"algorithm": "md5", "path": "/x"}),
        ("-a md5", {"algorithm": "md5"}),
        ("", {}),
    ],
)
def test_parse(rest: str, expected: dict[str, str]) -> None:
    assert make_command(["/"]).parse(rest) == expected


@pytest.mark.parametrize(
    ("line", "code", "message"),
    [
        ("", "missing_argument", "Please provide a path."),
        ("-a md5", "missing_argument", "Please provide a path."),
        ("-a", "bad_argument", "-a needs an algorithm name"),
        ("relative/file", "bad_argument", "Path must be absolute: relative/file"),
        ("/etc/pass\x00wd", "bad_argument", "Path contains a NUL byte."),
        (
            "-a rot13 /etc/hostname",
            "bad_argument",
            "Unknown algorithm: rot13 (allowed: sha1, sha256, md5)",
        ),
    ],
)
def test_bad_arguments(line: str, code: str, message: str) -> None:
    command = make_command(["/"])
    with pytest.raises(CommandError) as info:
        command.prepare(command.parse(line))
    assert (info.value.code, info.value.message) == (code, message)


def test_structured_arguments_are_checked() -> None:
    command = make_command(["/"])
    assert command.prepare({"path": "/x"}) == ComphashArgs("/x", "sha1")
    with pytest.raises(CommandError, match="path must be a string"):
        command.prepare({"path": 7})
    with pytest.raises(CommandError, match="unknown argument 'mode'"):
        command.prepare({"path": "/x", "mode": "fast"})


# -- hashing


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "md5"])
def test_hash_matches_hashlib_with_progress(root: Path, algorithm: str) -> None:
    big = root / "big.bin"
    data = os.urandom(3 * MiB + 123)
    big.write_bytes(data)
    events, outcome = run(make_command([str(root)]), f"-a {algorithm} {big}")
    hexdigest = hashlib.new(algorithm, data).hexdigest()
    assert outcome == Result(
        command="comphash",
        data={"path": str(big), "algorithm": algorithm, "hex": hexdigest, "size": len(data)},
        text=(f"File hash is: {hexdigest}",),
        body=(f"{hexdigest}  {big}",),
        summary=f"{algorithm} of {big} (3.0 MiB)",
    )
    assert events[0] == Progress(0, len(data))
    assert events[-1] == Progress(len(data), len(data))
    done = [e.done for e in events if isinstance(e, Progress)]
    assert done == sorted(done) and len(done) >= 4  # one per MiB at least


def test_path_with_spaces(root: Path) -> None:
    spaced = root / "my file.txt"
    spaced.write_bytes(b"x")
    _, outcome = run(make_command([str(root)]), f"{spaced}")
    assert isinstance(outcome, Result)
    assert outcome.data["hex"] == hashlib.sha1(b"x").hexdigest()


def test_empty_file(root: Path) -> None:
    empty = root / "empty"
    empty.touch()
    _, outcome = run(make_command([str(root)]), str(empty))
    assert isinstance(outcome, Result)
    assert outcome.data["hex"] == hashlib.sha1(b"").hexdigest()


def test_hash_stops_between_chunks_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"\0" * (8 * MiB))
    stop = threading.Event()
    seen: list[int] = []

    def progress(done: int) -> None:
        seen.append(done)
        stop.set()  # as if the client left after the first chunk

    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(Cancelled):
            hash_fd(fd, "sha1", MiB, stop, progress, MiB)
        assert seen == [MiB]
        assert os.lseek(fd, 0, os.SEEK_CUR) == MiB  # nothing read past the first chunk
    finally:
        os.close(fd)


def test_cancel_stops_the_reader_thread(tmp_path: Path) -> None:
    from twisted.internet.defer import Deferred

    path = tmp_path / "f"
    path.write_bytes(b"\0" * (4 * MiB))
    pending: list[object] = []

    def later(f: object) -> Deferred[object]:
        pending.append(f)
        return Deferred()

    command = make_command([str(tmp_path)], run_in_thread=later)
    events: list[Event] = []
    d = command.run(command.prepare({"path": str(path)}), events.append)
    failures: list[object] = []
    d.addErrback(failures.append)
    d.cancel()
    assert failures  # the caller hears at once
    with pytest.raises(Cancelled):
        pending[0]()  # type: ignore[operator]  # the thread, run now, stops at its first check
    assert events == []  # and nothing is sent after cancel


# -- what is refused


def test_nonexistent(root: Path) -> None:
    err = error_of(make_command([str(root)]), f"{root}/nope")
    assert (err.code, err.message) == ("not_found", f"No such file: {root}/nope")


def test_directory(root: Path) -> None:
    err = error_of(make_command([str(root)]), str(root))
    assert (err.code, err.message) == ("not_a_file", f"Not a regular file: {root}")


def test_dev_zero_is_refused_without_reading() -> None:
    err = error_of(make_command(["/"]), "/dev/zero")
    assert (err.code, err.message) == ("not_a_file", "Not a regular file: /dev/zero")


def test_fifo_does_not_block(root: Path) -> None:
    fifo = root / "pipe"
    os.mkfifo(fifo)
    err = error_of(make_command([str(root)]), str(fifo))  # would hang if opened blocking
    assert err.code == "not_a_file"


def test_fifo_swapped_in_after_the_check_does_not_block(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fifo = root / "pipe"
    os.mkfifo(fifo)
    real_lstat = os.lstat

    def lying_lstat(path: str) -> os.stat_result:
        return real_lstat(root / "hello.txt")  # the check saw a regular file...

    monkeypatch.setattr(os, "lstat", lying_lstat)
    with pytest.raises(CommandError) as info:
        open_regular(str(fifo), [str(root)])  # ...then a FIFO is opened: non-blocking, refused
    assert info.value.code == "not_a_file"


def test_final_symlink_escaping_the_roots(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    (root / "link").symlink_to(outside)
    err = error_of(make_command([str(root)]), f"{root}/link")
    assert (err.code, err.message) == (
        "forbidden",
        f"Path is outside the allowed roots: {root}/link",
    )


def test_parent_symlink_escaping_the_roots(root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "f").write_text("secret")
    (root / "dir").symlink_to(elsewhere)
    err = error_of(make_command([str(root)]), f"{root}/dir/f")
    assert err.code == "forbidden"


def test_symlink_inside_the_roots_is_followed(root: Path) -> None:
    (root / "alias").symlink_to(root / "hello.txt")
    _, outcome = run(make_command([str(root)]), f"{root}/alias")
    assert isinstance(outcome, Result)
    assert outcome.data["hex"] == hashlib.sha1(b"hello\n").hexdigest()


def test_dotdot_escaping_the_roots(root: Path, tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    err = error_of(make_command([str(root)]), f"{root}/../x")
    assert err.code == "forbidden"


def test_sibling_prefix_is_not_inside(tmp_path: Path) -> None:
    data = tmp_path / "data"
    private = tmp_path / "data_private"
    data.mkdir()
    private.mkdir()
    (private / "key").write_text("k")
    err = error_of(make_command([str(data)]), f"{private}/key")
    assert (err.code, err.message) == (
        "forbidden",
        f"Path is outside the allowed roots: {private}/key",
    )


@pytest.mark.parametrize(
    "path", ["/proc/self/environ", "/proc/1/cmdline", "/sys/kernel/mm/transparent_hugepage/enabled"]
)
def test_proc_and_sys_are_refused_even_under_root(path: str) -> None:
    err = error_of(make_command(["/"]), path)
    assert err.code == "forbidden"
    assert "never hashed" in err.message


def test_symlink_into_proc_is_refused(root: Path) -> None:
    (root / "env").symlink_to("/proc/self/environ")
    err = error_of(make_command(["/"]), f"{root}/env")
    assert err.code == "forbidden"


def test_permission_denied(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(path: str, flags: int) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    err = error_of(make_command([str(root)]), f"{root}/hello.txt")
    assert (err.code, err.message) == ("permission_denied", f"Permission denied: {root}/hello.txt")


def test_file_swapped_after_the_check_is_refused(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = root / "other"
    other.write_text("other")
    real_open = os.open

    def swapping_open(path: str, flags: int) -> int:
        return real_open(other, flags)  # a different inode than the one checked

    monkeypatch.setattr(os, "open", swapping_open)
    with pytest.raises(CommandError) as info:
        open_regular(f"{root}/hello.txt", [str(root)])
    assert (info.value.code, info.value.message) == (
        "not_a_file",
        f"File changed while being opened: {root}/hello.txt",
    )


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ("/srv/a b", "ab12  /srv/a b"),
        ("/srv/back\\slash", "\\ab12  /srv/back\\\\slash"),
        ("/srv/new\nline", "\\ab12  /srv/new\\nline"),
    ],
)
def test_checksum_line_is_what_sha1sum_prints(path: str, line: str) -> None:
    assert checksum_line("ab12", path) == line


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 3 * MiB + 7, 16 * MiB + 1])
@pytest.mark.parametrize("threads", [1, 0, 2])
def test_blake3_matches_b3sum_whatever_the_size_and_threads(
    root: Path, size: int, threads: int
) -> None:
    path = root / f"b3-{size}"
    data = os.urandom(size)
    path.write_bytes(data)
    command = make_command([str(root)], algorithms=["sha1", "blake3"], threads=threads)
    _, outcome = run(command, f"-a blake3 {path}")
    assert isinstance(outcome, Result)
    assert outcome.data["hex"] == blake3.blake3(data).hexdigest()
    assert outcome.data["size"] == size
    b3sum = shutil.which("b3sum")
    if b3sum is None:
        if os.environ.get("CI") == "true":
            pytest.fail("b3sum is not installed (.ci/run installs it)")
        return
    done = subprocess.run([b3sum, "--no-names", str(path)], capture_output=True, check=True)
    assert done.stdout.decode().strip() == outcome.data["hex"]


def test_blake3_on_several_threads_reads_large_chunks_and_stops_between_them(
    tmp_path: Path,
) -> None:
    assert chunk_for("blake3", MiB, 0) == BLAKE3_CHUNK
    assert chunk_for("blake3", MiB, 1) == MiB  # one thread: the configured chunk
    assert chunk_for("sha256", MiB, 0) == MiB
    path = tmp_path / "f"
    path.write_bytes(b"\0" * (3 * BLAKE3_CHUNK))
    stop = threading.Event()
    seen: list[int] = []

    def progress(done: int) -> None:
        seen.append(done)
        stop.set()

    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(Cancelled):
            hash_fd(fd, "blake3", MiB, stop, progress, MiB, threads=0)
        assert seen == [BLAKE3_CHUNK]
        assert os.lseek(fd, 0, os.SEEK_CUR) == BLAKE3_CHUNK
    finally:
        os.close(fd)
