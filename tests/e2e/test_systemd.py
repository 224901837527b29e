"""systemd socket activation: the gateway adopts the sockets it is passed
(by index or by name), and a restart (stop, then start, the sockets held
meanwhile as systemd holds them) loses no connection attempt under load."""

from __future__ import annotations

import http.client
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..support.e2e import BIN, Gateway

#: What systemd does before exec: the sockets at fds 3, 4, and the variables
#: that say so (LISTEN_PID: this very process, which then becomes the gateway).
ACTIVATE = """
import os, sys
tcp, web = int(sys.argv[1]), int(sys.argv[2])
os.dup2(tcp, 3)
os.dup2(web, 4)
for fd in (tcp, web):
    if fd > 4:
        os.close(fd)
os.environ.update(
    LISTEN_PID=str(os.getpid()), LISTEN_FDS="2", LISTEN_FDNAMES="gateway-tcp:gateway-http"
)
os.execv(sys.argv[3], sys.argv[3:])
"""


def listening() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4096)
    return s


def activated(tmp_path: Path, tcp: socket.socket, web: socket.socket, **kw: Any) -> Gateway:
    return Gateway(
        tmp_path,
        kw.get("config", ""),
        argv=[
            sys.executable,
            "-c",
            ACTIVATE,
            str(tcp.fileno()),
            str(web.fileno()),
            str(BIN / "gateway"),
            "--tcp",
            kw.get("tcp_listen", "systemd:domain=INET:index=0"),
            "--http",
            "systemd:domain=INET:name=gateway-http",
        ],
        pass_fds=(tcp.fileno(), web.fileno()),
    )


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def line_command(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"help\nexit\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def test_a_restart_with_held_sockets_loses_no_connection_attempt(tmp_path: Path) -> None:
    tcp, web = listening(), listening()
    tcp_port, http_port = tcp.getsockname()[1], web.getsockname()[1]
    # One address sends it all: no per-address rate limit here.
    unlimited = "[limits]\ncommands_per_second = 0\n[quota]\nmax_clients = 100\nmax_per_ip = 100\n"
    first = activated(tmp_path, tcp, web, config=unlimited)
    first.wait_for(r"TCP listening on 127\.0\.0\.1:" + str(tcp_port))
    first.wait_for(r"HTTP listening on 127\.0\.0\.1:" + str(http_port))

    stop = threading.Event()
    results: list[tuple[str, object]] = []
    lock = threading.Lock()

    def http_load() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                outcome: object = get(http_port, "/commands")[0]
            except OSError as e:
                outcome = repr(e)
            with lock:
                results.append(("http", outcome))
            time.sleep(max(0.0, 0.02 - (time.monotonic() - started)))  # 50/s per thread

    def tcp_load() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                answer = line_command(tcp_port)
                outcome: object = "answered" if answer else "empty"
            except OSError as e:
                outcome = repr(e)
            with lock:
                results.append(("tcp", outcome))
            time.sleep(max(0.0, 0.05 - (time.monotonic() - started)))

    threads = [threading.Thread(target=http_load) for _ in range(20)]  # ~1000 requests/s
    threads += [threading.Thread(target=tcp_load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        assert first.stop() == 0  # systemctl restart: stop, then start
        second = activated(tmp_path, tcp, web, config=unlimited)
        second.wait_for(r"HTTP listening on 127\.0\.0\.1:" + str(http_port))
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    try:
        http_outcomes = [o for kind, o in results if kind == "http"]
        tcp_outcomes = [o for kind, o in results if kind == "tcp"]
        print(f"handover: {len(http_outcomes)} HTTP requests, {len(tcp_outcomes)} TCP sessions")
        assert len(http_outcomes) > 1500, len(http_outcomes)
        assert set(http_outcomes) == {200}, {o for o in http_outcomes if o != 200}
        assert tcp_outcomes and set(tcp_outcomes) == {"answered"}
        second.wait_for(r"http 127\.0\.0\.1 help: ok")  # the new one served too
    finally:
        assert second.stop() == 0
        tcp.close()
        web.close()


def test_a_socket_that_was_not_passed_is_a_clear_error(tmp_path: Path) -> None:
    tcp, web = listening(), listening()
    try:
        gw = activated(tmp_path, tcp, web, tcp_listen="systemd:domain=INET:index=7")
        assert gw.proc.wait(30) == 2
        gw.wait_for(
            r"refusing to listen beyond loopback without auth tokens \(tcp\.listen = systemd"
        )
        token = "systemd-test-token-0123456789ab"
        gw = activated(
            tmp_path,
            tcp,
            web,
            tcp_listen="systemd:domain=INET:index=7",
            config=f'[auth]\ntokens = ["{token}"]\n',
        )
        assert gw.proc.wait(30) == 2
        gw.wait_for(r"config error: tcp\.listen: bad endpoint 'systemd:domain=INET:index=7'")
    finally:
        tcp.close()
        web.close()
