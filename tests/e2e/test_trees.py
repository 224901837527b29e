"""comphash -r and -c against coreutils and b3sum, over nc, curl and a WebSocket.

A tree's manifest must be byte for byte what ``find DIR -type f -print0 |
sort -z | xargs -0 sha256sum`` prints (the ``#`` lines aside, which name what
was skipped and which ``sha256sum -c`` ignores); a check must print what
``sha256sum -c`` prints, and say ok exactly when its exit status is 0.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from ..support.e2e import curl, nc, nc_bytes, require_tool

pytestmark = pytest.mark.e2e

TOOLS = {"sha256": "sha256sum", "sha1": "sha1sum", "blake3": "b3sum", "md5": "md5sum"}


def make_tree(top: Path) -> Path:
    """Every kind of name and file a tree may hold."""
    tree = top / "release"
    (tree / "sp ace").mkdir(parents=True)
    (tree / "a").write_bytes(b"a\n")
    (tree / "a.txt").write_bytes(b"1\n")  # sorts before a/ ('.' < '/')
    (tree / "empty").write_bytes(b"")
    (tree / "sp ace" / "b c").write_bytes(b"b\n")
    (tree / "new\nline").write_bytes(b"x")
    (tree / "back\\slash").write_bytes(b"q\n")
    (tree / "ünïcode ☃").write_bytes(b"u\n")
    (tree / os.fsdecode(b"latin1-\xe9.bin")).write_bytes(b"not UTF-8 in its name\n")
    (tree / "big.bin").write_bytes(os.urandom(9 * 1024 * 1024 + 3))  # a unit of its own
    deep = tree / "deep"
    for i in range(40):
        deep = deep / f"level{i}"
    deep.mkdir(parents=True)
    (deep / "bottom").write_bytes(b"deepest\n")
    many = tree / "many"
    many.mkdir()
    for i in range(300):  # several units, hashed in parallel, printed in order
        (many / f"f{i:04d}").write_bytes(b"%d\n" % i)
    os.symlink("../a", tree / "many" / "link-to-file")
    os.symlink(".", tree / "loop")  # a symlink loop: never followed
    os.symlink("/etc", tree / "outside")  # a way out: never followed
    os.mkfifo(tree / "fifo")  # never opened (it would block)
    return tree


#: What :func:`make_tree` holds that is not hashed, in order.
SKIPPED = (
    "fifo (not a regular file)",
    "loop (symbolic link)",
    "many/link-to-file (symbolic link)",
    "outside (symbolic link)",
)


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def reference(tool: str, tree: Path) -> bytes:
    """``find | sort -z | xargs -0 TOOL`` in the C locale."""
    env = {**os.environ, "LC_ALL": "C"}
    found = subprocess.run(
        ["find", str(tree), "-type", "f", "-print0"], capture_output=True, check=True
    ).stdout
    ordered = subprocess.run(["sort", "-z"], input=found, capture_output=True, env=env, check=True)
    return subprocess.run(
        ["xargs", "-0", require_tool(tool)],
        input=ordered.stdout,
        capture_output=True,
        env=env,
        check=True,
    ).stdout


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def manifest_part(output: bytes) -> bytes:
    return b"".join(line for line in output.splitlines(keepends=True) if not line.startswith(b"#"))


def comments(output: bytes) -> list[bytes]:
    return [line for line in output.splitlines() if line.startswith(b"#")]


@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "blake3"])
def test_a_tree_is_what_find_sort_xargs_prints(
    start_gateway: Any, tmp_path: Path, algorithm: str
) -> None:
    tree = make_tree(tmp_path)
    expected = reference(TOOLS[algorithm], tree)
    gw = start_gateway(f'[comphash]\nallowed_roots = ["{tmp_path}"]\n')

    said = nc_bytes(gw.tcp_port, f"comphash -r -a {algorithm} {tree}\n".encode())
    if algorithm == "blake3":  # b3sum prints a name that is not UTF-8 lossily (U+FFFD)
        lossy = manifest_part(said).decode("utf-8", "replace")
        assert lossy == expected.decode("utf-8", "replace")
    else:
        assert manifest_part(said) == expected
    assert comments(said) == [  # for the person at nc: what was skipped, and the end
        *(f"# skipped: {tree}/{name}".encode() for name in SKIPPED),
        f"# {algorithm} of 310 files under {tree} (9.0 MiB), 4 skipped".encode(),
    ]

    status, headers, body = curl(
        gw.url(f"/comphash?recursive=1&algorithm={algorithm}"),
        "--get",
        "--data-urlencode",
        f"path={tree}",
    )
    assert status == 200 and headers["content-type"].startswith("text/plain")
    # text/plain is the manifest and nothing else (b3sum -c would trip on a comment)
    assert body == manifest_part(said)

    # what it wrote checks clean with the tool itself
    saved = tmp_path / "MANIFEST"
    if algorithm == "blake3":  # b3sum -c reads only UTF-8 manifests
        body = b"".join(line for line in body.splitlines(keepends=True) if is_utf8(line))
    saved.write_bytes(body)
    checked = subprocess.run(
        [require_tool(TOOLS[algorithm]), "-c", str(saved)], capture_output=True
    )
    assert checked.returncode == 0, checked.stderr


def test_a_tree_in_json_ndjson_and_over_a_websocket(start_gateway: Any, tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    expected = reference("sha256sum", tree).decode("utf-8", "replace").splitlines()
    gw = start_gateway(f'[comphash]\nallowed_roots = ["{tmp_path}"]\n')
    query = ("--get", "--data-urlencode", f"path={tree}")

    status, _, body = curl(gw.url("/comphash?recursive=1&algorithm=sha256&format=json"), *query)
    document = json.loads(body)
    assert status == 200
    assert document["lines"] == expected
    assert document["files"] == 310 and document["algorithm"] == "sha256"
    assert (
        document["bytes"]
        == sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
        - (tree / "fifo").stat().st_size
    )
    assert {s["path"]: s["why"] for s in document["skipped"]} == {
        f"{tree}/fifo": "not a regular file",
        f"{tree}/loop": "symbolic link",
        f"{tree}/many/link-to-file": "symbolic link",
        f"{tree}/outside": "symbolic link",
    }

    status, _, body = curl(gw.url("/comphash?recursive=1&algorithm=sha256&format=ndjson"), *query)
    objects = [json.loads(line) for line in body.splitlines()]
    assert [o["line"] for o in objects if "line" in o] == expected
    assert [o["notice"] for o in objects if "notice" in o] == [
        f"# skipped: {tree}/{name}" for name in SKIPPED
    ]
    assert objects[-1]["result"]["files"] == 310

    with connect(
        f"ws://127.0.0.1:{gw.http_port}/ws", subprotocols=[Subprotocol("gateway.v1.json")]
    ) as ws:
        args = {"path": str(tree), "recursive": True, "algorithm": "sha256"}
        ws.send(json.dumps({"id": 9, "command": "comphash", "args": args}))
        replies: list[dict[str, Any]] = []
        while not replies or replies[-1]["type"] not in ("result", "error"):
            replies.append(json.loads(ws.recv(20)))
    assert [r["text"] for r in replies if r["type"] == "line"] == expected
    assert [r["text"] for r in replies if r["type"] == "notice"] == [
        f"# skipped: {tree}/{name}" for name in SKIPPED
    ]
    progress = [r for r in replies if r["type"] == "progress"]
    assert progress[0]["files_done"] == 0 and progress[0]["files_total"] == 310
    assert progress[-1]["files_done"] == 310 and progress[-1]["done"] == progress[-1]["total"]
    assert replies[-1]["result"]["files"] == 310

    # the worker processes that hashed the small files end with the gateway
    workers = children(gw.proc.pid)
    if (os.cpu_count() or 1) > 1:
        assert workers, "a tree on several cores hashes its small files in worker processes"
    assert gw.stop() == 0
    time.sleep(0.5)
    assert [pid for pid in workers if Path(f"/proc/{pid}").exists()] == []


def check_case(tmp_path: Path) -> tuple[Path, Path]:
    """A directory and its sha256 manifest, then made wrong in every way."""
    top = tmp_path / "checked"
    top.mkdir()
    for name in ("ok1", "ok 2", "changed", "gone", "ünï"):
        (top / name).write_bytes(name.encode() + b"\n")
    (top / "new\nline").write_bytes(b"nl")
    names = ["ok1", "ok 2", "changed", "gone", "ünï", "new\nline"]
    sums = subprocess.run(
        [require_tool("sha256sum"), *names], cwd=top, capture_output=True, check=True
    ).stdout
    tagged = subprocess.run(
        [require_tool("sha256sum"), "--tag", "ok1"], cwd=top, capture_output=True, check=True
    ).stdout
    crlf = sums.splitlines()[0] + b"\r\n"
    manifest = top / "SHA256SUMS"
    manifest.write_bytes(
        b"# made by the release job\n"
        + sums
        + tagged
        + crlf
        + b"this line is not a checksum\n"
        + b"\n"
        + subprocess.run(  # an absolute path too
            [require_tool("sha256sum"), str(top / "ok1")], capture_output=True, check=True
        ).stdout
    )
    (top / "changed").write_bytes(b"tampered\n")
    (top / "gone").unlink()
    return top, manifest


def coreutils_check(manifest: Path, *flags: str) -> tuple[int, list[str], list[str]]:
    done = subprocess.run(
        [require_tool("sha256sum"), "-c", *flags, manifest.name],
        cwd=manifest.parent,
        capture_output=True,
    )
    said = done.stderr.decode().splitlines()
    stderr = [re.sub(r"^\S*sha256sum:", "comphash:", line) for line in said]
    return done.returncode, done.stdout.decode().splitlines(), stderr


FLAGS = [(), ("--quiet",), ("--ignore-missing",), ("--strict",), ("--ignore-missing", "--quiet")]


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: " ".join(f) or "plain")
def test_a_check_says_what_sha256sum_c_says(
    start_gateway: Any, tmp_path: Path, flags: tuple[str, ...]
) -> None:
    top, manifest = check_case(tmp_path)
    status, stdout, stderr = coreutils_check(manifest, *flags)
    gw = start_gateway(f'[comphash]\nallowed_roots = ["{tmp_path}"]\n')
    flag_line = " ".join(flags)

    said = nc(gw.tcp_port, f"comphash -c {flag_line} {manifest}\n".encode()).splitlines()
    assert said[-1].startswith("# check of ")
    assert said[: len(stdout)] == stdout
    assert said[len(stdout) : -1] == stderr  # what coreutils writes on stderr, after
    verdict = said[-1].split(": ", 1)[1].split(" ", 1)[0]
    assert verdict == ("OK" if status == 0 else "FAILED")

    query = "".join(f"&{f[2:].replace('-', '_')}=1" for f in flags)
    body = manifest.read_bytes()
    for fmt in ("text", "json"):
        code, _, answer = curl(
            gw.url(f"/comphash/check?format={fmt}{query}&dir={quote(str(top))}"),
            "--data-binary",
            "@-",
            "-H",
            "content-type: text/plain",
            input=body,
        )
        assert code == 200  # a failed check is an answer, not an HTTP error
        if fmt == "text":
            lines = answer.decode().splitlines()
            assert lines == stdout + [e.replace("SHA256SUMS", "standard input") for e in stderr]
        else:
            document = json.loads(answer)
            assert document["ok"] == (status == 0)
            assert document["lines"] == stdout if stdout else "lines" not in document
            assert document["failed"] == 1 and document["missing"] == 1
            assert document["malformed"] == 1 and document["checked"] == 9


def test_b3sum_and_sha1sum_manifests_check(start_gateway: Any, tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    (tree / os.fsdecode(b"latin1-\xe9.bin")).unlink()  # b3sum writes that name lossily
    # and its check escapes a backslash where sha256sum -c (which comphash -c
    # follows) does not: the two differ on that name only
    (tree / "back\\slash").unlink()
    gw = start_gateway(f'[comphash]\nallowed_roots = ["{tmp_path}"]\n')
    for tool, args in (("b3sum", "-a blake3 "), ("sha1sum", "")):
        manifest = tmp_path / f"{tool}.txt"
        manifest.write_bytes(reference(tool, tree))
        expected = subprocess.run(
            [require_tool(tool), "-c", str(manifest)], capture_output=True, check=True
        ).stdout
        said = nc_bytes(gw.tcp_port, f"comphash -c {args}{manifest}\n".encode())
        ours = said.splitlines(keepends=True)
        assert b"".join(ours[:-1]) == expected, tool
        assert ours[-1].startswith(b"# check of") and b": OK (" in ours[-1]


def test_tree_and_check_errors(start_gateway: Any, tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    small = tmp_path / "small"
    small.mkdir()
    (small / "m").write_bytes((b"0" * 64 + b"  x\n") * 100)
    gw = start_gateway(
        f'[comphash]\nallowed_roots = ["{tmp_path}"]\nmax_files = 100\nmax_manifest_bytes = 1000\n'
    )
    cases = [
        (f"comphash -r {tree}", f"{tree} holds more than 100 files (comphash.max_files)"),
        (f"comphash -r {tree}/a", f"Not a directory: {tree}/a (-r hashes a tree)"),
        (f"comphash -r -c {tree}", "-r and -c do not go together"),
        (f"comphash --strict {tree}/a", "--strict is meaningful only with -c"),
        (f"comphash -r {tree}/outside", f"Path is outside the allowed roots: {tree}/outside"),
        ("comphash -r /etc", "Path is outside the allowed roots: /etc"),
        (f"comphash -r {tree}/nope", f"No such file: {tree}/nope"),
        (f"comphash -c {tree}", f"Not a regular file: {tree}"),
        (
            f"comphash -c {small}/m",
            f"Manifest too large: {small}/m (6.6 KiB; comphash.max_manifest_bytes is 1000)",
        ),
    ]
    for line, message in cases:
        said = nc(gw.tcp_port, (line + "\n").encode()).splitlines()
        assert said == [f"An error occurred: {message}"], line

    status, _, body = curl(gw.url("/comphash/check"), "--data-binary", "@-", input=b"x" * 1001)
    assert (status, body) == (413, b"error: request body too large (limit 1000 bytes)\n")
    status, _, body = curl(gw.url("/comphash/check"), "-X", "POST")
    assert (status, body) == (
        400,
        b"error: The manifest goes in the request body; none was sent.\n",
    )
    status, headers, body = curl(gw.url("/comphash/check"))
    assert (status, headers["allow"]) == (405, "POST")
    assert body == b"error: Method GET is not allowed here (allowed: POST)\n"
    status, _, body = curl(gw.url("/comphash/check"), "--data-binary", "@-", input=b"\xff\n")
    assert (status, body) == (400, b"error: The body is not valid UTF-8.\n")
    entry = subprocess.run(
        [require_tool("sha256sum"), "a"], cwd=tree, capture_output=True, check=True
    ).stdout
    status, _, body = curl(
        gw.url("/comphash/check?format=json"), "--data-binary", "@-", input=entry
    )
    document = json.loads(body)  # a relative path and no dir: not read, and said why
    assert status == 200 and document["ok"] is False and document["unreadable"] == 1
    assert document["skipped"] == [
        {"path": "a", "why": "a is relative: send dir= to say where it starts"}
    ]
    # a manifest may not reach outside the roots
    outside = b"0" * 64 + b"  /etc/hostname\n"
    status, _, body = curl(
        gw.url("/comphash/check?format=json"), "--data-binary", "@-", input=outside
    )
    assert json.loads(body)["skipped"] == [
        {"path": "/etc/hostname", "why": "outside the allowed roots"}
    ]
    # and the daemon goes on serving
    assert nc(gw.tcp_port, f"comphash -a sha256 {tree}/a\n".encode()).startswith("File hash is:")
