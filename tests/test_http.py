"""The REST routes in memory (StubTreq), every route and every error."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gateway.commands.lastlog import FileSource
from gateway.config import HTTPConfig
from gateway.core.command import Client, Request
from gateway.core.errors import CommandError
from gateway.core.events import Lines, Sink
from gateway.core.quota import ClientQuota
from gateway.frontends.admission import Admission
from gateway.frontends.http.openapi import document
from gateway.frontends.http.routes import Console, RestAPI, console_dir
from gateway.frontends.http.site import GuardedSite

from .support.commands import ControlledSource
from .support.fakes import run_now
from .support.openapi_check import check_answer
from .support.services import make_service

BASE = "http://127.0.0.1:8080"


class Harness:
    def __init__(self, tmp_path: Path, max_clients: int = 10, source: Any = None) -> None:
        self.clock = Clock()
        self.quota = ClientQuota(max_clients)
        self.root = tmp_path / "data"
        self.root.mkdir(exist_ok=True)
        self.log = tmp_path / "syslog"
        self.service = make_service(
            tmp_path,
            self.clock,
            self.quota,
            log_text="".join(f"entry {i}\n" for i in range(50)),
            roots=[str(self.root), "/dev"],
            algorithms=["sha1", "sha256", "md5"],
            source=source,
        )
        self.doc = document(self.service.commands)
        self.api = RestAPI(
            Admission(self.quota, self.clock),
            self.service,
            HTTPConfig(),
            lambda scope: self.doc,
            websocket=None,
            console=Console.load(console_dir()),
        )
        self.treq: Any = StubTreq(self.api.resource())

    def get(
        self, path: str, headers: Mapping[str, str] | None = None, method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]:
        d = self.treq.request(method, BASE + path, headers=headers)
        results: list[Any] = []
        d.addBoth(results.append)
        assert results, f"{method} {path}: no answer"
        response = results[0]
        body: list[bytes] = []
        self.treq.content(response).addCallback(body.append)
        assert body, f"{method} {path}: body not finished"
        headers_out = {
            k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()
        }
        if method == "GET" and path.split("?")[0] in self.doc["paths"]:
            check_answer(
                self.doc, path.split("?")[0], response.code, headers_out["content-type"], body[0]
            )
        return response.code, headers_out, body[0]


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


JSON = {"Accept": "application/json"}


# -- lastlog


def test_lastlog_text_is_just_the_lines(h: Harness) -> None:
    code, headers, body = h.get("/lastlog?lines=3")
    assert code == 200
    assert body == b"entry 47\nentry 48\nentry 49\n"
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["x-accel-buffering"] == "no"
    assert headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("query", "kind"),
    [
        ("format=json", "application/json"),
        ("format=ndjson", "application/x-ndjson"),
    ],
)
def test_every_format_has_its_type_and_the_same_safety_headers(
    h: Harness, query: str, kind: str
) -> None:
    code, headers, _ = h.get(f"/lastlog?lines=1&{query}")
    assert code == 200 and headers["content-type"].startswith(kind)
    assert headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"


def test_lastlog_default_is_ten_lines(h: Harness) -> None:
    assert h.get("/lastlog")[2].count(b"\n") == 10


@pytest.mark.parametrize(
    ("path", "headers"), [("/lastlog?lines=2&format=json", None), ("/lastlog?lines=2", JSON)]
)
def test_lastlog_json(h: Harness, path: str, headers: Any) -> None:
    code, out_headers, body = h.get(path, headers)
    assert code == 200
    assert out_headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "lines": ["entry 48", "entry 49"],
        "count": 2,
        "source": str(h.log),
        "text": [],
        "summary": f"2 lines from {h.log}",
    }


def test_format_text_wins_over_accept(h: Harness) -> None:
    assert h.get("/lastlog?lines=1&format=text", JSON)[2] == b"entry 49\n"


@pytest.mark.parametrize("lines", ["abc", "0", "-1", "99999999", "1.5", ""])
def test_lastlog_bad_lines(h: Harness, lines: str) -> None:
    code, headers, body = h.get(f"/lastlog?lines={lines}")
    assert (code, body) == (400, b"error: lines must be an integer from 1 to 1000\n")
    code, headers, body = h.get(f"/lastlog?lines={lines}", JSON)
    assert code == 400
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body) == {
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": "lines must be an integer from 1 to 1000",
        "code": "bad_argument",
    }


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("?colour=red", "Unknown parameter: colour"),
        ("?lines=1&lines=2", "Parameter 'lines' given more than once."),
        ("?format=xml", "format must be one of text, json, ndjson, sse"),
        ("?lines=%ff", "The query is not valid UTF-8."),
    ],
)
def test_bad_queries(h: Harness, query: str, message: str) -> None:
    assert h.get("/lastlog" + query)[:3:2] == (400, f"error: {message}\n".encode())


def test_an_answer_made_at_once_is_whole_and_gives_everything_back(h: Harness) -> None:
    """The common case (a slot at once, the lines at once) is answered in the
    call: each answer whole on a kept-alive connection, HEAD too, the slot
    back and no producer left on the request."""
    site = GuardedSite(h.api.resource(), HTTPConfig(), h.clock)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
    channel.makeConnection(transport)
    ask = b"GET /lastlog?lines=2 HTTP/1.1\r\nHost: localhost\r\n\r\n"
    channel.dataReceived(ask + ask + ask.replace(b"GET", b"HEAD"))
    answers = transport.value().split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 3
    for answer in answers[:2]:
        assert answer.startswith(b"200 OK")
        assert answer.endswith(b"\r\nentry 48\nentry 49\n\r\n0\r\n\r\n")  # chunked, ended
    assert answers[2].startswith(b"200 OK") and b"entry" not in answers[2]
    assert h.quota.snapshot().total_in_use == 0
    assert channel.requests == [] and channel._requestProducer is None
    assert not transport.disconnecting
    assert h.service.metrics.outcomes["lastlog", "ok"] == 3


def test_lastlog_unavailable(tmp_path: Path) -> None:
    h = Harness(tmp_path, source=FileSource(str(tmp_path / "missing.log"), run_now))
    code, _, body = h.get("/lastlog", JSON)
    assert code == 503
    assert json.loads(body)["code"] == "unavailable"
    assert json.loads(body)["detail"] == f"Log file not found: {tmp_path}/missing.log"


def test_lastlog_streams_before_it_finishes(tmp_path: Path) -> None:
    source = ControlledSource()
    h = Harness(tmp_path, source=source)
    d = h.treq.get(BASE + "/lastlog?lines=3")
    _, sink, done = source.calls[0]
    sink(Lines(("first",)))
    h.treq.flush()
    responses: list[Any] = []
    d.addCallback(responses.append)
    assert responses and responses[0].code == 200  # headers sent with the first line
    chunks: list[bytes] = []
    from treq import collect

    finished: list[Any] = []
    collect(responses[0], chunks.append).addBoth(finished.append)
    h.treq.flush()
    assert chunks == [b"first\n"] and not finished
    sink(Lines(("second",)))
    done.callback("controlled")
    h.treq.flush()
    assert b"".join(chunks) == b"first\nsecond\n" and finished


def test_error_after_lines_is_appended(tmp_path: Path) -> None:
    source = ControlledSource()
    h = Harness(tmp_path, source=source)
    d = h.treq.get(BASE + "/lastlog?format=json")
    _, sink, done = source.calls[0]
    sink(Lines(("one",)))
    done.errback(CommandError("unavailable", "log rotated away"))
    h.treq.flush()
    response: list[Any] = []
    d.addCallback(h.treq.json_content).addCallback(response.append)
    assert response == [
        {"lines": ["one"], "error": {"code": "unavailable", "message": "log rotated away"}}
    ]


def test_client_leaving_stops_the_command_and_frees_the_slot(tmp_path: Path) -> None:
    source = ControlledSource()
    h = Harness(tmp_path, source=source)
    d = h.treq.get(BASE + "/lastlog")
    assert h.quota.snapshot().in_use["http"] == 1
    d.addErrback(lambda f: None)
    d.cancel()  # the client hangs up
    h.treq.flush()
    assert source.cancelled == 1
    assert h.quota.snapshot().total_in_use == 0


def test_lastlog_timeout_is_504(tmp_path: Path) -> None:
    source = ControlledSource()
    h = Harness(tmp_path, source=source)
    d = h.treq.get(BASE + "/lastlog", headers=JSON)
    h.clock.advance(10)
    h.treq.flush()
    response: list[Any] = []
    d.addCallback(lambda r: (r.code, h.treq.json_content(r))).addCallback(response.append)
    code, body = response[0]
    assert code == 504
    assert body.result["detail"] == "lastlog timed out after 10 s"
    assert source.cancelled == 1
    assert h.quota.snapshot().total_in_use == 0


# -- comphash


def test_comphash_is_sha1sum_format(h: Harness) -> None:
    target = h.root / "my file.txt"
    target.write_bytes(b"hello\n")
    code, _, body = h.get(f"/comphash?path={h.root}/my%20file.txt")
    assert code == 200
    assert body == f"{hashlib.sha1(b'hello' + bytes([10])).hexdigest()}  {target}\n".encode()


def test_comphash_json_and_algorithm(h: Harness) -> None:
    target = h.root / "f"
    target.write_bytes(b"x")
    code, _, body = h.get(f"/comphash?path={target}&algorithm=sha256&format=json")
    assert code == 200
    assert json.loads(body) == {
        "path": str(target),
        "algorithm": "sha256",
        "hex": hashlib.sha256(b"x").hexdigest(),
        "size": 1,
        "text": [f"{hashlib.sha256(b'x').hexdigest()}  {target}"],
        "summary": f"sha256 of {target} (1 B)",
    }


def comphash_cases(root: Path, tmp: Path) -> list[tuple[str, int, str, str]]:
    os.mkfifo(root / "fifo")
    (tmp / "outside").write_text("x")
    return [
        ("", 400, "missing_argument", "Please provide a path."),
        ("?path=", 400, "missing_argument", "Please provide a path."),
        ("?path=relative/x", 400, "bad_argument", "Path must be absolute: relative/x"),
        (
            f"?path={root}/../outside",
            403,
            "forbidden",
            f"Path is outside the allowed roots: {root}/../outside",
        ),
        (
            f"?path={tmp}/outside",
            403,
            "forbidden",
            f"Path is outside the allowed roots: {tmp}/outside",
        ),
        (f"?path={root}", 400, "not_a_file", f"Not a regular file: {root}"),
        ("?path=/dev/zero", 400, "not_a_file", "Not a regular file: /dev/zero"),
        (f"?path={root}/fifo", 400, "not_a_file", f"Not a regular file: {root}/fifo"),
        (f"?path={root}/nope", 404, "not_found", f"No such file: {root}/nope"),
        (
            f"?path={root}/f&algorithm=crc32",
            400,
            "bad_argument",
            "Unknown algorithm: crc32 (allowed: sha1, sha256, md5)",
        ),
        ("?path=/etc/hostname&mode=fast", 400, "bad_argument", "Unknown parameter: mode"),
    ]


def test_comphash_errors(h: Harness, tmp_path: Path) -> None:
    for query, status, code, message in comphash_cases(h.root, tmp_path):
        got = h.get("/comphash" + query)
        assert got[0] == status and got[2] == f"error: {message}\n".encode(), query
        status_json, headers, body = h.get("/comphash" + query, JSON)
        problem = json.loads(body)
        assert (status_json, problem["code"], problem["detail"]) == (status, code, message), query
        assert headers["content-type"] == "application/problem+json"
    assert h.quota.snapshot().total_in_use == 0


# -- quota


def test_over_quota_is_503_with_retry_after(tmp_path: Path) -> None:
    source = ControlledSource()
    h = Harness(tmp_path, max_clients=1, source=source)
    pending = h.treq.get(BASE + "/lastlog")
    code, headers, body = h.get("/lastlog")
    assert (code, body) == (503, b"error: Too many connections. Bye!\n")
    assert headers["retry-after"] == "5"
    code, headers, body = h.get("/comphash?path=/etc/hostname", JSON)
    assert code == 503 and json.loads(body)["code"] == "quota_exceeded"
    # monitoring keeps working while the quota is full
    for path in ("/healthz", "/metrics", "/stats", "/openapi.json", "/commands"):
        assert h.get(path)[0] == 200, path
    assert h.quota.snapshot().refused["http"] == 2
    source.calls[0][2].callback("controlled")
    h.treq.flush()
    assert pending.called
    assert h.quota.snapshot().total_in_use == 0
    assert h.get("/comphash?path=/dev/zero")[0] == 400  # served again, not refused


# -- the other routes


def test_commands(h: Harness) -> None:
    code, _, body = h.get("/commands?format=json")
    assert [c["name"] for c in json.loads(body)["commands"]] == [
        "lastlog",
        "comphash",
        "help",
        "stats",
        "exit",
    ]
    assert h.get("/commands")[2].startswith(b"lastlog [N]")


def test_stats(h: Harness) -> None:
    h.get("/lastlog")
    code, _, body = h.get("/stats", JSON)
    stats = json.loads(body)
    assert stats["clients"]["in_use"] == 0  # /stats itself takes no slot
    assert stats["clients"]["by_transport"]["http"]["served"] == 1
    assert h.get("/stats")[2].startswith(b"clients: 0/10 in use")


def test_healthz(h: Harness) -> None:
    assert h.get("/healthz")[::2] == (200, b"ok\n")
    assert json.loads(h.get("/healthz", JSON)[2]) == {"status": "ok"}


def test_metrics_parse_as_prometheus(h: Harness) -> None:
    h.get("/lastlog")
    h.get("/lastlog?lines=abc")
    h.get("/comphash")
    code, headers, body = h.get("/metrics")
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("gateway_commands_total", (("command", "lastlog"), ("outcome", "ok")))] == 1
    assert (
        samples[("gateway_commands_total", (("command", "lastlog"), ("outcome", "bad_argument")))]
        == 1
    )
    assert samples[("gateway_clients_served_total", (("transport", "http"),))] == 3
    assert samples[("gateway_clients_in_use", (("transport", "http"),))] == 0
    assert families["gateway_command_duration_seconds"].type == "histogram"
    assert samples[("gateway_command_duration_seconds_count", (("command", "lastlog"),))] == 2


def test_unknown_commands_share_one_metrics_label(h: Harness) -> None:
    for i in range(5):
        h.service.execute(Request(f"junk{i}"), Client("tcp", "x"), lambda e: None)
    body = h.get("/metrics")[2].decode()
    assert 'command="unknown",outcome="unknown_command"} 5' in body
    assert "junk" not in body


def test_openapi_lists_every_route(h: Harness) -> None:
    code, headers, body = h.get("/openapi.json")
    doc = json.loads(body)
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {
        "/lastlog",
        "/comphash",
        "/comphash/check",
        "/commands",
        "/stats",
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/",
        "/ws",
    }
    assert set(doc["paths"]["/comphash/check"]) == {"post"}
    from jsonschema import Draft202012Validator

    for path in doc["paths"].values():  # every schema in it is itself valid
        for operation in path.values():
            for response in operation["responses"].values():
                for media in response.get("content", {}).values():  # (/ws has no body)
                    Draft202012Validator.check_schema(media["schema"])


def test_unknown_route_is_404_in_both_formats(h: Harness) -> None:
    assert h.get("/nope")[::2] == (404, b"error: No such route: /nope\n")
    code, headers, body = h.get("/nope", JSON)
    assert (code, json.loads(body)["code"]) == (404, "not_found")


def test_wrong_method_is_405_with_allow(h: Harness) -> None:
    code, headers, body = h.get("/lastlog", method="POST")
    assert code == 405
    assert headers["allow"] == "GET, HEAD"
    assert body == b"error: Method POST is not allowed here (allowed: GET, HEAD)\n"


def test_route_failure_is_500_without_traceback(tmp_path: Path) -> None:
    h = Harness(tmp_path)

    class BrokenQuota(ClientQuota):
        def acquire(self, transport: str, peer: str) -> Any:
            raise RuntimeError("secret internals")

    h.api.admission.quota = BrokenQuota(1)
    code, _, body = h.get("/lastlog", JSON)
    assert code == 500
    assert json.loads(body)["detail"] == "Internal error (details in the server log only)"
    assert b"secret" not in body and b"Traceback" not in body


def test_a_route_that_breaks_after_taking_its_slot_gives_it_back(tmp_path: Path) -> None:
    h = Harness(tmp_path)

    def broken(*args: Any) -> Any:
        raise RuntimeError("secret internals")

    h.api.service.execute = broken  # type: ignore[method-assign,assignment]
    code, _, body = h.get("/lastlog", JSON)
    assert code == 500 and b"secret" not in body
    assert h.quota.snapshot().total_in_use == 0
    # the same when the quota answers later (a shared quota's round trip)
    later: list[Deferred[Any]] = []

    class SlowQuota(ClientQuota):
        def acquire(self, transport: str, peer: str) -> Any:
            d: Deferred[Any] = Deferred()
            later.append(d)
            return d

    slow = SlowQuota(1)
    h.api.admission.quota = slow
    answer = h.treq.get(BASE + "/lastlog", headers=JSON)
    got: list[Any] = []
    answer.addCallback(got.append)
    later[0].callback(slow.try_acquire("http", "127.0.0.1"))
    h.treq.flush()
    assert got and got[0].code == 500
    assert slow.snapshot().total_in_use == 0


def test_command_crash_is_500_without_traceback(tmp_path: Path) -> None:
    class Crashing:
        description = "crash"

        def tail(self, n: int, sink: Sink, flow: Any = None) -> Deferred[str]:
            raise RuntimeError("secret internals")

    h = Harness(tmp_path, source=Crashing())
    code, _, body = h.get("/lastlog")
    assert (code, body) == (500, b"error: Internal error (details in the server log only)\n")


# -- the console's files


def test_console_page_and_assets(h: Harness) -> None:
    code, headers, body = h.get("/")
    assert code == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert b'<script src="console.js"></script>' in body
    policy = headers["content-security-policy"]
    assert "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    for name, kind in [
        ("console.js", "text/javascript"),
        ("style.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ]:
        code, headers, body = h.get("/" + name)
        assert code == 200 and headers["content-type"].startswith(kind) and body, name


def test_console_files_only(h: Harness) -> None:
    assert h.get("/index.html")[0] == 404
    assert h.get("/..%2fpyproject.toml")[0] == 404
    assert h.get("/README.md")[0] == 404


def test_console_page_mentions_only_its_own_files(h: Harness) -> None:
    import re

    body = h.get("/")[2].decode()
    for ref in re.findall(r'(?:src|href)="([^"]+)"', body):
        assert "//" not in ref, ref  # no CDN, works offline
        assert h.get("/" + ref)[0] == 200, ref


def test_a_path_a_manifest_stands_in_for_is_not_documented_as_always_required(
    h: Harness,
) -> None:
    """GET /comphash?check=1&manifest=... runs without a path: the document says so."""
    _, _, body = h.get("/openapi.json")
    params = json.loads(body)["paths"]["/comphash"]["get"]["parameters"]
    path = next(p for p in params if p["name"] == "path")
    assert path["required"] is False
    assert path["description"].endswith("(required unless manifest is given)")
    _, _, listed = h.get("/commands?format=json")
    (comphash,) = [c for c in json.loads(listed)["commands"] if c["name"] == "comphash"]
    (described,) = [p for p in comphash["params"] if p["name"] == "path"]
    assert described["required"] is True and described["required_unless"] == "manifest"


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("text", b"a\nb\n"),
        ("ndjson", b'{"line": "a", "cursor": "e-1"}\n{"line": "b", "cursor": "e-2"}\n'),
        ("sse", b"id: e-1\ndata: a\n\nid: e-2\ndata: b\n\n"),
    ],
)
def test_a_followed_batch_is_rendered_once_per_format(fmt: str, expected: bytes) -> None:
    from twisted.web.test.requesthelper import DummyRequest

    from gateway.frontends.http.routes import ResponseWriter

    event = Lines(("a", "b"), ("e-1", "e-2"))
    requests = [DummyRequest([b"lastlog"]) for _ in range(3)]
    for request in requests:
        ResponseWriter(request, fmt)(event)  # type: ignore[arg-type]
    bodies = [request.written[0] for request in requests]
    assert bodies[0] == expected
    assert bodies[0] is bodies[1] is bodies[2]
