"""A client that never reads while a command streams: the daemon's memory
stays flat, the child is held back, and after limits.stall_timeout the client
is dropped and the child killed."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from ..support.e2e import masked_text_frame, pid_alive, raw_handshake, rss_kib

pytestmark = pytest.mark.e2e

LINE = 60_000  # bytes per log line: 1000 lines are 60 MB


def open_stalled(transport: str, gw: Any) -> socket.socket:
    """A client that asks for a long answer and never reads it."""
    if transport == "websocket":
        s = raw_handshake(gw.http_port)
        s.sendall(masked_text_frame("lastlog 1000"))
    else:
        port = gw.tcp_port if transport == "tcp" else gw.http_port
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        if transport == "tcp":
            s.sendall(b"lastlog 1000\n")
        else:
            s.sendall(b"GET /lastlog?lines=1000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return s


@pytest.mark.parametrize("transport", ["tcp", "http", "websocket"])
def test_a_client_that_does_not_read(start_gateway: Any, tmp_path: Path, transport: str) -> None:
    spew = tmp_path / "spew.sh"
    spew.write_text(f"echo $$ > {tmp_path}/child\nexec yes $(printf %0{LINE}d 0)\n")
    gw = start_gateway(
        f'[lastlog]\nsource = "command:/bin/sh {spew}"\ntimeout = 60.0\n'
        "[limits]\nstall_timeout = 4.0\n"
    )
    before = rss_kib(gw.proc.pid)
    with open_stalled(transport, gw):
        deadline = time.monotonic() + 10
        while not (tmp_path / "child").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int((tmp_path / "child").read_text())
        time.sleep(2.5)  # the child could have written 60 MB many times over by now
        grown = rss_kib(gw.proc.pid) - before
        assert grown < 16 * 1024, f"resident memory grew by {grown} KiB"
        assert pid_alive(child)  # held back, not killed (yet)
        gw.wait_for(rf"{transport} 127\.0\.0\.1 lastlog: cancelled", timeout=15)
        gw.wait_for(r"stopped reading; closing")
    deadline = time.monotonic() + 10
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(child)
