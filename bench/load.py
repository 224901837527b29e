#!/usr/bin/env python3
"""Load generator for bench/run.py: many connections, one request at a time each.

    load.py tcp  PORT --request 'lastlog\\n' --until 'End lastlog'   # line protocols
    load.py ws   URL  --request lastlog --until 'End lastlog'       # WebSocket text
    load.py echo PORT                                              # a trivial server
    load.py idle-tcp PORT N / idle-ws URL N                        # hold N connections
    load.py watch-tcp HOST:PORT N --log PATH / watch-ws URL N / watch-sse URL N   # N followers
    load.py watch-frontail ws://HOST:PORT/NAMESPACE N --log PATH   # N frontail viewers
    load.py write-log PATH --rate 1000 --seconds 10                # a stamped writer

Prints one JSON object: operations, seconds, ops per second, p50/p99 latency.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
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


#: A line the writer appends: its stamp (the wall-clock time it was written), then " line ".
STAMPED = re.compile(rb"(\d{9,11}\.\d{6}) line ")
MARK = b" line "
#: What one read takes at most.
READ_BYTES = 64 * 1024
#: The lines of each this many-th read give delay samples (the client stays cheap).
SAMPLE_EVERY = 8
WS_KEY = base64.b64encode(b"load-generator16").decode()


def ws_frame(text: str) -> bytes:
    """One masked text frame (a client's), with a zero mask: the payload as it is."""
    payload = text.encode()
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


class Watcher(asyncio.BufferedProtocol):
    """One follower that counts stamped lines as they arrive, read by read.

    Lines are counted by their mark in the read buffer itself (no copy, no
    per-line Python work, no WebSocket frame parsing: a stamped line is found
    the same way in a text stream, an SSE stream or WebSocket frames), so one
    client process can take a million lines a second.  The lines of every
    :data:`SAMPLE_EVERY`-th read give their delays.
    """

    def __init__(
        self,
        request: bytes,
        read: bool,
        tally: list[int],
        delays: list[float],
        after_upgrade: bytes = b"",
    ) -> None:
        """``after_upgrade``: sent once the server has answered the request's
        headers (a WebSocket client waits for the handshake's answer)."""
        self.request = request
        self.after_upgrade = after_upgrade
        self.read = read
        self.tally = tally
        self.delays = delays
        self.buffer = bytearray(READ_BYTES)
        self.rest = b""
        self.reads = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)
        if not self.read:
            transport.pause_reading()

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, n: int) -> None:
        self.tally[1] += n
        buffer, start = self.buffer, 0
        if self.after_upgrade:
            head = self.rest + bytes(buffer[:n])
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self.rest = head
                return
            assert self.transport is not None
            self.transport.write(self.after_upgrade)
            self.after_upgrade = self.rest = b""
            start = end + 4 - (len(head) - n)
        # a mark cut in two by the last read is counted with this one
        cut = len(MARK) - 1
        if self.rest:
            self.tally[0] += (self.rest + bytes(buffer[start : start + cut])).count(MARK)
        self.tally[0] += buffer.count(MARK, start, n)
        self.rest = bytes(buffer[max(start, n - cut) : n])
        self.reads += 1
        if self.reads % SAMPLE_EVERY == 0:
            now = time.time()
            stamps = STAMPED.findall(buffer, start, n)
            self.delays.extend(now - float(stamp) for stamp in stamps)

    def eof_received(self) -> bool:
        return False


async def watch(
    mode: str,
    target: str,
    watchers: int,
    seconds: float,
    stalled: int,
    log: str | None = None,
    rate: float = 1000.0,
) -> None:
    """``watchers`` clients follow the log for ``seconds``; ``stalled`` of them never read.

    Counts lines received and the delay from write (the stamp in the line) to
    receipt.  With ``log``, once every watcher is connected, a writer appends
    ``rate`` stamped lines a second to it (so a gateway slow to accept a
    thousand connections is not measured while nobody writes), and the count
    starts half a second later.
    """
    delays: list[float] = []
    tally = [0, 0]  # lines, bytes
    loop = asyncio.get_running_loop()
    then = b""
    if mode == "tcp":
        host, port = target.rsplit(":", 1)
        path = ""
        request = b"lastlog -f 1\n"
    else:
        host_port, _, path = target.split("://", 1)[1].partition("/")
        host, port = host_port.rsplit(":", 1)
        if mode == "sse":
            request = (
                f"GET /{path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
            ).encode()
        elif mode == "frontail":
            # socket.io 2 over its WebSocket transport (Engine.IO 3): join the
            # log's namespace; each line then comes as a ["line", text] event.
            request = (
                f"GET /socket.io/?EIO=3&transport=websocket HTTP/1.1\r\nHost: {host_port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n"
                f"Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            then = ws_frame(f"40/{path},")
        else:
            request = (
                f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n"
                f"Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            then = ws_frame("lastlog -f 1")
    opened: list[Watcher] = []
    pinging = asyncio.create_task(ping(opened)) if mode == "frontail" else None
    for i in range(watchers):
        for attempt in range(100):  # a full accept queue refuses: try again shortly
            try:
                _, proto = await loop.create_connection(
                    lambda read=(i >= stalled): Watcher(request, read, tally, delays, then),
                    host,
                    int(port),
                )
                break
            except ConnectionRefusedError:
                if attempt == 99:
                    raise
                await asyncio.sleep(0.05)
        opened.append(proto)
    writer = None
    if log is not None:
        writer = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "write-log",
            log,
            "--rate",
            str(rate),
            "--seconds",
            str(seconds + 1.0),
        )
        await asyncio.sleep(0.5)
    begin = time.monotonic()
    cpu_from = time.process_time()
    counted_from, bytes_from = tally
    del delays[:]
    await asyncio.sleep(seconds)
    if pinging is not None:
        pinging.cancel()
    took = time.monotonic() - begin
    busy = (time.process_time() - cpu_from) / took
    lines = tally[0] - counted_from
    for proto in opened:
        if proto.transport is not None:
            proto.transport.abort()
    if writer is not None:
        await writer.wait()
    report = delays_summary(delays, lines, took, watchers - stalled)
    report["bytes_per_s"] = (tally[1] - bytes_from) / took
    report["client_cpu"] = busy  # near 1: the client, not the server, is the limit
    print(json.dumps(report))


async def ping(opened: list[Watcher]) -> None:
    """An Engine.IO 3 client pings (its server closes a silent one after 30 s)."""
    while True:
        await asyncio.sleep(20)
        for proto in opened:
            if proto.transport is not None and not proto.transport.is_closing():
                proto.transport.write(ws_frame("2"))


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
            "watch-frontail",
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
    p.add_argument("--log", help="watch-*: the file a writer appends to once all are connected")
    a = p.parse_args()
    raise_nofile()
    if a.mode == "write-log":
        write_log(a.target, a.rate, a.seconds)
        return
    if a.mode.startswith("watch-"):
        asyncio.run(watch(a.mode[6:], a.target, a.count, a.seconds, a.stalled, a.log, a.rate))
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
