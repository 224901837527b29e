#!/usr/bin/env python3
"""Side-by-side benchmarks: the gateway against a peer doing the same job.

Each work item starts the gateway and its peer on loopback, pinned to one core
with ``taskset`` while the load generator runs on another, drives the same work
at both, and prints peer figure, gateway figure and their ratio.  It prints;
it never fails on a figure.

    .venv/bin/python bench/run.py               # every item
    .venv/bin/python bench/run.py http_lastlog  # one item

Needs: wrk, webhook, taskset (Debian: wrk, webhook, util-linux).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
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

    @property
    def ratio(self) -> float:
        if self.better == "higher":
            return self.gateway / self.peer if self.peer else float("inf")
        return self.peer / self.gateway if self.gateway else float("inf")


def need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        sys.exit(f"bench: {tool} is not installed (Debian: apt-get install {tool})")
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
def server(argv: list[str], port: int, **kw: object) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        pinned(SERVER_CPU, argv),
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
def gateway(config: str, tmp: Path) -> Iterator[tuple[int, int]]:
    tcp, http = free_port(), free_port()
    path = tmp / "gateway.toml"
    path.write_text(
        f'[tcp]\nlisten = "tcp:{tcp}:interface=127.0.0.1"\n'
        f'[http]\nlisten = "tcp:{http}:interface=127.0.0.1"\n' + config
    )
    with server([str(GATEWAY), "--config", str(path)], http):
        wait_port(tcp)
        yield tcp, http


def make_log(tmp: Path, size: int = 100 * 1024 * 1024) -> Path:
    log = tmp / "syslog"
    line = b"Nov 25 16:52:01 lab CRON[4945]: (root) CMD (command -v debian-sa1 > /dev/null)\n"
    block = line * (1024 * 1024 // len(line))
    with open(log, "wb") as f:
        while f.tell() < size:
            f.write(block)
    return log


def wrk(url: str, connections: int = 50, seconds: int = 10) -> tuple[float, float]:
    """Requests per second and p99 latency (ms) from wrk."""
    done = subprocess.run(
        pinned(
            LOAD_CPU, [need("wrk"), "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
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


def http_lastlog(tmp: Path) -> list[Row]:
    """GET /lastlog (10 lines of a 100 MB log), 50 connections, vs webhook running tail."""
    log = make_log(tmp)
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
    with server(webhook, port):
        peer_rps, peer_p99 = wrk(f"http://127.0.0.1:{port}/hooks/lastlog")
    config = f'[lastlog]\nsource = "{log}"\n[quota]\nmax_clients = 100\n'
    with gateway(config, tmp) as (_, http):
        gw_rps, gw_p99 = wrk(f"http://127.0.0.1:{http}/lastlog")
    return [
        Row("GET /lastlog, 50 conns", "req/s", "webhook + tail", peer_rps, gw_rps),
        Row("GET /lastlog p99", "ms", "webhook + tail", peer_p99, gw_p99, better="lower"),
    ]


ITEMS: dict[str, Callable[[Path], list[Row]]] = {"http_lastlog": http_lastlog}


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
    print("{:<28} {:<16} {:>10} {:>10} {:<6} {:>16}".format(*header))
    for r in rows:
        direction = "x faster" if r.better == "higher" else "x lower"
        print(
            f"{r.work:<28} {r.peer_name:<16} {r.peer:>10.1f} {r.gateway:>10.1f} {r.unit:<6} "
            f"{r.ratio:>9.2f}{direction}"
        )


if __name__ == "__main__":
    main()
