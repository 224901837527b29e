"""Commands declared in the config: the declaration checks, argv building, the run."""

from __future__ import annotations

import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from gateway.commands.declared import ProgramCommand
from gateway.commands.paths import resolve_allowed
from gateway.commands.registry import reconfigure
from gateway.config import Config, ConfigError, load, merge, redacted
from gateway.core.command import Client, Request
from gateway.core.errors import CommandError
from gateway.core.events import Error, Event, Lines, Result
from gateway.core.quota import ClientQuota
from gateway.declarations import RESERVED_NAMES, DeclaredCommand, parse_command
from gateway.frontends.http.openapi import document
from gateway.sessions.line import LineConversation

from .support.fakes import FakeProcess, FakeSpawner
from .support.logs import recorded_events
from .support.services import in_line_runners, make_service

PY = sys.executable
DOCUMENTED = Path(__file__).parent.parent / "config" / "gateway.toml"


def declare(toml: str) -> DeclaredCommand:
    (name, spec), *_ = tomllib.loads(toml)["commands"].items()
    return parse_command(name, spec)


ECHO = f"""
[commands.say]
summary = "print the arguments"
argv = ["{PY}", "-c", "print(1)", "--", "{{word}}", "--n={{n}}", "{{color}}", "{{where}}"]
[commands.say.params.word]
type = "string"
pattern = "(?s).*"
required = true
[commands.say.params.n]
type = "int"
min = 1
max = 5
default = 2
[commands.say.params.color]
type = "choice"
values = ["red", "blue"]
[commands.say.params.where]
type = "path"
roots = ["/srv", "/tmp"]
"""


def program(toml: str = ECHO) -> tuple[ProgramCommand, FakeSpawner]:
    spawner = FakeSpawner()
    return ProgramCommand(declare(toml), spawner.reactor), spawner


def start(
    command: ProgramCommand, spawner: FakeSpawner, **args: object
) -> tuple[list[Event], Any, FakeProcess]:
    events: list[Event] = []
    d = command.run(command.prepare(args), events.append)
    return events, d, spawner.processes[-1]


# -- the declaration, checked at load


def test_the_documented_example_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commented example in config/gateway.toml is a valid declaration
    (whether this machine has ``systemctl`` or not)."""
    monkeypatch.setattr("gateway.declarations.find_program", lambda name: f"/usr/bin/{name}")
    text = DOCUMENTED.read_text()
    block = text[text.index("# [commands.diskfree]") :]
    lines = [line[2:] for line in block.splitlines() if line.startswith("# ")]
    example = tomllib.loads("\n".join(lines))
    config = merge(Config(), {"commands": example["commands"]})
    names = [c.name for c in config.commands]
    assert "diskfree" in names
    diskfree = config.commands[names.index("diskfree")]
    assert diskfree.params[0].type == "path" and diskfree.timeout == 10
    assert diskfree.argv[-1] == "{mount}" and diskfree.env == (("LC_ALL", "C"),)
    assert names == ["diskfree", "svc"]


@pytest.mark.parametrize(
    ("toml", "key", "message"),
    [
        ("[commands.lastlog]\nargv = ['/bin/true']", "commands.lastlog", "built in"),
        ("[commands.healthz]\nargv = ['/bin/true']", "commands.healthz", "built in"),
        ("[commands.Bad]\nargv = ['/bin/true']", "commands.Bad", "a-z"),
        ("[commands.x]\nsummary = 'no argv'", "commands.x.argv", "missing"),
        ("[commands.x]\nargv = []", "commands.x.argv", "must name a program"),
        ("[commands.x]\nargv = ['/bin/true']\nshell = true", "commands.x.shell", "unknown key"),
        ("[commands.x]\nargv = ['/no/such/prog']", "commands.x.argv", "no such executable"),
        ("[commands.x]\nargv = ['no-such-prog-here']", "commands.x.argv", "child PATH"),
        ("[commands.x]\nargv = ['{p}']", "commands.x.argv", "program itself"),
        ("[commands.x]\nargv = ['/bin/echo', '{who}']", "commands.x.argv", "{who} names no"),
        (
            "[commands.x]\nargv = ['/bin/echo']\n[commands.x.params.a]\ntype = 'int'",
            "commands.x.params.a",
            "is not used",
        ),
        (
            "[commands.x]\nargv = ['/bin/echo', '{a}']\n[commands.x.params.a]\ntype = 'float'",
            "commands.x.params.a.type",
            "must be one of int, choice, string, path",
        ),
        (
            "[commands.x]\nargv = ['/bin/echo', '{a}']\n[commands.x.params.a]\ntype = 'string'",
            "commands.x.params.a.pattern",
            "missing",
        ),
        (
            "[commands.x]\nargv = ['/bin/echo', '{a}']\n[commands.x.params.a]\n"
            "type = 'string'\npattern = '(a'",
            "commands.x.params.a.pattern",
            "bad pattern '(a': missing ): (a",
        ),
        (
            "[commands.x]\nargv = ['/bin/echo', '{a}']\n[commands.x.params.a]\ntype = 'path'",
            "commands.x.params.a.roots",
            "missing",
        ),
        (
            "[commands.x]\nargv = ['/bin/echo', '{a}']\n[commands.x.params.a]\n"
            "type = 'int'\nmin = 5\nmax = 1",
            "commands.x.params.a.min",
            "must not exceed max",
        ),
        (
            "[commands.x]\nargv = ['/bin/echo', '{a}']\n[commands.x.params.a]\n"
            "type = 'choice'\nvalues = ['a']\ndefault = 'b'",
            "commands.x.params.a.default",
            "one of values",
        ),
        (
            "[commands.x]\nargv = ['/bin/echo', '{a}']\n[commands.x.params.a]\n"
            "type = 'int'\nroots = ['/']",
            "commands.x.params.a.roots",
            "unknown key",
        ),
        ("[commands.x]\nargv = ['/bin/echo']\ntimeout = 0", "commands.x.timeout", "greater"),
        ("[commands.x]\nargv = ['/bin/echo']\nstderr = 'drop'", "commands.x.stderr", '"send"'),
        ("[commands.x]\nargv = ['/bin/echo']\nenv = { 'A B' = 'x' }", "commands.x.env", "name"),
    ],
)
def test_a_bad_declaration_is_one_line_naming_its_key(
    tmp_path: Path, toml: str, key: str, message: str
) -> None:
    path = tmp_path / "g.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as e:
        load(str(path))
    assert e.value.key == key
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith(f"config error: {key}: ")


def test_a_program_that_is_not_executable_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    with pytest.raises(ConfigError, match=f"commands.x.argv: {plain}: no such executable"):
        merge(Config(), {"commands": {"x": {"argv": [str(plain)]}}})
    with pytest.raises(ConfigError, match="no such executable"):
        merge(Config(), {"commands": {"x": {"argv": [str(tmp_path)]}}})  # a directory


def test_every_built_in_name_is_reserved(tmp_path: Path) -> None:
    service = make_service(tmp_path, Clock(), ClientQuota(10))
    for command in service.commands:
        assert command.name in RESERVED_NAMES
        assert command.route is None or command.route.strip("/") in RESERVED_NAMES


def test_env_values_never_reach_check_config() -> None:
    decl = declare("[commands.x]\nargv = ['/bin/true']\nenv = { API_KEY = 's3cret-value' }")
    shown = json.dumps(redacted(Config(commands=(decl,))))
    assert "s3cret-value" not in shown and '"API_KEY": "***"' in shown


# -- argv: each value one whole element, or refused


def test_values_go_in_as_whole_elements() -> None:
    command, spawner = program()
    events, d, child = start(command, spawner, word="a b; $(rm -rf /) `x` {n}", color="red")
    assert child.args[0].endswith("/setsid") and child.args[2] == PY
    assert child.args[3:] == ["-c", "print(1)", "--", "a b; $(rm -rf /) `x` {n}", "--n=2", "red"]
    assert child.env["PATH"] and "GATEWAY_TOKEN" not in child.env  # minimal environment
    child.exit(0)


def test_optional_values_left_out_drop_their_element() -> None:
    command, spawner = program()
    _, _, child = start(command, spawner, word="x")
    assert child.args[-2:] == ["x", "--n=2"]  # no color, no where
    child.exit(0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"word": "-rf"}, "word may not start with '-'"),
        ({"word": "x", "n": "9"}, "n must be an integer from 1 to 5"),
        ({"word": "x", "color": "green"}, "Unknown color: green (allowed: red, blue)"),
        ({"word": "x", "where": "/etc/passwd"}, "Path is outside the allowed roots: /etc/passwd"),
        ({"word": "x", "where": "/tmp/../etc/passwd"}, "outside the allowed roots"),
        ({"word": "x", "where": "relative"}, "Path must be absolute"),
        ({"word": "x", "where": "/tmp/\x00"}, "NUL"),
        ({"word": "a\x00b"}, "word contains a NUL character"),
        ({"word": "\ud800"}, "unpaired surrogate"),
        ({}, "say needs word"),
        ({"word": "x", "other": "y"}, "unknown argument 'other'"),
    ],
)
def test_bad_values_are_refused_before_anything_runs(args: dict[str, object], message: str) -> None:
    command, spawner = program()
    with pytest.raises(CommandError) as e:
        command.prepare(args)
    assert message in e.value.message
    assert not spawner.processes


def test_paths_are_resolved_and_may_not_reach_proc(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to("/proc/self")
    command, spawner = program(ECHO.replace('["/srv", "/tmp"]', f'["{root}", "/"]'))
    assert command.prepare({"word": "x", "where": f"{root}/a/../b"})["where"] == f"{root}/b"
    with pytest.raises(CommandError, match="under /proc, which is never used"):
        command.prepare({"word": "x", "where": f"{root}/link/environ"})


def test_a_dash_is_allowed_where_the_declaration_says_so() -> None:
    toml = ECHO.replace('pattern = "(?s).*"', 'pattern = "-?[a-z]+"\nallow_dash = true')
    command, spawner = program(toml)
    assert command.prepare({"word": "-v"})["word"] == "-v"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_value_is_one_inert_element_or_refused(value: str) -> None:
    command, spawner = program()
    try:
        args = command.prepare({"word": value})
    except CommandError as e:
        if value == "":  # a required value left empty
            assert e.code == "missing_argument"
            return
        assert e.code == "bad_argument"
        assert (
            value.startswith("-")
            or "\x00" in value
            or any("\ud800" <= c <= "\udfff" for c in value)
        )
        return
    argv = command.argv(args)
    assert argv.count(value) >= 1 and argv[4] == value
    assert len(argv) == 6  # nothing split, nothing added


def test_the_line_protocol_takes_the_rest_of_the_line_and_names(tmp_path: Path) -> None:
    assert command_line("say hi 3 blue /tmp/a b") == ["hi", "--n=3", "blue", "/tmp/a b"]
    assert command_line("say --n=1 --color=red --where=/srv two words  here") == [
        "two words  here",
        "--n=1",
        "red",
        "/srv",
    ]
    assert command_line("say --n=3 x") == ["x", "--n=3"]
    assert command_line("say --word=x --color=blue") == ["x", "--n=2", "blue"]


def command_line(line: str) -> list[str]:
    command, spawner = program()
    parsed = command.prepare(command.parse(line.split(" ", 1)[1]))
    return command.argv(parsed)[4:]


# -- the run


def test_output_streams_line_by_line_and_ends_with_the_exit_status() -> None:
    command, spawner = program()
    events, d, child = start(command, spawner, word="x")
    child.out(b"one\ntw")
    assert events == [Lines(("one",))]
    child.out(b"o\n")
    child.exit(0)
    assert events == [Lines(("one",)), Lines(("two",))]
    assert d.result == Result(
        "say", {"exit_status": 0, "truncated": False}, summary="2 lines, exit status 0"
    )


@pytest.mark.parametrize(
    ("code", "signal", "message"),
    [(3, None, "say exited with status 3"), (0, 9, "say was killed by signal 9")],
)
def test_a_failing_program_is_command_failed_and_its_stderr_is_logged(
    code: int, signal: int | None, message: str
) -> None:
    command, spawner = program()
    with recorded_events() as logged:
        events, d, child = start(command, spawner, word="x")
        child.err(b"first\nbad \x1b[31mthing\n")
        child.exit(code, signal)
    failures: list[Failure] = []
    d.addErrback(failures.append)
    error = failures[0].value
    assert isinstance(error, CommandError) and error.code == "command_failed"
    assert error.message == message
    assert events == []  # stderr is not sent
    text = " ".join(str(e.get("stderr", "")) for e in logged)
    assert "first | bad \\x1b[31mthing" in text  # logged, escaped


def test_stderr_send_interleaves_it_with_the_output() -> None:
    command, spawner = program(
        ECHO.replace('summary = "print', 'stderr = "send"\nsummary = "print')
    )
    events, d, child = start(command, spawner, word="x")
    child.out(b"out\n")
    child.err(b"err\n")
    child.exit(0)
    assert events == [Lines(("out",)), Lines(("err",))]


def test_output_past_the_limit_is_cut_with_a_notice_and_the_program_stopped() -> None:
    command, spawner = program(
        ECHO.replace('summary = "print', 'max_output_lines = 3\nsummary = "x')
    )
    events, d, child = start(command, spawner, word="x")
    child.out(b"1\n2\n")
    child.out(b"3\n")
    assert child.signals == []  # exactly the limit is not a cut
    child.out(b"4\n5\n")
    assert child.signals == ["KILL"]
    child.exit(signal=9)
    assert events == [Lines(("1", "2")), Lines(("3",))]
    assert d.result.data == {"exit_status": None, "truncated": True}
    assert d.result.text == (
        "-- output cut at 3 lines (commands.say.max_output_lines); the program was stopped",
    )


def test_cancelling_kills_the_program() -> None:
    command, spawner = program()
    events, d, child = start(command, spawner, word="x")
    d.addErrback(lambda f: None)
    d.cancel()
    assert child.signals == ["KILL"]


def test_served_like_any_command_and_reloaded(tmp_path: Path) -> None:
    clock = Clock()
    config = merge(Config(), {"commands": tomllib.loads(ECHO)["commands"]})
    service = make_service(tmp_path, clock, ClientQuota(10))
    runners = in_line_runners()
    reconfigure(service, config, runners)
    assert service.at_route("/say") is not None
    assert "/say" in document(service.commands)["paths"]
    out: list[str] = []
    conversation = LineConversation(service, Client("tcp", "h"), out.extend, lambda: None)
    conversation.start()
    conversation.submit("say -x")
    assert out == ["An error occurred: word may not start with '-'"]
    events: list[Event] = []
    service.execute(Request("say", args={"word": "-x"}), Client("http", "h"), events.append)
    assert isinstance(events[0], Error) and events[0].code == "bad_argument"
    reconfigure(service, Config(), runners)  # the declaration is gone: so is the command
    assert service.get("say") is None and service.at_route("/say") is None
    assert service.get("lastlog") is not None


def test_the_child_environment_has_what_was_declared_only() -> None:
    toml = ECHO.replace('summary = "print', 'env = { LC_ALL = "C", TZ = "UTC" }\nsummary = "p')
    command, spawner = program(toml)
    os.environ["GATEWAY_SECRET_FOR_TEST"] = "x"
    try:
        _, _, child = start(command, spawner, word="x")
    finally:
        del os.environ["GATEWAY_SECRET_FOR_TEST"]
    assert child.env == {"PATH": child.env["PATH"], "LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC"}


@pytest.mark.parametrize(
    ("errno_", "code", "message"),
    [
        (2, "not_found", "No such file: /srv/x"),
        (40, "not_a_file", "Path changed while being resolved: /srv/x"),
    ],
)
def test_a_path_that_changes_while_resolved_is_an_ordinary_error(
    monkeypatch: pytest.MonkeyPatch, errno_: int, code: str, message: str
) -> None:
    def racing(path: str) -> str:
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(os.path, "realpath", racing)
    with pytest.raises(CommandError) as e:
        resolve_allowed("/srv/x", ["/srv"], "used")
    assert (e.value.code, e.value.message) == (code, message)
