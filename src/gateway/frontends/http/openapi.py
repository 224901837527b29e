"""The OpenAPI 3.1 description of the REST routes: the one place it is written."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway import __version__
from gateway.core.command import AnyCommand
from gateway.core.params import query_parameter

TEXT = "text/plain; charset=utf-8"


def _problem_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}},
            TEXT: {"schema": {"type": "string", "pattern": "^error: "}},
        },
    }


def _ok(description: str, schema: dict[str, Any] | None, text: str = "") -> dict[str, Any]:
    content: dict[str, Any] = {TEXT: {"schema": {"type": "string"}}}
    if text:
        content[TEXT]["example"] = text
    if schema is not None:
        content["application/json"] = {"schema": schema}
    return {"description": description, "content": content}


FORMAT = {
    "name": "format",
    "in": "query",
    "required": False,
    "description": (
        "text, json, ndjson (one JSON object per line) or sse (Server-Sent Events); without "
        "it the Accept header decides (text by default)"
    ),
    "schema": {"type": "string", "enum": ["text", "json", "ndjson", "sse"]},
}
STREAMS = {
    "application/x-ndjson": {
        "schema": {"type": "string"},
        "description": 'one object per line: {"line", "cursor"}, {"dropped": N}, '
        '{"stale": true, "missing": N}, then {"result": {...}} or {"error": {...}}',
    },
    "text/event-stream; charset=utf-8": {
        "schema": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "event": {"enum": ["message", "dropped", "stale", "result", "error"]},
                "data": {"type": "string"},
            },
        },
        "description": "one event per line (id: its cursor), events dropped, stale, "
        "result and error, a comment every http.sse_keepalive seconds",
    },
}

ERRORS = {
    "400": "bad_argument or missing_argument (bad query, unknown parameter)",
    "403": "forbidden or permission_denied",
    "404": "not_found or unknown route",
    "405": "method_not_allowed (the Allow header lists the methods)",
    "503": "quota_exceeded (with Retry-After) or unavailable",
    "504": "timeout",
    "500": "internal",
    "413": "too_large (the request body is over the route's limit)",
}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: {"$ref": f"#/components/responses/E{code}"} for code in codes}


def result_schema(command: AnyCommand) -> dict[str, Any]:
    """The JSON result of ``command``, from its declared fields.

    Closed (``additionalProperties: false``), so a field a command returns
    without declaring it fails the tests that check every answer.
    """
    properties: dict[str, Any] = {}
    if command.stream_key is not None:
        properties[command.stream_key] = {
            "type": "array",
            "items": {"type": "string"},
            "description": "the output lines, as they were streamed",
        }
    for f in command.result_fields:
        properties[f.name] = {**f.schema, **({"description": f.help} if f.help else {})}
    properties["text"] = {
        "type": "array",
        "items": {"type": "string"},
        "description": "the text form of the result (what text/plain shows after any lines)",
    }
    properties["summary"] = {"type": "string", "description": "one line to show beside it"}
    done = [f.name for f in command.result_fields if f.required] + ["text", "summary"]
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    schema["additionalProperties"] = False
    if command.stream_key is None:
        schema["required"] = done
        return schema
    properties["error"] = {
        "type": "object",
        "description": "set when the command failed after lines were sent",
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        "required": ["code", "message"],
    }
    if command.always_streams:
        schema["required"] = [command.stream_key]
    schema["anyOf"] = [{"required": done}, {"required": ["error"]}]
    return schema


def command_operation(command: AnyCommand) -> dict[str, Any]:
    """``GET <route>`` for one command: parameters, answers and errors, all derived."""
    errors = ["400", "405", "500"]
    if command.metered:
        errors = ["400", "403", "404", "405", "503", "504", "500"]
    usage = f"Runs `{command.usage}`."
    if command.metered:
        usage += " Holds one slot of the client quota while it runs."
    else:
        usage += " Takes no quota slot."
    text = "One output line per text line" if command.stream_key else "The text form"
    ok = _ok(text, result_schema(command))
    ok["content"].update(STREAMS)
    return {
        "summary": command.summary,
        "description": usage,
        "operationId": (command.route or command.name).strip("/"),
        "parameters": [*(query_parameter(p) for p in command.params), FORMAT],
        "responses": {
            "200": ok,
            **_errors(*errors),
        },
    }


def post_operation(command: AnyCommand) -> dict[str, Any]:
    """``POST <path>`` of a command that takes its body as a parameter."""
    post = command.post
    assert post is not None
    operation = command_operation(command)
    taken = {post.param, *post.fixed, *post.omits}
    fixed = " ".join(f"{name}={value}" for name, value in post.fixed.items())
    operation.update(
        {
            "summary": post.summary or command.summary,
            "description": (
                f"Runs {command.name} with {fixed} and the body as {post.param}. "
                f"The body may be up to {post.max_bytes} bytes."
            ),
            "operationId": post.path.strip("/").replace("/", "-"),
            "parameters": [
                *(query_parameter(p) for p in command.params if p.name not in taken),
                FORMAT,
            ],
            "requestBody": {
                "required": True,
                "content": {  # UTF-8 text, not empty, without NUL (no file name holds one)
                    TEXT: {"schema": {"type": "string", "minLength": 1, "pattern": "^[^\\u0000]*$"}}
                },
            },
        }
    )
    operation["responses"].update(_errors("413"))
    return operation


def document(commands: Sequence[AnyCommand]) -> dict[str, Any]:
    """The document; each command's route, parameters and result schema come
    from the command's own declaration (:mod:`gateway.core.command`)."""
    get = "get"
    routes = {c.route: {get: command_operation(c)} for c in commands if c.route is not None}
    routes.update(
        {c.post.path: {"post": post_operation(c)} for c in commands if c.post is not None}
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gateway",
            "version": __version__,
            "description": (
                "Remote-admin daemon. Every command is a GET route; the metered ones "
                "(such as /lastlog and /comphash) hold one slot of the client quota "
                "shared with the line server and WebSocket while they run; the others "
                "take none. Answers are text/plain unless JSON is asked for; a JSON "
                "result carries the command's fields, its text form and a summary."
            ),
        },
        "paths": {
            **routes,
            "/healthz": {
                get: {
                    "summary": "ok while serving (takes no quota slot)",
                    "operationId": "healthz",
                    "parameters": [FORMAT],
                    "responses": {
                        **_errors("400"),
                        "200": _ok(
                            "Serving",
                            {
                                "type": "object",
                                "properties": {"status": {"const": "ok"}},
                                "required": ["status"],
                            },
                            "ok\n",
                        ),
                        **_errors("405"),
                    },
                }
            },
            "/metrics": {
                get: {
                    "summary": "Prometheus text format (takes no quota slot)",
                    "operationId": "metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus exposition format 0.0.4",
                            "content": {
                                "text/plain; version=0.0.4; charset=utf-8": {
                                    "schema": {"type": "string"}
                                }
                            },
                        },
                        **_errors("405"),
                    },
                }
            },
            "/": {
                get: {
                    "summary": "The browser console (its script and style sheet are beside it)",
                    "operationId": "console",
                    "responses": {
                        "200": {
                            "description": "The console page",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        },
                        **_errors("405"),
                    },
                }
            },
            "/ws": {
                get: {
                    "summary": "WebSocket: subprotocols gateway.text and gateway.v1.json",
                    "description": (
                        "Upgrade to a WebSocket. gateway.text (or no subprotocol): one command "
                        "line per text frame, one output line per frame. gateway.v1.json: "
                        '{"id", "line"} or {"id", "command", "args"} requests, replies typed '
                        "line, progress, result, error, cancelled. Holds one quota slot until "
                        "closed; over quota the server closes with 1013. Browser origins other "
                        "than the console's own are refused (403) unless allowed."
                    ),
                    "operationId": "websocket",
                    "responses": {
                        "101": {"description": "Switching to the WebSocket protocol"},
                        "400": {"description": "Not a WebSocket handshake"},
                        "403": {"description": "Origin not allowed"},
                        "426": {"description": "Not a WebSocket upgrade (Upgrade header missing)"},
                    },
                }
            },
            "/openapi.json": {
                get: {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_errors("405"),
                    },
                }
            },
        },
        "components": {
            "responses": {f"E{code}": _problem_response(text) for code, text in ERRORS.items()},
            "schemas": {
                "Problem": {
                    "type": "object",
                    "description": "RFC 9457 problem details, with the gateway's stable code",
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "code": {"type": "string"},
                    },
                    "required": ["type", "title", "status", "detail", "code"],
                },
            },
        },
    }
