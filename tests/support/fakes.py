"""Test doubles: a synchronous thread runner and a process spawner in memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure


def run_now(f: Callable[[], Any]) -> Deferred[Any]:
    """Stands in for a thread pool: runs ``f`` at once."""
    try:
        return succeed(f())
    except BaseException:
        return fail()


def call_now(f: Callable[..., Any], *args: Any) -> None:
    f(*args)


class FakeProcess:
    def __init__(self, proto: ProcessProtocol, executable: str, args: list[str], env: Any) -> None:
        self.proto = proto
        self.executable = executable
        self.args = args
        self.env = env
        self.signals: list[str] = []
        self.stdin_closed = False
        self.ended = False
        self.pid = None  # never a real process: no signal may reach one

    # IProcessTransport, the parts used
    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, name: str) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(name)

    def out(self, data: bytes) -> None:
        self.proto.outReceived(data)

    def err(self, data: bytes) -> None:
        self.proto.errReceived(data)

    def exit(self, code: int = 0, signal: int | None = None) -> None:
        self.ended = True
        if code == 0 and signal is None:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(code if signal is None else None, signal))
        self.proto.processEnded(reason)


class FakeSpawner:
    """Records the processes it is asked to start; none is real."""

    def __init__(self) -> None:
        self.processes: list[FakeProcess] = []

    @property
    def reactor(self) -> IReactorProcess:
        """This spawner, where code asks for a reactor that spawns processes."""
        return cast(IReactorProcess, self)

    def spawnProcess(
        self, proto: ProcessProtocol, executable: str, args: list[str], env: Any = None, **kw: Any
    ) -> FakeProcess:
        process = FakeProcess(proto, executable, list(args), env)
        self.processes.append(process)
        proto.makeConnection(process)
        return process
