"""Named tokens with scopes against a real gateway: nc, curl and a WebSocket
client get the same forbidden answer for the same request."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from websockets.sync.client import connect
from websockets.typing import Subprotocol

from ..support.e2e import curl, nc

DASHBOARD = "dashboard-token-0123456789abcdef"
RELEASE = "release-token-0123456789abcdef00"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start(start_gateway: Any, tmp_path: Path) -> Any:
    log = tmp_path / "syslog"
    log.write_text("".join(f"line {i}\n" for i in range(300)))
    releases = tmp_path / "releases"
    releases.mkdir()
    (releases / "app.tar").write_bytes(b"release")
    (tmp_path / "secret").write_bytes(b"secret")
    return start_gateway(
        f'[lastlog]\nsource = "{log}"\n'
        f'[[auth.token]]\nname = "dashboard"\nsha256 = "{sha(DASHBOARD)}"\n'
        'commands = ["lastlog", "stats", "help"]\nmax_lines = 200\n'
        f'[[auth.token]]\nname = "release-check"\nsha256 = "{sha(RELEASE)}"\n'
        f'commands = ["comphash"]\nroots = ["{releases}"]\nalgorithms = ["sha256"]\n'
    )


def test_nc_curl_and_websocket_are_refused_alike(start_gateway: Any, tmp_path: Path) -> None:
    gw = start(start_gateway, tmp_path)
    said = nc(
        gw.tcp_port, f"auth {DASHBOARD}\nlastlog 201\ncomphash /etc/hostname\nlastlog 1\n".encode()
    )
    assert said.splitlines() == [
        "Authenticated.",
        'An error occurred: token "dashboard" may ask for at most 200 lines',
        'An error occurred: token "dashboard" may not run comphash '
        "(its commands: help, lastlog, stats)",
        "Begin lastlog",
        "line 299",
        "End lastlog",
    ]
    bearer = ("-H", f"Authorization: Bearer {RELEASE}")
    status, _, body = curl(
        gw.url(f"/comphash?path={tmp_path}/secret&algorithm=sha256&format=json"), *bearer
    )
    assert status == 403
    problem = json.loads(body)
    assert problem["code"] == "forbidden"
    assert problem["detail"] == (
        f'token "release-check" may not use paths outside {tmp_path}/releases: {tmp_path}/secret'
    )
    status, _, body = curl(
        gw.url(f"/comphash?path={tmp_path}/releases/app.tar&algorithm=sha256"), *bearer
    )
    assert status == 200 and body.startswith(hashlib.sha256(b"release").hexdigest().encode())
    status, _, _ = curl(gw.url("/metrics"), *bearer)
    assert status == 403  # metrics are stats' figures: not in its scope
    status, _, _ = curl(gw.url("/metrics"), "-H", f"Authorization: Bearer {DASHBOARD}")
    assert status == 200
    with connect(
        f"ws://127.0.0.1:{gw.http_port}/ws",
        subprotocols=[Subprotocol("gateway.v1.json")],
        additional_headers={"Authorization": f"Bearer {RELEASE}"},
    ) as ws:
        ws.send(json.dumps({"id": 1, "command": "lastlog", "args": {"lines": 1}}))
        answer = json.loads(ws.recv(timeout=10))
        assert (answer["type"], answer["code"]) == ("error", "forbidden")
        assert (
            answer["message"]
            == 'token "release-check" may not run lastlog (its commands: comphash)'
        )
    gw.wait_for(r"tcp 127\.0\.0\.1 lastlog: forbidden")
