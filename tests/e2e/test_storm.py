"""A storm: hundreds of clients on every transport doing random commands and
hanging up abruptly.  Afterwards the daemon answers, the quota is empty, no
child process is left, and a second storm does not grow its memory."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from ..support.e2e import curl, nc, rss_kib

pytestmark = pytest.mark.e2e

CLIENTS_PER_TRANSPORT = 100
STORM_SECONDS = 20.0


def line_commands(big: Path) -> list[bytes]:
    return [
        b"help\n",
        b"stats\n",
        b"lastlog 5\n",
        b"lastlog abc\n",
        f"comphash {big}\n".encode(),
        b"comphash /dev/zero\n",
        b"nonsense \xff\xfe\n",
        b"x" * 5000 + b"\n",
    ]


async def tcp_client(port: int, rng: random.Random, until: float, commands: list[bytes]) -> None:
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        try:
            for _ in range(rng.randint(1, 4)):
                writer.write(rng.choice(commands))
                await writer.drain()
                if rng.random() < 0.5:
                    await asyncio.wait_for(reader.readline(), 1.0)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            if rng.random() < 0.5:
                writer.transport.abort()  # hang up without a goodbye
            else:
                writer.close()


async def http_client(port: int, rng: random.Random, until: float, big: Path) -> None:
    paths = [
        "/lastlog",
        "/lastlog?lines=abc",
        f"/comphash?path={big}",
        "/stats",
        "/nope",
        "/healthz",
    ]
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        try:
            request = (
                f"GET {rng.choice(paths)} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            writer.write(request.encode())
            await writer.drain()
            if rng.random() < 0.6:
                await asyncio.wait_for(reader.read(), 2.0)
        except (OSError, TimeoutError):
            pass
        finally:
            writer.transport.abort() if rng.random() < 0.5 else writer.close()


async def ws_client(port: int, rng: random.Random, until: float, big: Path) -> None:
    messages = [
        '{"id": 1, "line": "lastlog 5"}',
        json.dumps({"id": 2, "line": f"comphash {big}"}),
        '{"id": 3, "line": "help"}',
        '{"id": 2, "cancel": true}',
        "not json",
    ]
    while time.monotonic() < until:
        try:
            async with connect(
                f"ws://127.0.0.1:{port}/ws",
                subprotocols=[Subprotocol("gateway.v1.json")],
                open_timeout=2,
            ) as ws:
                for _ in range(rng.randint(1, 4)):
                    await ws.send(rng.choice(messages))
                    if rng.random() < 0.5:
                        await asyncio.wait_for(ws.recv(), 1.0)
                if rng.random() < 0.5:
                    ws.transport.abort()
        except Exception:  # refused (1013), timed out, aborted: all part of the storm
            await asyncio.sleep(0.01)


async def storm(gw: Any, big: Path, seed: int) -> None:
    until = time.monotonic() + STORM_SECONDS
    commands = line_commands(big)
    tasks = []
    for i in range(CLIENTS_PER_TRANSPORT):
        tasks.append(tcp_client(gw.tcp_port, random.Random(seed * 1000 + i), until, commands))
        tasks.append(http_client(gw.http_port, random.Random(seed * 2000 + i), until, big))
        tasks.append(ws_client(gw.http_port, random.Random(seed * 3000 + i), until, big))
    await asyncio.gather(*tasks)


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == pid:
                found.append(int(entry))
    return found


def settle(gw: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        stats: dict[str, Any] = json.loads(curl(gw.url("/stats?format=json"))[2])
        if stats["clients"]["in_use"] == 0 and not children(gw.proc.pid):
            return stats
        assert time.monotonic() < deadline, (stats, children(gw.proc.pid))
        time.sleep(0.2)


def test_storm(start_gateway: Any, nc_path: str, curl_path: str, tmp_path: Path) -> None:
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(256 * 1024 * 1024)
    gw = start_gateway(
        "[quota]\nmax_clients = 60\n"
        "[limits]\ncommands_per_second = 0\n"
        "[tcp]\neof_grace = 0.5\n"
        "[lastlog]\nsource = 'command:/bin/sh -c \"echo one; sleep 0.3; echo two\"'\n"
        f'[comphash]\nallowed_roots = ["{tmp_path}"]\n'
    )
    asyncio.run(storm(gw, big, 1))
    first = settle(gw)
    assert nc(gw.tcp_port, b"help\n").startswith("lastlog [N]")  # it still answers
    rss_after_first = rss_kib(gw.proc.pid)

    asyncio.run(storm(gw, big, 2))
    second = settle(gw)
    rss_after_second = rss_kib(gw.proc.pid)
    served = {t: v["served"] for t, v in second["clients"]["by_transport"].items()}
    print(f"storm: served {served}; RSS {rss_after_first} KiB -> {rss_after_second} KiB")
    assert all(n > 100 for n in served.values()), served  # the storm really reached everyone
    assert rss_after_second <= rss_after_first * 1.05, (rss_after_first, rss_after_second)
    assert first["clients"]["in_use"] == second["clients"]["in_use"] == 0
    assert not children(gw.proc.pid)
    assert not any("Traceback" in line for line in gw.lines), "\n".join(
        line for line in gw.lines if "Traceback" in line or "Unhandled" in line
    )
