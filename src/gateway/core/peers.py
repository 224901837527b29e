"""Client addresses as the gateway knows them: one spelling per client.

A dual-stack listener reports an IPv4 client as ``::ffff:127.0.0.9``; an IPv4
listener as ``127.0.0.9``.  :func:`normalise` makes them one address, so the
log, the per-address quota, the rate limit and the lockout agree.

:func:`limit_key` is what per-address limits count by.  An IPv6 host is
usually given a whole /64 and can pick any address in it, so limiting by the
full address would let one host take as many places as it likes: IPv6
clients are counted by their /64 (loopback stays itself).
"""

from __future__ import annotations

import ipaddress


def normalise(host: str) -> str:
    """``::ffff:a.b.c.d`` -> ``a.b.c.d``; other addresses in their short form."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else str(address)


def peer_host(address: object) -> str:
    """The client's address as quotas, limits and logs know it (``unix`` for sockets)."""
    host = getattr(address, "host", None)
    return normalise(str(host)) if host is not None else "unix"


def limit_key(peer: str) -> str:
    """What per-address limits count ``peer`` under: itself, or its IPv6 /64."""
    if ":" not in peer:
        return peer
    try:
        address = ipaddress.IPv6Address(peer)
    except ValueError:
        return peer
    if address.is_loopback:
        return peer
    return str(ipaddress.IPv6Network((address, 64), strict=False))
