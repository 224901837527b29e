"""The REST front-end of the real gateway, driven with the real curl."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from ..support.e2e import curl, open_nc, read_chars, read_line, require_tool

pytestmark = pytest.mark.e2e


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="/")


def write_log(tmp_path: Path) -> Path:
    log = tmp_path / "syslog"
    log.write_text("".join(f"Nov 25 10:00:{i:02d} lab app[1]: event {i}\n" for i in range(40)))
    return log


def test_lastlog_and_friends(start_gateway: Any, curl_path: str, tmp_path: Path) -> None:
    log = write_log(tmp_path)
    gw = start_gateway(f'[lastlog]\nsource = "{log}"\n')
    status, headers, body = curl(gw.url("/lastlog"))
    assert status == 200
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["transfer-encoding"] == "chunked"
    assert headers["x-accel-buffering"] == "no"
    assert body.decode().splitlines() == [
        f"Nov 25 10:00:{i:02d} lab app[1]: event {i}" for i in range(30, 40)
    ]
    status, headers, body = curl(gw.url("/lastlog?lines=2"), "-H", "Accept: application/json")
    assert json.loads(body) == {
        "lines": ["Nov 25 10:00:38 lab app[1]: event 38", "Nov 25 10:00:39 lab app[1]: event 39"],
        "count": 2,
        "source": str(log),
        "text": [],
        "summary": f"2 lines from {log}",
    }
    assert curl(gw.url("/healthz"))[::2] == (200, b"ok\n")
    assert curl(gw.url("/commands"))[2].startswith(b"lastlog [N]")
    assert json.loads(curl(gw.url("/stats?format=json"))[2])["clients"]["max"] == 10
    assert b"gateway_clients_in_use" in curl(gw.url("/metrics"))[2]
    doc = json.loads(curl(gw.url("/openapi.json"))[2])
    assert "/lastlog" in doc["paths"]
    gw.wait_for(r"http 127\.0\.0\.1 lastlog: ok in ")


@pytest.mark.parametrize(
    ("algorithm", "checker"), [("sha1", "sha1sum"), ("sha256", "sha256sum"), ("md5", "md5sum")]
)
def test_comphash_output_is_checked_by_coreutils(
    start_gateway: Any, curl_path: str, tmp_path: Path, algorithm: str, checker: str
) -> None:
    target = tmp_path / "my file.bin"
    target.write_bytes(os.urandom(3 * 1024 * 1024))
    gw = start_gateway()
    status, _, body = curl(gw.url(f"/comphash?path={q(str(target))}&algorithm={algorithm}"))
    assert status == 200
    check = subprocess.run(
        [require_tool(checker), "-c"], input=body, capture_output=True, timeout=30, check=False
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.decode() == f"{target}: OK\n"


def test_bad_input_gets_the_right_status(
    start_gateway: Any, curl_path: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    os.mkfifo(data / "fifo")
    (tmp_path / "outside").write_text("x")
    log = write_log(tmp_path)
    gw = start_gateway(
        f'[comphash]\nallowed_roots = ["{data}", "/dev"]\n[lastlog]\nsource = "{log}"\n'
    )
    cases = [
        ("/lastlog?lines=abc", 400, "lines must be an integer from 1 to 1000"),
        ("/lastlog?lines=0", 400, "lines must be an integer from 1 to 1000"),
        ("/lastlog?lines=-1", 400, "lines must be an integer from 1 to 1000"),
        ("/lastlog?lines=99999999999999999999", 400, "lines must be an integer from 1 to 1000"),
        ("/comphash", 400, "Please provide a path."),
        ("/comphash?path=", 400, "Please provide a path."),
        ("/comphash?path=etc/passwd", 400, "Path must be absolute: etc/passwd"),
        (
            f"/comphash?path={data}/../outside",
            403,
            f"Path is outside the allowed roots: {data}/../outside",
        ),
        ("/comphash?path=/etc/shadow", 403, "Path is outside the allowed roots: /etc/shadow"),
        (f"/comphash?path={data}", 400, f"Not a regular file: {data}"),
        ("/comphash?path=/dev/zero", 400, "Not a regular file: /dev/zero"),
        (f"/comphash?path={data}/fifo", 400, f"Not a regular file: {data}/fifo"),
        (f"/comphash?path={data}/nope", 404, f"No such file: {data}/nope"),
        (
            f"/comphash?path={data}/f&algorithm=crc32",
            400,
            "Unknown algorithm: crc32 (allowed: sha1, sha256, sha512, md5, blake2b, blake3)",
        ),
        ("/no/such/route", 404, "No such route: /no/such/route"),
    ]
    for path, status, message in cases:
        got_status, headers, body = curl(gw.url(path))
        assert (got_status, body.decode()) == (status, f"error: {message}\n"), path
        got_status, headers, body = curl(gw.url(path), "-H", "Accept: application/json")
        assert headers["content-type"] == "application/problem+json", path
        assert (got_status, json.loads(body)["detail"]) == (status, message), path
    status, headers, body = curl(gw.url("/lastlog"), "-X", "DELETE")
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    assert curl(gw.url("/healthz"))[0] == 200  # still serving


def test_hundred_kilobyte_query_string(start_gateway: Any, curl_path: str) -> None:
    gw = start_gateway()
    status, _, body = curl(gw.url("/lastlog?lines=" + "9" * 100_000))
    assert (status, body) == (414, b"error: request line too long (limit 16384 bytes)\n")
    assert curl(gw.url("/healthz"))[0] == 200


def test_slowloris_gets_408(start_gateway: Any) -> None:
    gw = start_gateway("[http]\nrequest_timeout = 1.0\n")
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert answer.endswith(b"error: request not received within 1 s\n")


def test_client_leaving_mid_hash_stops_it_and_frees_the_slot(
    start_gateway: Any, curl_path: str, tmp_path: Path
) -> None:
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(64 * 1024**3)
    gw = start_gateway(f'[comphash]\nallowed_roots = ["{tmp_path}"]\n')
    before = read_chars(gw.proc.pid)
    done = subprocess.run(
        [curl_path, "-sS", "--max-time", "1", gw.url(f"/comphash?path={big}")],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 28  # curl gave up: operation timed out
    gw.wait_for(r"http 127\.0\.0\.1 comphash: cancelled")
    assert read_chars(gw.proc.pid) - before > 64 * 1024**2  # it was hashing
    time.sleep(0.3)
    settled = read_chars(gw.proc.pid)
    time.sleep(1.0)
    assert read_chars(gw.proc.pid) - settled < 4 * 1024**2  # and has stopped
    stats = json.loads(curl(gw.url("/stats?format=json"))[2])
    assert stats["clients"]["in_use"] == 0


def test_quota_is_shared_between_tcp_and_http(
    start_gateway: Any, nc_path: str, curl_path: str, tmp_path: Path
) -> None:
    gw = start_gateway(f'[quota]\nmax_clients = 3\n[lastlog]\nsource = "{write_log(tmp_path)}"\n')
    holders = [open_nc(gw.tcp_port) for _ in range(3)]
    try:
        for p in holders:  # each holds its slot: it answers
            assert p.stdin is not None
            p.stdin.write(b"test\n")
            p.stdin.flush()
            assert read_line(p, 10) == b"Command not found.\n"
        status, headers, body = curl(gw.url("/lastlog"))
        assert (status, body) == (503, b"error: Too many connections. Bye!\n")
        assert headers["retry-after"] == "5"
        assert curl(gw.url("/healthz"))[0] == 200  # monitoring is never refused
        assert curl(gw.url("/metrics"))[0] == 200
    finally:
        holders[0].kill()
        holders[0].wait()
    deadline = time.monotonic() + 10
    while (status := curl(gw.url("/lastlog"))[0]) == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 200
    for p in holders[1:]:
        p.kill()
        p.wait()


def test_fifty_concurrent_hashes_against_ten_slots_with_tcp_clients(
    start_gateway: Any, nc_path: str, curl_path: str, tmp_path: Path
) -> None:
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(4 * 1024**3)  # seconds of hashing each: they overlap
    gw = start_gateway(f'[quota]\nmax_clients = 10\n[comphash]\nallowed_roots = ["{tmp_path}"]\n')
    tcp = [open_nc(gw.tcp_port) for _ in range(5)]
    for p in tcp:
        assert p.stdin is not None
        p.stdin.write(b"test\n")
        p.stdin.flush()
        assert read_line(p, 10) == b"Command not found.\n"
    results: list[tuple[int, dict[str, str], bytes]] = []
    lock = threading.Lock()

    def one() -> None:
        got = curl(gw.url(f"/comphash?path={big}"), timeout=120)
        with lock:
            results.append(got)

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    try:
        codes = sorted(r[0] for r in results)
        assert codes.count(200) == 5, codes
        assert codes.count(503) == 45, codes
        assert all(r[1]["retry-after"] == "5" for r in results if r[0] == 503)
        # sha1 of 4 GiB of zero bytes (head -c 4G /dev/zero | sha1sum)
        zeros = "1bf99ee9f374e58e201e4dda4f474e570eb77229"
        assert {r[2] for r in results if r[0] == 200} == {f"{zeros}  {big}\n".encode()}
    finally:
        for p in tcp:
            p.kill()
            p.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = json.loads(curl(gw.url("/stats?format=json"))[2])
        if stats["clients"]["in_use"] == 0:
            break
        time.sleep(0.1)
    assert stats["clients"]["in_use"] == 0
    assert stats["clients"]["by_transport"]["http"]["refused"] == 45
