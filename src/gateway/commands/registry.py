"""The commands the gateway serves, and the one way its CommandService is built.

``app.py`` and the tests both build the service here, so the two cannot drift
apart.  Adding a command is a module in this package and a line in
:func:`configured_commands` (or :func:`build_service` for one that needs no
configuration).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorProcess, IReactorTime

from gateway.commands.builtin import ExitCommand, HelpCommand, StatsCommand
from gateway.commands.comphash import ComphashCommand
from gateway.commands.declared import ProgramCommand, declared_commands
from gateway.commands.follow import Followers
from gateway.commands.hashworker import Workers
from gateway.commands.lastlog import LastlogCommand, source_from_config
from gateway.config import Config
from gateway.core.command import AnyCommand
from gateway.core.quota import Quota
from gateway.core.ratelimit import RateLimiter
from gateway.core.service import CommandService

RunInThread = Callable[[Callable[[], Any]], "Deferred[Any]"]


@dataclass(frozen=True)
class Runners:
    """How commands reach beyond the reactor thread: injected, so tests run them in line.

    ``read_log`` and ``read_file`` run a function in a thread pool (two pools,
    so that log reads never queue behind long hashes); ``call_from_thread``
    hands a call back to the reactor; ``spawner`` starts log commands.
    """

    read_log: RunInThread
    read_file: RunInThread
    call_from_thread: Callable[..., None]
    spawner: IReactorProcess
    #: The readers of followed logs (kept across reloads); none: no follow.
    followers: Followers | None = None
    #: Processes hashing a tree's small files (kept across reloads); none: threads.
    hash_workers: Workers | None = None
    #: The reactor's clock: a log file is looked at once per turn (none: every time).
    clock: IReactorTime | None = None


def configured_commands(
    config: Config, runners: Runners, own_log: Callable[[int], list[str]] | None = None
) -> list[AnyCommand]:
    """The commands whose behaviour the configuration sets (replaced on SIGHUP),
    then the ones the configuration declares (``[commands.<name>]``)."""
    lastlog = config.lastlog
    comphash = config.comphash
    built_in: list[AnyCommand] = [
        LastlogCommand(
            source_from_config(
                lastlog.source, runners.read_log, runners.spawner, own_log, runners.clock
            ),
            lastlog.default_lines,
            lastlog.max_lines,
            lastlog.timeout,
            runners.followers,
            config.follow.queue_lines,
        ),
        ComphashCommand(
            comphash.allowed_roots,
            comphash.algorithms,
            comphash.default_algorithm,
            comphash.chunk_size,
            comphash.timeout,
            runners.read_file,
            runners.call_from_thread,
            comphash.threads,
            comphash.workers,
            comphash.max_files,
            comphash.max_bytes,
            comphash.max_manifest_bytes,
            runners.hash_workers,
        ),
    ]
    return built_in + list(declared_commands(config.commands, runners.spawner))


def build_service(
    config: Config,
    clock: IReactorTime,
    quota: Quota,
    runners: Runners,
    limiter: RateLimiter | None = None,
    own_log: Callable[[int], list[str]] | None = None,
    extra: Sequence[AnyCommand] = (),
) -> CommandService:
    """The command service with every command the gateway serves (and ``extra``)."""
    service = CommandService([], clock, limiter)
    if runners.followers is not None:
        runners.followers.max_watchers = config.quota.max_followers
        service.metrics.sources.append(runners.followers.samples)
    for command in configured_commands(config, runners, own_log):
        service.add(command)
    service.add(HelpCommand(lambda: service.commands))
    service.add(StatsCommand(quota, clock))
    service.add(ExitCommand())
    for command in extra:
        service.add(command)
    return service


def reconfigure(
    service: CommandService,
    config: Config,
    runners: Runners,
    own_log: Callable[[int], list[str]] | None = None,
) -> None:
    """Swap in the configured commands for ``config``; runs in flight go on.

    Declared commands that the new config no longer has stop being served;
    new ones are added.
    """
    followers = runners.followers
    if followers is not None:
        followers.replay = config.follow.replay_lines  # for feeds started from now
        followers.max_watchers = config.quota.max_followers
    wanted = configured_commands(config, runners, own_log)
    names = {c.name for c in wanted}
    for command in service.commands:
        if isinstance(command, ProgramCommand) and command.name not in names:
            service.remove(command.name)
    for command in wanted:
        if service.get(command.name) is None:
            service.add(command)
        else:
            service.replace(command)
        if isinstance(command, LastlogCommand) and followers is not None:
            path, description = command.follow_target()
            followers.move(path, description)  # follows go where the new source is
