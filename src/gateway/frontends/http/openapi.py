"""The OpenAPI 3.1 description of the REST routes: the one place it is written."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway import __version__
from gateway.config import Config
from gateway.core.command import Command
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


def _ok(description: str, schema: dict[str, Any] | None, text: str) -> dict[str, Any]:
    content: dict[str, Any] = {TEXT: {"schema": {"type": "string"}, "example": text}}
    if schema is not None:
        content["application/json"] = {"schema": schema}
    return {"description": description, "content": content}


FORMAT = {
    "name": "format",
    "in": "query",
    "required": False,
    "description": "json or text; without it the Accept header decides (text by default)",
    "schema": {"type": "string", "enum": ["json", "text"]},
}

ERRORS = {
    "400": "bad_argument or missing_argument (bad query, unknown parameter)",
    "403": "forbidden or permission_denied",
    "404": "not_found or unknown route",
    "405": "method_not_allowed (the Allow header lists the methods)",
    "503": "quota_exceeded (with Retry-After) or unavailable",
    "504": "timeout",
    "500": "internal",
}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: {"$ref": f"#/components/responses/E{code}"} for code in codes}


def document(config: Config, commands: Sequence[Command]) -> dict[str, Any]:
    """The document; each command route's parameters come from the command's own
    declaration (:mod:`gateway.core.params`)."""
    declared = {c.name: c.params for c in commands}

    def params(name: str) -> list[dict[str, Any]]:
        return [query_parameter(p) for p in declared.get(name, ())]

    get = "get"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gateway",
            "version": __version__,
            "description": (
                "Remote-admin daemon. Command routes (/lastlog, /comphash) hold one slot of "
                "the client quota shared with the line server and WebSocket while they run; "
                "the others take none. Answers are text/plain unless JSON is asked for."
            ),
        },
        "paths": {
            "/lastlog": {
                get: {
                    "summary": "The last lines of the system log, streamed",
                    "operationId": "lastlog",
                    "parameters": [
                        *params("lastlog"),
                        FORMAT,
                    ],
                    "responses": {
                        "200": _ok(
                            "One log line per text line",
                            {"$ref": "#/components/schemas/Lastlog"},
                            "Nov 25 16:52:01 lab systemd[1]: Started session 42.\n",
                        ),
                        **_errors("400", "403", "404", "405", "503", "504", "500"),
                    },
                }
            },
            "/comphash": {
                get: {
                    "summary": "The hash of a file, in the sha1sum format",
                    "operationId": "comphash",
                    "parameters": [
                        *params("comphash"),
                        FORMAT,
                    ],
                    "responses": {
                        "200": _ok(
                            "<hex>  <path> (sha1sum -c reads it)",
                            {"$ref": "#/components/schemas/Hash"},
                            "3f786850e387550fdab836ed7e6dc881de23001b  /etc/hostname\n",
                        ),
                        **_errors("400", "403", "404", "405", "503", "504", "500"),
                    },
                }
            },
            "/commands": {
                get: {
                    "summary": "The commands, with usage",
                    "operationId": "commands",
                    "parameters": [FORMAT],
                    "responses": {
                        "200": _ok(
                            "One command per line",
                            {"$ref": "#/components/schemas/Commands"},
                            "help  list the commands\n",
                        ),
                        **_errors("400", "405", "500"),
                    },
                }
            },
            "/stats": {
                get: {
                    "summary": "Quota use per transport, uptime (takes no quota slot)",
                    "operationId": "stats",
                    "parameters": [FORMAT],
                    "responses": {
                        "200": _ok(
                            "Counters",
                            {"$ref": "#/components/schemas/Stats"},
                            "clients: 1/10 in use (tcp 1, http 0, websocket 0)\n",
                        ),
                        **_errors("400", "405", "500"),
                    },
                }
            },
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
                "Lastlog": {
                    "type": "object",
                    "properties": {
                        "lines": {"type": "array", "items": {"type": "string"}},
                        "count": {"type": "integer", "minimum": 0},
                        "source": {"type": "string"},
                        "error": {
                            "type": "object",
                            "description": "set when the source failed after lines were sent",
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        },
                    },
                    "required": ["lines"],
                },
                "Hash": {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string"},
                        "algorithm": {"type": "string", "enum": list(config.comphash.algorithms)},
                        "hex": {"type": "string", "pattern": "^[0-9a-f]+$"},
                        "size": {"type": "integer", "minimum": 0},
                    },
                    "required": ["path", "algorithm", "hex", "size"],
                },
                "Commands": {
                    "type": "object",
                    "properties": {
                        "commands": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string"},
                                    "usage": {"type": "string"},
                                    "summary": {"type": "string"},
                                    "params": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "name": {"type": "string"},
                                                "type": {
                                                    "enum": ["int", "choice", "path", "string"]
                                                },
                                                "required": {"type": "boolean"},
                                            },
                                            "required": ["name", "type", "required"],
                                        },
                                    },
                                },
                                "required": ["name", "usage", "summary", "params"],
                            },
                        }
                    },
                    "required": ["commands"],
                },
                "Stats": {
                    "type": "object",
                    "properties": {
                        "clients": {
                            "type": "object",
                            "properties": {
                                "in_use": {"type": "integer"},
                                "max": {"type": "integer"},
                                "max_per_ip": {"type": "integer"},
                                "by_transport": {
                                    "type": "object",
                                    "additionalProperties": {
                                        "type": "object",
                                        "properties": {
                                            "in_use": {"type": "integer"},
                                            "served": {"type": "integer"},
                                            "refused": {"type": "integer"},
                                        },
                                        "required": ["in_use", "served", "refused"],
                                    },
                                },
                            },
                            "required": ["in_use", "max", "max_per_ip", "by_transport"],
                        },
                        "uptime_seconds": {"type": "number"},
                    },
                    "required": ["clients", "uptime_seconds"],
                },
            },
        },
    }
