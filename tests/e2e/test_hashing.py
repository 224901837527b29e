"""comphash -a blake3 against b3sum, and sha256 against sha256sum, over nc and curl."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from ..support.e2e import curl, nc, require_tool


def test_blake3_and_sha256_answer_what_b3sum_and_sha256sum_print(
    start_gateway: Any, tmp_path: Path
) -> None:
    data = tmp_path / "release name.tar"
    data.write_bytes(os.urandom(40 * 1024 * 1024 + 5))
    gw = start_gateway(f'[comphash]\nallowed_roots = ["{tmp_path}"]\nthreads = 2\n')
    for tool, algorithm in (("b3sum", "blake3"), ("sha256sum", "sha256")):
        expected = (
            subprocess.run([require_tool(tool), str(data)], capture_output=True, check=True)
            .stdout.decode()
            .split()[0]
        )
        said = nc(gw.tcp_port, f"comphash -a {algorithm} {data}\n".encode())
        assert said.splitlines()[-1] == f"File hash is: {expected}"
        status, _, body = curl(
            gw.url(f"/comphash?algorithm={algorithm}&format=json"),
            "--get",
            "--data-urlencode",
            f"path={data}",
        )
        assert status == 200
        assert json.loads(body)["hex"] == expected
