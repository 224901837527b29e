"""Commands declared in the config, driven with real nc, curl and a WebSocket client."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from ..support.e2e import BIN, curl, nc, pid_alive, require_tool
from ..support.openapi_check import check_answer

SCRIPTS = {
    # Long arguments are shown by length and hash: an output line is cut at 64 KiB.
    "argv.py": (
        "import hashlib, json, sys\n"
        "def show(a):\n"
        "    if len(a) <= 1000:\n"
        "        return a\n"
        "    return {'len': len(a), 'sha256': hashlib.sha256(a.encode()).hexdigest()}\n"
        "print(json.dumps([show(a) for a in sys.argv[1:]]))\n"
    ),
    "tick.py": (
        "import sys, time\n"
        "for i in range(int(sys.argv[1])):\n"
        "    print(f'tick {i}', flush=True)\n"
        "    time.sleep(0.1)\n"
    ),
    "fail.py": (
        "import sys\nprint('partial', flush=True)\nprint('boom \\x1b[2J', file=sys.stderr)\n"
        "sys.exit(3)\n"
    ),
    "quiet_fail.py": "import sys\nsys.exit(4)\n",
    "slow.py": (
        "import subprocess, sys, time\n"
        "helper = subprocess.Popen(['sleep', '60'])\n"
        "open(sys.argv[1], 'w').write(str(helper.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    ),
}


def write_scripts(directory: Path) -> None:
    for name, body in SCRIPTS.items():
        path = directory / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)


def config(directory: Path) -> str:
    d = directory
    return f"""
[websocket]
max_message_bytes = 131072
max_frame_bytes = 131072
[commands.args]
summary = "shows its argv"
argv = ["{d}/argv.py", "{{word}}", "--n={{n}}", "{{color}}", "{{where}}"]
[commands.args.params.word]
type = "string"
pattern = "(?s).+"
required = true
[commands.args.params.n]
type = "int"
min = 1
max = 5
default = 2
[commands.args.params.color]
type = "choice"
values = ["red", "blue"]
[commands.args.params.where]
type = "path"
roots = ["{d}"]

[commands.tick]
argv = ["{d}/tick.py", "{{count}}"]
[commands.tick.params.count]
type = "int"
min = 1
max = 50
default = 5

[commands.fail]
argv = ["{d}/fail.py"]
[commands.quietfail]
argv = ["{d}/quiet_fail.py"]
[commands.slow]
argv = ["{d}/slow.py", "{d}/helper.pid"]
timeout = 1
"""


@pytest.fixture
def gw(start_gateway: Any, tmp_path: Path) -> Any:
    write_scripts(tmp_path)
    return start_gateway(config(tmp_path))


def ws_json(gw: Any, *messages: dict[str, Any]) -> list[dict[str, Any]]:
    """Send ``messages`` on one gateway.v1.json connection; the replies up to each final one."""
    url = f"ws://127.0.0.1:{gw.http_port}/ws"
    out = []
    with connect(url, subprotocols=[Subprotocol("gateway.v1.json")], max_size=2**20) as ws:
        for message in messages:
            ws.send(json.dumps(message))
            while True:
                reply = json.loads(ws.recv(15))
                out.append(reply)
                if reply["type"] in ("result", "error", "cancelled"):
                    break
    return out


def test_every_param_type_on_every_transport(gw: Any, nc_path: str, tmp_path: Path) -> None:
    where = tmp_path / "sub" / ".." / "file"
    resolved = str(tmp_path / "file")
    line = f"args --n=3 --color=red --where={where} two  words\nexit\n"
    assert nc(gw.tcp_port, line.encode()).splitlines() == [
        "Begin args",
        json.dumps(["two  words", "--n=3", "red", resolved]),
        "End args",
    ]

    url = gw.url("/args")
    status, headers, body = curl(
        url,
        "--get",
        "--data-urlencode",
        "word=two  words",
        "--data-urlencode",
        f"where={where}",
        "-d",
        "format=json",
    )
    assert status == 200
    answer = json.loads(body)
    assert json.loads(answer["lines"][0]) == ["two  words", "--n=2", resolved]
    assert answer["exit_status"] == 0 and answer["truncated"] is False
    doc = json.loads(curl(gw.url("/openapi.json"))[2])
    check_answer(doc, "/args", status, headers["content-type"], body)

    replies = ws_json(
        gw, {"id": 1, "command": "args", "args": {"word": "x", "n": 5, "color": "blue"}}
    )
    assert json.loads(replies[0]["text"]) == ["x", "--n=5", "blue"]
    assert replies[-1]["type"] == "result" and replies[-1]["result"]["exit_status"] == 0

    listed = json.loads(curl(gw.url("/commands?format=json"))[2])["commands"]
    args = next(c for c in listed if c["name"] == "args")
    assert [p["name"] for p in args["params"]] == ["word", "n", "color", "where"]
    assert "args" in nc(gw.tcp_port, b"help\nexit\n")
    assert doc["paths"]["/args"]["get"]["parameters"][0]["name"] == "word"


HOSTILE = [
    "; rm -rf /",
    "$(id)",
    "`id`",
    "a\nb",
    "../../../etc/passwd",
    "{n}",
    "%s%n",
    "héllo ☃ 𝄞",
    "\\x00",
    "x" * 65536,
]


def test_hostile_values_reach_the_child_as_one_inert_element(gw: Any) -> None:
    messages = [{"id": i, "command": "args", "args": {"word": v}} for i, v in enumerate(HOSTILE)]
    replies = ws_json(gw, *messages)
    seen = [json.loads(r["text"]) for r in replies if r["type"] == "line"]
    assert seen == [[shown(value), "--n=2"] for value in HOSTILE]


def shown(value: str) -> object:
    if len(value) <= 1000:
        return value
    return {"len": len(value), "sha256": hashlib.sha256(value.encode()).hexdigest()}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-rf", "word may not start with '-'"),
        ("a\x00b", "word contains a NUL character"),
        ("", "args needs word"),
    ],
)
def test_refused_values_never_start_the_program(gw: Any, value: str, message: str) -> None:
    (reply,) = ws_json(gw, {"id": 1, "command": "args", "args": {"word": value}})
    assert reply["type"] == "error" and reply["message"] == message
    assert not any("args: ok" in line for line in gw.lines)


def test_paths_outside_the_roots_and_other_refusals_over_curl_and_nc(gw: Any, nc_path: str) -> None:
    status, _, body = curl(gw.url("/args?word=x&where=/etc/passwd"))
    assert (status, body) == (403, b"error: Path is outside the allowed roots: /etc/passwd\n")
    status, _, body = curl(gw.url("/args?word=x&n=9"))
    assert (status, body) == (400, b"error: n must be an integer from 1 to 5\n")
    assert nc(gw.tcp_port, b"args -x\nargs --color=green y\nexit\n").splitlines() == [
        "An error occurred: word may not start with '-'",
        "An error occurred: Unknown color: green (allowed: red, blue)",
    ]


def test_output_streams_as_the_program_writes_it(gw: Any) -> None:
    started = time.monotonic()
    proc = subprocess.Popen(
        [require_tool("curl"), "-sN", gw.url("/tick?count=10")], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    first_at = time.monotonic() - started
    rest = proc.stdout.read()
    total = time.monotonic() - started
    proc.wait(10)
    assert first == b"tick 0\n"
    assert rest.decode().splitlines() == [f"tick {i}" for i in range(1, 10)]
    assert total >= 0.9 and first_at < total - 0.5  # line by line, not at the end


def test_streaming_over_nc_and_the_websocket_text_mode(gw: Any, nc_path: str) -> None:
    assert nc(gw.tcp_port, b"tick 3\nexit\n").splitlines() == [
        "Begin tick",
        "tick 0",
        "tick 1",
        "tick 2",
        "End tick",
    ]
    url = f"ws://127.0.0.1:{gw.http_port}/ws"
    with connect(url, subprotocols=[Subprotocol("gateway.text")]) as ws:
        ws.send("tick 2")
        assert [ws.recv(10) for _ in range(4)] == ["Begin tick", "tick 0", "tick 1", "End tick"]


def test_a_failing_program_is_command_failed_on_every_transport(gw: Any, nc_path: str) -> None:
    assert nc(gw.tcp_port, b"fail\nexit\n").splitlines() == [
        "Begin fail",
        "partial",
        "An error occurred: fail exited with status 3",
        "End fail",
    ]
    status, headers, body = curl(gw.url("/quietfail"), "-H", "Accept: application/json")
    assert status == 502 and headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert (problem["code"], problem["detail"]) == (
        "command_failed",
        "quietfail exited with status 4",
    )
    status, _, body = curl(gw.url("/fail"))  # lines came first: the error is appended
    assert (status, body) == (200, b"partial\nerror: fail exited with status 3\n")
    (line, error) = ws_json(gw, {"id": 1, "command": "fail"})
    assert line["text"] == "partial"
    assert (error["code"], error["message"]) == ("command_failed", "fail exited with status 3")
    # stderr is logged, escaped; never sent
    gw.wait_for(r"fail: stderr, last lines: boom \\x1b\[2J")


def test_a_timeout_kills_the_whole_process_group(gw: Any, nc_path: str, tmp_path: Path) -> None:
    out = nc(gw.tcp_port, b"slow\nexit\n", timeout=20)
    assert out.splitlines() == [
        "Begin slow",
        "started",
        "An error occurred: slow timed out after 1 s",
        "End slow",
    ]
    helper = int((tmp_path / "helper.pid").read_text())
    deadline = time.monotonic() + 5
    while pid_alive(helper):  # what the program started goes with it
        assert time.monotonic() < deadline, "the program's own child survived the timeout"
        time.sleep(0.05)
    gw.wait_for(r"tcp 127\.0\.0\.1 slow: timeout")


def test_a_client_leaving_kills_the_program(gw: Any, tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{gw.http_port}/ws"
    with connect(url, subprotocols=[Subprotocol("gateway.text")]) as ws:
        ws.send("slow")
        assert [ws.recv(10) for _ in range(2)] == ["Begin slow", "started"]
    helper = int((tmp_path / "helper.pid").read_text())
    gw.wait_for(r"websocket 127\.0\.0\.1 slow: cancelled")
    deadline = time.monotonic() + 5
    while pid_alive(helper):
        assert time.monotonic() < deadline, "the program's own child survived the hang-up"
        time.sleep(0.05)


def test_a_bad_declaration_stops_start_up_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[commands.df]\nargv = ["df2", "{mount}"]\n')
    done = subprocess.run(
        [BIN / "gateway", "--config", bad], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert done.stderr == (
        "gateway: config error: commands.df.argv: df2: no such executable on the child PATH "
        "(or it is not executable)\n"
    )


def test_sighup_adds_removes_and_refuses_declarations(
    start_gateway: Any, nc_path: str, tmp_path: Path
) -> None:
    write_scripts(tmp_path)
    gw = start_gateway(f'[commands.tick]\nargv = ["{tmp_path}/tick.py", "1"]\n')
    assert nc(gw.tcp_port, b"tick\nexit\n").splitlines() == ["Begin tick", "tick 0", "End tick"]

    gw.config_path.write_text('[commands.tick]\nargv = ["/no/such/program"]\n')
    gw.proc.send_signal(signal.SIGHUP)
    gw.wait_for(r"Configuration not reloaded, the running one stays: config error: commands\.tick")
    assert "tick 0" in nc(gw.tcp_port, b"tick\nexit\n")  # the old set is kept

    gw.config_path.write_text(f'[commands.fail]\nargv = ["{tmp_path}/fail.py"]\n')
    gw.proc.send_signal(signal.SIGHUP)
    gw.wait_for(r"Configuration reloaded")
    assert nc(gw.tcp_port, b"tick\nexit\n") == "Command not found.\n"
    assert "partial" in nc(gw.tcp_port, b"fail\nexit\n")
    assert curl(gw.url("/tick"))[0] == 404
    assert os.path.exists(tmp_path / "fail.py")
