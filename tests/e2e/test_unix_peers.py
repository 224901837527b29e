"""Local users on unix: listeners are known by their credentials (SO_PEERCRED):
nc -U and curl --unix-socket need no token, within their scope; others log in."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

from ..support.e2e import BIN, require_tool

TOKEN = "unix-test-token-0123456789abcdef"


def start(start_gateway: Any, tmp_path: Path, uid: int) -> tuple[Any, Path, Path]:
    log = tmp_path / "syslog"
    log.write_text("a\nb\n")
    tcp, http = tmp_path / "gw.sock", tmp_path / "http.sock"
    gw = start_gateway(
        f'[lastlog]\nsource = "{log}"\n'
        f'[[auth.token]]\nname = "ops"\nsha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"\n'
        f'[[auth.unix]]\nuid = {uid}\nname = "me"\ncommands = ["lastlog", "help"]\n',
        argv=[str(BIN / "gateway"), "--tcp", f"unix:{tcp}", "--http", f"unix:{http}"],
        wait=False,
    )
    gw.wait_for(r"TCP listening on")
    gw.wait_for(r"HTTP listening on")
    return gw, tcp, http


def nc_unix(path: Path, data: bytes) -> list[str]:
    done = subprocess.run(
        [require_tool("nc"), "-N", "-U", str(path)],
        input=data,
        capture_output=True,
        timeout=15,
        check=False,
    )
    return done.stdout.decode().splitlines()


def curl_unix(path: Path, url: str, *options: str) -> tuple[int, str]:
    done = subprocess.run(
        [
            require_tool("curl"),
            "-s",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
            str(path),
            *options,
            f"http://localhost{url}",
        ],
        capture_output=True,
        timeout=15,
        check=False,
    )
    body, _, status = done.stdout.decode().rpartition("\n")
    return int(status), body


def test_a_known_local_user_needs_no_token_within_its_scope(
    start_gateway: Any, tmp_path: Path
) -> None:
    gw, tcp, http = start(start_gateway, tmp_path, os.getuid())
    assert nc_unix(tcp, b"lastlog 1\nstats\n") == [
        "Begin lastlog",
        "b",
        "End lastlog",
        'An error occurred: unix user "me" may not run stats (its commands: help, lastlog)',
    ]
    gw.wait_for(rf"unix peer pid \d+ uid {os.getuid()} gid \d+ is unix user \"me\"")
    assert curl_unix(http, "/lastlog?lines=1") == (200, "b\n")
    assert curl_unix(http, "/stats")[0] == 403


def test_an_unknown_local_user_must_log_in(start_gateway: Any, tmp_path: Path) -> None:
    gw, tcp, http = start(start_gateway, tmp_path, os.getuid() + 12345)
    assert nc_unix(tcp, b"lastlog 1\n") == ["Authentication required."]
    assert nc_unix(tcp, f"auth {TOKEN}\nlastlog 1\n".encode())[:2] == [
        "Authenticated.",
        "Begin lastlog",
    ]
    assert curl_unix(http, "/lastlog")[0] == 401
    assert curl_unix(http, "/lastlog?lines=1", "-H", f"Authorization: Bearer {TOKEN}") == (
        200,
        "b\n",
    )
