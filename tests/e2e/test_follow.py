"""lastlog -f with real nc, curl -N and WebSocket clients against a real gateway."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import connect
from websockets.typing import Subprotocol

from ..support.e2e import open_nc, read_line, require_tool


def start(start_gateway: Any, tmp_path: Path, extra: str = "") -> tuple[Any, Path]:
    log = tmp_path / "syslog"
    log.write_text("".join(f"old {i}\n" for i in range(20)))
    return start_gateway(f'[lastlog]\nsource = "{log}"\n{extra}'), log


def append(log: Path, *lines: str) -> None:
    with open(log, "a") as f:
        f.write("".join(f"{line}\n" for line in lines))


def curl_stream(url: str, *options: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([require_tool("curl"), "-sN", *options, url], stdout=subprocess.PIPE)


def lines_from(proc: subprocess.Popen[bytes], n: int, timeout: float = 10) -> list[str]:
    return [read_line(proc, timeout).decode().rstrip("\n") for _ in range(n)]


def test_nc_follows_until_stop_then_takes_commands(
    start_gateway: Any, nc_path: str, tmp_path: Path
) -> None:
    gw, log = start(start_gateway, tmp_path)
    client = open_nc(gw.tcp_port)
    assert client.stdin is not None
    try:
        client.stdin.write(b"lastlog -f 2\n")
        client.stdin.flush()
        assert [read_line(client, 10) for _ in range(3)] == [
            b"Begin lastlog\n",
            b"old 18\n",
            b"old 19\n",
        ]
        append(log, "live 1", "live 2")
        assert [read_line(client, 10) for _ in range(2)] == [b"live 1\n", b"live 2\n"]
        client.stdin.write(b"stop\nlastlog 1\n")
        client.stdin.flush()
        assert [read_line(client, 10) for _ in range(4)] == [
            b"End lastlog\n",
            b"Begin lastlog\n",
            b"live 2\n",
            b"End lastlog\n",
        ]
    finally:
        client.kill()
        client.wait()
    gw.wait_for(r"tcp 127\.0\.0\.1 lastlog: ok")


def test_curl_text_ndjson_and_sse_with_a_reconnect(start_gateway: Any, tmp_path: Path) -> None:
    gw, log = start(start_gateway, tmp_path)
    text = curl_stream(gw.url("/lastlog?follow=1&lines=1"))
    ndjson = curl_stream(gw.url("/lastlog?follow=1&lines=1"), "-H", "Accept: application/x-ndjson")
    sse = curl_stream(gw.url("/lastlog?follow=1&lines=1&format=sse"))
    try:
        assert lines_from(text, 1) == ["old 19"]
        first = json.loads(lines_from(ndjson, 1)[0])
        assert first["line"] == "old 19" and first["cursor"]
        assert lines_from(sse, 3) == [f"id: {first['cursor']}", "data: old 19", ""]
        append(log, "new 1")
        assert lines_from(text, 1) == ["new 1"]
        assert json.loads(lines_from(ndjson, 1)[0])["line"] == "new 1"
        event = lines_from(sse, 3)
        assert event[1:] == ["data: new 1", ""]
        seen = event[0].removeprefix("id: ")
    finally:
        for proc in (text, ndjson, sse):
            proc.kill()
            proc.wait()
    append(log, "while away 1", "while away 2")  # the browser reconnects with its last id
    again = curl_stream(gw.url("/lastlog?follow=1&format=sse"), "-H", f"Last-Event-ID: {seen}")
    try:
        got = lines_from(again, 6)
        assert [line for line in got if line.startswith("data:")] == [
            "data: while away 1",
            "data: while away 2",
        ]  # right after the last line seen: no gap, no duplicate
    finally:
        again.kill()
        again.wait()
    stale = curl_stream(gw.url("/lastlog?follow=1&format=sse&after=00000000-1"))
    try:
        assert lines_from(stale, 2) == ["event: stale", "data: "]  # said first
    finally:
        stale.kill()
        stale.wait()


def test_websocket_json_follow_with_cursors_then_cancel(start_gateway: Any, tmp_path: Path) -> None:
    gw, log = start(start_gateway, tmp_path)
    url = f"ws://127.0.0.1:{gw.http_port}/ws"
    with connect(url, subprotocols=[Subprotocol("gateway.v1.json")]) as ws:
        ws.send(json.dumps({"id": 1, "command": "lastlog", "args": {"follow": True, "lines": 1}}))
        first = json.loads(ws.recv(10))
        assert first["type"] == "line" and first["text"] == "old 19" and first["cursor"]
        assert json.loads(ws.recv(10)) == {"id": 1, "type": "following"}
        append(log, "live")
        live = json.loads(ws.recv(10))
        assert live["text"] == "live" and live["cursor"] != first["cursor"]
        ws.send(json.dumps({"id": 1, "cancel": True}))
        end = json.loads(ws.recv(10))
        assert end["type"] == "result" and end["result"]["count"] == 2
        ws.send(
            json.dumps(
                {"id": 2, "command": "lastlog", "args": {"follow": True, "after": first["cursor"]}}
            )
        )
        resumed = json.loads(ws.recv(10))
        assert resumed.get("text") == "live", resumed  # resumed right after the first line


def test_websocket_text_follow_stops_on_an_empty_message(
    start_gateway: Any, tmp_path: Path
) -> None:
    gw, log = start(start_gateway, tmp_path)
    url = f"ws://127.0.0.1:{gw.http_port}/ws"
    with connect(url, subprotocols=[Subprotocol("gateway.text")]) as ws:
        ws.send("lastlog -f 1")
        assert [ws.recv(10), ws.recv(10)] == ["Begin lastlog", "old 19"]
        append(log, "x")
        assert ws.recv(10) == "x"
        ws.send("")
        assert ws.recv(10) == "End lastlog"
        ws.send("help")
        assert str(ws.recv(10)).startswith("lastlog [N]")


def test_a_watcher_that_never_reads_is_closed_and_others_go_on(
    start_gateway: Any, nc_path: str, tmp_path: Path
) -> None:
    gw, log = start(
        start_gateway, tmp_path, "[limits]\nstall_timeout = 2\n[follow]\nqueue_lines = 100\n"
    )
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", gw.tcp_port))
    stuck.sendall(b"lastlog -f 1\n")
    reader = open_nc(gw.tcp_port)
    assert reader.stdin is not None
    reader.stdin.write(b"lastlog -f 1\n")
    reader.stdin.flush()
    assert [read_line(reader, 10) for _ in range(2)] == [b"Begin lastlog\n", b"old 19\n"]
    big = "x" * 200
    for batch in range(20):  # ~4 MB: far more than the stuck client's buffers hold
        append(log, *(f"{batch}-{i} {big}" for i in range(1000)))
        for i in range(1000):  # the one that reads gets every line, in order
            assert read_line(reader, 10).startswith(f"{batch}-{i} ".encode())
    gw.wait_for(r"Client 127\.0\.0\.1 stopped reading; closing", timeout=20)
    stuck.settimeout(10)
    received = b""
    with contextlib.suppress(OSError):
        while chunk := stuck.recv(65536):
            received += chunk
    stuck.close()
    assert len(received) < 1_000_000  # closed: it was never sent the 4 MB
    append(log, "still here")
    assert read_line(reader, 10) == b"still here\n"
    reader.kill()
    reader.wait()


def test_a_slow_watcher_is_told_how_many_lines_it_lost(start_gateway: Any, tmp_path: Path) -> None:
    gw, log = start(start_gateway, tmp_path, "[follow]\nqueue_lines = 10\n")
    url = f"ws://127.0.0.1:{gw.http_port}/ws"
    with connect(url, subprotocols=[Subprotocol("gateway.v1.json")], max_queue=1) as ws:
        ws.send(json.dumps({"id": 1, "command": "lastlog", "args": {"follow": True, "lines": 1}}))
        assert json.loads(ws.recv(10))["text"] == "old 19"
        assert json.loads(ws.recv(10))["type"] == "following"
        big = "y" * 1000
        append(log, *(f"{i} {big}" for i in range(20000)))  # 20 MB while we do not read
        time.sleep(3)
        replies = []
        while True:
            reply = json.loads(ws.recv(10))
            replies.append(reply)
            if reply["type"] == "line" and reply["text"].startswith("19999 "):
                break
    dropped = sum(r["count"] for r in replies if r["type"] == "dropped")
    got = [int(r["text"].split()[0]) for r in replies if r["type"] == "line"]
    assert dropped > 0  # told, never silently
    assert len(got) + dropped == 20000  # every line either arrived or was counted
    assert got == sorted(got)


def test_shutdown_ends_a_follow_with_its_end_line(
    start_gateway: Any, nc_path: str, tmp_path: Path
) -> None:
    gw, log = start(start_gateway, tmp_path)
    client = open_nc(gw.tcp_port)
    assert client.stdin is not None
    client.stdin.write(b"lastlog -f 1\n")
    client.stdin.flush()
    assert [read_line(client, 10) for _ in range(2)] == [b"Begin lastlog\n", b"old 19\n"]
    gw.wait_for(r"CMD received from 127\.0\.0\.1: lastlog -f 1")
    started = time.monotonic()
    assert gw.stop() == 0
    assert time.monotonic() - started < 5  # not held for the 10 s shutdown grace
    assert read_line(client, 10) == b"End lastlog\n"
    client.kill()
    client.wait()


def test_a_command_source_is_followed_through_one_child(
    start_gateway: Any, nc_path: str, tmp_path: Path
) -> None:
    log = tmp_path / "app.log"
    log.write_text("".join(f"old {i}\n" for i in range(20)))
    gw = start_gateway(f'[lastlog]\nsource = "command:tail -n {{lines}} -F {log}"\n')
    clients = [open_nc(gw.tcp_port) for _ in range(5)]
    try:
        for client in clients:
            assert client.stdin is not None
            client.stdin.write(b"lastlog -f 2\n")
            client.stdin.flush()
            assert read_line(client, 10) == b"Begin lastlog\n"
        time.sleep(0.5)
        assert len(processes_running(f"tail\0-n\x0010000\0-F\0{log}")) == 1  # one for all five
        append(log, "live")
        for client in clients:
            seen: list[bytes] = []
            while not seen or seen[-1] not in (b"live\n", b""):
                seen.append(read_line(client, 10))
            assert seen[-1] == b"live\n"
    finally:
        for client in clients:
            client.kill()
            client.wait()


def processes_running(cmdline: str) -> list[int]:
    """Pids whose command line (NUL-separated) contains ``cmdline``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if cmdline.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found
