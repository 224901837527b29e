"""Commands operators declare in the config (``[commands.<name>]``): a program, its params.

A declaration (:class:`gateway.declarations.DeclaredCommand`) becomes a
:class:`ProgramCommand`: its parameters are ordinary declared parameters, so
every transport parses and checks them the same way; each ``{name}`` in argv
is replaced by the checked value in one pass (a value is never split, never
read by a shell, never scanned for further placeholders).  The program runs as
``lastlog``'s ``command:`` source does (no shell, minimal environment, its own
process group, killed on timeout or when the client leaves, paused while the
client does not read), and its stdout streams line by line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorProcess
from twisted.python.failure import Failure

from gateway.commands.child import BASE_ENV, ChildProtocol, decode_line, exit_of, spawn
from gateway.commands.paths import resolve_allowed
from gateway.core.command import Command, Field
from gateway.core.errors import CommandError
from gateway.core.events import Lines, Result, Sink
from gateway.core.flow import UNLIMITED, Flow
from gateway.core.params import Param, validate
from gateway.declarations import PLACEHOLDER, DeclaredCommand, DeclaredParam
from gateway.logfmt import Logger, printable

Args = Mapping[str, object]
#: How many of the last stderr lines of a run go to the log.
LOGGED_STDERR_LINES = 5


def to_param(p: DeclaredParam) -> Param:
    """The core parameter for a declared one (positional, in declaration order)."""
    if p.type == "int":
        return Param(p.name, "int", p.help, p.required, p.default, minimum=p.min, maximum=p.max)
    if p.type == "choice":
        return Param(p.name, "choice", p.help, p.required, p.default, choices=p.values)
    if p.type == "string":
        return Param(p.name, "string", p.help, p.required, p.default, pattern=p.pattern)
    return Param(p.name, "path", p.help, p.required)


class ProgramCommand(Command[Args]):
    """One declared command."""

    stream_key = "lines"
    result_fields = (
        Field(
            "exit_status",
            {"type": ["integer", "null"]},
            "the program's exit status (null when its output was cut and it was stopped)",
        ),
        Field("truncated", {"type": "boolean"}, "whether the output was cut at max_output_lines"),
    )
    log = Logger(namespace="gateway.commands.declared")

    def __init__(self, declaration: DeclaredCommand, spawner: IReactorProcess) -> None:
        self.declaration = declaration
        self.name = declaration.name
        self.summary = declaration.summary
        self.timeout = declaration.timeout
        self.frame = (f"Begin {self.name}", f"End {self.name}")
        self.params = tuple(to_param(p) for p in declaration.params)
        self._roots = {
            p.name: tuple(os.path.realpath(r) for r in p.roots)
            for p in declaration.params
            if p.type == "path"
        }
        self._dash = frozenset(p.name for p in declaration.params if p.allow_dash)
        self._env = {**BASE_ENV, **dict(declaration.env)}
        self._spawner = spawner

    def prepare(self, args: Mapping[str, object]) -> Args:
        checked = validate(self.name, self.params, args)
        for name, value in checked.items():
            if not isinstance(value, str):
                continue
            if value.startswith("-") and name not in self._dash:
                raise CommandError("bad_argument", f"{name} may not start with '-'")
            roots = self._roots.get(name)
            if roots is not None:
                checked[name] = resolve_allowed(value, roots, "used")
        return checked

    def argv(self, args: Args) -> list[str]:
        """The program's argv for checked ``args``.

        An element whose placeholder names an optional parameter that was not
        given (and has no default) is left out.
        """
        out = []
        for element in self.declaration.argv:
            names = PLACEHOLDER.findall(element)
            if not names:
                out.append(element)
            elif all(args.get(n) is not None for n in names):
                out.append(PLACEHOLDER.sub(lambda m: str(args[m.group(1)]), element))
        return out

    def run(self, args: Args, sink: Sink, flow: Flow = UNLIMITED) -> Deferred[Result]:
        child: _Program

        def cancel(d: Deferred[Result]) -> None:
            child.kill()

        done: Deferred[Result] = Deferred(cancel)
        child = _Program(self, sink, done)
        spawn(self._spawner, child, self.argv(args), done, env=self._env, flow=flow)
        return done

    def log_stderr(self, lines: list[str]) -> None:
        if lines:
            self.log.info(
                "{command}: stderr, last lines: {stderr}",
                command=self.name,
                stderr=" | ".join(printable(line, 500) for line in lines),
            )


class _Program(ChildProtocol):
    def __init__(self, command: ProgramCommand, sink: Sink, done: Deferred[Result]) -> None:
        super().__init__()
        self.command = command
        self.sink = sink
        self.done = done
        self.limit = command.declaration.max_output_lines
        self.send_stderr = command.declaration.stderr == "send"
        self.sent = 0
        self.truncated = False

    def lines_received(self, raw: list[bytes]) -> None:
        if self.done.called or self.truncated:
            return
        room = self.limit - self.sent
        take = raw[:room]
        if take:
            self.sent += len(take)
            self.sink(Lines(tuple(decode_line(line) for line in take)))
        if len(raw) > room:  # one line more than allowed: cut, and stop the program
            self.truncated = True
            self.kill()

    def stderr_received(self, lines: list[bytes]) -> None:
        super().stderr_received(lines)
        if self.send_stderr:
            self.lines_received(lines)

    def ended(self, reason: Failure) -> None:
        if self.done.called:
            return  # cancelled: timed out, or the client left
        command = self.command
        name = command.name
        if not self.send_stderr:
            command.log_stderr(list(self.stderr_tail)[-LOGGED_STDERR_LINES:])
        if self.truncated:
            notice = (
                f"-- output cut at {self.limit} lines (commands.{name}.max_output_lines); "
                "the program was stopped"
            )
            self.done.callback(
                Result(
                    command=name,
                    data={"exit_status": None, "truncated": True},
                    text=(notice,),
                    summary=f"{self.sent} lines (cut)",
                )
            )
            return
        status, signum = exit_of(reason)
        if signum is not None:
            self.done.errback(
                CommandError("command_failed", f"{name} was killed by signal {signum}")
            )
        elif status:
            self.done.errback(CommandError("command_failed", f"{name} exited with status {status}"))
        else:
            lines = "line" if self.sent == 1 else "lines"
            self.done.callback(
                Result(
                    command=name,
                    data={"exit_status": 0, "truncated": False},
                    summary=f"{self.sent} {lines}, exit status 0",
                )
            )


def declared_commands(
    declarations: tuple[DeclaredCommand, ...], spawner: IReactorProcess
) -> list[ProgramCommand]:
    return [ProgramCommand(d, spawner) for d in declarations]
