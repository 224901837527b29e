#!/usr/bin/env python3
"""Side-by-side benchmarks: the gateway against a peer doing the same job.

Each work item starts the gateway and its peer on loopback, pinned to one core
with ``taskset`` while the load generator runs on another, drives the same work
at both, and prints peer figure, gateway figure and their ratio.  It prints;
it never fails on a figure.

    .venv/bin/python bench/run.py               # every item
    .venv/bin/python bench/run.py http_lastlog  # one item

Needs: wrk, webhook, socat, websocketd, hashdeep, b3sum, taskset, frontail (scripts/install-tools
bench; frontail from the npm registry, into bench/.peers).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
GATEWAY = Path(sys.executable).parent / "gateway"
SERVER_CPU = "0"
LOAD_CPU = "1"


@dataclass
class Row:
    work: str
    unit: str
    peer_name: str
    peer: float
    gateway: float
    better: str = "higher"  # or "lower"
    #: The ratio of each round's pair, when the two sides took turns (see
    #: :func:`alternated`): their median is the ratio shown.
    pairs: tuple[float, ...] = ()

    @property
    def ratio(self) -> float:
        if self.pairs:
            return statistics.median(self.pairs)
        if self.better == "higher":
            return self.gateway / self.peer if self.peer else float("inf")
        return self.peer / self.gateway if self.gateway else float("inf")


def need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        sys.exit(f"bench: {tool} is not installed (Debian: apt-get install {tool})")
    return path


def need_frontail() -> str:
    """frontail, from the npm registry (``scripts/install-tools bench`` puts it in bench/.peers)."""
    local = Path(__file__).resolve().parent / ".peers" / "node_modules" / ".bin" / "frontail"
    if local.exists():
        return str(local)
    path = shutil.which("frontail")
    if not path:
        sys.exit("bench: frontail is not installed (sh scripts/install-tools bench)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return [need("taskset"), "-c", cpu, *argv]


@contextmanager
def server(
    argv: list[str], port: int, cpus: str = SERVER_CPU, **kw: object
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        pinned(cpus, argv),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **kw,  # type: ignore[call-overload]
    )
    try:
        wait_port(port)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def gateway(
    config: str, tmp: Path, cpus: str = SERVER_CPU, extra: tuple[str, ...] = ()
) -> Iterator[tuple[int, int]]:
    with gateway_process(config, tmp, cpus, extra) as (tcp, http, _):
        yield tcp, http


def cpu_seconds(proc: subprocess.Popen[bytes]) -> float:
    """The CPU time (user + system) ``proc`` has used so far."""
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def gateway_process(
    config: str, tmp: Path, cpus: str = SERVER_CPU, extra: tuple[str, ...] = ()
) -> Iterator[tuple[int, int, subprocess.Popen[bytes]]]:
    """:func:`gateway`, with its process (for its CPU time)."""
    tcp, http = free_port(), free_port()
    path = tmp / "gateway.toml"
    path.write_text(config)
    argv = [
        str(GATEWAY),
        "--config",
        str(path),
        "--tcp",
        f"tcp:{tcp}:interface=127.0.0.1",
        "--http",
        f"tcp:{http}:interface=127.0.0.1",
        *extra,
    ]
    with server(argv, http, cpus) as proc:
        wait_port(tcp)
        yield tcp, http, proc


def make_log(tmp: Path, size: int = 100 * 1024 * 1024) -> Path:
    log = tmp / "syslog"
    line = b"Nov 25 16:52:01 lab CRON[4945]: (root) CMD (command -v debian-sa1 > /dev/null)\n"
    block = line * (1024 * 1024 // len(line))
    with open(log, "wb") as f:
        while f.tell() < size:
            f.write(block)
    return log


def wrk(
    url: str, connections: int = 50, seconds: int = 10, headers: tuple[str, ...] = ()
) -> tuple[float, float]:
    """Requests per second and p99 latency (ms) from wrk."""
    extra = [arg for header in headers for arg in ("-H", header)]
    done = subprocess.run(
        pinned(
            LOAD_CPU,
            [need("wrk"), "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url],
        ),
        capture_output=True,
        text=True,
        check=True,
    )
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", done.stdout)
    assert p99 is not None, done.stdout
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    if errors:
        print(f"  warning: {errors.group(1)} non-2xx answers from {url}", file=sys.stderr)
    return rps, float(p99.group(1)) * scale


#: Rows that compare servers measure each this many times, taking turns,
ROUNDS = 3
#: for this long each time.
ROUND_SECONDS = 5


@dataclass
class Rounds:
    """What one server did in each round: its rates and its p99s."""

    rates: list[float]
    p99s: list[float]


def alternated(rounds: int, *measures: Callable[[], tuple[float, float]]) -> list[Rounds]:
    """Each ``measure`` (a rate and a p99) ``rounds`` times, taking turns.

    This machine's speed drifts by 10-20% over minutes: measured one after
    the other, two servers would be compared at different speeds.  Taking
    turns, each round compares them at nearly the same speed; the rows show
    the median of each side and the median of the rounds' ratios.
    """
    runs: list[list[tuple[float, float]]] = [[] for _ in measures]
    for _ in range(rounds):
        for taken, measure in zip(runs, measures, strict=True):
            taken.append(measure())
    for taken, measure in zip(runs, measures, strict=True):  # the spread, for the reader
        print(
            f"  ({measure.__name__.strip('_')}: {', '.join(f'{r:.0f}' for r, _ in taken)})",
            file=sys.stderr,
        )
    return [Rounds([r for r, _ in taken], [p for _, p in taken]) for taken in runs]


def side_by_side(
    work: str, unit: str, peer_name: str, peer: list[float], ours: list[float], better: str
) -> Row:
    """A row of two sides measured in turns: medians, and the median of the rounds' ratios."""
    pairs = tuple(
        (o / p if better == "higher" else p / o) if (p and o) else float("inf")
        for p, o in zip(peer, ours, strict=True)
    )
    return Row(
        work, unit, peer_name, statistics.median(peer), statistics.median(ours), better, pairs
    )


def rate_row(work: str, unit: str, peer_name: str, peer: Rounds, ours: Rounds) -> Row:
    return side_by_side(work, unit, peer_name, peer.rates, ours.rates, "higher")


def p99_row(work: str, peer_name: str, peer: Rounds, ours: Rounds) -> Row:
    return side_by_side(work, "ms", peer_name, peer.p99s, ours.p99s, "lower")


FAST = "[quota]\nmax_clients = 20000\n[limits]\ncommands_per_second = 0\n"


def http_lastlog(tmp: Path, log: Path | None = None) -> list[Row]:
    """GET /lastlog (10 lines of a 100 MB log), 50 connections, vs webhook running tail."""
    log = log or make_log(tmp)
    port = free_port()
    hooks = tmp / "hooks.json"
    hooks.write_text(
        json.dumps(
            [
                {
                    "id": "lastlog",
                    "execute-command": need("tail"),
                    "pass-arguments-to-command": [
                        {"source": "string", "name": "-n"},
                        {"source": "string", "name": "10"},
                        {"source": "string", "name": str(log)},
                    ],
                    "include-command-output-in-response": True,
                }
            ]
        )
    )
    webhook = [need("webhook"), "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)]
    config = f'{FAST}[lastlog]\nsource = "{log}"\n'
    ceiling_port = free_port()
    ceiling = [sys.executable, str(HERE / "ceiling.py"), "web", str(ceiling_port), str(log)]

    def webhook_tail() -> tuple[float, float]:
        with server(webhook, port):
            return wrk(f"http://127.0.0.1:{port}/hooks/lastlog", seconds=ROUND_SECONDS)

    def gateway_() -> tuple[float, float]:
        with gateway(config, tmp) as (_, http):
            return wrk(f"http://127.0.0.1:{http}/lastlog", seconds=ROUND_SECONDS)

    def bare_twisted_web() -> tuple[float, float]:
        with server(ceiling, ceiling_port):
            return wrk(f"http://127.0.0.1:{ceiling_port}/lastlog", seconds=ROUND_SECONDS)

    peer, ours, bare = alternated(ROUNDS, webhook_tail, gateway_, bare_twisted_web)
    return [
        rate_row("GET /lastlog, 50 conns", "req/s", "webhook + tail", peer, ours),
        p99_row("GET /lastlog p99", "webhook + tail", peer, ours),
        rate_row("GET /lastlog vs the stack", "req/s", "bare twisted.web", bare, ours),
    ]


def http_lastlog_scoped(tmp: Path) -> list[Row]:
    """What a scoped token and the audit trail cost: GET /lastlog with a named
    token (commands and max_lines narrowed) and [audit] file on, against the
    same gateway with no auth and no audit.  Alternated three times; the median of each."""
    log = make_log(tmp, 10 * 1024 * 1024)
    token = "bench-scoped-token-0123456789abcdef"
    digest = hashlib.sha256(token.encode()).hexdigest()
    plain = f'{FAST}[lastlog]\nsource = "{log}"\n'
    scoped = (
        f'{plain}[audit]\nfile = "{tmp / "audit.jsonl"}"\n'
        f'[[auth.token]]\nname = "bench"\nsha256 = "{digest}"\n'
        'commands = ["lastlog", "stats"]\nmax_lines = 200\n'
    )
    open_cpu: list[float] = []
    scoped_cpu: list[float] = []

    seconds = 10

    def measured(config: str, headers: tuple[str, ...], cpu: list[float]) -> tuple[float, float]:
        # also the gateway's CPU per request: the machine's noise moves it less than the rate
        with gateway_process(config, tmp) as (_, http, proc):
            before = cpu_seconds(proc)
            rps, p99 = wrk(f"http://127.0.0.1:{http}/lastlog", seconds=seconds, headers=headers)
            cpu.append((cpu_seconds(proc) - before) / (rps * seconds) * 1e6)
        return rps, p99

    def no_auth() -> tuple[float, float]:
        return measured(plain, (), open_cpu)

    def scoped_audited() -> tuple[float, float]:
        return measured(scoped, (f"Authorization: Bearer {token}",), scoped_cpu)

    plain_rounds, scoped_rounds = alternated(ROUNDS, no_auth, scoped_audited)
    audited = len((tmp / "audit.jsonl").read_bytes().splitlines())
    print(f"  (audit records written: {audited})", file=sys.stderr)
    return [
        side_by_side(
            "GET /lastlog CPU per request, scoped + audit",
            "us",
            "no auth, no audit",
            open_cpu,
            scoped_cpu,
            "lower",
        ),
        rate_row(
            "GET /lastlog, scoped token + audit",
            "req/s",
            "no auth, no audit",
            plain_rounds,
            scoped_rounds,
        ),
        p99_row(
            "GET /lastlog p99, scoped + audit", "no auth, no audit", plain_rounds, scoped_rounds
        ),
    ]


def cluster(tmp: Path) -> list[Row]:
    """The shared quota's cost: GET /lastlog (a place per request) and TCP
    lastlog (a place per connection) with the quota in memory vs in Redis
    (redis-server pinned to the load CPU, as if on another host); then
    --workers 2 vs 1 worker, both on Redis, the gateway allowed both CPUs and
    wrk on CPU 1 (so the load generator shares a core with the second worker).
    Memory and Redis alternate three times; the median of each."""
    log = make_log(tmp, 10 * 1024 * 1024)
    port = free_port()
    redis = [need("redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
    redis += ["--save", "", "--appendonly", "no"]
    plain = f'{FAST}[lastlog]\nsource = "{log}"\n'
    shared = f'{plain}[cluster]\nredis = "redis://127.0.0.1:{port}/0"\n'
    url = "http://127.0.0.1:{}/lastlog"
    runs: dict[str, list[float]] = {"memory": [], "redis": [], "tcp memory": [], "tcp redis": []}
    with server(redis, port, LOAD_CPU):
        for _ in range(3):
            for name, config in (("memory", plain), ("redis", shared)):
                with gateway(config, tmp) as (tcp, http):
                    runs[name].append(wrk(url.format(http))[0])
                    runs[f"tcp {name}"].append(load("tcp", str(tcp), "--seconds", "5")["ops_per_s"])
        with gateway(shared, tmp, cpus="0,1") as (_, http):
            one = wrk(url.format(http))[0]
        with gateway(shared, tmp, cpus="0,1", extra=("--workers", "2")) as (_, http):
            time.sleep(2)  # both workers listening
            two = wrk(url.format(http))[0]

    def median(name: str) -> float:
        return sorted(runs[name])[1]

    return [
        Row(
            "GET /lastlog, quota in Redis",
            "req/s",
            "quota in memory",
            median("memory"),
            median("redis"),
        ),
        Row(
            "TCP lastlog, quota in Redis",
            "cmd/s",
            "quota in memory",
            median("tcp memory"),
            median("tcp redis"),
        ),
        Row("GET /lastlog, --workers 2", "req/s", "1 worker", one, two),
    ]


def http_lastlog_growing(tmp: Path) -> list[Row]:
    """GET /lastlog while another process appends ~200 lines/s to the log (no caching)."""
    log = make_log(tmp)
    writer = subprocess.Popen(
        pinned(
            LOAD_CPU, ["/bin/sh", "-c", f"while :; do echo appended >> {log}; sleep 0.005; done"]
        )
    )
    try:
        rows = http_lastlog(tmp, log)
    finally:
        writer.kill()
        writer.wait()
    return [
        Row(
            r.work.replace("GET /lastlog", "GET /lastlog, growing log"),
            r.unit,
            r.peer_name,
            r.peer,
            r.gateway,
            r.better,
            r.pairs,
        )
        for r in rows
    ]


LOAD = [sys.executable, str(HERE / "load.py")]


def rate_p99(report: dict[str, float]) -> tuple[float, float]:
    """Operations per second and p99 (ms) of a ``load.py`` report."""
    return report["ops_per_s"], report["p99_ms"]


def load(*args: str) -> dict[str, float]:
    done = subprocess.run(
        pinned(LOAD_CPU, [*LOAD, *args]), capture_output=True, text=True, check=True
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def shell_loop(tmp: Path, log: Path) -> Path:
    """What a shell script behind socat or websocketd does for lastlog."""
    loop = tmp / "loop.sh"
    loop.write_text(
        "while read -r line; do\n"
        '  echo "Begin lastlog"; tail -n 10 ' + str(log) + '; echo "End lastlog"\n'
        "done\n"
    )
    return loop


def tcp_lastlog(tmp: Path) -> list[Row]:
    """lastlog over TCP, 50 clients, many commands each, vs socat + a shell loop + tail."""
    log = make_log(tmp)
    loop = shell_loop(tmp, log)
    port = free_port()
    ceiling_port = free_port()
    with server([*LOAD, "echo", str(ceiling_port)], ceiling_port):
        ceiling = load("tcp", str(ceiling_port), "--seconds", "5")
    socat = [
        need("socat"),
        f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
        f"EXEC:/bin/sh {loop}",
    ]

    def socat_sh() -> tuple[float, float]:
        with server(socat, port):
            return rate_p99(load("tcp", str(port), "--seconds", str(ROUND_SECONDS)))

    def gateway_() -> tuple[float, float]:
        with gateway(f'{FAST}[lastlog]\nsource = "{log}"\n', tmp) as (tcp, _):
            return rate_p99(load("tcp", str(tcp), "--seconds", str(ROUND_SECONDS)))

    peer, ours = alternated(ROUNDS, socat_sh, gateway_)
    return [
        rate_row("TCP lastlog, 50 clients", "cmd/s", "socat + sh + tail", peer, ours),
        p99_row("TCP lastlog p99", "socat + sh + tail", peer, ours),
        Row(
            "(load client ceiling, echo)", "cmd/s", "-", ceiling["ops_per_s"], ceiling["ops_per_s"]
        ),
    ]


def ws_lastlog(tmp: Path) -> list[Row]:
    """lastlog over WebSocket, 50 clients, vs websocketd + the same shell loop."""
    log = make_log(tmp)
    loop = shell_loop(tmp, log)
    port = free_port()
    ceiling_port = free_port()
    with server([*LOAD, "echo-ws", str(ceiling_port)], ceiling_port):
        ceiling = load("ws", f"ws://127.0.0.1:{ceiling_port}/", "--seconds", "5")
    websocketd = [need("websocketd"), "--address=127.0.0.1", f"--port={port}", "/bin/sh", str(loop)]
    bare_port = free_port()
    ceiling_ws = [sys.executable, str(HERE / "ceiling.py"), "ws", str(bare_port), str(log)]
    seconds = str(ROUND_SECONDS)

    def websocketd_sh() -> tuple[float, float]:
        with server(websocketd, port):
            return rate_p99(load("ws", f"ws://127.0.0.1:{port}/", "--seconds", seconds))

    def gateway_() -> tuple[float, float]:
        with gateway(f'{FAST}[lastlog]\nsource = "{log}"\n', tmp) as (_, http):
            return rate_p99(load("ws", f"ws://127.0.0.1:{http}/ws", "--seconds", seconds))

    def bare_autobahn() -> tuple[float, float]:
        with server(ceiling_ws, bare_port):
            return rate_p99(load("ws", f"ws://127.0.0.1:{bare_port}/", "--seconds", seconds))

    peer, ours, bare = alternated(ROUNDS, websocketd_sh, gateway_, bare_autobahn)
    return [
        rate_row("WebSocket lastlog vs the stack", "rt/s", "bare Autobahn", bare, ours),
        rate_row("WebSocket lastlog, 50 clients", "rt/s", "websocketd + sh", peer, ours),
        p99_row("WebSocket lastlog p99", "websocketd + sh", peer, ours),
        Row(
            "(load client ceiling, WS echo)",
            "rt/s",
            "-",
            ceiling["ops_per_s"],
            ceiling["ops_per_s"],
        ),
    ]


def follow(tmp: Path) -> list[Row]:
    """One writer appending 1,000 stamped lines/s; N followers over TCP, SSE and WebSocket:
    lines delivered per second and write-to-receipt delay, against websocketd running
    `tail -F` per client and against frontail (one `tail -F`, socket.io to each browser)."""
    rows: list[Row] = []
    seconds = 8
    log = tmp / "follow.log"
    log.write_text("")
    ws_port = free_port()
    tail = [
        need("websocketd"),
        "--address=127.0.0.1",
        f"--port={ws_port}",
        need("tail"),
        "-F",
        "-n",
        "0",
        str(log),
    ]

    front_port = free_port()
    front = [
        need_frontail(),
        "--host",
        "127.0.0.1",
        "--port",
        str(front_port),
        "--disable-usage-stats",
        "-n",
        "1",
        str(log),
    ]
    # frontail's socket.io namespace: the MD5 of the files it was given
    front_ns = hashlib.md5(str(log).encode()).hexdigest()

    def run_watchers(mode: str, target: str, n: int, stalled: int = 0) -> dict[str, float]:
        return load(
            f"watch-{mode}",
            target,
            str(n),
            "--seconds",
            str(seconds),
            "--stalled",
            str(stalled),
            "--log",
            str(log),
            "--rate",
            "1000",
        )

    for n in (1, 100, 1000):
        with server(tail, ws_port):
            peer = run_watchers("ws", f"ws://127.0.0.1:{ws_port}/", n)
        with server(front, front_port):
            frontail = run_watchers("frontail", f"ws://127.0.0.1:{front_port}/{front_ns}", n)
        # A fresh gateway for each transport: a run that fell behind is not
        # still draining its backlog while the next one is measured.
        config = f'{FAST}[lastlog]\nsource = "{log}"\n'
        with gateway(config, tmp) as (_, http):
            gw_ws = run_watchers("ws", f"ws://127.0.0.1:{http}/ws", n)
        with gateway(config, tmp) as (tcp, _):
            gw_tcp = run_watchers("tcp", f"127.0.0.1:{tcp}", n)
        with gateway(config, tmp) as (_, http):
            gw_sse = run_watchers("sse", f"http://127.0.0.1:{http}/lastlog?follow=1&lines=1", n)
        rows.append(
            Row(
                f"follow, {n} watchers, WebSocket",
                "lines/s",
                "websocketd + tail -F",
                peer["lines_per_s"],
                gw_ws["lines_per_s"],
            )
        )
        rows.append(
            Row(
                f"follow, {n} watchers, WebSocket p99",
                "ms",
                "websocketd + tail -F",
                peer["p99_ms"],
                gw_ws["p99_ms"],
                "lower",
            )
        )
        rows.append(
            Row(
                f"follow, {n} watchers, WebSocket",
                "lines/s",
                "frontail",
                frontail["lines_per_s"],
                gw_ws["lines_per_s"],
            )
        )
        rows.append(
            Row(
                f"follow, {n} watchers, WebSocket p99",
                "ms",
                "frontail",
                frontail["p99_ms"],
                gw_ws["p99_ms"],
                "lower",
            )
        )
        rows.append(
            Row(
                f"follow, {n} watchers, TCP",
                "lines/s",
                "-",
                gw_tcp["lines_per_s"],
                gw_tcp["lines_per_s"],
            )
        )
        rows.append(
            Row(
                f"follow, {n} watchers, TCP p99",
                "ms",
                "-",
                gw_tcp["p99_ms"],
                gw_tcp["p99_ms"],
                "lower",
            )
        )
        rows.append(
            Row(
                f"follow, {n} watchers, SSE",
                "lines/s",
                "-",
                gw_sse["lines_per_s"],
                gw_sse["lines_per_s"],
            )
        )
        rows.append(
            Row(
                f"follow, {n} watchers, SSE p99",
                "ms",
                "-",
                gw_sse["p99_ms"],
                gw_sse["p99_ms"],
                "lower",
            )
        )
    with gateway(f'{FAST}stall_timeout = 60\n[lastlog]\nsource = "{log}"\n', tmp) as (tcp, _):
        stalled = run_watchers("tcp", f"127.0.0.1:{tcp}", 101, stalled=1)
    rows.append(
        Row(
            "follow, 100 watchers + 1 stalled, TCP",
            "lines/s",
            "-",
            stalled["lines_per_s"],
            stalled["lines_per_s"],
        )
    )
    rows.append(
        Row(
            "follow, 100 watchers + 1 stalled, TCP p99",
            "ms",
            "-",
            stalled["p99_ms"],
            stalled["p99_ms"],
            "lower",
        )
    )
    return rows


def follow_memory(tmp: Path) -> list[Row]:
    """Resident memory per idle follower: 1,000 TCP followers of a quiet 10,000-line log
    (each sent its last line), measured after a first follower started the reader (so
    the shared replay buffer is not counted a thousand times)."""
    log = tmp / "quiet.log"
    log.write_text("".join(f"{i} line of a quiet log {'x' * 60}\n" for i in range(10_000)))
    with gateway(f'{FAST}[lastlog]\nsource = "{log}"\n', tmp) as (tcp, _):
        pid = gateway_pid(tcp)
        first = subprocess.Popen(
            pinned(LOAD_CPU, [*LOAD, "watch-tcp", f"127.0.0.1:{tcp}", "1", "--seconds", "12"]),
            stdout=subprocess.DEVNULL,
        )
        time.sleep(2)
        before = rss_kib(pid)
        watchers = subprocess.Popen(
            pinned(LOAD_CPU, [*LOAD, "watch-tcp", f"127.0.0.1:{tcp}", "1000", "--seconds", "8"]),
            stdout=subprocess.DEVNULL,
        )
        time.sleep(5)
        per = (rss_kib(pid) - before) / 1000
        watchers.wait()
        first.wait()
    return [Row("1000 idle followers, TCP", "KiB/watcher", "-", per, per, "lower")]


def say_script(tmp: Path) -> Path:
    """The operator's script both sides run: an echo-like one-liner."""
    script = tmp / "say.sh"
    script.write_text('#!/bin/sh\necho "hello $1"\n')
    script.chmod(0o755)
    return script


def declared(tmp: Path) -> list[Row]:
    """A command declared in the config (runs a script per request) over HTTP vs webhook
    running the same script, and over WebSocket vs websocketd + a shell loop running it."""
    script = say_script(tmp)
    hooks = tmp / "say-hooks.json"
    hooks.write_text(
        json.dumps(
            [
                {
                    "id": "say",
                    "execute-command": str(script),
                    "pass-arguments-to-command": [{"source": "url", "name": "word"}],
                    "include-command-output-in-response": True,
                }
            ]
        )
    )
    port = free_port()
    webhook = [need("webhook"), "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)]
    with server(webhook, port):
        hook_rps, hook_p99 = wrk(f"http://127.0.0.1:{port}/hooks/say?word=there")
    loop = tmp / "say-loop.sh"
    loop.write_text(
        f'while read -r word; do echo "Begin say"; {script} "$word"; echo "End say"; done\n'
    )
    ws_port = free_port()
    websocketd = [
        need("websocketd"),
        "--address=127.0.0.1",
        f"--port={ws_port}",
        "/bin/sh",
        str(loop),
    ]
    with server(websocketd, ws_port):
        peer_ws = load(
            "ws", f"ws://127.0.0.1:{ws_port}/", "--request", "there", "--until", "End say"
        )
    config = (
        f'{FAST}[commands.say]\nargv = ["{script}", "{{word}}"]\n'
        '[commands.say.params.word]\ntype = "string"\npattern = "[a-z]{1,32}"\n'
    )
    with gateway(config, tmp) as (_, http):
        gw_rps, gw_p99 = wrk(f"http://127.0.0.1:{http}/say?word=there")
        gw_ws = load(
            "ws", f"ws://127.0.0.1:{http}/ws", "--request", "say there", "--until", "End say"
        )
    return [
        Row("declared say over HTTP, 50 conns", "req/s", "webhook + sh", hook_rps, gw_rps),
        Row("declared say HTTP p99", "ms", "webhook + sh", hook_p99, gw_p99, better="lower"),
        Row(
            "declared say over WebSocket, 50 clients",
            "rt/s",
            "websocketd + sh",
            peer_ws["ops_per_s"],
            gw_ws["ops_per_s"],
        ),
        Row(
            "declared say WebSocket p99",
            "ms",
            "websocketd + sh",
            peer_ws["p99_ms"],
            gw_ws["p99_ms"],
            "lower",
        ),
    ]


def make_gib(tmp: Path) -> Path:
    big = tmp / "one.gib"
    if not big.exists():
        block = bytes(range(256)) * 4096  # 1 MiB, not all zeros
        with open(big, "wb") as f:
            for _ in range(1024):
                f.write(block)
    subprocess.run(["cat", str(big)], stdout=subprocess.DEVNULL, check=True)  # page cache
    return big


def best_of(runs: int, f: Callable[[], None]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        f()
        times.append(time.perf_counter() - started)
    return min(times)


def comphash(tmp: Path) -> list[Row]:
    """comphash of a 1 GiB file in page cache: sha1 vs sha1sum and plain hashlib;
    BLAKE3 vs b3sum; sha256 vs sha256sum and plain hashlib.  Everything on CPU 0,
    and BLAKE3 once more with every core to both sides."""
    big = make_gib(tmp)
    gib = big.stat().st_size / 2**30

    def tool(argv: list[str]) -> float:
        return best_of(
            3, lambda: subprocess.run(pinned(SERVER_CPU, argv), capture_output=True, check=True)
        )

    def plain(algorithm: str) -> float:
        code = (
            f"import hashlib,sys\nh=hashlib.new({algorithm!r})\n"
            "b=bytearray(1<<20);m=memoryview(b)\n"
            "f=open(sys.argv[1],'rb',buffering=0)\nwhile (n:=f.readinto(b)): h.update(m[:n])\n"
        )
        return tool([sys.executable, "-c", code, str(big)])

    peers = {
        "sha1sum": tool([need("sha1sum"), str(big)]),
        "sha256sum": tool([need("sha256sum"), str(big)]),
        "b3sum": tool([need("b3sum"), str(big)]),
        "sha1 loop": plain("sha1"),
        "sha256 loop": plain("sha256"),
    }
    with gateway(f'{FAST}[comphash]\nallowed_roots = ["{tmp}"]\n', tmp) as (tcp, _):
        import socket as sock

        def timed(algorithm: str) -> float:
            def one() -> None:
                with sock.create_connection(("127.0.0.1", tcp)) as s:
                    s.sendall(f"comphash -a {algorithm} {big}\n".encode())
                    data = b""
                    while b"File hash is" not in data:
                        data += s.recv(4096)

            return best_of(3, one)

        gw = {algorithm: timed(algorithm) for algorithm in ("sha1", "blake3", "sha256")}
    cores = os.cpu_count() or 1
    everything = f"0-{cores - 1}"
    b3sum_all = best_of(
        3, lambda: subprocess.run([need("b3sum"), str(big)], capture_output=True, check=True)
    )
    with gateway(f'{FAST}[comphash]\nallowed_roots = ["{tmp}"]\n', tmp, everything) as (tcp, _):
        blake3_all = best_of(
            3, lambda: gateway_says(tcp, f"comphash -a blake3 {big}\n", b"File hash is")
        )
    return [
        Row(
            f"comphash -a blake3, {cores} cores",
            "GB/s",
            "b3sum",
            gib / b3sum_all,
            gib / blake3_all,
        ),
        Row("comphash 1 GiB (cached)", "GB/s", "sha1sum", gib / peers["sha1sum"], gib / gw["sha1"]),
        Row(
            "comphash vs plain hashlib",
            "GB/s",
            "hashlib loop",
            gib / peers["sha1 loop"],
            gib / gw["sha1"],
        ),
        Row("comphash -a blake3, 1 GiB", "GB/s", "b3sum", gib / peers["b3sum"], gib / gw["blake3"]),
        Row(
            "comphash -a blake3 vs sha1",
            "GB/s",
            "comphash sha1",
            gib / gw["sha1"],
            gib / gw["blake3"],
        ),
        Row(
            "comphash -a sha256, 1 GiB",
            "GB/s",
            "sha256sum",
            gib / peers["sha256sum"],
            gib / gw["sha256"],
        ),
        Row(
            "comphash -a sha256 vs hashlib",
            "GB/s",
            "hashlib loop",
            gib / peers["sha256 loop"],
            gib / gw["sha256"],
        ),
    ]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def gateway_pid(port: int) -> int:
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True)
    import re as _re

    return int(_re.search(r"pid=(\d+)", out.stdout).group(1))  # type: ignore[union-attr]


def idle(tmp: Path) -> list[Row]:
    """Idle connections held: resident memory per connection."""
    n = 10_000
    rows = []
    with gateway(f"{FAST}[tcp]\nidle_timeout = 0.0\n[auth]\nlogin_timeout = 0.0\n", tmp) as (
        tcp,
        http,
    ):
        pid = gateway_pid(tcp)
        for kind, target in (("TCP", str(tcp)), ("WebSocket", f"ws://127.0.0.1:{http}/ws")):
            before = rss_kib(pid)
            holder = subprocess.Popen(
                pinned(
                    LOAD_CPU,
                    [
                        *LOAD,
                        f"idle-{'tcp' if kind == 'TCP' else 'ws'}",
                        target,
                        str(n),
                        "--hold",
                        "600",
                    ],
                ),
                stdout=subprocess.PIPE,
                text=True,
            )
            assert holder.stdout is not None
            opened = json.loads(holder.stdout.readline())["open"]
            time.sleep(2)
            per = (rss_kib(pid) - before) / opened
            holder.kill()
            holder.wait()
            time.sleep(3)
            rows.append(Row(f"{n} idle {kind} connections", "KiB/conn", "-", per, per, "lower"))
    return rows


def responsiveness(tmp: Path) -> list[Row]:
    """help round trip while two 1 GiB hashes run."""
    big = make_gib(tmp)
    with gateway(f'{FAST}[comphash]\nallowed_roots = ["{tmp}"]\n', tmp) as (tcp, _):
        quiet = load(
            "tcp",
            str(tcp),
            "--conns",
            "1",
            "--seconds",
            "3",
            "--request",
            "help\\n",
            "--until",
            "close this connection",
        )
        import socket as sock

        hashers = []
        for _ in range(2):
            s = sock.create_connection(("127.0.0.1", tcp))
            s.sendall(("".join(f"comphash {big}\n" for _ in range(20))).encode())
            hashers.append(s)
        busy = load(
            "tcp",
            str(tcp),
            "--conns",
            "1",
            "--seconds",
            "5",
            "--request",
            "help\\n",
            "--until",
            "close this connection",
        )
        for s in hashers:
            s.close()
    return [
        Row(
            "help p99 during 2 hashes",
            "ms",
            "idle gateway",
            quiet["p99_ms"],
            busy["p99_ms"],
            "lower",
        )
    ]


def make_trees(tmp: Path) -> tuple[Path, Path]:
    """20,000 files of 4 KiB (200 directories of 100) and 50 files of 40 MiB,
    in page cache."""
    small, large = tmp / "small-tree", tmp / "large-tree"
    if not small.exists():
        for d in range(200):
            folder = small / f"dir{d:03d}"
            folder.mkdir(parents=True)
            for i in range(100):
                (folder / f"file{i:03d}.dat").write_bytes(os.urandom(4096))
    if not large.exists():
        large.mkdir()
        block = os.urandom(1024 * 1024)
        for i in range(50):
            with open(large / f"part{i:02d}.bin", "wb") as f:
                for _ in range(40):
                    f.write(block)
    for tree in (small, large):  # in page cache, as the peers will find them
        subprocess.run(
            ["sh", "-c", f"find {tree} -type f -print0 | xargs -0 cat > /dev/null"], check=True
        )
    return small, large


def gateway_says(port: int, line: str, last: bytes) -> bytes:
    """All the gateway answers ``line`` with, up to the line starting with ``last``."""
    import socket as sock

    marker = re.compile(b"(^|\n)" + re.escape(last) + b"[^\n]*\n")
    chunks: list[bytes] = []
    with sock.create_connection(("127.0.0.1", port)) as s:
        s.sendall(line.encode())
        tail = b""
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            tail = tail[-4096:] + chunk  # the marker line is short: look near the end only
            if marker.search(tail):
                break
    return b"".join(chunks)


def trees(tmp: Path) -> list[Row]:
    """comphash -r -a sha256 of a tree of 20,000 4 KiB files and of one of
    50 x 40 MiB files, vs find | xargs -P<cores> sha256sum and hashdeep -r;
    comphash -c vs sha256sum -c on the same trees; help p99 while a tree
    hashes.  Every side may use every core (the gateway: [comphash] threads
    = 0, one per core); nothing is pinned."""
    small, large = make_trees(tmp)
    cores = os.cpu_count() or 1
    everything = f"0-{cores - 1}"
    rows: list[Row] = []

    # Runs of a fraction of a second on a shared machine vary by 20%: the
    # best of 7 for every side on the small tree, of 3 on the large one.
    runs = 7

    def seconds(argv: list[str]) -> float:
        return best_of(runs, lambda: subprocess.run(argv, capture_output=True, check=True))

    config = f'{FAST}[comphash]\nallowed_roots = ["{tmp}"]\n'
    with gateway(config, tmp, everything) as (tcp, _):
        for tree, label in ((small, "20,000 x 4 KiB"), (large, "50 x 40 MiB")):
            runs = 7 if tree is small else 3
            xargs = seconds(
                [
                    "sh",
                    "-c",
                    f"find {tree} -type f -print0 | xargs -0 -P{cores} -n 500 {need('sha256sum')}",
                ]
            )
            hashdeep = seconds([need("hashdeep"), "-r", "-c", "sha256", str(tree)])
            ours = best_of(
                runs,
                lambda t=tree: gateway_says(tcp, f"comphash -r -a sha256 {t}\n", b"# sha256 of"),
            )
            rows.append(Row(f"tree {label}", "s", f"find|xargs -P{cores}", xargs, ours, "lower"))
            rows.append(Row(f"tree {label}", "s", "hashdeep -r", hashdeep, ours, "lower"))
            manifest = tmp / f"{tree.name}.sha256"
            manifest.write_bytes(
                gateway_says(tcp, f"comphash -r -a sha256 {tree}\n", b"# sha256 of")
            )
            check = seconds([need("sha256sum"), "-c", "--quiet", str(manifest)])
            ours = best_of(
                runs,
                lambda m=manifest: gateway_says(tcp, f"comphash -c --quiet {m}\n", b"# check of"),
            )
            rows.append(Row(f"check {label}", "s", "sha256sum -c", check, ours, "lower"))

        def help_p99() -> float:
            return load(
                "tcp",
                str(tcp),
                "--conns",
                "1",
                "--seconds",
                "4",
                "--request",
                "help\\n",
                "--until",
                "close this connection",
            )["p99_ms"]

        quiet = help_p99()
        import socket as sock

        hasher = sock.create_connection(("127.0.0.1", tcp))
        hasher.sendall("".join(f"comphash -r -a sha256 {small}\n" for _ in range(20)).encode())
        busy = help_p99()
        hasher.close()
        rows.append(Row("help p99 during a tree hash", "ms", "idle gateway", quiet, busy, "lower"))
    return rows


ITEMS: dict[str, Callable[[Path], list[Row]]] = {
    "http_lastlog": http_lastlog,
    "http_lastlog_growing": http_lastlog_growing,
    "http_lastlog_scoped": http_lastlog_scoped,
    "tcp_lastlog": tcp_lastlog,
    "ws_lastlog": ws_lastlog,
    "comphash": comphash,
    "trees": trees,
    "responsiveness": responsiveness,
    "idle": idle,
    "declared": declared,
    "follow": follow,
    "follow_memory": follow_memory,
    "cluster": cluster,
}


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import twisted

    return (
        f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"Twisted {twisted.__version__}; server on CPU {SERVER_CPU}, load on CPU {LOAD_CPU}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("items", nargs="*", choices=[*ITEMS, []], help="what to run (default: all)")
    args = parser.parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        for name in args.items or ITEMS:
            print(f"running {name} ...", file=sys.stderr)
            rows += ITEMS[name](Path(tmp))
    print(f"machine: {machine()}")
    header = ("work", "peer", "peer", "gateway", "unit", "gateway vs peer")
    print("{:<36} {:<18} {:>10} {:>10} {:<8} {:>16}".format(*header))
    for r in rows:
        direction = "x faster" if r.better == "higher" else "x lower"
        print(
            f"{r.work:<36} {r.peer_name:<18} {r.peer:>10.2f} {r.gateway:>10.2f} {r.unit:<8} "
            f"{r.ratio:>9.2f}{direction}"
        )


if __name__ == "__main__":
    main()
