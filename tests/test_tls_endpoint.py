"""ssl: listeners with a client CA: the endpoint string read by the gateway,
every mistake a ConfigError naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.task import Clock

from gateway.app import endpoint
from gateway.config import ConfigError, TLSConfig, split_endpoint
from gateway.frontends.tls import certificate_cn

from .support.e2e import make_certificate


def test_split_endpoint_reads_escaped_colons() -> None:
    assert split_endpoint(r"ssl:8443:interface=\:\:1:privateKey=/k.pem") == (
        "ssl",
        ["8443"],
        {"interface": "::1", "privateKey": "/k.pem"},
    )


def test_a_client_ca_makes_a_verifying_endpoint(tmp_path: Path) -> None:
    key, cert = make_certificate(tmp_path)
    tls = TLSConfig(client_ca=str(cert), require_client_cert=True)
    found = endpoint(Clock(), "http.listen", f"ssl:0:privateKey={key}:certKey={cert}", tls)
    assert isinstance(found, SSL4ServerEndpoint)
    context = found._sslContextFactory.getContext()
    assert context.get_verify_mode() != 0  # peer verification on


@pytest.mark.parametrize(
    ("description", "message"),
    [
        ("ssl:0", "needs privateKey="),
        ("ssl:privateKey={key}", "needs a port"),
        ("ssl:0:privateKey={key}:certKey={cert}:sslmethod=TLSv1", "sslmethod is not supported"),
        ("ssl:0:privateKey=/nonexistent.pem", "cannot read privateKey /nonexistent.pem"),
        ("ssl:0:privateKey={cert}:certKey={cert}", "cannot load the server key"),
    ],
)
def test_bad_ssl_endpoints_name_the_key(tmp_path: Path, description: str, message: str) -> None:
    key, cert = make_certificate(tmp_path)
    tls = TLSConfig(client_ca=str(cert))
    with pytest.raises(ConfigError) as info:
        endpoint(Clock(), "tcp.listen", description.format(key=key, cert=cert), tls)
    assert info.value.key == "tcp.listen" and message in str(info.value)


def test_a_client_ca_without_certificates_is_refused(tmp_path: Path) -> None:
    key, cert = make_certificate(tmp_path)
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing here\n")
    with pytest.raises(ConfigError, match="tls.client_ca holds no PEM certificate"):
        endpoint(
            Clock(),
            "tcp.listen",
            f"ssl:0:privateKey={key}:certKey={cert}",
            TLSConfig(client_ca=str(empty)),
        )


def test_certificate_cn_of_transports_without_one() -> None:
    class Plain:
        pass

    class NoCert:
        def getPeerCertificate(self) -> None:
            return None

    class Broken:
        def getPeerCertificate(self) -> None:
            raise ValueError("handshake not done")

    assert certificate_cn(Plain()) is None
    assert certificate_cn(NoCert()) is None
    assert certificate_cn(Broken()) is None
