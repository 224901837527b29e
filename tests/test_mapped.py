"""A mapped BLAKE3 hash: only under a read lease, only from the page cache,
and left at once when someone wants to write the file (no SIGBUS, ever)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest

from gateway.commands import mapped
from gateway.commands.comphash import hash_fd
from gateway.commands.mapped import MAP_AT_LEAST, MAP_CHUNK, hash_mapped, leases_usable

SIZE = MAP_AT_LEAST + 3 * MAP_CHUNK + 123


@pytest.fixture
def sigio_ignored() -> Iterator[None]:
    """What the gateway does at start (app.py)."""
    before = signal.signal(signal.SIGIO, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGIO, before)


@pytest.fixture
def big(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(SIZE))
    path.read_bytes()  # in the page cache
    return path


def test_a_cached_leased_file_is_mapped_and_hashes_as_b3sum_does(
    big: Path, sigio_ignored: None
) -> None:
    assert leases_usable()
    fd = os.open(big, os.O_RDONLY)
    try:
        digest = blake3.blake3(max_threads=2)
        assert hash_mapped(fd, digest, threading.Event()) == SIZE  # all of it, mapped
        assert digest.hexdigest() == blake3.blake3(big.read_bytes()).hexdigest()
        os.lseek(fd, 0, os.SEEK_SET)
        assert hash_fd(fd, "blake3", 1 << 20, threading.Event(), threads=2) == (
            digest.hexdigest(),
            SIZE,
        )
    finally:
        os.close(fd)


def test_no_lease_without_sigio_ignored(big: Path) -> None:
    assert signal.getsignal(signal.SIGIO) != signal.SIG_IGN
    assert not leases_usable()  # the lease break's SIGIO would end the process
    fd = os.open(big, os.O_RDONLY)
    try:
        assert hash_mapped(fd, blake3.blake3(), threading.Event()) == 0
    finally:
        os.close(fd)


def test_a_file_someone_writes_is_read_not_mapped(big: Path, sigio_ignored: None) -> None:
    writer = os.open(big, os.O_WRONLY)
    fd = os.open(big, os.O_RDONLY)
    try:
        assert hash_mapped(fd, blake3.blake3(), threading.Event()) == 0  # no lease granted
        assert hash_fd(fd, "blake3", 1 << 20, threading.Event(), threads=2)[1] == SIZE
    finally:
        os.close(fd)
        os.close(writer)


def test_a_file_not_in_the_page_cache_is_read(
    big: Path, sigio_ignored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_cached(*args: Any) -> int:
        raise BlockingIOError()

    monkeypatch.setattr(os, "preadv", not_cached)  # what RWF_NOWAIT says of a cold file
    fd = os.open(big, os.O_RDONLY)
    try:
        assert hash_mapped(fd, blake3.blake3(), threading.Event()) == 0
    finally:
        os.close(fd)


def test_a_small_file_is_read(tmp_path: Path, sigio_ignored: None) -> None:
    small = tmp_path / "small"
    small.write_bytes(b"x" * (MAP_AT_LEAST - 1))
    fd = os.open(small, os.O_RDONLY)
    try:
        assert hash_mapped(fd, blake3.blake3(), threading.Event()) == 0
    finally:
        os.close(fd)


class SlowDigest:
    """Hashes like BLAKE3, and on its first chunk has another process
    truncate the file (which must wait: the lease)."""

    def __init__(self, path: Path) -> None:
        self.inner = blake3.blake3()
        self.path = path
        self.truncator: subprocess.Popen[bytes] | None = None

    def update(self, data: Any) -> None:
        if self.truncator is None:
            self.truncator = subprocess.Popen(  # truncate(2): waits for the lease break
                [
                    sys.executable,
                    "-c",
                    "import os, sys; os.truncate(sys.argv[1], 0)",
                    str(self.path),
                ]
            )
            time.sleep(0.5)
            assert self.truncator.poll() is None  # it waits for the lease to be given back
        self.inner.update(data)


def test_a_truncation_waits_for_the_map_to_be_left(big: Path, sigio_ignored: None) -> None:
    fd = os.open(big, os.O_RDONLY)
    digest = SlowDigest(big)
    try:
        took = hash_mapped(fd, digest, threading.Event())
        assert took == MAP_CHUNK  # the chunk in hand, then the lease was asked about
        assert digest.truncator is not None
        assert digest.truncator.wait(10) == 0  # the lease given back: it went on
        assert big.stat().st_size == 0
        # and the rest is read as any reader sees it: nothing, not a SIGBUS
        os.lseek(fd, took, os.SEEK_SET)
        assert os.read(fd, 10) == b""
    finally:
        os.close(fd)


def test_stop_is_seen_between_chunks(big: Path, sigio_ignored: None) -> None:
    stop = threading.Event()
    stop.set()
    fd = os.open(big, os.O_RDONLY)
    try:
        with pytest.raises(mapped.Stopped):
            hash_mapped(fd, blake3.blake3(), stop)
    finally:
        os.close(fd)
