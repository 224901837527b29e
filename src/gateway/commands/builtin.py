"""The small commands: ``help``, ``stats`` and ``exit``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from gateway.core.command import AnyCommand, Command, Field
from gateway.core.events import Result, Sink
from gateway.core.flow import UNLIMITED, Flow
from gateway.core.params import describe, validate
from gateway.core.quota import Quota
from gateway.core.scope import ANONYMOUS, Identity

PARAM_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "type": {"enum": ["int", "choice", "path", "string", "flag"]},
        "required": {"type": "boolean"},
        "required_unless": {"type": "string"},
        "help": {"type": "string"},
    },
    "required": ["name", "type", "required"],
}

COMMAND_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "usage": {"type": "string"},
        "summary": {"type": "string"},
        "route": {"type": ["string", "null"]},
        "params": {"type": "array", "items": PARAM_SCHEMA},
    },
    "required": ["name", "usage", "summary", "route", "params"],
}


class HelpCommand(Command[None]):
    name = "help"
    summary = "list the commands"
    timeout = 5.0
    http_path = "/commands"
    metered = False  # monitoring keeps working when the quota is full
    result_fields = (
        Field(
            "commands",
            {"type": "array", "items": COMMAND_SCHEMA},
            "each command: usage, summary, HTTP route and parameters",
        ),
    )

    def __init__(self, commands: Callable[[], Sequence[AnyCommand]]) -> None:
        self._commands = commands

    def prepare(self, args: Mapping[str, object]) -> None:
        validate(self.name, self.params, args)  # no parameters: anything given is refused

    def run(self, args: None, sink: Sink, flow: Flow = UNLIMITED) -> Deferred[Result]:
        return self.run_as(ANONYMOUS, args, sink, flow)

    def run_as(
        self, identity: Identity, args: None, sink: Sink, flow: Flow = UNLIMITED
    ) -> Deferred[Result]:
        """The commands ``identity`` may run (all, without a scope)."""
        scope = identity.scope
        commands = [c for c in self._commands() if scope.may_run(c.name)]
        width = min(max(len(c.usage) for c in commands), HELP_COLUMN)
        return succeed(
            Result(
                command=self.name,
                data={
                    "commands": [
                        {
                            "name": c.name,
                            "usage": c.usage,
                            "summary": c.summary,
                            "route": c.route,
                            "params": [describe(p) for p in c.params],
                        }
                        for c in commands
                    ]
                },
                text=tuple(line for c in commands for line in help_lines(c, width)),
                summary=f"{len(commands)} commands",
            )
        )


#: Where help's summaries start; a longer usage gets its summary on the next line.
HELP_COLUMN = 46


def help_lines(command: AnyCommand, width: int) -> tuple[str, ...]:
    if len(command.usage) <= width:
        return (f"{command.usage.ljust(width)}  {command.summary}",)
    return (command.usage, f"{'':{width}}  {command.summary}")


def format_duration(seconds: float) -> str:
    total = int(seconds)
    days, rem = divmod(total, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


COUNTS_SCHEMA = {
    "type": "object",
    "properties": {
        "in_use": {"type": "integer"},
        "served": {"type": "integer"},
        "refused": {"type": "integer"},
    },
    "required": ["in_use", "served", "refused"],
}


class StatsCommand(Command[None]):
    name = "stats"
    summary = "clients in use and refused, per transport; uptime"
    timeout = 5.0
    metered = False  # monitoring keeps working when the quota is full
    result_fields = (
        Field(
            "clients",
            {
                "type": "object",
                "properties": {
                    "in_use": {"type": "integer"},
                    "max": {"type": "integer"},
                    "max_per_ip": {"type": "integer"},
                    "by_transport": {"type": "object", "additionalProperties": COUNTS_SCHEMA},
                },
                "required": ["in_use", "max", "max_per_ip", "by_transport"],
            },
            "quota slots in use, served and refused, in all and per transport",
        ),
        Field("uptime_seconds", {"type": "number"}, "seconds since start"),
        Field(
            "cluster",
            {
                "type": "object",
                "properties": {
                    "state": {"enum": ["up", "down"]},
                    "processes": {"type": "integer"},
                    "in_use": {"type": "integer"},
                    "allotted": {"type": "integer"},
                    "allotted_here": {"type": "integer"},
                    "problem": {"type": "string"},
                },
                "required": ["state", "processes", "in_use", "allotted", "allotted_here"],
            },
            "with [cluster] redis: the quota across every gateway process (clients in use "
            "as of each one's last report; places allotted, with the spare ones); "
            "clients above are this process's own",
            required=False,
        ),
    )

    def __init__(self, quota: Quota, clock: IReactorTime) -> None:
        self._quota = quota
        self._clock = clock
        self._started = clock.seconds()

    def prepare(self, args: Mapping[str, object]) -> None:
        validate(self.name, self.params, args)  # no parameters: anything given is refused

    def run(self, args: None, sink: Sink, flow: Flow = UNLIMITED) -> Deferred[Result]:
        snap = self._quota.snapshot()
        uptime = self._clock.seconds() - self._started

        def per(counts: Mapping[str, int]) -> str:
            return ", ".join(f"{t} {n}" for t, n in counts.items())

        data: dict[str, Any] = {
            "clients": {
                "in_use": snap.total_in_use,
                "max": snap.max_clients,
                "max_per_ip": snap.max_per_ip,
                "by_transport": {
                    t: {
                        "in_use": snap.in_use[t],
                        "served": snap.granted[t],
                        "refused": snap.refused[t],
                    }
                    for t in snap.in_use
                },
            },
            "uptime_seconds": round(uptime, 3),
        }
        text: tuple[str, ...] = (
            f"clients: {snap.total_in_use}/{snap.max_clients} in use ({per(snap.in_use)})",
            f"served: {sum(snap.granted.values())} ({per(snap.granted)})",
            f"refused: {sum(snap.refused.values())} ({per(snap.refused)})",
            f"uptime: {format_duration(uptime)}",
        )
        summary = f"{snap.total_in_use} of {snap.max_clients} clients in use"
        cluster = snap.cluster
        if cluster is not None:
            data["cluster"] = dict(cluster)
            shared = (
                f"cluster: {cluster['in_use']}/{snap.max_clients} in use across "
                f"{cluster['processes']} processes, {cluster['allotted']} allotted "
                f"({cluster['allotted_here']} here); redis {cluster['state']}"
            )
            problem = cluster.get("problem")
            text = (*text[:3], shared + (f" ({problem})" if problem else ""), text[3])
            summary = f"{summary} here; {cluster['in_use']} across the cluster"
        return succeed(Result(command=self.name, data=data, text=text, summary=summary))


class ExitCommand(Command[None]):
    name = "exit"
    summary = "close this connection"
    timeout = 5.0
    on_http = False  # it ends a connection; an HTTP request has none to end

    def parse(self, rest: str) -> Mapping[str, object]:
        return {}

    def prepare(self, args: Mapping[str, object]) -> None:
        return None

    def run(self, args: None, sink: Sink, flow: Flow = UNLIMITED) -> Deferred[Result]:
        return succeed(Result(command=self.name, close=True))
