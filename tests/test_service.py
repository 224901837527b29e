from twisted.internet.task import Clock

from gateway.commands.builtin import ExitCommand, HelpCommand, StatsCommand, format_duration
from gateway.core.command import Client, Request
from gateway.core.events import Error, Event, Lines, Result
from gateway.core.quota import ClientQuota
from gateway.core.service import CommandService

from .support.commands import Stub
from .support.logs import recorded_events

CLIENT = Client("tcp", "127.0.0.1")


def execute(service: CommandService, request: Request) -> tuple[list[Event], list[str]]:
    events: list[Event] = []
    outcome: list[str] = []
    service.execute(request, CLIENT, events.append).addCallback(outcome.append)
    return events, outcome


def test_unknown_command() -> None:
    events, outcome = execute(CommandService([], Clock()), Request.from_line("test"))  # type: ignore[arg-type]
    assert events == [Error("unknown_command", "Command not found.")]
    assert outcome == ["unknown_command"]


def test_from_line() -> None:
    assert Request.from_line("   ") is None
    assert Request.from_line("LastLog 5 ") == Request("lastlog", rest="5")
    assert Request.from_line("comphash /a b  c") == Request("comphash", rest="/a b  c")
    assert Request.from_line("exit") == Request("exit", rest="")


def test_success_streams_then_result() -> None:
    stub = Stub()
    events, outcome = execute(CommandService([stub], Clock()), Request("stub", rest="x"))
    assert events == [Lines(("working",))]
    stub.runs[0].callback(Result("stub", {"ok": 1}))
    assert events[-1] == Result("stub", {"ok": 1})
    assert outcome == ["ok"]


def test_parse_error_and_command_error() -> None:
    service = CommandService([Stub()], Clock())
    events, outcome = execute(service, Request("stub", rest="bad"))
    assert events == [Error("bad_argument", "bad stub")] and outcome == ["bad_argument"]
    events, outcome = execute(service, Request("stub", rest="fail"))
    assert events == [Error("not_found", "No such file: /x")] and outcome == ["not_found"]


def test_internal_error_hides_details() -> None:
    with recorded_events() as logged:
        events, outcome = execute(CommandService([Stub()], Clock()), Request("stub", rest="boom"))
    assert events == [Error("internal", "Internal error (details in the server log only)")]
    assert "secret detail" not in repr(events)
    assert any("log_failure" in e for e in logged)  # the details are in the server log


def test_timeout_cancels_and_reports() -> None:
    clock = Clock()
    stub = Stub(timeout=10)
    events, outcome = execute(CommandService([stub], clock), Request("stub", rest=""))
    clock.advance(9.9)
    assert outcome == []
    clock.advance(0.2)
    assert stub.cancelled == 1
    assert events[-1] == Error("timeout", "stub timed out after 10 s")
    assert outcome == ["timeout"]


def test_caller_cancel_stops_the_command_quietly() -> None:
    stub = Stub()
    events: list[Event] = []
    outcome: list[str] = []
    d = CommandService([stub], Clock()).execute(Request("stub", rest=""), CLIENT, events.append)
    d.addCallback(outcome.append)
    d.cancel()
    assert stub.cancelled == 1
    assert outcome == ["cancelled"]
    assert events == [Lines(("working",))]  # no error sent to a client that is gone


def test_one_log_event_per_command() -> None:
    with recorded_events() as logged:
        execute(CommandService([ExitCommand()], Clock()), Request("exit", rest=""))
    mine = [e for e in logged if e.get("log_namespace", "").startswith("gateway.core.service")]
    assert len(mine) == 1
    event = mine[0]
    assert (event["transport"], event["peer"], event["command"], event["outcome"]) == (
        "tcp",
        "127.0.0.1",
        "exit",
        "ok",
    )
    assert "duration_ms" in event


def test_help_lists_every_command() -> None:
    service = CommandService([], Clock())
    service.add(Stub())
    service.add(HelpCommand(lambda: service.commands))
    events, _ = execute(service, Request("help", rest=""))
    result = events[-1]
    assert isinstance(result, Result)
    assert [c["name"] for c in result.data["commands"]] == ["stub", "help"]
    assert result.text == ("stub  for tests", "help  list the commands")
    events, _ = execute(service, Request("help", rest="me"))
    assert events == [Error("bad_argument", "help takes no arguments")]


def test_stats_reports_quota_and_uptime() -> None:
    clock = Clock()
    quota = ClientQuota(10)
    slot = quota.try_acquire("tcp", "a")
    quota.try_acquire("http", "b").release()
    service = CommandService([StatsCommand(quota, clock)], clock)
    clock.advance(3725)
    events, _ = execute(service, Request("stats", rest=""))
    result = events[-1]
    assert isinstance(result, Result)
    assert result.text == (
        "clients: 1/10 in use (tcp 1, http 0, websocket 0)",
        "served: 2 (tcp 1, http 1, websocket 0)",
        "refused: 0 (tcp 0, http 0, websocket 0)",
        "uptime: 01:02:05",
    )
    assert result.data["clients"]["by_transport"]["http"] == {
        "in_use": 0,
        "served": 1,
        "refused": 0,
    }
    slot.release()


def test_format_duration() -> None:
    assert format_duration(0) == "00:00:00"
    assert format_duration(90061) == "1d 01:01:01"


def test_exit_asks_to_close() -> None:
    events, _ = execute(CommandService([ExitCommand()], Clock()), Request("exit", rest="now"))
    assert events == [Result("exit", close=True)]


def test_duplicate_command_names_are_refused() -> None:
    import pytest

    with pytest.raises(ValueError):
        CommandService([ExitCommand(), ExitCommand()], Clock())


def test_structured_request_skips_line_parsing() -> None:
    stub = Stub()
    events, _ = execute(CommandService([stub], Clock()), Request("stub", args={"rest": "fail"}))
    assert events == [Error("not_found", "No such file: /x")]


def test_cancel_all_stops_what_runs() -> None:
    stub = Stub()
    service = CommandService([stub, ExitCommand()], Clock())
    _, first = execute(service, Request("stub", rest=""))
    _, second = execute(service, Request("stub", rest=""))
    execute(service, Request("exit", rest=""))  # finished at once: not tracked
    assert service.running == 2
    service.cancel_all()
    assert stub.cancelled == 2
    assert (first, second) == (["cancelled"], ["cancelled"])
    assert service.running == 0


def test_finished_commands_are_forgotten() -> None:
    stub = Stub()
    service = CommandService([stub], Clock())
    execute(service, Request("stub", rest=""))
    stub.runs[0].callback(Result("stub"))
    assert service.running == 0


def test_when_idle() -> None:
    stub = Stub()
    service = CommandService([stub], Clock())
    assert service.when_idle().called
    execute(service, Request("stub", rest=""))
    waiting = service.when_idle()
    given_up = service.when_idle()
    given_up.addErrback(lambda f: None)
    given_up.cancel()  # a caller that stopped waiting
    assert not waiting.called
    stub.runs[0].callback(Result("stub"))
    assert waiting.called
