"""Named tokens with scopes against a real gateway: nc, curl and a WebSocket
client get the same forbidden answer for the same request."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import connect
from websockets.typing import Subprotocol

from ..support.e2e import BIN, curl, nc, open_nc, read_line, read_until_closed

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


def test_help_commands_and_openapi_list_only_what_the_token_may_run(
    start_gateway: Any, tmp_path: Path
) -> None:
    gw = start(start_gateway, tmp_path)
    said = nc(gw.tcp_port, f"auth {DASHBOARD}\nhelp\n".encode())
    listed = [line.split()[0] for line in said.splitlines()[1:]]
    assert sorted(listed) == ["exit", "help", "lastlog", "stats"]  # exit: always
    status, _, body = curl(gw.url("/commands"), "-H", f"Authorization: Bearer {RELEASE}")
    assert status == 403  # help is not among release-check's commands
    status, _, body = curl(gw.url("/openapi.json"), "-H", f"Authorization: Bearer {DASHBOARD}")
    assert status == 200
    paths = json.loads(body)["paths"]
    assert {"/commands", "/lastlog", "/stats"} <= set(paths) and "/comphash" not in paths
    status, _, body = curl(gw.url("/openapi.json"))
    assert "/comphash" in json.loads(body)["paths"]  # no token: the whole description


def test_max_clients_caps_one_tokens_connections_on_every_transport(
    start_gateway: Any, tmp_path: Path
) -> None:
    log = tmp_path / "syslog"
    log.write_text("x\n")
    gw = start_gateway(
        f'[lastlog]\nsource = "{log}"\n'
        f'[[auth.token]]\nname = "one"\nsha256 = "{sha(DASHBOARD)}"\nmax_clients = 1\n'
    )
    first = open_nc(gw.tcp_port)
    assert first.stdin is not None
    try:
        first.stdin.write(f"auth {DASHBOARD}\n".encode())
        first.stdin.flush()
        assert read_line(first, 10) == b"Authenticated.\n"
        refused = 'token "one" already holds its 1 connection (its max_clients)'
        assert nc(gw.tcp_port, f"auth {DASHBOARD}\nstats\n".encode()).splitlines() == [
            refused  # said as the quota's other refusals are
        ]
        status, _, body = curl(
            gw.url("/lastlog?format=json"), "-H", f"Authorization: Bearer {DASHBOARD}"
        )
        assert status == 503 and json.loads(body)["detail"] == refused
        with connect(
            f"ws://127.0.0.1:{gw.http_port}/ws",
            subprotocols=[Subprotocol("gateway.v1.json")],
            additional_headers={"Authorization": f"Bearer {DASHBOARD}"},
        ) as ws:
            answer = json.loads(ws.recv(timeout=10))
            assert (answer["code"], answer["message"]) == ("quota_exceeded", refused)
    finally:
        first.kill()
        first.wait()
    deadline = time.monotonic() + 10
    while True:  # its place is given back when it leaves
        status, _, _ = curl(gw.url("/lastlog"), "-H", f"Authorization: Bearer {DASHBOARD}")
        if status == 200:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_reload_that_removes_a_token_closes_its_connections(
    start_gateway: Any, tmp_path: Path
) -> None:
    gw = start(start_gateway, tmp_path)
    client = open_nc(gw.tcp_port)
    assert client.stdin is not None
    with connect(
        f"ws://127.0.0.1:{gw.http_port}/ws",
        subprotocols=[Subprotocol("gateway.v1.json")],
        additional_headers={"Authorization": f"Bearer {DASHBOARD}"},
    ) as ws:
        client.stdin.write(f"auth {DASHBOARD}\n".encode())
        client.stdin.flush()
        assert read_line(client, 10) == b"Authenticated.\n"
        ws.send(json.dumps({"id": 1, "command": "stats"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "result"
        config = gw.config_path.read_text()
        cut = config.index('[[auth.token]]\nname = "dashboard"')
        rest = config[cut:].split("[[auth.token]]", 2)
        gw.config_path.write_text(config[:cut] + "[[auth.token]]" + rest[2])
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait_for("Configuration reloaded")
        gone = 'token "dashboard" is no longer accepted'
        assert read_line(client, 10) == f"{gone}\n".encode()
        assert read_until_closed(client, 10) == b""
        answer = json.loads(ws.recv(timeout=10))
        assert (answer["code"], answer["message"]) == ("unauthorized", gone)
    client.kill()
    client.wait()
    status, _, _ = curl(gw.url("/stats"), "-H", f"Authorization: Bearer {DASHBOARD}")
    assert status == 401


def test_no_token_reaches_a_log_stats_metrics_audit_or_check_config(
    start_gateway: Any, tmp_path: Path
) -> None:
    log = tmp_path / "syslog"
    log.write_text("x\n")
    audit = tmp_path / "audit.jsonl"
    plain = "plain-secret-token-0123456789ab"
    config = (
        f'[lastlog]\nsource = "{log}"\n[audit]\nfile = "{audit}"\n'
        f'[auth]\ntokens = ["{plain}"]\n'
        f'[[auth.token]]\nname = "dashboard"\nsha256 = "{sha(DASHBOARD)}"\n'
    )
    gw = start_gateway(config)
    nc(gw.tcp_port, f"auth {DASHBOARD}\nlastlog\nauth {plain}\nstats\n".encode())
    nc(gw.tcp_port, f"AUTH\t{DASHBOARD}\nauth wrong-{DASHBOARD}\n".encode())
    bearer = ("-H", f"Authorization: Bearer {DASHBOARD}")
    texts: list[bytes | str] = [
        curl(gw.url("/stats"), *bearer)[2],
        curl(gw.url("/stats?format=json"), *bearer)[2],
    ]
    texts.append(curl(gw.url("/metrics"), *bearer)[2])
    with connect(
        f"ws://127.0.0.1:{gw.http_port}/ws", subprotocols=[Subprotocol("gateway.v1.json")]
    ) as ws:
        ws.send(json.dumps({"id": 1, "auth": DASHBOARD}))
        ws.recv(timeout=10)
        ws.send(json.dumps({"id": 2, "line": f"auth {plain}"}))
        ws.recv(timeout=10)
    checked = subprocess.run(
        [str(BIN / "gateway"), "--config", str(gw.config_path), "--check-config"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    gw.wait_for(r"Lost WebSocket connection from 127\.0\.0\.1")
    assert gw.stop() == 0
    texts += [checked, "\n".join(gw.lines), audit.read_text()]
    for text in texts:
        shown = text.decode() if isinstance(text, bytes) else text
        for secret in (DASHBOARD, plain, sha(DASHBOARD)):
            assert secret not in shown
    assert '"sha256": "***"' in checked and "auth ***" in "\n".join(gw.lines)
    assert [json.loads(line)["command"] for line in audit.read_text().splitlines()] == [
        "lastlog",
        "stats",
        "stats",
        "stats",
    ]
