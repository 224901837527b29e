"""The audit trail of a real gateway: every transport's commands, no token,
reopened on SIGHUP, and a full disk reported by /healthz, not fatal."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import connect
from websockets.typing import Subprotocol

from ..support.e2e import curl, nc

TOKEN = "auditor-token-0123456789abcdef00"


def records(path: Path, n: int, timeout: float = 10) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        lines = text.splitlines()
        if len(lines) >= n or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)


def test_every_transport_is_audited_without_the_token(start_gateway: Any, tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_text("a\nb\n")
    audit = tmp_path / "audit.jsonl"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    gw = start_gateway(
        f'[lastlog]\nsource = "{log}"\n[audit]\nfile = "{audit}"\n'
        f'[[auth.token]]\nname = "ops"\nsha256 = "{digest}"\ncommands = ["lastlog", "stats"]\n'
    )
    assert nc(gw.tcp_port, f"auth {TOKEN}\nlastlog 2\nhelp\n".encode()).splitlines()[0] == (
        "Authenticated."
    )
    status, _, _ = curl(gw.url("/lastlog?lines=1"), "-H", f"Authorization: Bearer {TOKEN}")
    assert status == 200
    with connect(
        f"ws://127.0.0.1:{gw.http_port}/ws",
        subprotocols=[Subprotocol("gateway.v1.json")],
    ) as ws:
        ws.send(json.dumps({"id": 1, "auth": TOKEN}))
        ws.recv(timeout=10)
        ws.send(json.dumps({"id": 2, "command": "stats"}))
        ws.recv(timeout=10)
    got = records(audit, 4)
    assert [(r["transport"], r["command"], r["args"], r["outcome"]) for r in got] == [
        ("tcp", "lastlog", "2", "ok"),
        ("tcp", "help", "", "forbidden"),
        ("http", "lastlog", {"lines": "1"}, "ok"),
        ("websocket", "stats", {}, "ok"),
    ]
    assert {(r["identity"], r["proof"], r["peer"]) for r in got} == {("ops", "token", "127.0.0.1")}
    assert got[0]["bytes"] == len("a\nb\n") and got[0]["duration_ms"] >= 0
    text = audit.read_text()
    assert TOKEN not in text and "auth" not in text and digest not in text
    _, _, metrics = curl(gw.url("/metrics"), "-H", f"Authorization: Bearer {TOKEN}")
    assert 'gateway_audit_records_total{state="written"} 4' in metrics.decode()
    assert "gateway_audit_failing 0" in metrics.decode()

    audit.rename(tmp_path / "audit.jsonl.1")  # logrotate's move, then its SIGHUP
    gw.proc.send_signal(signal.SIGHUP)
    gw.wait_for("Configuration reloaded")
    status, _, _ = curl(gw.url("/stats"), "-H", f"Authorization: Bearer {TOKEN}")
    assert status == 200
    assert [r["command"] for r in records(audit, 1)] == ["stats"]


def test_an_audit_log_that_cannot_be_written_is_degraded_not_down(
    start_gateway: Any, tmp_path: Path
) -> None:
    log = tmp_path / "syslog"
    log.write_text("a\n")
    gw = start_gateway(f'[lastlog]\nsource = "{log}"\n[audit]\nfile = "/dev/full"\n')
    status, _, body = curl(gw.url("/lastlog"))
    assert (status, body) == (200, b"a\n")  # served all the same
    gw.wait_for(r"cannot write the audit log to /dev/full: No space left on device")
    status, _, body = curl(gw.url("/healthz?format=json"))
    assert status == 200
    assert json.loads(body) == {
        "status": "degraded",
        "problems": ["audit log failing (/dev/full: No space left on device)"],
    }
    assert nc(gw.tcp_port, b"lastlog\n").splitlines() == ["Begin lastlog", "a", "End lastlog"]
    status, _, body = curl(gw.url("/metrics"))
    metrics = body.decode()
    assert "gateway_audit_failing 1" in metrics
    assert 'gateway_audit_records_total{state="written"} 0' in metrics
    assert 'gateway_audit_records_total{state="failed"} 0' not in metrics  # (it counts them)
