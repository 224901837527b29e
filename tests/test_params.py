"""Parameters declared once: the line syntax, validation, help, /commands and OpenAPI."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock

from gateway.core.errors import CommandError
from gateway.core.params import Param, describe, parse_line, query_parameter, usage, validate
from gateway.core.quota import ClientQuota
from gateway.frontends.http.openapi import document

from .support.services import make_service

PARAMS = (
    Param("mode", "choice", "how", default="fast", choices=("fast", "slow"), flag="-m"),
    Param("count", "int", "how many", default=3, minimum=1, maximum=9, metavar="N"),
    Param("path", "path", "where", required=True, missing="Please provide a path."),
)


COMPHASH_PARAMS = [
    "algorithm",
    "recursive",
    "check",
    "ignore_missing",
    "strict",
    "quiet",
    "dir",
    "manifest",
    "path",
]


def test_usage_is_written_from_the_declaration(tmp_path: Path) -> None:
    assert usage("demo", PARAMS) == "demo [-m MODE] [N] <path>"
    service = make_service(tmp_path, Clock(), ClientQuota(1))
    usages = {c.name: c.usage for c in service.commands}
    assert usages["lastlog"] == "lastlog [N] [-f] [-g REGEX] [--after CURSOR]"
    assert usages["comphash"] == (
        "comphash [-a ALGO] [-r] [-c] [--ignore-missing] [--strict] [--quiet] [--dir DIR]"
        " [--manifest MANIFEST] <path>"
    )


@pytest.mark.parametrize(
    ("rest", "expected"),
    [
        ("", {}),
        ("5 /a b", {"count": "5", "path": "/a b"}),
        ("-m slow 5 /x", {"mode": "slow", "count": "5", "path": "/x"}),
        ("--mode=slow 5 /x", {"mode": "slow", "count": "5", "path": "/x"}),
        ("--mode slow 1 /x", {"mode": "slow", "count": "1", "path": "/x"}),
        ("-x 1", {"count": "-x", "path": "1"}),  # not an option: a value
    ],
)
def test_parse_line(rest: str, expected: dict[str, str]) -> None:
    assert parse_line("demo", PARAMS, rest) == expected


def test_parse_line_errors() -> None:
    with pytest.raises(CommandError, match="-m needs a value for mode"):
        parse_line("demo", PARAMS, "-m")
    with pytest.raises(CommandError, match="takes no arguments"):
        parse_line("help", (), "x")


def test_validate_fills_defaults_and_types() -> None:
    assert validate("demo", PARAMS, {"path": "/x"}) == {"mode": "fast", "count": 3, "path": "/x"}
    assert validate("demo", PARAMS, {"path": "/x", "count": "9"})["count"] == 9


@pytest.mark.parametrize(
    ("raw", "code", "message"),
    [
        ({}, "missing_argument", "Please provide a path."),
        ({"path": ""}, "missing_argument", "Please provide a path."),
        ({"path": "x"}, "bad_argument", "Path must be absolute: x"),
        ({"path": "/a\x00"}, "bad_argument", "Path contains a NUL byte."),
        ({"path": 5}, "bad_argument", "path must be a string"),
        ({"path": "/x", "count": "10"}, "bad_argument", "count must be an integer from 1 to 9"),
        ({"path": "/x", "count": True}, "bad_argument", "count must be an integer from 1 to 9"),
        ({"path": "/x", "count": ""}, "bad_argument", "count must be an integer from 1 to 9"),
        ({"path": "/x", "mode": "odd"}, "bad_argument", "Unknown mode: odd (allowed: fast, slow)"),
        ({"path": "/x", "colour": "red"}, "bad_argument", "demo: unknown argument 'colour'"),
    ],
)
def test_validate_errors(raw: dict[str, object], code: str, message: str) -> None:
    with pytest.raises(CommandError) as info:
        validate("demo", PARAMS, raw)
    assert (info.value.code, info.value.message) == (code, message)


def test_describe_and_openapi_come_from_the_same_declaration(tmp_path: Path) -> None:
    assert describe(PARAMS[1]) == {
        "name": "count",
        "type": "int",
        "required": False,
        "help": "how many",
        "default": 3,
        "minimum": 1,
        "maximum": 9,
    }
    assert query_parameter(PARAMS[0])["schema"] == {
        "type": "string",
        "enum": ["fast", "slow"],
        "default": "fast",
    }
    service = make_service(tmp_path, Clock(), ClientQuota(1), algorithms=["sha256", "md5"])
    doc = document(service.commands)
    comphash = doc["paths"]["/comphash"]["get"]["parameters"]
    assert [p["name"] for p in comphash] == [*COMPHASH_PARAMS, "format"]
    assert comphash[0]["schema"]["enum"] == ["sha256", "md5"]
    lastlog = doc["paths"]["/lastlog"]["get"]["parameters"][0]
    assert lastlog["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10}


def test_help_and_commands_list_the_parameters(tmp_path: Path) -> None:
    from gateway.core.command import Client, Request
    from gateway.core.events import Event, Result

    service = make_service(tmp_path, Clock(), ClientQuota(1))
    events: list[Event] = []
    service.execute(Request("help", rest=""), Client("tcp", "h"), events.append)
    result = events[-1]
    assert isinstance(result, Result)
    listed = {c["name"]: c["params"] for c in result.data["commands"]}
    assert [p["name"] for p in listed["comphash"]] == COMPHASH_PARAMS
    assert listed["comphash"][-1]["required"] is True  # the path
    assert listed["help"] == []
