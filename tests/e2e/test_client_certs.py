"""Client certificates: a verified certificate's CN is a scoped identity on
openssl s_client, curl --cert and WSS; a missing or foreign one is refused at
the handshake."""

from __future__ import annotations

import datetime
import json
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from ..support.e2e import BIN, make_certificate, require_tool, write_pem

TOKEN = "cert-test-token-0123456789abcdef"


def issue(
    directory: Path, name: str, cn: str, ca: tuple[Any, x509.Certificate] | None
) -> tuple[Path, Path, tuple[Any, x509.Certificate]]:
    """A key and certificate for ``cn``, signed by ``ca`` (``None``: a CA itself)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca[1].subject if ca else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    cert = builder.sign(ca[0] if ca else key, hashes.SHA256())
    key_path, cert_path = write_pem(key, cert, directory / f"{name}.key", directory / f"{name}.pem")
    return key_path, cert_path, (key, cert)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    _, ca_pem, ca = issue(tmp_path, "ca", "gateway test CA", None)
    _, _, foreign = issue(tmp_path, "foreign-ca", "another CA", None)
    out = {"ca": (ca_pem, ca_pem)}
    out["ci"] = issue(tmp_path, "ci", "ci.example.org", ca)[:2]
    out["stranger"] = issue(tmp_path, "stranger", "stranger.example.org", ca)[:2]
    out["foreign"] = issue(tmp_path, "foreign", "ci.example.org", foreign)[:2]
    return out


def start(
    start_gateway: Any, tmp_path: Path, pki: dict[str, tuple[Path, Path]]
) -> tuple[Any, Path]:
    key, cert = make_certificate(tmp_path)
    log = tmp_path / "syslog"
    log.write_text("a\nb\n")
    opts = f"interface=127.0.0.1:privateKey={key}:certKey={cert}"
    gw = start_gateway(
        f'[lastlog]\nsource = "{log}"\n'
        f'[tls]\nclient_ca = "{pki["ca"][1]}"\nrequire_client_cert = true\n'
        '[[auth.certificate]]\nname = "ci"\ncn = "ci.example.org"\ncommands = ["lastlog"]\n',
        argv=[str(BIN / "gateway"), "--tcp", f"ssl:0:{opts}", "--http", f"ssl:0:{opts}"],
        env={"GATEWAY_TOKEN": TOKEN},
    )
    return gw, cert


def s_client(
    port: int, server_cert: Path, data: bytes, *cert: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            require_tool("openssl"),
            "s_client",
            "-quiet",
            "-verify_return_error",
            "-CAfile",
            str(server_cert),
            *cert,
            "-connect",
            f"127.0.0.1:{port}",
        ],
        input=data,
        capture_output=True,
        timeout=30,
        check=False,
    )


def with_cert(pki: dict[str, tuple[Path, Path]], name: str) -> list[str]:
    key, cert = pki[name]
    return ["-cert", str(cert), "-key", str(key)]


def test_openssl_s_client_with_a_known_certificate_needs_no_token(
    start_gateway: Any, tmp_path: Path, pki: dict[str, tuple[Path, Path]]
) -> None:
    gw, server_cert = start(start_gateway, tmp_path, pki)
    done = s_client(gw.tcp_port, server_cert, b"lastlog 1\nstats\nexit\n", *with_cert(pki, "ci"))
    assert done.stdout.decode().splitlines() == [
        "Begin lastlog",
        "b",
        "End lastlog",
        'An error occurred: certificate "ci" may not run stats (its commands: lastlog)',
    ], done.stderr
    # Signed by the CA but named by no [[auth.certificate]]: a token, as anyone.
    done = s_client(
        gw.tcp_port,
        server_cert,
        f"lastlog 1\nauth {TOKEN}\nstats\nexit\n".encode(),
        *with_cert(pki, "stranger"),
    )
    lines = done.stdout.decode().splitlines()
    assert lines[:2] == ["Authentication required.", "Authenticated."], lines
    assert lines[2].startswith("clients: 1/10 in use"), lines


def test_a_missing_or_foreign_certificate_is_refused_at_the_handshake(
    start_gateway: Any, tmp_path: Path, pki: dict[str, tuple[Path, Path]]
) -> None:
    gw, server_cert = start(start_gateway, tmp_path, pki)
    for cert in ([], with_cert(pki, "foreign")):
        done = s_client(gw.tcp_port, server_cert, f"auth {TOKEN}\nlastlog 1\n".encode(), *cert)
        assert b"Begin lastlog" not in done.stdout and b"Authenticated" not in done.stdout
        assert b"alert" in done.stderr.lower(), done.stderr  # refused by a TLS alert
    curl = require_tool("curl")
    url = f"https://localhost:{gw.http_port}/lastlog?lines=1"
    done = subprocess.run(
        [curl, "-s", "--cacert", str(server_cert), "-H", f"Authorization: Bearer {TOKEN}", url],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0 and done.stdout == b""


def test_curl_and_wss_with_a_known_certificate(
    start_gateway: Any, tmp_path: Path, pki: dict[str, tuple[Path, Path]]
) -> None:
    gw, server_cert = start(start_gateway, tmp_path, pki)
    key, cert = pki["ci"]
    done = subprocess.run(
        [
            require_tool("curl"),
            "-s",
            "-w",
            "\n%{http_code}",
            "--cacert",
            str(server_cert),
            "--cert",
            str(cert),
            "--key",
            str(key),
            f"https://localhost:{gw.http_port}/lastlog?lines=1",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.stdout == b"b\n\n200", done.stderr
    context = ssl.create_default_context(cafile=str(server_cert))
    context.load_cert_chain(str(cert), str(key))
    with connect(
        f"wss://localhost:{gw.http_port}/ws",
        ssl=context,
        subprotocols=[Subprotocol("gateway.v1.json")],
    ) as ws:
        ws.send(json.dumps({"id": 1, "command": "lastlog", "args": {"lines": 1}}))
        got = [json.loads(ws.recv(timeout=10)) for _ in range(2)]
        assert [(m["type"], m.get("text")) for m in got] == [("line", "b"), ("result", None)], got
        ws.send(json.dumps({"id": 2, "command": "stats"}))
        while (answer := json.loads(ws.recv(timeout=10)))["id"] != 2:
            pass
        assert (answer["type"], answer["code"]) == ("error", "forbidden")
