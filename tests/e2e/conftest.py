"""End-to-end fixtures: the real ``gateway`` process, started as a user would."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def require_tool(name: str) -> str:
    """The tool's path; skip without it locally, fail without it in CI."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (.ci/run installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class Gateway:
    """A running gateway process and what it has logged."""

    def __init__(
        self,
        tmp_path: Path,
        config: str = "",
        argv: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config_path = tmp_path / "gateway.toml"
        self.config_path.write_text(config)
        command = list(argv) if argv is not None else [str(BIN / "gateway")]
        command += ["--config", str(self.config_path)]
        for flag in ("--tcp", "--http"):  # free ports, unless the test chose
            if flag not in command:
                command += [flag, "tcp:0:interface=127.0.0.1"]
        self.twistd = Path(command[0]).name == "twistd"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        environ.update(env or {})
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=environ,
            text=True,
        )
        self.lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.tcp_port = 0
        self.http_port = 0

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """The first log line matching ``pattern``, waiting up to ``timeout``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if m := regex.search(line):
                        return m
                if self._eof or time.monotonic() > deadline:
                    raise AssertionError(
                        f"no log line matches {pattern!r}; log so far:\n" + "\n".join(self.lines)
                    )
                self._changed.wait(0.2)

    def started(self) -> Gateway:
        self.tcp_port = int(self.wait_for(r"TCP listening on 127\.0\.0\.1:(\d+)").group(1))
        self.http_port = int(self.wait_for(r"HTTP listening on 127\.0\.0\.1:(\d+)").group(1))
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def json_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines]

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[object]:
    """``start_gateway(config_toml, argv=None, env=None)`` -> a started :class:`Gateway`."""
    running: list[Gateway] = []

    def start(
        config: str = "",
        argv: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> Gateway:
        gateway = Gateway(tmp_path, config, argv, env)
        running.append(gateway)
        return gateway.started() if wait else gateway

    yield start
    for gateway in running:
        if gateway.proc.poll() is None:
            # twistd ends itself with the signal it got, after a clean shutdown
            clean = (0, -signal.SIGTERM) if gateway.twistd else (0,)
            assert gateway.stop() in clean, "\n".join(gateway.lines)


@pytest.fixture
def nc_path() -> str:
    return require_tool("nc")


def nc(port: int, data: bytes, timeout: float = 15.0, half_close: bool = True) -> str:
    """Send ``data`` with the real netcat and return all it printed."""
    args = [require_tool("nc"), *(["-N"] if half_close else []), "127.0.0.1", str(port)]
    done = subprocess.run(args, input=data, capture_output=True, timeout=timeout, check=False)
    return done.stdout.decode("utf-8", "replace")


@pytest.fixture
def curl_path() -> str:
    return require_tool("curl")


def curl(url: str, *options: str, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """GET ``url`` with the real curl: ``(status, headers, body)``."""
    done = subprocess.run(
        [require_tool("curl"), "-sS", "-D", "/dev/stderr", "-o", "-", *options, url],
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    head = done.stderr.decode("latin-1").replace("\r", "")
    blocks = [b for b in head.split("\n\n") if b.startswith("HTTP/")]
    assert blocks, f"curl failed: {head}"
    status_line, *header_lines = blocks[-1].splitlines()
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, done.stdout


def open_nc(port: int, *options: str) -> subprocess.Popen[bytes]:
    """The real netcat connected to ``port``, its stdin and stdout ours to drive."""
    return subprocess.Popen(
        [require_tool("nc"), *options, "127.0.0.1", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
