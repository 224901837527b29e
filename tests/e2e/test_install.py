"""Installed the way an operator installs it: a wheel into a fresh venv, and pipx.

Builds the wheel from the checkout, installs it outside the checkout, and runs
``gateway`` and ``twistd -n gateway`` from there against the real clients.
Nothing here may find the checkout's files: the venv's Python runs with the
temporary directory as its working directory and no ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from ..support.e2e import Gateway, curl, nc, require_tool

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GATEWAY_", "PYTHON", "VIRTUAL_ENV", "PIP_"))
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built as ``pip wheel .`` builds it (through an sdist)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        env=clean_env(),
        timeout=600,
    )
    (found,) = out.glob("gateway-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv, outside the checkout, with the wheel installed: its bin/."""
    home = tmp_path_factory.mktemp("operator")
    venv.create(home / "venv", with_pip=True)
    bin_dir = home / "venv" / "bin"
    subprocess.run(
        [str(bin_dir / "pip"), "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        check=True,
        capture_output=True,
        cwd=home,
        env=clean_env(),
        timeout=600,
    )
    return bin_dir


def test_wheel_holds_what_the_daemon_reads_and_no_twisted_plugins_init(wheel: Path) -> None:
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for needed in (
        "gateway/web/index.html",
        "gateway/web/console.js",
        "gateway/web/style.css",
        "gateway/data/gateway.toml",
        "gateway/data/gateway.service",
        "gateway/data/gateway.socket",
        "twisted/plugins/gateway_plugin.py",
    ):
        assert needed in names, needed
    assert "twisted/plugins/__init__.py" not in names  # it would shadow Twisted's own
    assert "twisted/__init__.py" not in names
    assert not any("dropin.cache" in n for n in names)


def test_sdist_ships_the_config_and_unit(wheel: Path) -> None:
    import tarfile

    (sdist,) = wheel.parent.glob("gateway-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    for needed in (
        "config/gateway.toml",
        "config/gateway.service",
        "config/gateway.socket",
        "README.md",
    ):
        assert needed in names, needed


def start(bin_dir: Path, tmp_path: Path, argv: list[str], env: dict[str, str]) -> Gateway:
    cwd = os.getcwd()
    os.chdir(tmp_path)  # not the checkout
    try:
        return Gateway(tmp_path, "", argv, env).started()
    finally:
        os.chdir(cwd)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for gw in started:
        gw.stop()


def check_every_front_end(gw: Gateway) -> None:
    status, headers, page = curl(gw.url("/"))
    assert status == 200 and b"<title>gateway console</title>" in page, page[:200]
    assert curl(gw.url("/console.js"))[0] == 200
    assert curl(gw.url("/healthz"))[2] == b"ok\n"
    status, _, body = curl(gw.url("/lastlog?lines=2&format=json"))
    assert status == 200 and json.loads(body)["count"] >= 1
    assert nc(gw.tcp_port, b"help\n").startswith("lastlog [N]")
    with connect(
        f"ws://127.0.0.1:{gw.http_port}/ws",
        subprotocols=[Subprotocol("gateway.v1.json")],
    ) as ws:
        ws.send(json.dumps({"id": 1, "line": "stats"}))
        assert json.loads(ws.recv(10))["type"] == "result"


def test_gateway_runs_from_the_wheel(
    installed: Path, tmp_path: Path, running: list[Gateway], nc_path: str, curl_path: str
) -> None:
    gw = start(installed, tmp_path, [str(installed / "gateway")], clean_env())
    running.append(gw)
    check_every_front_end(gw)
    first_screen = "\n".join(gw.lines)
    assert "Warning" not in first_screen and "Traceback" not in first_screen


def installed_run(tool: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run an installed command as an operator would: outside the checkout, clean env."""
    return subprocess.run(
        [str(tool), *args], capture_output=True, text=True, cwd=cwd, env=clean_env()
    )


def test_version_and_the_documented_config_come_with_it(installed: Path, tmp_path: Path) -> None:
    from gateway import __version__

    gateway = installed / "gateway"
    assert installed_run(gateway, "--version", cwd=tmp_path).stdout.strip() == (
        f"gateway {__version__}"
    )
    example = installed_run(gateway, "--print-config-example", cwd=tmp_path).stdout
    assert example == (ROOT / "config" / "gateway.toml").read_text()
    (tmp_path / "gateway.toml").write_text(example)
    check = installed_run(gateway, "--config", "gateway.toml", "--check-config", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    unit = installed_run(gateway, "--print-systemd-unit", cwd=tmp_path).stdout
    assert unit == (ROOT / "config" / "gateway.service").read_text()
    socket_unit = installed_run(gateway, "--print-systemd-socket", cwd=tmp_path).stdout
    assert socket_unit == (ROOT / "config" / "gateway.socket").read_text()


def test_twistd_plugin_from_the_wheel(
    installed: Path, tmp_path: Path, running: list[Gateway], nc_path: str, curl_path: str
) -> None:
    listed = installed_run(installed / "twistd", "--help-plugins", cwd=tmp_path)
    assert re.search(r"^\s*gateway\s", listed.stdout, re.M), listed.stdout
    assert "cache" not in (listed.stdout + listed.stderr).lower()
    gw = start(
        installed,
        tmp_path,
        [str(installed / "twistd"), "--pidfile=", "-n", "gateway"],
        clean_env(),
    )
    running.append(gw)
    check_every_front_end(gw)
    assert not any("cache" in line.lower() for line in gw.lines)


def test_pipx_installs_the_wheel(wheel: Path, tmp_path: Path, running: list[Gateway]) -> None:
    pipx = require_tool("pipx")
    home = tmp_path / "pipx"
    env = clean_env(PIPX_HOME=str(home / "home"), PIPX_BIN_DIR=str(home / "bin"))
    env.pop("PIPX_DEFAULT_PYTHON", None)
    subprocess.run(
        [pipx, "install", "--python", shutil.which("python3") or sys.executable, str(wheel)],
        check=True,
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    gw = start(home / "bin", tmp_path, [str(home / "bin" / "gateway")], clean_env())
    running.append(gw)
    check_every_front_end(gw)
