#!/usr/bin/env python3
"""Load generator for bench/run.py: many connections, one request at a time each.

    load.py tcp  PORT --request 'lastlog\\n' --until 'End lastlog'   # line protocols
    load.py ws   URL  --request lastlog --until 'End lastlog'       # WebSocket text
    load.py echo PORT                                              # a trivial server
    load.py idle-tcp PORT N / idle-ws URL N                        # hold N connections

Prints one JSON object: operations, seconds, ops per second, p50/p99 latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def summary(latencies: list[float], seconds: float) -> dict[str, float]:
    latencies.sort()
    n = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(n - 1, int(n * p))] * 1000 if n else 0.0

    return {
        "ops": n,
        "seconds": seconds,
        "ops_per_s": n / seconds,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
    }


async def tcp_load(port: int, conns: int, seconds: float, request: bytes, until: bytes) -> None:
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop:
            started = time.perf_counter()
            writer.write(request)
            await reader.readuntil(until)
            latencies.append(time.perf_counter() - started)
        writer.close()

    begin = time.monotonic()
    await asyncio.gather(*(one() for _ in range(conns)))
    print(json.dumps(summary(latencies, time.monotonic() - begin)))


async def ws_load(url: str, conns: int, seconds: float, request: str, until: str) -> None:
    from websockets.asyncio.client import connect

    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def one() -> None:
        async with connect(url, max_size=None, compression=None) as ws:
            while time.monotonic() < stop:
                started = time.perf_counter()
                await ws.send(request)
                while (await ws.recv()) != until:
                    pass
                latencies.append(time.perf_counter() - started)

    begin = time.monotonic()
    await asyncio.gather(*(one() for _ in range(conns)))
    print(json.dumps(summary(latencies, time.monotonic() - begin)))


async def echo(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readline():
            writer.write(b"Begin lastlog\nEnd lastlog\n")
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


async def echo_ws(port: int) -> None:
    from websockets.asyncio.server import serve

    async def handle(ws: object) -> None:
        async for _ in ws:  # type: ignore[attr-defined]
            await ws.send("Begin lastlog")  # type: ignore[attr-defined]
            await ws.send("End lastlog")  # type: ignore[attr-defined]

    async with serve(handle, "127.0.0.1", port, compression=None):  # type: ignore[arg-type]
        await asyncio.Future()


async def idle_tcp(port: int, n: int, hold: float) -> None:
    conns = []
    for _ in range(n):
        conns.append(await asyncio.open_connection("127.0.0.1", port))
    print(json.dumps({"open": len(conns)}), flush=True)
    await asyncio.sleep(hold)


async def idle_ws(url: str, n: int, hold: float) -> None:
    from websockets.asyncio.client import connect

    conns = []
    for _ in range(n):
        conns.append(await connect(url, ping_interval=None, compression=None))
    print(json.dumps({"open": len(conns)}), flush=True)
    await asyncio.sleep(hold)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["tcp", "ws", "echo", "echo-ws", "idle-tcp", "idle-ws"])
    p.add_argument("target")
    p.add_argument("count", nargs="?", type=int, default=0)
    p.add_argument("--conns", type=int, default=50)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--request", default="lastlog\n")
    p.add_argument("--until", default="End lastlog")
    p.add_argument("--hold", type=float, default=15.0)
    a = p.parse_args()
    raise_nofile()
    if a.mode == "tcp":
        run = tcp_load(
            int(a.target),
            a.conns,
            a.seconds,
            a.request.encode().decode("unicode_escape").encode(),
            (a.until + "\n").encode(),
        )
    elif a.mode == "ws":
        run = ws_load(a.target, a.conns, a.seconds, a.request.strip(), a.until)
    elif a.mode == "echo":
        run = echo(int(a.target))
    elif a.mode == "echo-ws":
        run = echo_ws(int(a.target))
    elif a.mode == "idle-tcp":
        run = idle_tcp(int(a.target), a.count, a.hold)
    else:
        run = idle_ws(a.target, a.count, a.hold)
    asyncio.run(run)


if __name__ == "__main__":
    sys.exit(main())
