"""``ssl:`` listeners that ask for client certificates (``[tls] client_ca``).

Twisted's ``ssl:`` endpoint string has no option for a client CA, so when
one is configured the gateway reads the same string itself (``port``,
``privateKey``, ``certKey``, ``interface``, ``backlog``, ``extraCertChain``)
and builds the TLS options with the CA to verify clients against.  A
missing certificate (with ``require_client_cert``) or one the CA did not
sign is refused during the handshake, before any byte of the protocol.

:func:`certificate_cn` reads who a verified client certificate names.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint

from gateway.config import split_endpoint

KNOWN = frozenset({"port", "privateKey", "certKey", "interface", "backlog", "extraCertChain"})
PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


class TLSError(ValueError):
    pass


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSError(f"cannot read {what} {path}: {e.strerror}") from None


def certificates(pem: bytes, what: str) -> list[Any]:
    """Every certificate in a PEM file (OpenSSL objects)."""
    blocks = PEM_BLOCK.findall(pem)
    if not blocks:
        raise TLSError(f"{what} holds no PEM certificate")
    return [ssl.Certificate.loadPEM(block).original for block in blocks]


def client_cert_endpoint(
    reactor: Any, description: str, client_ca: str, require: bool
) -> IStreamServerEndpoint:
    """The ``ssl:`` listener ``description``, verifying client certificates
    against the CAs in ``client_ca`` (and refusing clients without one when
    ``require``)."""
    kind, positional, named = split_endpoint(description)
    if kind != "ssl":
        raise TLSError("only ssl: listeners take client certificates")
    unknown = sorted(set(named) - KNOWN)
    if unknown:
        raise TLSError(f"{unknown[0]} is not supported together with tls.client_ca")
    port_text = named.get("port") or (positional[0] if positional else "")
    if not port_text.isdigit() or len(positional) > 1:
        raise TLSError("needs a port: ssl:PORT:privateKey=...")
    if "privateKey" not in named:
        raise TLSError("needs privateKey=")
    key_pem = _read(named["privateKey"], "privateKey")
    cert_pem = _read(named.get("certKey", named["privateKey"]), "certKey")
    try:
        server = ssl.PrivateCertificate.loadPEM(key_pem + b"\n" + cert_pem)
    except Exception as e:  # OpenSSL's errors are many
        raise TLSError(f"cannot load the server key and certificate: {e}") from None
    chain = (
        certificates(_read(named["extraCertChain"], "extraCertChain"), "extraCertChain")
        if "extraCertChain" in named
        else []
    )
    cas = certificates(_read(client_ca, "tls.client_ca"), "tls.client_ca")
    options = ssl.CertificateOptions(
        privateKey=server.privateKey.original.to_cryptography_key(),
        certificate=server.original.to_cryptography(),
        extraCertChain=chain or None,
        verify=True,
        caCerts=cas,
        requireCertificate=require,
    )
    backlog = int(named.get("backlog", "50"))
    return SSL4ServerEndpoint(reactor, int(port_text), options, backlog, named.get("interface", ""))


def certificate_cn(transport: Any) -> str | None:
    """The subject common name of the verified client certificate on
    ``transport`` (``None``: not TLS, or no certificate)."""
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    try:
        cert = get()
    except Exception:  # the handshake is not done (or failed)
        return None
    if cert is None:
        return None
    cn = cert.get_subject().commonName
    return str(cn) if cn else None
