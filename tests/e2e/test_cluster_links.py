"""How a gateway reaches Redis: a password, a unix socket, TLS; and a wrong
password, told without ever being shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.request import urlopen

from ..support.e2e import make_certificate
from ..support.redis import RedisServer
from .test_cluster import hold_tcp, tcp_client

SECRET = "a-redis-password-4321"


def config(url: str, extra: str = "") -> str:
    return (
        "[quota]\nmax_clients = 2\n"
        f'[cluster]\nredis = "{url}"\nlease_ttl = 2\ntimeout = 0.3\n{extra}'
    )


def shares(gw: Any, server: RedisServer) -> None:
    gw.wait_for("client quota shared through redis")
    held = hold_tcp(gw.tcp_port, 2)
    assert tcp_client(gw.tcp_port) == "busy"
    assert int(server.client().hget("{gw}:sum", "all") or 0) == 2
    for s in held:
        s.close()


def test_a_unix_socket_and_a_password_from_the_environment(
    start_gateway: Any, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path, password=SECRET, unix=True).start()
    try:
        gw = start_gateway(config(server.url), env={"GATEWAY_REDIS_PASSWORD": SECRET})
        shares(gw, server)
        assert SECRET not in "\n".join(gw.lines)
    finally:
        server.stop()


def test_a_password_file_and_tls_with_a_private_ca(start_gateway: Any, tmp_path: Path) -> None:
    key, cert = make_certificate(tmp_path)
    server = RedisServer(tmp_path, password=SECRET, tls=(key, cert)).start()
    secret_file = tmp_path / "redis.pass"
    secret_file.write_text(SECRET + "\n")
    try:
        gw = start_gateway(
            config(server.url, f'password_file = "{secret_file}"\ntls_ca = "{cert}"\n')
        )
        shares(gw, server)
        gw.wait_for(r"redis at rediss://localhost:\d+/0 reachable")
    finally:
        server.stop()


def test_a_wrong_password_is_told_never_shown_and_the_gateway_keeps_serving(
    start_gateway: Any, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path, password=SECRET).start()
    url = server.url.replace("redis://", "redis://:not-the-password-99@")
    try:
        gw = start_gateway(config(url, 'on_redis_down = "local"\n'))
        gw.wait_for(r"redis at redis://localhost:\d+/0 unreachable \(.*auth.*\)", timeout=10)
        assert tcp_client(gw.tcp_port) == "ok"  # its own share meanwhile
        health = urlopen(gw.url("/healthz"), timeout=10).read().decode()
        assert health.startswith("degraded: redis down: ") and "auth" in health, health
        assert "not-the-password-99" not in health
        log = "\n".join(gw.lines)
        assert "not-the-password-99" not in log and SECRET not in log
    finally:
        server.stop()
