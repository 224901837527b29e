from twisted.internet.task import Clock

from gateway.commands.builtin import ExitCommand
from gateway.core.command import Client
from gateway.core.events import Result
from gateway.core.service import CommandService
from gateway.sessions.line import LineConversation

from .support.commands import Stub


def make() -> tuple[LineConversation, Stub, list[str], list[str]]:
    stub = Stub(timeout=1000)
    service = CommandService([stub, ExitCommand()], Clock())
    out: list[str] = []
    closed: list[str] = []
    c = LineConversation(service, Client("websocket", "h"), out.extend, lambda: closed.append("x"))
    return c, stub, out, closed


def test_nothing_runs_before_start() -> None:
    c, stub, out, _ = make()
    c.submit("stub")
    assert out == [] and c.busy and c.waiting == 1
    c.start()
    assert out == ["working"] and c.waiting == 0


def test_answers_come_in_the_order_asked() -> None:
    c, stub, out, _ = make()
    c.start()
    c.submit("stub")
    c.submit("nope")
    c.submit(b"\xff")
    assert out == ["working"]
    stub.runs[0].callback(Result("stub", text=("one",)))
    assert out == [
        "working",
        "one",
        "Command not found.",
        "An error occurred: Command line is not valid UTF-8.",
    ]
    assert not c.busy


def test_exit_closes_and_drops_the_rest() -> None:
    c, stub, out, closed = make()
    c.start()
    c.submit("exit")
    c.submit("stub")
    assert closed == ["x"] and c.closed
    assert out == [] and not stub.runs


def test_stop_cancels_the_running_command() -> None:
    c, stub, out, _ = make()
    c.start()
    c.submit("stub")
    c.submit("stub")
    c.stop()
    assert stub.cancelled == 1 and len(stub.runs) == 1
    c.submit("stub")
    assert len(stub.runs) == 1


def test_blank_lines_are_ignored() -> None:
    c, _, out, _ = make()
    c.start()
    c.submit("   ")
    c.submit(b"\r")
    assert out == [] and not c.busy
