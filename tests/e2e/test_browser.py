"""The browser console in headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..support.e2e import BIN, free_port, open_nc, read_line, require_tool

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# sha1 of 4 GiB of zero bytes (head -c 4G /dev/zero | sha1sum)
ZEROS_4G = "1bf99ee9f374e58e201e4dda4f474e570eb77229"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = require_tool("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert errors == [], errors  # no script error on the page


def run(page: Any, line: str) -> None:
    page.fill("#command", line)
    page.press("#command", "Enter")


def test_console_runs_commands(page: Any, start_gateway: Any, tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_text("".join(f"Nov 25 10:00:{i:02d} lab app[1]: event {i}\n" for i in range(40)))
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(4 * 1024**3)
    gw = start_gateway(f'[lastlog]\nsource = "{log}"\n[comphash]\nallowed_roots = ["{tmp_path}"]\n')
    page.goto(gw.url("/"))
    page.wait_for_selector('#status[data-state="connected"]', timeout=10_000)
    assert page.text_content("#status-text") == "Connected"

    run(page, "lastlog 3")
    block = page.locator(".cmd").last
    block.locator(".badge", has_text="done").wait_for(timeout=10_000)
    assert block.locator("pre").inner_text().splitlines() == [
        f"Nov 25 10:00:{i:02d} lab app[1]: event {i}" for i in (37, 38, 39)
    ]
    assert block.locator(".foot .summary").inner_text() == f"3 lines from {log}"

    run(page, f"comphash {big}")
    block = page.locator(".cmd").last
    block.locator(".progress .fill").wait_for(timeout=10_000)  # the bar while it hashes
    assert "of 4.0 GiB" in block.locator(".progress").inner_text()
    block.locator(".badge", has_text="done").wait_for(timeout=60_000)
    # Rendered from the result's text form and summary, like any command's.
    assert block.locator("pre").inner_text().rstrip("\n") == f"{ZEROS_4G}  {big}"
    assert block.locator(".foot .summary").inner_text() == f"sha1 of {big} (4.0 GiB)"
    block.locator("button.copy").click()
    block.locator("button.copy", has_text="Copied").wait_for(timeout=2_000)
    assert page.evaluate("navigator.clipboard.readText()") == f"{ZEROS_4G}  {big}"

    run(page, f"comphash {tmp_path}/nope")
    error = page.locator(".cmd").last
    error.locator(".badge", has_text="error").wait_for(timeout=10_000)
    assert error.locator(".error code").inner_text() == "not_found"
    assert error.locator(".error").inner_text().endswith(f"No such file: {tmp_path}/nope")
    color = error.locator(".error").evaluate("e => getComputedStyle(e).color")
    assert color in ("rgb(248, 81, 73)", "rgb(207, 34, 46)")  # errors stand out in red

    page.focus("#command")  # history: the last command comes back with Up
    page.press("#command", "ArrowUp")
    assert page.input_value("#command") == f"comphash {tmp_path}/nope"
    page.press("#command", "ArrowUp")
    assert page.input_value("#command") == f"comphash {big}"

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)

    page.keyboard.press("Control+l")  # clear
    assert page.locator(".cmd").count() == 0


def test_console_cancels_a_running_hash(page: Any, start_gateway: Any, tmp_path: Path) -> None:
    big = tmp_path / "huge.img"
    with open(big, "wb") as f:
        f.truncate(64 * 1024**3)
    gw = start_gateway(f'[comphash]\nallowed_roots = ["{tmp_path}"]\n')
    page.goto(gw.url("/"))
    page.wait_for_selector('#status[data-state="connected"]', timeout=10_000)
    run(page, f"comphash {big}")
    block = page.locator(".cmd").last
    block.locator(".progress .fill").wait_for(timeout=10_000)
    page.press("#command", "Control+c")
    block.locator(".badge", has_text="cancelled").wait_for(timeout=10_000)
    gw.wait_for(r"websocket 127\.0\.0\.1 comphash: cancelled")


def test_console_shows_the_quota_refusal_then_gets_in(
    page: Any, start_gateway: Any, nc_path: str
) -> None:
    gw = start_gateway("[quota]\nmax_clients = 1\n")
    holder = open_nc(gw.tcp_port)
    try:
        assert holder.stdin is not None
        holder.stdin.write(b"test\n")
        holder.stdin.flush()
        assert read_line(holder, 10) == b"Command not found.\n"
        page.goto(gw.url("/"))
        page.wait_for_selector('#status[data-state="refused"]', timeout=10_000)
        assert page.text_content("#status-text").startswith("Too many connections — retrying in ")
        assert page.locator(".notice.bad").first.inner_text() == (
            "Refused by the server: Too many connections. Bye!"
        )
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "console-refused.png"))
    finally:
        holder.kill()
        holder.wait()
    page.wait_for_selector('#status[data-state="connected"]', timeout=15_000)


def test_console_goes_red_and_reconnects(page: Any, start_gateway: Any) -> None:
    port = free_port()
    argv = [str(BIN / "gateway"), "--http", f"tcp:{port}:interface=127.0.0.1"]
    gw = start_gateway(argv=argv)
    page.goto(gw.url("/"))
    page.wait_for_selector('#status[data-state="connected"]', timeout=10_000)
    assert gw.stop() == 0  # the gateway goes away
    page.wait_for_selector('#status[data-state="disconnected"]', timeout=10_000)
    assert page.text_content("#status-text").startswith("Disconnected — retrying in ")
    color = page.eval_on_selector("#status .dot", "e => getComputedStyle(e).backgroundColor")
    assert color in ("rgb(248, 81, 73)", "rgb(207, 34, 46)")  # red, dark or light theme
    run(page, "help")
    assert page.locator(".notice.bad").last.inner_text() == "Not connected — “help” was not sent."
    gw2 = start_gateway(argv=argv)  # back on the same port
    page.wait_for_selector('#status[data-state="connected"]', timeout=20_000)
    run(page, "help")
    page.locator(".cmd .badge", has_text="done").last.wait_for(timeout=10_000)
    assert gw2.http_port == port


def test_console_follows_and_resumes_after_a_lost_connection_without_duplicates(
    page: Any, start_gateway: Any, tmp_path: Path
) -> None:
    log = tmp_path / "syslog"
    log.write_text("".join(f"old {i}\n" for i in range(30)))
    port = free_port()
    argv = [str(BIN / "gateway"), "--http", f"tcp:{port}:interface=127.0.0.1"]
    config = f'[lastlog]\nsource = "{log}"\n'
    gw = start_gateway(config, argv=argv)
    page.goto(gw.url("/"))
    page.wait_for_selector('#status[data-state="connected"]', timeout=10_000)
    page.click('button[data-run="lastlog -f 20"]')  # the Follow button
    block = page.locator(".cmd").last
    block.locator(".badge", has_text="following").wait_for(timeout=10_000)
    assert block.locator("button.cancel").inner_text() == "stop"
    with open(log, "a") as f:
        f.write("live 1\n")
    page.wait_for_function(
        "() => document.querySelector('.cmd:last-child pre').textContent.includes('live 1')",
        timeout=10_000,
    )
    gw.proc.kill()  # the connection is lost, not closed: the follow is cut
    gw.proc.wait()
    block.locator(".badge", has_text="reconnecting").wait_for(timeout=10_000)
    with open(log, "a") as f:
        f.write("while away\n")
    start_gateway(config, argv=argv)  # back on the same port
    page.wait_for_function(
        "() => document.querySelector('.cmd:last-child pre').textContent.includes('while away')",
        timeout=30_000,
    )
    shown = block.locator("pre").inner_text().splitlines()
    assert shown == [f"old {i}" for i in range(10, 30)] + ["live 1", "while away"]
    block.locator("button.cancel").click()  # stop
    block.locator(".badge", has_text="done").wait_for(timeout=10_000)


def test_console_at_phone_width(browser: Any, start_gateway: Any) -> None:
    gw = start_gateway()
    context = browser.new_context(viewport={"width": 375, "height": 700}, is_mobile=True)
    page = context.new_page()
    try:
        page.goto(gw.url("/"))
        page.wait_for_selector('#status[data-state="connected"]', timeout=10_000)
        run(page, "help")
        page.locator(".cmd .badge", has_text="done").wait_for(timeout=10_000)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375  # no sideways scroll
        assert page.is_visible("#command") and page.is_visible("#run")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "console-phone.png"))
    finally:
        context.close()


def test_console_runs_a_declared_command_like_any_other(
    page: Any, start_gateway: Any, tmp_path: Path
) -> None:
    script = tmp_path / "tick.sh"
    script.write_text('#!/bin/sh\nfor i in $(seq 1 "$1"); do echo "tick $i"; done\n')
    script.chmod(0o755)
    gw = start_gateway(
        f'[commands.tick]\nsummary = "count"\nargv = ["{script}", "{{n}}"]\n'
        '[commands.tick.params.n]\ntype = "int"\nmin = 1\nmax = 9\ndefault = 2\n'
    )
    page.goto(gw.url("/"))
    page.wait_for_selector('#status[data-state="connected"]', timeout=10_000)
    run(page, "help")
    page.locator(".cmd .badge", has_text="done").last.wait_for(timeout=10_000)
    assert "tick [N]" in page.locator(".cmd pre").last.inner_text()  # listed by help
    run(page, "tick 3")
    block = page.locator(".cmd").last
    block.locator(".badge", has_text="done").wait_for(timeout=10_000)
    assert block.locator("pre").inner_text().splitlines() == ["tick 1", "tick 2", "tick 3"]
    assert block.locator(".foot .summary").inner_text() == "3 lines, exit status 0"


def test_console_is_usable_from_the_keyboard_alone(page: Any, start_gateway: Any) -> None:
    gw = start_gateway()
    page.goto(gw.url("/"))
    page.wait_for_selector('#status[data-state="connected"]', timeout=10_000)
    assert page.evaluate("document.activeElement.id") == "command"  # typing goes to the prompt
    page.keyboard.type("stats")
    page.keyboard.press("Enter")
    page.locator(".cmd .badge", has_text="done").wait_for(timeout=10_000)
    assert page.locator(".cmd pre").inner_text().startswith("clients: ")
    page.keyboard.press("Shift+Tab")  # reach the buttons without a mouse
    focused = page.evaluate("document.activeElement.tagName + ':' + document.activeElement.id")
    assert focused.startswith("BUTTON") or focused.startswith("MAIN")


def test_console_asks_for_the_token(page: Any, start_gateway: Any) -> None:
    token = "console-token-0123456789"
    gw = start_gateway(env={"GATEWAY_TOKEN": token})
    page.goto(gw.url("/"))
    page.wait_for_selector('#status[data-state="connected"]', timeout=10_000)
    run(page, "help")
    page.locator(".cmd .badge", has_text="error").wait_for(timeout=10_000)
    assert page.locator(".cmd .error code").last.inner_text() == "unauthorized"
    assert page.is_visible("#token-form")  # the console asks
    assert page.evaluate("document.activeElement.id") == "token"
    page.fill("#token", "wrong-token-000000000")
    page.press("#token", "Enter")
    page.wait_for_selector("#token-error:has-text('Authentication required.')", timeout=10_000)
    page.fill("#token", token)
    page.press("#token", "Enter")
    page.wait_for_selector("#token-form", state="hidden", timeout=10_000)
    run(page, "help")
    page.locator(".cmd .badge", has_text="done").wait_for(timeout=10_000)
    page.reload()  # kept for the tab's session: no need to type it again
    page.wait_for_selector('#status[data-state="connected"]', timeout=10_000)
    page.locator(".notice", has_text="Signed in.").wait_for(timeout=10_000)
    run(page, "stats")
    page.locator(".cmd .badge", has_text="done").wait_for(timeout=10_000)
    gw.wait_for(r"CMD received from 127\.0\.0\.1: auth \*\*\*")
    assert not any(token in line for line in gw.lines)  # never in the log


def test_a_page_from_another_origin_cannot_use_the_websocket(
    page: Any, start_gateway: Any, tmp_path: Path
) -> None:
    import sys

    target = start_gateway()
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<!doctype html><title>another site</title>")
    port = free_port()
    other = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=site,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        page.goto(f"http://127.0.0.1:{port}/")  # another site, no policy of ours
        outcome = page.evaluate(
            """url => new Promise(done => {
                const ws = new WebSocket(url);
                ws.onopen = () => { ws.close(); done("opened"); };
                ws.onerror = () => done("refused");
            })""",
            f"ws://127.0.0.1:{target.http_port}/ws",
        )
        assert outcome == "refused"  # cross-site WebSocket hijacking: refused by the gateway
        target.wait_for(rf"Refused WebSocket from origin http://127\.0\.0\.1:{port}")
    finally:
        other.kill()
        other.wait()
