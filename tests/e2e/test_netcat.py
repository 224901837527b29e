"""The real gateway process, driven with the real ``nc``."""

from __future__ import annotations

import hashlib
import os
import re
import selectors
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ..support.e2e import nc, open_nc, pid_alive, read_chars, read_line

pytestmark = pytest.mark.e2e


def write_log(tmp_path: Path, count: int = 30) -> Path:
    log = tmp_path / "syslog"
    log.write_text(
        "".join(f"Aug 29 15:02:{i % 60:02d} lab cron[4945]: entry {i}\n" for i in range(count))
    )
    return log


def test_seed_session(start_gateway: Any, nc_path: str, tmp_path: Path) -> None:
    log = write_log(tmp_path)
    hostname = tmp_path / "hostname"
    hostname.write_text("lab\n")
    gw = start_gateway(f'[lastlog]\nsource = "{log}"\n')
    out = nc(
        gw.tcp_port,
        f"test\nlastlog\ncomphash {hostname}\ncomphash\nexit\n".encode(),
        half_close=False,
    )
    expected = [
        "Command not found.",
        "Begin lastlog",
        *[f"Aug 29 15:02:{i:02d} lab cron[4945]: entry {i}" for i in range(20, 30)],
        "End lastlog",
        f"File hash is: {hashlib.sha1(b'lab' + bytes([10])).hexdigest()}",
        "Please provide a path.",
    ]
    assert out.splitlines() == expected
    gw.wait_for(r"Client connection from 127\.0\.0\.1")
    gw.wait_for(r"CMD received from 127\.0\.0\.1: test")
    gw.wait_for(r"tcp 127\.0\.0\.1 lastlog: ok in [0-9.]+ ms")
    gw.wait_for(r"Lost client connection\. Reason: ")


def test_half_closed_netcat_gets_its_answers(
    start_gateway: Any, nc_path: str, tmp_path: Path
) -> None:
    gw = start_gateway(f'[lastlog]\nsource = "{write_log(tmp_path)}"\n')
    out = nc(gw.tcp_port, b"lastlog 2\r\nhelp\n")
    lines = out.splitlines()
    assert lines[:4] == [
        "Begin lastlog",
        "Aug 29 15:02:28 lab cron[4945]: entry 28",
        "Aug 29 15:02:29 lab cron[4945]: entry 29",
        "End lastlog",
    ]
    assert lines[4].startswith("lastlog [N]")


def test_bad_input_gets_clear_answers_and_the_daemon_keeps_serving(
    start_gateway: Any, nc_path: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    private = tmp_path / "data_private"
    private.mkdir()
    (private / "key").write_text("secret")
    (data / "my file.txt").write_text("spaced\n")
    (data / "escape").symlink_to(private / "key")
    (data / "up").symlink_to(private)
    os.mkfifo(data / "fifo")
    gw = start_gateway(
        f'[comphash]\nallowed_roots = ["{data}"]\n[lastlog]\nsource = "{tmp_path}/none.log"\n'
    )
    requests = [
        f"comphash {data}/my file.txt",
        "comphash relative/path",
        f"comphash {data}/nope",
        f"comphash {data}",
        "comphash /dev/zero",
        f"comphash {data}/fifo",
        f"comphash {data}/escape",
        f"comphash {data}/up/key",
        f"comphash {private}/key",
        "comphash /proc/self/environ",
        f"comphash -a rot13 {data}/my file.txt",
        "lastlog abc",
        "lastlog -5",
        "lastlog 99999999",
        "lastlog",
    ]
    payload = "\n".join(requests).encode() + b"\ncomphash /tmp/a\x00b\n\xff\xfe\x00binary\n"
    out = nc(gw.tcp_port, payload).splitlines()
    assert out == [
        f"File hash is: {hashlib.sha1(b'spaced' + bytes([10])).hexdigest()}",
        "An error occurred: Path must be absolute: relative/path",
        f"An error occurred: No such file: {data}/nope",
        f"An error occurred: Not a regular file: {data}",
        "An error occurred: Path is outside the allowed roots: /dev/zero",
        f"An error occurred: Not a regular file: {data}/fifo",
        f"An error occurred: Path is outside the allowed roots: {data}/escape",
        f"An error occurred: Path is outside the allowed roots: {data}/up/key",
        f"An error occurred: Path is outside the allowed roots: {private}/key",
        "An error occurred: Path is under /proc, which is never hashed: /proc/self/environ",
        "An error occurred: Unknown algorithm: rot13 "
        "(allowed: sha1, sha256, sha512, md5, blake2b, blake3)",
        "An error occurred: lines must be an integer from 1 to 1000",
        "An error occurred: lines must be an integer from 1 to 1000",
        "An error occurred: lines must be an integer from 1 to 1000",
        f"An error occurred: Log file not found: {tmp_path}/none.log",
        "An error occurred: Path contains a NUL byte.",
        "An error occurred: Command line is not valid UTF-8.",
    ]
    assert nc(gw.tcp_port, b"test\n") == "Command not found.\n"


def test_dev_zero_under_an_allowed_root_is_refused_without_reading(
    start_gateway: Any, nc_path: str
) -> None:
    gw = start_gateway()
    assert nc(gw.tcp_port, b"comphash /dev/zero\n", timeout=10) == (
        "An error occurred: Not a regular file: /dev/zero\n"
    )


def test_megabyte_line_is_refused_and_others_are_served(start_gateway: Any, nc_path: str) -> None:
    gw = start_gateway()
    assert nc(gw.tcp_port, b"x" * 1_000_000) == "An error occurred: line too long\n"
    assert nc(gw.tcp_port, b"test\n") == "Command not found.\n"


def test_idle_connection_is_closed(start_gateway: Any, nc_path: str) -> None:
    gw = start_gateway(env={"GATEWAY_TCP_IDLE_TIMEOUT": "0.5"})
    proc = open_nc(gw.tcp_port)
    try:
        assert (
            read_line(proc, 10.0) == b"An error occurred: idle for 0.5 s, closing the connection\n"
        )
    finally:
        proc.kill()
        proc.wait()
    gw.wait_for(r"Closing idle connection from 127\.0\.0\.1")


def test_disconnect_mid_lastlog_kills_and_reaps_the_child(
    start_gateway: Any, nc_path: str, tmp_path: Path
) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"echo $$ > {pidfile}; echo first; exec sleep 120"
    gw = start_gateway(
        f"[lastlog]\nsource = 'command:/bin/sh -c \"{script}\"'\n[tcp]\neof_grace = 0.5\n"
    )
    proc = open_nc(gw.tcp_port)
    assert proc.stdin is not None
    proc.stdin.write(b"lastlog 5\n")
    proc.stdin.flush()
    assert read_line(proc, 10.0) == b"Begin lastlog\n"
    assert read_line(proc, 10.0) == b"first\n"
    pid = int(pidfile.read_text())
    assert pid_alive(pid)
    proc.kill()  # the client goes away mid-command
    proc.wait()
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid), "the child is still there (running or a zombie)"
    gw.wait_for(r"tcp 127\.0\.0\.1 lastlog: cancelled")
    assert nc(gw.tcp_port, b"test\n") == "Command not found.\n"


def test_lastlog_timeout_kills_the_child(start_gateway: Any, nc_path: str, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"echo $$ > {pidfile}; exec sleep 120"
    gw = start_gateway(f"[lastlog]\ntimeout = 0.5\nsource = 'command:/bin/sh -c \"{script}\"'\n")
    assert nc(gw.tcp_port, b"lastlog\n") == "An error occurred: lastlog timed out after 0.5 s\n"
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)


def test_disconnect_mid_hash_stops_reading(
    start_gateway: Any, nc_path: str, tmp_path: Path
) -> None:
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(64 * 1024**3)  # sparse 64 GiB: far more than can be hashed in the test
    gw = start_gateway(f'[comphash]\nallowed_roots = ["{tmp_path}"]\n[tcp]\neof_grace = 0.5\n')
    proc = open_nc(gw.tcp_port)
    assert proc.stdin is not None
    proc.stdin.write(f"comphash {big}\n".encode())
    proc.stdin.flush()
    before = read_chars(gw.proc.pid)
    deadline = time.monotonic() + 10
    while read_chars(gw.proc.pid) - before < 64 * 1024**2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert read_chars(gw.proc.pid) - before >= 64 * 1024**2, "the hash never started"
    proc.kill()
    proc.wait()
    gw.wait_for(r"tcp 127\.0\.0\.1 comphash: cancelled")
    time.sleep(0.3)  # the reader finishes the chunk in hand
    settled = read_chars(gw.proc.pid)
    time.sleep(1.0)
    assert read_chars(gw.proc.pid) - settled < 4 * 1024**2  # reading has stopped
    assert nc(gw.tcp_port, b"test\n") == "Command not found.\n"


def test_hundred_clients_against_a_quota_of_ten(start_gateway: Any, nc_path: str) -> None:
    gw = start_gateway("[quota]\nmax_clients = 10\n")
    procs = [
        subprocess.Popen(
            [nc_path, "-N", "127.0.0.1", str(gw.tcp_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for _ in range(100)
    ]
    try:
        got: dict[int, bytes] = {i: b"" for i in range(100)}
        selector = selectors.DefaultSelector()
        for i, p in enumerate(procs):
            assert p.stdout is not None
            os.set_blocking(p.stdout.fileno(), False)
            selector.register(p.stdout, selectors.EVENT_READ, i)
        refusal = b"Too many connections. Bye!\n"
        deadline = time.monotonic() + 30
        while sum(v == refusal for v in got.values()) < 90 and time.monotonic() < deadline:
            for key, _ in selector.select(0.2):
                chunk = os.read(key.fileobj.fileno(), 4096)  # type: ignore[union-attr]
                if chunk:
                    got[key.data] += chunk
                else:
                    selector.unregister(key.fileobj)
        time.sleep(0.5)  # anything more would have arrived by now
        for key, _ in selector.select(0):
            got[key.data] += os.read(key.fileobj.fileno(), 4096)  # type: ignore[union-attr]
        selector.close()
        refused = [i for i, v in got.items() if v == refusal]
        served = [i for i, v in got.items() if v == b""]
        assert (len(refused), len(served)) == (90, 10), got
        for i in served:  # the ten are really served
            stdin = procs[i].stdin
            assert stdin is not None
            stdin.write(b"test\n")
            stdin.flush()
            assert read_line(procs[i], 10.0) == b"Command not found.\n"
    finally:
        for p in procs:
            if p.stdin:
                p.stdin.close()  # nc -N: half-close, the server closes
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = nc(gw.tcp_port, b"stats\n")
        if stats.startswith("clients: 1/10 in use"):  # only this one
            break
        time.sleep(0.1)
    lines = stats.splitlines()
    assert lines[0] == "clients: 1/10 in use (tcp 1, http 0, websocket 0)"
    assert lines[2] == "refused: 90 (tcp 90, http 0, websocket 0)"
    counted = re.fullmatch(r"served: (\d+) \(tcp (\d+), http 0, websocket 0\)", lines[1])
    assert counted is not None and counted.group(1) == counted.group(2)
    assert int(counted.group(1)) >= 10 + 1


def test_lastlog_answers_while_hashes_fill_the_pool(
    start_gateway: Any, nc_path: str, tmp_path: Path
) -> None:
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(64 * 1024**3)  # sparse: minutes of hashing
    log = write_log(tmp_path)
    gw = start_gateway(
        f'[comphash]\nallowed_roots = ["{tmp_path}"]\nworkers = 1\n[lastlog]\nsource = "{log}"\n'
    )
    hasher = open_nc(gw.tcp_port)
    try:
        assert hasher.stdin is not None
        hasher.stdin.write(f"comphash {big}\n".encode())
        hasher.stdin.flush()
        gw.wait_for(r"CMD received from 127\.0\.0\.1: comphash")
        out = nc(gw.tcp_port, b"lastlog 1\n", timeout=10)  # the hash pool is full
        assert out.splitlines()[1] == "Aug 29 15:02:29 lab cron[4945]: entry 29"
        assert nc(gw.tcp_port, b"help\n", timeout=10).startswith("lastlog [N]")
    finally:
        hasher.kill()
        hasher.wait()


def test_the_whole_process_group_dies_with_the_client(
    start_gateway: Any, nc_path: str, tmp_path: Path
) -> None:
    script = (
        f"sleep 300 & echo $! > {tmp_path}/grandchild; echo $$ > {tmp_path}/child; echo first; wait"
    )
    gw = start_gateway(
        f"[lastlog]\nsource = 'command:/bin/sh -c \"{script}\"'\n[tcp]\neof_grace = 0.5\n"
    )
    proc = open_nc(gw.tcp_port)
    assert proc.stdin is not None
    proc.stdin.write(b"lastlog 5\n")
    proc.stdin.flush()
    assert read_line(proc, 10) == b"Begin lastlog\n"
    assert read_line(proc, 10) == b"first\n"
    child = int((tmp_path / "child").read_text())
    grandchild = int((tmp_path / "grandchild").read_text())
    with open(f"/proc/{child}/stat") as f:
        assert int(f.read().rsplit(")", 1)[1].split()[2]) == child  # its own process group
    assert os.getpgid(grandchild) == child
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while (pid_alive(child) or pid_alive(grandchild)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(child) and not pid_alive(grandchild)


def test_background_leftovers_die_when_the_command_ends(
    start_gateway: Any, nc_path: str, tmp_path: Path
) -> None:
    script = f"sleep 300 & echo $! > {tmp_path}/grandchild; echo done"
    gw = start_gateway(f"[lastlog]\nsource = 'command:/bin/sh -c \"{script}\"'\n")
    assert nc(gw.tcp_port, b"lastlog 1\n") == "Begin lastlog\ndone\nEnd lastlog\n"
    grandchild = int((tmp_path / "grandchild").read_text())
    deadline = time.monotonic() + 10
    while pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(grandchild)
