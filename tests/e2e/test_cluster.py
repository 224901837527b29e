"""Several gateway processes on one real redis-server: one quota for all.

Clients are real connections on every transport (the line server, HTTP,
the WebSocket); the quota's state is sampled straight from Redis while they
come and go.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import redis
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from ..support.e2e import BIN, Gateway, make_certificate, pid_alive
from ..support.redis import RedisServer

MAX = 6
TTL = 2.0


def cluster_config(server: RedisServer, on_down: str = "refuse", extra: str = "") -> str:
    return (
        f"[quota]\nmax_clients = {MAX}\n"
        "[limits]\ncommands_per_second = 0\n"
        f'[cluster]\nredis = "{server.url}"\nlease_ttl = {TTL}\ntimeout = 0.3\n'
        f'on_redis_down = "{on_down}"\n{extra}'
    )


def held_in_redis(client: redis.Redis) -> int:
    """Places allotted across every process: never fewer than clients hold."""
    return int(client.hget("{gw}:sum", "all") or 0)


class Sampler(threading.Thread):
    """Reads the shared quota every few milliseconds; keeps the highest."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.highest = 0
        self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.highest = max(self.highest, held_in_redis(self.client))
                self.samples += 1
            except redis.RedisError:
                pass  # Redis stopped by the test
            time.sleep(0.003)


def tcp_client(port: int) -> str:
    """One line-server client: holds its place a moment, runs a command, leaves."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.settimeout(10)
        time.sleep(random.uniform(0.02, 0.15))
        try:
            s.sendall(b"stats\nexit\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            return "reset"
    text = data.decode()
    if "Too many connections" in text:
        return "busy"
    if "cannot be reached" in text:
        return "unavailable"
    return "ok" if "clients:" in text else f"odd: {text[:80]!r}"


def http_client(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/lastlog?lines=5")
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    return {200: "ok", 503: "busy"}.get(response.status, f"odd: {response.status}")


def ws_client(port: int) -> str:
    try:
        with connect(
            f"ws://127.0.0.1:{port}/ws",
            open_timeout=10,
            subprotocols=[Subprotocol("gateway.v1.json")],
        ) as ws:
            ws.send(json.dumps({"id": 1, "command": "stats"}))
            time.sleep(random.uniform(0.02, 0.15))
            answer = json.loads(ws.recv(timeout=10))
            if answer.get("type") == "result":
                return "ok"
            return "busy" if "Too many connections" in str(answer) else f"odd: {answer}"
    except InvalidStatus:
        return "busy"
    except WebSocketException as e:  # closed with 1013 (try again later)
        return "busy" if "1013" in str(e) else f"odd: {e}"


def storm(gateways: list[Gateway], seconds: float, threads: int = 24) -> dict[str, int]:
    """Clients on every transport of every gateway, for ``seconds``."""
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(n: int) -> None:
        rng = random.Random(n)
        while time.monotonic() < stop:
            gw = rng.choice([g for g in gateways if g.proc.poll() is None] or gateways)
            kind: Callable[[int], str]
            kind, port = rng.choice(
                [(tcp_client, gw.tcp_port), (http_client, gw.http_port), (ws_client, gw.http_port)]
            )
            try:
                outcome = kind(port)
            except (OSError, http.client.HTTPException):
                outcome = "connection failed"  # a gateway killed by the test
            except Exception as e:  # anything else is told, not lost in a thread
                outcome = f"error: {e!r}"
            with lock:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return outcomes


def wait_until(check: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "not in time"
        time.sleep(0.05)
    return time.monotonic() - started


def start_three(start_gateway: Any, config: str) -> list[Gateway]:
    gateways = [start_gateway(config) for _ in range(3)]
    for gw in gateways:
        gw.wait_for(r"client quota shared through redis")
    return gateways


def test_three_gateways_never_hold_more_than_the_quota_and_leak_nothing(
    start_gateway: Any, redis_server: RedisServer
) -> None:
    gateways = start_three(start_gateway, cluster_config(redis_server))
    client = redis_server.client()
    sampler = Sampler(client)
    sampler.start()
    outcomes = storm(gateways, seconds=4)
    sampler.done.set()
    sampler.join()
    assert sampler.samples > 200
    assert 0 < sampler.highest <= MAX, sampler.highest
    assert outcomes.get("ok", 0) > 50, outcomes
    assert outcomes.get("busy", 0) > 0, outcomes  # the storm did pass the quota
    assert set(outcomes) <= {"ok", "busy"}, outcomes
    # every place comes back once the clients have gone
    wait_until(lambda: held_in_redis(client) == 0, timeout=TTL + 2)
    stats = [json.loads(gateway_stats(gw)) for gw in gateways]
    assert all(s["cluster"]["state"] == "up" for s in stats)
    assert all(s["cluster"]["processes"] == 3 for s in stats)
    assert sum(s["clients"]["in_use"] for s in stats) == 0


def gateway_stats(gw: Gateway) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=10)
    conn.request("GET", "/stats", headers={"Accept": "application/json"})
    body = conn.getresponse().read().decode()
    conn.close()
    return body


def hold_tcp(port: int, n: int) -> list[socket.socket]:
    """``n`` line-server clients that stay; each has answered ``help``."""
    held = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"stats\n")
        data = b""
        while b"uptime" not in data and b"Bye" not in data and b"reached" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        assert b"uptime" in data, data
        held.append(s)
    return held


def test_a_gateway_killed_mid_storm_frees_its_places_within_the_lease(
    start_gateway: Any, redis_server: RedisServer
) -> None:
    gateways = start_three(start_gateway, cluster_config(redis_server))
    client = redis_server.client()
    doomed, alive = gateways[0], gateways[1:]
    members = [str(p) for p in client.zrange("{gw}:procs", 0, -1)]
    (proc,) = [p for p in members if f":{doomed.proc.pid}:" in p]
    held = hold_tcp(doomed.tcp_port, 3)  # places that only the lease can give back
    outcomes: dict[str, int] = {}
    clients = threading.Thread(target=lambda: outcomes.update(storm(gateways, seconds=3)))
    clients.start()
    time.sleep(1)
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait()
    killed = time.monotonic()
    assert int(client.hget("{gw}:alloc:" + proc, "all") or 0) >= 3
    wait_until(lambda: not client.exists("{gw}:alloc:" + proc), timeout=TTL + 2)
    freed = time.monotonic() - killed
    clients.join()
    assert freed <= TTL + 0.5, freed
    assert client.zscore("{gw}:procs", proc) is None
    assert outcomes.get("ok", 0) > 10, outcomes
    # the two left can fill the whole quota between them, and no more
    wait_until(lambda: held_in_redis(client) == 0, timeout=TTL + 2)
    more = hold_tcp(alive[0].tcp_port, MAX // 2) + hold_tcp(alive[1].tcp_port, MAX - MAX // 2)
    assert tcp_client(alive[1].tcp_port) == "busy"
    assert held_in_redis(client) == MAX
    for s in held + more:
        s.close()


def storm_across_an_outage(
    gateways: list[Gateway], server: RedisServer, exact: bool = True
) -> dict[str, int]:
    """A storm of 4 s; Redis stopped after 1 s and started again (empty) after 2.5 s.

    ``exact``: the places in Redis never passed the quota.  Not so with
    ``on_redis_down = "local"``: while Redis is away each process admits its
    share on its own, beside clients it already held, and states what it holds
    when Redis is back, even if that is over the quota for a moment.
    """
    outcomes: dict[str, int] = {}
    sampler = Sampler(server.client())
    sampler.start()

    def run() -> None:
        outcomes.update(storm(gateways, seconds=4, threads=12))

    clients = threading.Thread(target=run)
    clients.start()
    time.sleep(1)
    server.stop()
    time.sleep(1.5)
    server.start()  # same port; every gateway states its places again
    sampler.client = server.client()
    clients.join()
    sampler.done.set()
    sampler.join()
    if exact:
        assert sampler.highest <= MAX, sampler.highest
    for gw in gateways:
        gw.wait_for(r"redis at .* is back: the client quota is shared again", timeout=10)
    return outcomes


def test_redis_away_mid_storm_with_refuse_refuses_then_recovers_without_a_restart(
    start_gateway: Any, redis_server: RedisServer
) -> None:
    gateways = start_three(start_gateway, cluster_config(redis_server, "refuse"))
    outcomes = storm_across_an_outage(gateways, redis_server)
    gateways[0].wait_for(r"redis at .* unreachable .*new clients are refused")
    assert outcomes.get("ok", 0) > 10, outcomes
    assert outcomes.get("unavailable", 0) > 0, outcomes  # the line server said why
    assert set(outcomes) <= {"ok", "busy", "unavailable"}, outcomes
    after = storm(gateways, seconds=1, threads=6)
    assert after.get("ok", 0) > 5 and set(after) <= {"ok", "busy"}, after
    wait_until(lambda: held_in_redis(redis_server.client()) == 0, timeout=TTL + 2)


def test_redis_away_says_so_on_every_transport_and_in_healthz(
    start_gateway: Any, redis_server: RedisServer
) -> None:
    gw = start_gateway(cluster_config(redis_server, "refuse"))
    gw.wait_for("client quota shared through redis")
    redis_server.stop()
    gw.wait_for(r"redis at .* unreachable .*new clients are refused", timeout=5)
    assert tcp_client(gw.tcp_port) == "unavailable"
    assert ws_client(gw.http_port) == "busy"  # close 1013, try again later
    conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=10)
    conn.request("GET", "/lastlog")
    response = conn.getresponse()
    assert response.status == 503
    assert b"cannot be reached" in response.read()
    assert response.getheader("retry-after") is not None
    conn.request("GET", "/healthz")
    health = conn.getresponse().read().decode()
    assert health.startswith("degraded: redis down"), health
    conn.close()
    redis_server.start()
    gw.wait_for(r"is back: the client quota is shared again", timeout=10)
    assert tcp_client(gw.tcp_port) == "ok"
    assert urlopen(gw.url("/healthz"), timeout=10).read() == b"ok\n"


def test_redis_away_mid_storm_with_local_admits_each_process_share(
    start_gateway: Any, redis_server: RedisServer
) -> None:
    gateways = start_three(start_gateway, cluster_config(redis_server, "local"))
    for gw in gateways:  # each has heard how many share the quota

        def heard_all(gw: Gateway = gw) -> bool:
            return bool(json.loads(gateway_stats(gw))["cluster"]["processes"] == 3)

        wait_until(heard_all, 5)
    outcomes = storm_across_an_outage(gateways, redis_server, exact=False)
    gateways[0].wait_for(r"each gateway process now admits its own share, 2 of 6 clients")
    assert outcomes.get("ok", 0) > 10 and set(outcomes) <= {"ok", "busy"}, outcomes
    # while away, one process admits its share and no more
    redis_server.stop()
    gw = gateways[0]
    wait_until(lambda: json.loads(gateway_stats(gw))["cluster"]["state"] == "down", 5)
    held = hold_tcp(gw.tcp_port, MAX // 3)
    assert tcp_client(gw.tcp_port) == "busy"
    redis_server.start()
    gw.wait_for(r"is back: the client quota is shared again", timeout=10)
    wait_until(lambda: held_in_redis(redis_server.client()) == MAX // 3, timeout=5)
    for s in held:
        s.close()


def test_workers_serve_restart_reload_and_stop(
    start_gateway: Any, redis_server: RedisServer
) -> None:
    gw = start_gateway(cluster_config(redis_server), argv=[str(BIN / "gateway"), "--workers", "2"])
    gw.wait_for(r"supervisor: tcp.listen bound on 127.0.0.1:\d+, shared by 2 workers")
    wait_until(lambda: count(gw, "client quota shared through redis") == 2, timeout=15)
    pids = {int(m[0]): int(m[1]) for m in found(gw, r"worker (\d) started \(pid (\d+)\)")}
    assert len(pids) == 2
    results: list[str] = []
    stop = threading.Event()

    def clients() -> None:  # no connection attempt may fail while a worker restarts
        while not stop.is_set():
            results.append(http_client(gw.http_port))
            results.append(tcp_client(gw.tcp_port))

    loop = threading.Thread(target=clients)
    loop.start()
    time.sleep(0.5)
    os.kill(pids[0], signal.SIGKILL)
    gw.wait_for(r"worker 0 \(pid \d+\) ended with signal SIGKILL; restarting in 1 s")
    wait_until(lambda: len(found(gw, r"worker 0 started \(pid (\d+)\)")) == 2, timeout=10)
    wait_until(lambda: count(gw, "client quota shared through redis") == 3, timeout=15)
    time.sleep(0.5)
    stop.set()
    loop.join()
    # Only what the killed worker had already accepted is lost (SIGKILL: no
    # goodbye); every other attempt is served, by the other worker or the new one.
    lost = [r for r in results if r != "ok"]
    assert len(results) > 20 and len(lost) <= 2, {r: results.count(r) for r in results}
    after = [http_client(gw.http_port) for _ in range(10)] + [
        tcp_client(gw.tcp_port) for _ in range(10)
    ]
    assert set(after) == {"ok"}
    workers = [int(p) for p in found(gw, r"worker \d started \(pid (\d+)\)")]

    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: count(gw, "Configuration reloaded") == 2, timeout=10)
    assert gw.stop() == 0
    assert count(gw, "supervisor: every worker has stopped") == 1
    assert not [p for p in workers if pid_alive(p)]


def count(gw: Gateway, text: str) -> int:
    return sum(text in line for line in list(gw.lines))


def found(gw: Gateway, pattern: str) -> list[Any]:
    return [
        m.groups() if len(m.groups()) > 1 else m.group(1)
        for line in list(gw.lines)
        if (m := re.search(pattern, line))
    ]


def test_workers_serve_tls_on_the_socket_they_share(
    start_gateway: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    key, cert = make_certificate(tmp_path)
    listener = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    argv = [str(BIN / "gateway"), "--workers", "2", "--http", listener]
    gw = start_gateway(cluster_config(redis_server), argv=argv)
    wait_until(lambda: count(gw, "client quota shared through redis") == 2, timeout=15)
    context = ssl.create_default_context(cafile=str(cert))
    for _ in range(6):  # either worker may accept: each wraps its connections in TLS
        conn = http.client.HTTPSConnection("127.0.0.1", gw.http_port, timeout=10, context=context)
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b"ok\n"
        conn.close()
    assert gw.stop() == 0
