"""A real ``redis-server`` for the cluster tests: loopback, a free port, no persistence."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from .e2e import free_port, require_tool


class RedisServer:
    """``start()``, ``stop()`` and ``start()`` again on the same port (a restart)."""

    def __init__(
        self,
        directory: Path,
        *extra: str,
        password: str | None = None,
        tls: tuple[Path, Path] | None = None,
        unix: bool = False,
    ) -> None:
        """``tls``: (key, certificate) to serve TLS only; ``unix``: a socket too."""
        self.binary = require_tool("redis-server")
        self.directory = directory
        self.extra = list(extra)
        self.password = password
        self.tls = tls
        self.socket = directory / "redis.sock" if unix else None
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        if password:
            self.extra += ["--requirepass", password]
        if unix:
            self.extra += ["--unixsocket", str(self.socket), "--unixsocketperm", "600"]

    @property
    def url(self) -> str:
        if self.socket is not None:
            return f"unix://{self.socket}?db=0"
        return f"{'rediss' if self.tls else 'redis'}://localhost:{self.port}/0"

    def client(self) -> redis.Redis:
        if self.tls is not None:
            return redis.Redis(
                port=self.port,
                socket_timeout=5,
                decode_responses=True,
                ssl=True,
                ssl_ca_certs=str(self.tls[1]),
                password=self.password,
            )
        return redis.Redis(
            port=self.port, socket_timeout=5, decode_responses=True, password=self.password
        )

    def start(self) -> RedisServer:
        port = (
            ["--port", "0", "--tls-port", str(self.port)]
            if self.tls
            else ["--port", str(self.port)]
        )
        if self.tls:
            key, cert = self.tls
            port += ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
            port += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
        argv = [
            self.binary,
            *port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            *self.extra,
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
