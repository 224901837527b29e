"""Per-address fairness on every transport, with the real clients."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from ..support.e2e import curl, nc

pytestmark = pytest.mark.e2e


def test_command_rate_limit_on_every_transport(
    start_gateway: Any, nc_path: str, curl_path: str
) -> None:
    gw = start_gateway("[limits]\ncommands_per_second = 0.2\ncommand_burst = 2\n")
    out = nc(gw.tcp_port, b"test\ntest\ntest\n").splitlines()
    assert out == [
        "Command not found.",
        "Command not found.",
        "An error occurred: Too many commands from 127.0.0.1; slow down (try again in 5 s).",
    ]
    status, headers, body = curl(gw.url("/commands"))
    assert (status, headers["retry-after"]) == (429, "5")
    assert body == b"error: Too many commands from 127.0.0.1; slow down (try again in 5 s).\n"
    assert curl(gw.url("/healthz"))[0] == 200  # not a command: never limited
    with connect(
        f"ws://127.0.0.1:{gw.http_port}/ws", subprotocols=[Subprotocol("gateway.v1.json")]
    ) as ws:
        ws.send(json.dumps({"id": 1, "line": "help"}))
        reply = json.loads(ws.recv(10))
    assert reply["code"] == "rate_limited" and reply["retry_after"] == 5


def test_max_per_ip_on_every_transport(start_gateway: Any, nc_path: str, curl_path: str) -> None:
    gw = start_gateway("[quota]\nmax_per_ip = 1\n")
    with connect(f"ws://127.0.0.1:{gw.http_port}/ws") as ws:  # holds 127.0.0.1's one slot
        ws.send("test")
        assert ws.recv(10) == "Command not found."
        assert nc(gw.tcp_port, b"test\n") == "Too many connections from 127.0.0.1. Bye!\n"
        status, headers, body = curl(gw.url("/comphash?path=/etc/hostname"))
        assert (status, headers["retry-after"]) == (503, "5")
        assert body == b"error: Too many connections from 127.0.0.1. Bye!\n"
