"""lastlog and lastlog -f from a real systemd journal, read by the real journalctl.

The journal is a directory of journal files written by
``systemd-journal-remote`` (``lastlog.source = "journal:DIR"``), so the test
needs no running journald and can append entries whenever it likes.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ..support.e2e import curl, open_nc, read_line, require_tool
from .test_follow import curl_stream, lines_from, processes_running

BOOT = "0123456789abcdef0123456789abcdef"


def journal_remote() -> str:
    for path in ("/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote"):
        if os.access(path, os.X_OK):
            return path
    message = "systemd-journal-remote is not installed (.ci/run installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class Journal:
    """A journal directory that entries can be added to."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir()
        self.file = directory / "remote.journal"
        self._remote = journal_remote()
        self._journalctl = require_tool("journalctl")
        self._monotonic = 1000

    def add(self, *messages: str, ident: str = "app", pid: int = 42) -> None:
        export = []
        for message in messages:
            self._monotonic += 1
            export.append(
                f"__REALTIME_TIMESTAMP={int(time.time() * 1e6)}\n"
                f"__MONOTONIC_TIMESTAMP={self._monotonic}\n_BOOT_ID={BOOT}\n"
                f"_HOSTNAME=box\nSYSLOG_IDENTIFIER={ident}\n_PID={pid}\nMESSAGE={message}\n\n"
            )
        subprocess.run(
            [self._remote, "-o", str(self.file), "-"],
            input="".join(export).encode(),
            capture_output=True,
            check=True,
            timeout=30,
        )

    def journalctl(self, *args: str) -> str:
        argv = [self._journalctl, "--directory", str(self.directory), "--no-pager", "-q", *args]
        return subprocess.run(argv, capture_output=True, check=True, text=True).stdout

    def cursors(self) -> list[str]:
        out = self.journalctl("-o", "json")
        return [json.loads(line)["__CURSOR"] for line in out.splitlines()]


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "journal")
    j.add(*(f"old {i}" for i in range(20)))
    return j


def start(start_gateway: Any, journal: Journal) -> Any:
    return start_gateway(f'[lastlog]\nsource = "journal:{journal.directory}"\n')


def test_lastlog_shows_the_lines_journalctl_shows(start_gateway: Any, journal: Journal) -> None:
    journal.add("with [brackets] and unicode é", ident="other", pid=7)
    gw = start(start_gateway, journal)
    status, _, body = curl(gw.url("/lastlog?lines=5"))
    assert status == 200
    assert body.decode() == journal.journalctl("-n", "5")
    status, _, body = curl(gw.url("/lastlog?lines=2&format=json"))
    assert json.loads(body)["source"] == f"journal:{journal.directory}"


def test_follow_gives_journal_cursors_and_resumes_after_a_restart(
    start_gateway: Any, journal: Journal
) -> None:
    gw = start(start_gateway, journal)
    sse = curl_stream(gw.url("/lastlog?follow=1&lines=1&format=sse"))
    try:
        cursors = journal.cursors()
        assert lines_from(sse, 3)[:1] == [f"id: {cursors[-1]}"]
        journal.add("live 1")
        got = lines_from(sse, 3)
        assert got[0] == f"id: {journal.cursors()[-1]}"
        assert got[1].startswith("data: ") and got[1].endswith(" box app[42]: live 1")
    finally:
        sse.kill()
        sse.wait()
    seen = journal.cursors()[-1]
    assert gw.stop() == 0
    journal.add("while away 1", "while away 2")
    gw = start(start_gateway, journal)
    sse = curl_stream(gw.url("/lastlog?follow=1&format=sse"), "-H", f"Last-Event-ID: {seen}")
    try:
        got = lines_from(sse, 6)
        data = [line.rpartition(": ")[2] for line in got if line.startswith("data: ")]
        assert data == ["while away 1", "while away 2"]  # no gap, no duplicate
        assert [line for line in got if line.startswith("id: ")] == [
            f"id: {c}" for c in journal.cursors()[-2:]
        ]
    finally:
        sse.kill()
        sse.wait()


def test_nc_follow_with_after_and_a_stale_journal_cursor(
    start_gateway: Any, nc_path: str, journal: Journal
) -> None:
    gw = start(start_gateway, journal)
    cursors = journal.cursors()
    client = open_nc(gw.tcp_port)
    assert client.stdin is not None
    try:
        client.stdin.write(f"lastlog -f --after {cursors[-3]}\n".encode())
        client.stdin.flush()
        got = [read_line(client, 10).decode() for _ in range(3)]
        assert got[0] == "Begin lastlog\n"
        assert [line.rpartition(": ")[2] for line in got[1:]] == ["old 18\n", "old 19\n"]
        client.stdin.write(b"stop\n")
        client.stdin.flush()
        assert read_line(client, 10) == b"End lastlog\n"
    finally:
        client.kill()
        client.wait()


def test_watchers_of_the_journal_share_one_journalctl(
    start_gateway: Any, nc_path: str, journal: Journal
) -> None:
    gw = start(start_gateway, journal)
    clients = [open_nc(gw.tcp_port) for _ in range(5)]
    try:
        for client in clients:
            assert client.stdin is not None
            client.stdin.write(b"lastlog -f 1\n")
            client.stdin.flush()
            assert read_line(client, 10) == b"Begin lastlog\n"
            assert read_line(client, 10).endswith(b"old 19\n")
        follows = processes_running(f"--directory\0{journal.directory}\0--follow")
        assert len(follows) == 1  # one for all five
        journal.add("live")
        for client in clients:
            assert read_line(client, 10).endswith(b" box app[42]: live\n")
    finally:
        for client in clients:
            client.kill()
            client.wait()
    deadline = time.monotonic() + 10
    while processes_running(f"--directory\0{journal.directory}\0--follow"):
        assert time.monotonic() < deadline, "journalctl still runs after the last watcher left"
        time.sleep(0.1)


def test_curl_ndjson_resumes_with_after_a_journal_cursor(
    start_gateway: Any, journal: Journal
) -> None:
    gw = start(start_gateway, journal)
    cursors = journal.cursors()
    stream = curl_stream(
        gw.url("/lastlog"),
        "--get",
        "--data-urlencode",
        "follow=1",
        "--data-urlencode",
        f"after={cursors[-2]}",
        "-H",
        "Accept: application/x-ndjson",
    )
    try:
        first = json.loads(lines_from(stream, 1)[0])
        assert first["cursor"] == cursors[-1] and first["line"].endswith("app[42]: old 19")
        journal.add("next")
        second = json.loads(lines_from(stream, 1)[0])
        assert second["cursor"] == journal.cursors()[-1]
    finally:
        stream.kill()
        stream.wait()
    status, _, body = curl(gw.url("/lastlog?follow=1&after=s%3Dnope"))
    assert status == 400 and b"after" in body
