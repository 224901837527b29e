"""A new command is one declaration: every front-end serves it from that alone.

``EchoCommand`` below is written the way a command module is, and added to the
service the way :func:`gateway.commands.registry.build_service` adds one.  No
front-end, document or console file knows it; the line protocol, the HTTP
route with its query check, the OpenAPI document, the WebSocket JSON messages,
``help`` and ``GET /commands`` all serve it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from gateway.config import HTTPConfig
from gateway.core.command import Client, Command, Field
from gateway.core.events import Lines, Result, Sink
from gateway.core.flow import UNLIMITED, Flow
from gateway.core.params import Param, validate
from gateway.core.quota import ClientQuota
from gateway.core.service import CommandService
from gateway.frontends.admission import Admission
from gateway.frontends.http.openapi import document
from gateway.frontends.http.routes import RestAPI
from gateway.sessions.json_conversation import JSONConversation
from gateway.sessions.line import LineConversation

from .support.logs import recorded_events
from .support.openapi_check import check_answer
from .support.services import make_service


@dataclass(frozen=True)
class EchoArgs:
    word: str
    times: int


class EchoCommand(Command[EchoArgs]):
    name = "echo"
    summary = "say a word N times"
    timeout = 5.0
    frame = ("Begin echo", "End echo")
    stream_key = "lines"
    params = (
        Param("times", "int", "how often", default=1, minimum=1, maximum=3, flag="-n"),
        Param("word", "string", "what to say", required=True, pattern="[a-z]{1,8}"),
    )
    result_fields = (Field("said", {"type": "integer"}, "how many lines"),)

    def prepare(self, args: Mapping[str, object]) -> EchoArgs:
        checked = validate(self.name, self.params, args)
        return EchoArgs(checked["word"], checked["times"])

    def run(self, args: EchoArgs, sink: Sink, flow: Flow = UNLIMITED) -> Deferred[Result]:
        sink(Lines((args.word,) * args.times))
        said = {"said": args.times}
        return succeed(Result(self.name, said, text=("done",), summary=f"{args.times} said"))


@pytest.fixture
def service(tmp_path: Path) -> CommandService:
    return make_service(tmp_path, Clock(), ClientQuota(10), extra=[EchoCommand()])


def test_the_line_protocol_parses_it(service: CommandService) -> None:
    out: list[str] = []
    c = LineConversation(service, Client("tcp", "h"), out.extend, lambda: None)
    c.start()
    c.submit("echo -n 2 hi")
    c.submit("echo --times=1 yo")
    c.submit("echo Loud")
    c.submit("echo -n 9 hi")
    assert out == [
        "Begin echo",
        "hi",
        "hi",
        "done",
        "End echo",
        "Begin echo",
        "yo",
        "done",
        "End echo",
        "An error occurred: word must match [a-z]{1,8}",
        "An error occurred: times must be an integer from 1 to 3",
    ]


def test_the_websocket_json_messages_reach_it(service: CommandService) -> None:
    sent: list[dict[str, Any]] = []
    c = JSONConversation(
        service, Client("websocket", "h"), lambda m: sent.append(json.loads(m)), lambda: None, 4
    )
    c.start()
    c.receive(json.dumps({"id": 1, "command": "echo", "args": {"word": "ok", "times": 2}}))
    c.receive(json.dumps({"id": 2, "command": "echo", "args": {"word": "ok", "loud": 1}}))
    assert sent == [
        {"id": 1, "type": "line", "text": "ok"},
        {"id": 1, "type": "line", "text": "ok"},
        {"id": 1, "type": "result", "result": {"said": 2, "text": ["done"], "summary": "2 said"}},
        {
            "id": 2,
            "type": "error",
            "code": "bad_argument",
            "message": "echo: unknown argument 'loud'",
        },
    ]


class HTTP:
    def __init__(self, service: CommandService) -> None:
        self.doc = document(service.commands)
        self.api = RestAPI(
            Admission(ClientQuota(10), Clock()), service, HTTPConfig(), lambda scope: self.doc
        )
        self.treq: Any = StubTreq(self.api.resource())

    def request(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        results: list[Any] = []
        self.treq.request(method, "http://localhost" + path).addBoth(results.append)
        response = results[0]
        body: list[bytes] = []
        self.treq.content(response).addBoth(body.append)
        headers = {
            k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()
        }
        return response.code, headers, body[0]

    def get(self, path: str) -> tuple[int, str, bytes]:
        results: list[Any] = []
        self.treq.get("http://localhost" + path).addBoth(results.append)
        response = results[0]
        body: list[bytes] = []
        self.treq.content(response).addBoth(body.append)
        kind = response.headers.getRawHeaders("content-type")[0]
        route = path.split("?")[0]
        check_answer(self.doc, route, response.code, kind, body[0])
        return response.code, kind, body[0]


def test_the_http_route_and_its_query_check_come_from_the_declaration(
    service: CommandService,
) -> None:
    http = HTTP(service)
    assert http.get("/echo?word=hi&times=2") == (
        200,
        "text/plain; charset=utf-8",
        b"hi\nhi\ndone\n",
    )
    code, _, body = http.get("/echo?word=hi&format=json")
    assert code == 200
    assert json.loads(body) == {"lines": ["hi"], "said": 1, "text": ["done"], "summary": "1 said"}
    assert http.get("/echo?word=hi&loud=1")[:2] == (400, "text/plain; charset=utf-8")
    assert http.get("/echo?word=HI")[2] == b"error: word must match [a-z]{1,8}\n"
    assert (
        http.get("/echo?word=hi&word=yo")[2] == b"error: Parameter 'word' given more than once.\n"
    )
    assert http.get("/echo")[0] == 400


def test_the_openapi_document_describes_it(service: CommandService) -> None:
    operation = document(service.commands)["paths"]["/echo"]["get"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert params["word"]["required"] is True
    assert params["word"]["schema"] == {"type": "string", "pattern": "^(?:[a-z]{1,8})$"}
    assert params["times"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 3,
        "default": 1,
    }
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"lines", "said", "text", "summary", "error"}
    assert schema["additionalProperties"] is False
    assert "/exit" not in document(service.commands)["paths"]  # exit ends a connection


def test_help_and_commands_list_it_with_its_parameters(service: CommandService) -> None:
    out: list[str] = []
    c = LineConversation(service, Client("tcp", "h"), out.extend, lambda: None)
    c.start()
    c.submit("help")
    assert any(line.startswith("echo [-n TIMES] <word>") for line in out)
    code, _, body = HTTP(service).get("/commands?format=json")
    echo = next(c for c in json.loads(body)["commands"] if c["name"] == "echo")
    assert echo["route"] == "/echo"
    assert [p["name"] for p in echo["params"]] == ["times", "word"]
    assert echo["params"][1]["pattern"] == "[a-z]{1,8}"


def test_a_declaration_that_would_clash_is_refused(service: CommandService) -> None:
    class Clashing(EchoCommand):
        name = "clash"
        result_fields = (Field("text", {"type": "string"}),)

    class SameRoute(EchoCommand):
        name = "other"
        http_path = "/echo"

    with pytest.raises(ValueError, match="clash"):
        service.add(Clashing())
    with pytest.raises(ValueError, match="route /echo is echo's"):
        service.add(SameRoute())

    class Shadowed(EchoCommand):
        name = "health"
        http_path = "/healthz"

    service.add(Shadowed())
    with pytest.raises(ValueError, match="route /healthz is the gateway's own"):
        HTTP(service)
    with pytest.raises(ValueError, match="bad pattern"):
        Param("word", "string", "x", pattern="(")


def test_any_method_but_get_and_head_is_refused_and_head_has_no_body(
    service: CommandService,
) -> None:
    http = HTTP(service)
    code, headers, body = http.request("HEAD", "/echo?word=hi")
    assert (code, body) == (200, b"")
    code, headers, body = http.request("POST", "/echo?word=hi")
    assert code == 405 and headers["allow"] == "GET, HEAD"
    assert body == b"error: Method POST is not allowed here (allowed: GET, HEAD)\n"


def test_a_route_that_fails_answers_500_and_logs_it(
    service: CommandService, monkeypatch: pytest.MonkeyPatch
) -> None:
    http = HTTP(service)

    def broken(request: Any, command: Any) -> Any:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(http.api, "_command", broken)
    with recorded_events() as logged:
        code, _, body = http.request("GET", "/echo?word=hi")
    assert (code, body) == (500, b"error: Internal error (details in the server log only)\n")
    assert any(e.get("log_failure") for e in logged)

    monkeypatch.setattr(http.api, "_command", lambda request, command: fail(RuntimeError("x")))
    with recorded_events() as logged:
        code, _, body = http.request("GET", "/echo?word=hi")
    assert (code, body) == (500, b"error: Internal error (details in the server log only)\n")
    assert any(e.get("log_failure") for e in logged)
