#!/usr/bin/env python3
"""Load generator for bench/run.py: many connections, one request at a time each.

    load.py tcp  PORT --request 'lastlog\\n' --until 'End lastlog'   # line protocols
    load.py ws   URL  --request lastlog --until 'End lastlog'       # WebSocket text
    load.py echo PORT                                              # a trivial server
    load.py idle-tcp PORT N / idle-ws URL N                        # hold N connections
    load.py watch-tcp HOST:PORT N / watch-ws URL N / watch-sse URL N   # N followers
    load.py write-log PATH --rate 1000 --seconds 10                # a stamped writer

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


def percentiles_ms(samples: list[float]) -> dict[str, float]:
    """p50 and p99 of ``samples`` (seconds), in milliseconds."""
    samples.sort()
    n = len(samples)

    def pct(p: float) -> float:
        return samples[min(n - 1, int(n * p))] * 1000 if n else 0.0

    return {"p50_ms": pct(0.5), "p99_ms": pct(0.99)}


def summary(latencies: list[float], seconds: float) -> dict[str, float]:
    n = len(latencies)
    return {"ops": n, "seconds": seconds, "ops_per_s": n / seconds, **percentiles_ms(latencies)}


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


def delays_summary(
    delays: list[float], lines: int, seconds: float, watchers: int
) -> dict[str, float]:
    return {
        "lines": lines,
        "seconds": seconds,
        "lines_per_s": lines / seconds,
        "watchers": watchers,
        **percentiles_ms(delays),
    }


def _stamp(line: bytes) -> float | None:
    """Lines the writer appends start with the wall-clock time they were written."""
    head = line.split(b" ", 1)[0]
    try:
        return float(head)
    except ValueError:
        return None


async def watch(mode: str, target: str, watchers: int, seconds: float, stalled: int) -> None:
    """``watchers`` clients follow the log for ``seconds``; ``stalled`` of them never read.

    Counts lines received and the delay from write (the stamp in the line) to receipt.
    """
    delays: list[float] = []
    counted = [0]
    ready = [0]
    stop = time.monotonic() + seconds

    def got(line: bytes) -> None:
        stamp = _stamp(line)
        if stamp is not None:
            counted[0] += 1
            if counted[0] % 7 == 0:  # a sample keeps the client cheap
                delays.append(time.time() - stamp)

    async def lines_until_stop(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, read: bool, prefix: bytes
    ) -> None:
        """Hand each line starting with ``prefix`` (without it) to ``got``
        until the run ends; a watcher that does not ``read`` only waits."""
        ready[0] += 1
        if not read:
            await asyncio.sleep(max(0.0, stop - time.monotonic()))
            writer.close()
            return
        while time.monotonic() < stop:
            try:
                line = await asyncio.wait_for(reader.readline(), stop - time.monotonic())
            except TimeoutError:
                break
            if line.startswith(prefix):
                got(line[len(prefix) :])
        writer.close()

    async def tcp_one(read: bool) -> None:
        host, port = target.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"lastlog -f 1\n")
        await lines_until_stop(reader, writer, read, b"")

    async def ws_one(read: bool) -> None:
        from websockets.asyncio.client import connect

        async with connect(target, ping_interval=None, compression=None, max_queue=None) as ws:
            await ws.send("lastlog -f 1")
            ready[0] += 1
            if not read:
                await asyncio.sleep(max(0.0, stop - time.monotonic()))
                return
            while time.monotonic() < stop:
                try:
                    message = await asyncio.wait_for(ws.recv(), stop - time.monotonic())
                except TimeoutError:
                    break
                got(message.encode() if isinstance(message, str) else message)

    async def sse_one(read: bool) -> None:
        host_port, _, path = target.removeprefix("http://").partition("/")
        host, port = host_port.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"GET /{path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        await lines_until_stop(reader, writer, read, b"data: ")

    one = {"tcp": tcp_one, "ws": ws_one, "sse": sse_one}[mode]
    begin = time.monotonic()
    await asyncio.gather(*(one(i >= stalled) for i in range(watchers)))
    readers = watchers - stalled
    print(json.dumps(delays_summary(delays, counted[0], time.monotonic() - begin, readers)))


def write_log(path: str, rate: float, seconds: float) -> None:
    """Append ``rate`` lines a second to ``path`` for ``seconds``, each stamped."""
    pad = "x" * 60
    with open(path, "a", buffering=1) as f:
        begin = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - begin) < seconds:
            due = int(elapsed * rate) + 1
            if due > sent:
                f.write(
                    "".join(f"{time.time():.6f} line {sent + i} {pad}\n" for i in range(due - sent))
                )
                sent = due
            time.sleep(0.002)


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
    p.add_argument(
        "mode",
        choices=[
            "tcp",
            "ws",
            "echo",
            "echo-ws",
            "idle-tcp",
            "idle-ws",
            "watch-tcp",
            "watch-ws",
            "watch-sse",
            "write-log",
        ],
    )
    p.add_argument("target")
    p.add_argument("count", nargs="?", type=int, default=0)
    p.add_argument("--conns", type=int, default=50)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--request", default="lastlog\n")
    p.add_argument("--until", default="End lastlog")
    p.add_argument("--hold", type=float, default=15.0)
    p.add_argument("--stalled", type=int, default=0)
    p.add_argument("--rate", type=float, default=1000.0)
    a = p.parse_args()
    raise_nofile()
    if a.mode == "write-log":
        write_log(a.target, a.rate, a.seconds)
        return
    if a.mode.startswith("watch-"):
        asyncio.run(watch(a.mode[6:], a.target, a.count, a.seconds, a.stalled))
        return
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
