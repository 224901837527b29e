"""End-to-end fixtures: the real ``gateway`` process, started as a user would."""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from ..support.e2e import Gateway, require_tool


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


@pytest.fixture
def curl_path() -> str:
    return require_tool("curl")
