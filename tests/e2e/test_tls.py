"""TLS through endpoint strings: the line server, HTTPS and WSS, with a
certificate the test makes."""

from __future__ import annotations

import json
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin, Subprotocol

from ..support.e2e import BIN, curl, make_certificate, read_line, require_tool

pytestmark = pytest.mark.e2e

TOKEN = "tls-test-token-0123456789"


@pytest.fixture
def tls_gateway(start_gateway: Any, tmp_path: Path) -> tuple[Any, Path]:
    key, cert = make_certificate(tmp_path)
    ssl_opts = f"interface=127.0.0.1:privateKey={key}:certKey={cert}"
    gw = start_gateway(
        argv=[
            str(BIN / "gateway"),
            "--tcp",
            f"ssl:0:{ssl_opts}",
            "--http",
            f"ssl:0:{ssl_opts}",
        ],
        env={"GATEWAY_TOKEN": TOKEN},
    )
    return gw, cert


def test_line_server_over_tls_with_openssl_s_client(tls_gateway: tuple[Any, Path]) -> None:
    gw, cert = tls_gateway
    done = subprocess.run(
        [
            require_tool("openssl"),
            "s_client",
            "-quiet",
            "-verify_return_error",
            "-CAfile",
            str(cert),
            "-connect",
            f"127.0.0.1:{gw.tcp_port}",
        ],
        input=f"auth {TOKEN}\ntest\nexit\n".encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.stdout.decode().splitlines() == ["Authenticated.", "Command not found."], (
        done.stderr
    )


def test_line_server_over_tls_with_ncat(tls_gateway: tuple[Any, Path]) -> None:
    gw, cert = tls_gateway
    # ncat checks the name it connected to against the certificate: use localhost.
    ncat = subprocess.Popen(
        [
            require_tool("ncat"),
            "--ssl",
            "--ssl-verify",
            "--ssl-trustfile",
            str(cert),
            "localhost",
            str(gw.tcp_port),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert ncat.stdin is not None and ncat.stdout is not None
    ncat.stdin.write(f"auth {TOKEN}\nhelp\n".encode())
    ncat.stdin.flush()
    try:
        assert read_line(ncat, 20) == b"Authenticated.\n"
        assert read_line(ncat, 20).startswith(b"lastlog [N]")
    finally:
        ncat.kill()
        ncat.wait()


def test_https(tls_gateway: tuple[Any, Path]) -> None:
    gw, cert = tls_gateway
    base = f"https://127.0.0.1:{gw.http_port}"
    assert curl(base + "/healthz", "--cacert", str(cert))[::2] == (200, b"ok\n")
    status, headers, _ = curl(base + "/stats", "--cacert", str(cert))
    assert status == 401
    status, _, body = curl(
        base + "/stats?format=json", "--cacert", str(cert), "-H", f"Authorization: Bearer {TOKEN}"
    )
    assert status == 200 and json.loads(body)["clients"]["max"] == 10


def test_wss_with_the_browser_origin_of_https(tls_gateway: tuple[Any, Path]) -> None:
    gw, cert = tls_gateway
    context = ssl.create_default_context(cafile=str(cert))
    url = f"wss://127.0.0.1:{gw.http_port}/ws"
    origin = Origin(f"https://127.0.0.1:{gw.http_port}")  # what a browser on the console sends
    with connect(
        url, ssl=context, origin=origin, subprotocols=[Subprotocol("gateway.v1.json")]
    ) as ws:
        ws.send(json.dumps({"id": 1, "auth": TOKEN}))
        assert json.loads(ws.recv(10))["result"] == {"authenticated": True}
        ws.send(json.dumps({"id": 2, "line": "nope"}))
        assert json.loads(ws.recv(10))["code"] == "unknown_command"
    with pytest.raises(InvalidStatus) as info:  # http:// on the same host is another origin
        connect(url, ssl=context, origin=f"http://127.0.0.1:{gw.http_port}")  # type: ignore[call-overload]
    assert info.value.response.status_code == 403
