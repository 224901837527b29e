"""schemathesis against the live /openapi.json: no 5xx, every answer as documented."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from ..support.e2e import BIN

pytestmark = pytest.mark.e2e


def test_every_answer_matches_the_openapi_document(start_gateway: Any, tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_text("".join(f"line {i}\n" for i in range(50)))
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    gw = start_gateway(
        f'[lastlog]\nsource = "{log}"\n[comphash]\nallowed_roots = ["{data}"]\n'
        "[limits]\ncommands_per_second = 0\n"
    )
    # A follow streams until the client stops it (its own tests drive it):
    # schemathesis, which reads each answer to its end, asks without one.
    # A grep pattern must be valid RE2, which no JSON Schema can say; bad
    # patterns have their own tests.
    # comphash's flags that do not go together (-r with -c; --quiet, --strict,
    # --ignore-missing, --dir, --manifest without -c) are refused with 400,
    # which separate query parameters cannot say in JSON Schema: there, and
    # only there, a 400 is an expected answer to a valid-looking request.
    (tmp_path / "schemathesis.toml").write_text(
        '[parameters]\n"query.follow" = false\n"query.grep" = "line [0-9]"\n'
        '[[operations]]\ninclude-path = "/comphash"\ninclude-method = "GET"\n'
        "checks.positive_data_acceptance.expected-statuses ="
        ' ["2xx", "3xx", 400, 401, 403, 404, 409, 429, "5xx"]\n'
    )
    done = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "run",
            gw.url("/openapi.json"),
            "--checks",
            "all",
            "--max-examples",
            "40",
            "--no-color",
            # /ws is a WebSocket handshake, which plain HTTP requests cannot
            # make; its own tests drive it with real WebSocket clients.
            "--exclude-path",
            "/ws",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Tested: 9" in done.stdout  # every other operation was
