"""End-to-end helpers: the real gateway process and the real clients that drive it."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gateway:
    """A running gateway process and what it has logged."""

    def __init__(
        self,
        tmp_path: Path,
        config: str = "",
        argv: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        pass_fds: Sequence[int] = (),
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
            pass_fds=tuple(pass_fds),
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


def nc(port: int, data: bytes, timeout: float = 15.0, half_close: bool = True) -> str:
    """Send ``data`` with the real netcat and return all it printed."""
    return nc_bytes(port, data, timeout, half_close).decode("utf-8", "replace")


def nc_bytes(port: int, data: bytes, timeout: float = 15.0, half_close: bool = True) -> bytes:
    """:func:`nc`, the bytes as they came (file names that are not UTF-8)."""
    args = [require_tool("nc"), *(["-N"] if half_close else []), "127.0.0.1", str(port)]
    done = subprocess.run(args, input=data, capture_output=True, timeout=timeout, check=False)
    return done.stdout


def curl(
    url: str, *options: str, timeout: float = 30.0, input: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """GET ``url`` with the real curl (``input``: its stdin, for ``--data-binary @-``):
    ``(status, headers, body)``."""
    done = subprocess.run(
        [require_tool("curl"), "-sS", "-D", "/dev/stderr", "-o", "-", *options, url],
        capture_output=True,
        timeout=timeout,
        check=False,
        input=input,
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


def read_until_closed(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """What ``proc`` prints until its stdout closes or ``timeout`` passes."""
    assert proc.stdout is not None
    out = proc.stdout.fileno()
    os.set_blocking(out, False)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(out, 65536)
        except BlockingIOError:
            time.sleep(0.02)
            continue
        if not chunk:
            break
        data += chunk
    return data


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    out = proc.stdout.fileno()
    os.set_blocking(out, False)
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data and time.monotonic() < deadline:
        try:
            chunk = os.read(out, 1)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        if not chunk:
            break
        data += chunk
    return data


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists at all, zombie included (a zombie is not reaped)."""
    return os.path.exists(f"/proc/{pid}")


def read_chars(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def make_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return write_pem(key, cert, directory / "key.pem", directory / "cert.pem")


def write_pem(
    key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, key_path: Path, cert_path: Path
) -> tuple[Path, Path]:
    """Write a key (PKCS#8) and its certificate as PEM files; return their paths."""
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def raw_handshake(port: int) -> socket.socket:
    """A WebSocket opened by hand, so the test decides what (not) to answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return s


def masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    assert len(payload) < 126
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


def frames_until_closed(s: socket.socket, limit: float) -> tuple[list[int], float]:
    """Opcodes received until the server closes the TCP connection, and when."""
    started = time.monotonic()
    s.settimeout(limit)
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    opcodes = []
    while len(data) >= 2:
        opcodes.append(data[0] & 0x0F)
        length = data[1] & 0x7F
        data = data[2 + length :]
    return opcodes, time.monotonic() - started
