"""The WebSocket front-end of the real gateway, with a real WebSocket client."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from ..support.e2e import (
    curl,
    frames_until_closed,
    masked_text_frame,
    nc,
    open_nc,
    pid_alive,
    raw_handshake,
    read_line,
)

pytestmark = pytest.mark.e2e


def ws_url(gw: Any) -> str:
    return f"ws://127.0.0.1:{gw.http_port}/ws"


def write_log(tmp_path: Path) -> Path:
    log = tmp_path / "syslog"
    log.write_text("".join(f"Nov 25 10:00:{i:02d} lab app[1]: event {i}\n" for i in range(40)))
    return log


def test_text_mode_feels_like_netcat(start_gateway: Any, tmp_path: Path) -> None:
    log = write_log(tmp_path)
    gw = start_gateway(f'[lastlog]\nsource = "{log}"\n')
    with connect(ws_url(gw), subprotocols=[Subprotocol("gateway.text")]) as ws:
        assert ws.subprotocol == "gateway.text"
        ws.send("test")
        assert ws.recv(10) == "Command not found."
        ws.send("lastlog 2")
        assert [ws.recv(10) for _ in range(4)] == [
            "Begin lastlog",
            "Nov 25 10:00:38 lab app[1]: event 38",
            "Nov 25 10:00:39 lab app[1]: event 39",
            "End lastlog",
        ]
        ws.send("exit")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1000
    gw.wait_for(r"websocket 127\.0\.0\.1 lastlog: ok")


def test_json_mode_with_commands_in_flight(start_gateway: Any, tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    target.write_bytes(b"\0" * (5 * 1024 * 1024))
    gw = start_gateway(f'[lastlog]\nsource = "{write_log(tmp_path)}"\n')
    with connect(ws_url(gw), subprotocols=[Subprotocol("gateway.v1.json")]) as ws:
        ws.send(json.dumps({"id": 1, "command": "comphash", "args": {"path": str(target)}}))
        ws.send(json.dumps({"id": 2, "line": "lastlog 1"}))
        ws.send("not json")
        replies: list[dict[str, Any]] = []
        while sum(r.get("type") in ("result", "error") for r in replies) < 3:
            replies.append(json.loads(ws.recv(10)))
    by_id = {r["id"]: r for r in replies if r["type"] in ("result", "error")}
    assert by_id[1]["result"]["hex"] == hashlib.sha1(target.read_bytes()).hexdigest()
    assert by_id[2]["result"] == {
        "count": 1,
        "source": str(tmp_path / "syslog"),
        "text": [],
        "summary": f"1 line from {tmp_path / 'syslog'}",
    }
    assert by_id[None]["code"] == "bad_argument"
    assert {"id": 2, "type": "line", "text": "Nov 25 10:00:39 lab app[1]: event 39"} in replies
    progress = [r for r in replies if r["type"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 5 * 1024 * 1024


def test_foreign_origin_is_refused(start_gateway: Any) -> None:
    gw = start_gateway()
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(gw), origin="http://evil.example")  # type: ignore[call-overload]
    assert info.value.response.status_code == 403
    own = f"http://127.0.0.1:{gw.http_port}"
    with connect(ws_url(gw), origin=own) as ws:  # type: ignore[call-overload]
        ws.send("help")
        assert ws.recv(10).startswith("lastlog [N]")


def test_over_quota_closes_with_1013(start_gateway: Any) -> None:
    gw = start_gateway("[quota]\nmax_clients = 1\n")
    with connect(ws_url(gw)) as first:
        first.send("help")
        first.recv(10)
        with connect(ws_url(gw)) as second:
            with pytest.raises(ConnectionClosed) as info:
                second.recv(10)
            assert info.value.rcvd is not None
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (
                1013,
                "Too many connections. Bye!",
            )


def test_closing_mid_lastlog_kills_the_child(start_gateway: Any, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"echo $$ > {pidfile}; echo first; exec sleep 120"
    gw = start_gateway(f"[lastlog]\nsource = 'command:/bin/sh -c \"{script}\"'\n")
    with connect(ws_url(gw), subprotocols=[Subprotocol("gateway.text")]) as ws:
        ws.send("lastlog 5")
        assert ws.recv(10) == "Begin lastlog"
        assert ws.recv(10) == "first"
        pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)
    gw.wait_for(r"websocket 127\.0\.0\.1 lastlog: cancelled")


def test_one_quota_across_all_three_front_ends(
    start_gateway: Any, nc_path: str, curl_path: str, tmp_path: Path
) -> None:
    gw = start_gateway(
        "[quota]\nmax_clients = 3\n"
        "[lastlog]\nsource = 'command:/bin/sh -c \"echo slow; exec sleep 30\"'\ntimeout = 60.0\n"
    )
    tcp = open_nc(gw.tcp_port)
    slow_http = subprocess.Popen(
        [curl_path, "-sS", "-N", f"http://127.0.0.1:{gw.http_port}/lastlog"], stdout=subprocess.PIPE
    )
    try:
        assert tcp.stdin is not None
        tcp.stdin.write(b"test\n")
        tcp.stdin.flush()
        assert read_line(tcp, 10) == b"Command not found.\n"  # TCP holds a slot
        assert read_line(slow_http, 10) == b"slow\n"  # HTTP holds one while lastlog runs
        with connect(ws_url(gw)) as ws:  # WebSocket takes the third
            ws.send("test")
            assert ws.recv(10) == "Command not found."
            # full: each front-end refuses in its own words
            assert nc(gw.tcp_port, b"test\n") == "Too many connections. Bye!\n"
            status, headers, _ = curl(
                f"http://127.0.0.1:{gw.http_port}/comphash?path=/etc/hostname"
            )
            assert (status, headers["retry-after"]) == (503, "5")
            with connect(ws_url(gw)) as extra:
                with pytest.raises(ConnectionClosed) as info:
                    extra.recv(10)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1013
            stats = json.loads(curl(f"http://127.0.0.1:{gw.http_port}/stats?format=json")[2])
            assert stats["clients"]["in_use"] == 3
            assert {t: v["in_use"] for t, v in stats["clients"]["by_transport"].items()} == {
                "tcp": 1,
                "http": 1,
                "websocket": 1,
            }
    finally:
        for p in (tcp, slow_http):
            p.kill()
            p.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = json.loads(curl(f"http://127.0.0.1:{gw.http_port}/stats?format=json")[2])
        if stats["clients"]["in_use"] == 0:
            break
        time.sleep(0.1)
    assert stats["clients"]["in_use"] == 0
    refused = {t: v["refused"] for t, v in stats["clients"]["by_transport"].items()}
    assert refused == {"tcp": 1, "http": 1, "websocket": 1}


def test_works_without_autobahn_native_helpers(start_gateway: Any) -> None:
    gw = start_gateway(env={"AUTOBAHN_USE_NVX": "0"})
    gw.wait_for(r"native WebSocket helpers \(NVX\) off")
    with connect(ws_url(gw), subprotocols=[Subprotocol("gateway.v1.json")]) as ws:
        ws.send(json.dumps({"id": 1, "line": "x" * 60_000}))  # masking and UTF-8 checks, in Python
        assert json.loads(ws.recv(10))["code"] == "unknown_command"
        ws.send(json.dumps({"id": 2, "line": "help ünïcödé"}))
        assert json.loads(ws.recv(10))["message"] == "help takes no arguments"


def test_a_client_that_never_answers_pings_is_dropped(start_gateway: Any) -> None:
    gw = start_gateway("[websocket]\nauto_ping_interval = 0.5\nauto_ping_timeout = 0.5\n")
    with raw_handshake(gw.http_port) as s:
        opcodes, took = frames_until_closed(s, 10)
    assert 0x9 in opcodes  # the server pinged
    assert took < 5  # and gave up on the silent client (the default would wait 40 s)
    deadline = time.monotonic() + 5
    while json.loads(curl(gw.url("/stats?format=json"))[2])["clients"]["in_use"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_close_handshake_timeout(start_gateway: Any) -> None:
    gw = start_gateway("[websocket]\nclose_handshake_timeout = 0.5\n")
    with raw_handshake(gw.http_port) as s:
        s.sendall(masked_text_frame("exit"))
        opcodes, took = frames_until_closed(s, 10)  # we never answer the close frame
    assert took < 3  # the default, 5 s, would not do
    gw.wait_for(r"closing handshake timeout")


def test_null_origin_and_explicit_default_port(start_gateway: Any) -> None:
    gw = start_gateway()
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(gw), origin="null")  # type: ignore[call-overload]
    assert info.value.response.status_code == 403
    allowed = start_gateway('[websocket]\nallowed_origins = ["null", "http://admin.example"]\n')
    with connect(ws_url(allowed), origin="null") as ws:  # type: ignore[call-overload]
        ws.send("test")
        assert ws.recv(10) == "Command not found."
    with connect(ws_url(allowed), origin="http://admin.example:80") as ws:  # type: ignore[call-overload]
        ws.send("test")
        assert ws.recv(10) == "Command not found."
