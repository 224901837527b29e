"""Starting, configuring and stopping the real daemon, three ways."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ..support.e2e import BIN, nc, open_nc, read_line

pytestmark = pytest.mark.e2e


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[comphash]\nalgorithms = ["sha1", "crc32"]\n')
    done = subprocess.run(
        [BIN / "gateway", "--config", bad], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert (
        done.stderr == "gateway: config error: comphash.algorithms: unsupported algorithm 'crc32'\n"
    )
    assert done.stdout == ""


def test_bad_environment_value_exits_2() -> None:
    done = subprocess.run(
        [BIN / "gateway"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"GATEWAY_QUOTA_MAX_CLIENTS": "0", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert (
        done.stderr == "gateway: config error: quota.max_clients: must be greater than 0, got 0\n"
    )


def test_port_in_use_is_a_clear_error_and_exit_1(start_gateway: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gw = start_gateway(
            argv=[str(BIN / "gateway"), "--tcp", f"tcp:{port}:interface=127.0.0.1"], wait=False
        )
        assert gw.proc.wait(30) == 1
        gw.wait_for(rf"cannot start: .*{port}.*[Aa]ddress already in use")


def test_sigterm_exits_0(start_gateway: Any, nc_path: str) -> None:
    gw = start_gateway()
    assert nc(gw.tcp_port, b"test\n") == "Command not found.\n"
    assert gw.stop() == 0


def test_a_second_sigterm_or_ctrl_c_while_stopping_is_no_traceback(
    start_gateway: Any, nc_path: str
) -> None:
    for repeat in (signal.SIGTERM, signal.SIGINT):
        gw = start_gateway()
        assert nc(gw.tcp_port, b"test\n") == "Command not found.\n"
        gw.proc.send_signal(signal.SIGTERM)
        gw.proc.send_signal(repeat)
        assert gw.proc.wait(15) == 0
        gw.wait_for(r"Main loop terminated")
        log = "\n".join(gw.lines)
        assert "Traceback" not in log and "critical" not in log, log


def test_python_m_gateway_with_json_logs(start_gateway: Any, nc_path: str) -> None:
    gw = start_gateway(argv=[sys.executable, "-m", "gateway", "--log-format", "json"], wait=False)
    gw.started()
    assert (
        nc(gw.tcp_port, b"lastlog nope\n")
        == "An error occurred: lines must be an integer from 1 to 1000\n"
    )
    gw.wait_for(r'"outcome": "bad_argument"')
    assert gw.stop() == 0
    records = gw.json_lines()  # every line is one JSON object
    command = next(r for r in records if r.get("command") == "lastlog")
    assert command["transport"] == "tcp"
    assert command["peer"] == "127.0.0.1"
    assert command["outcome"] == "bad_argument"
    assert isinstance(command["duration_ms"], float)
    assert command["level"] == "info"
    assert command["message"].startswith("tcp 127.0.0.1 lastlog: bad_argument in ")
    assert json.dumps(records)


def test_twistd_plugin(start_gateway: Any, nc_path: str, tmp_path: Path) -> None:
    gw = start_gateway(
        argv=[str(BIN / "twistd"), "--nodaemon", "--pidfile=", "gateway"], wait=False
    )
    gw.started()
    assert nc(gw.tcp_port, b"help\n").startswith("lastlog [N]")
    # twistd shuts down cleanly, then ends itself with the signal it received
    # (so a supervisor sees "terminated by SIGTERM", which systemd counts as success)
    assert gw.stop() in (0, -signal.SIGTERM)
    gw.wait_for(r"Server Shut Down\.")


def test_twistd_bad_config_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[quota]\nmax_clients = 0\n")
    done = subprocess.run(
        [BIN / "twistd", "--nodaemon", "--pidfile=", "gateway", "--config", bad],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert (
        "config error: quota.max_clients: must be greater than 0, got 0"
        in done.stdout + done.stderr
    )


def test_sigterm_during_a_long_hash_stops_promptly(
    start_gateway: Any, nc_path: str, tmp_path: Path
) -> None:
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(64 * 1024**3)  # sparse: minutes of hashing
    gw = start_gateway(
        f'[comphash]\nallowed_roots = ["{tmp_path}"]\n[limits]\nshutdown_grace = 1.0\n'
    )
    client = open_nc(gw.tcp_port)
    try:
        assert client.stdin is not None
        client.stdin.write(f"comphash {big}\n".encode())
        client.stdin.flush()
        gw.wait_for(r"CMD received from 127\.0\.0\.1: comphash")
        time.sleep(0.5)
        started = time.monotonic()
        assert gw.stop(timeout=20) == 0
        assert time.monotonic() - started < 6  # the grace, then the hash is stopped
        gw.wait_for(r"Cancelling what still runs after 1 s")
        gw.wait_for(r"tcp 127\.0\.0\.1 comphash: cancelled")
        assert read_line(client, 5) == b"Server shutting down.\n"
    finally:
        client.kill()
        client.wait()


@pytest.mark.parametrize("launcher", ["gateway", "twistd"])
def test_no_tokens_beyond_loopback_is_refused_at_start(launcher: str, tmp_path: Path) -> None:
    argv = (
        [str(BIN / "gateway")]
        if launcher == "gateway"
        else [str(BIN / "twistd"), "--nodaemon", "--pidfile=", "gateway"]
    )
    done = subprocess.run(
        [*argv, "--tcp", "tcp:0", "--http", "tcp:0:interface=127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode != 0
    assert "refusing to listen beyond loopback without auth tokens (tcp.listen = tcp:0)" in (
        done.stdout + done.stderr
    )
    if launcher == "gateway":
        assert done.returncode == 2


def test_graceful_shutdown_tells_everyone_and_lets_commands_finish(
    start_gateway: Any, nc_path: str, tmp_path: Path
) -> None:
    from websockets.sync.client import connect

    gw = start_gateway("[lastlog]\nsource = 'command:/bin/sh -c \"sleep 1; echo late\"'\n")
    busy = open_nc(gw.tcp_port)
    idle = open_nc(gw.tcp_port)
    with connect(f"ws://127.0.0.1:{gw.http_port}/ws") as ws:
        run_shutdown(gw, busy, idle, ws)


def run_shutdown(gw: Any, busy: Any, idle: Any, ws: Any) -> None:
    from websockets.exceptions import ConnectionClosed

    try:
        assert busy.stdin is not None and idle.stdin is not None
        idle.stdin.write(b"test\n")
        idle.stdin.flush()
        assert read_line(idle, 10) == b"Command not found.\n"
        busy.stdin.write(b"lastlog 1\n")
        busy.stdin.flush()
        gw.wait_for(r"CMD received from 127\.0\.0\.1: lastlog 1")
        gw.proc.send_signal(signal.SIGTERM)
        assert read_line(idle, 5) == b"Server shutting down.\n"  # at once
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(5)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (1001, "Server shutting down")
        # the running command finishes first
        assert [read_line(busy, 5) for _ in range(4)] == [
            b"Begin lastlog\n",
            b"late\n",
            b"End lastlog\n",
            b"Server shutting down.\n",
        ]
        assert gw.proc.wait(15) == 0
    finally:
        for p in (busy, idle):
            p.kill()
            p.wait()


def test_sighup_reloads_without_dropping_anyone(
    start_gateway: Any, nc_path: str, tmp_path: Path
) -> None:
    gw = start_gateway("[quota]\nmax_clients = 1\n")
    holder = open_nc(gw.tcp_port)
    try:
        assert holder.stdin is not None
        holder.stdin.write(b"test\n")
        holder.stdin.flush()
        assert read_line(holder, 10) == b"Command not found.\n"
        assert nc(gw.tcp_port, b"test\n") == "Too many connections. Bye!\n"

        gw.config_path.write_text("[quota]\nmax_clients = 2\n")
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait_for(r"Configuration reloaded")
        assert nc(gw.tcp_port, b"test\n") == "Command not found.\n"  # the new size holds

        gw.config_path.write_text("[quota]\nmax_clients = -1\n")  # a bad one is refused
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait_for(r"Configuration not reloaded, the running one stays: config error: quota")
        assert nc(gw.tcp_port, b"test\n") == "Command not found.\n"

        token = "reloaded-token-0123456789"
        gw.config_path.write_text(f'[quota]\nmax_clients = 2\n[auth]\ntokens = ["{token}"]\n')
        gw.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while sum("Configuration reloaded" in line for line in gw.lines) < 2:
            assert time.monotonic() < deadline, "the third SIGHUP was not applied"
            time.sleep(0.05)
        assert nc(gw.tcp_port, b"test\n") == "Authentication required.\n"  # tokens apply
        assert nc(gw.tcp_port, f"auth {token}\ntest\n".encode()) == (
            "Authenticated.\nCommand not found.\n"
        )

        holder.stdin.write(b"test\n")  # the first client was never dropped
        holder.stdin.flush()
        assert read_line(holder, 10) == b"Command not found.\n"
    finally:
        holder.kill()
        holder.wait()
