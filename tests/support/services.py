"""The command service built as the gateway builds it, with in-line runners."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from twisted.internet.task import Clock

from gateway.commands.lastlog import LastlogCommand, LogSource
from gateway.commands.registry import Runners, build_service
from gateway.config import ComphashConfig, Config, LastlogConfig
from gateway.core.command import AnyCommand
from gateway.core.quota import Quota
from gateway.core.ratelimit import RateLimiter
from gateway.core.service import CommandService

from .fakes import FakeSpawner, call_now, run_now


def in_line_runners() -> Runners:
    """Thread pools and the process spawner replaced by in-line fakes."""
    return Runners(run_now, run_now, call_now, FakeSpawner().reactor)


def make_service(
    tmp_path: Path | None,
    clock: Clock,
    quota: Quota,
    *,
    log_text: str | bytes | None = None,
    roots: Sequence[str] = ("/",),
    algorithms: Sequence[str] = ("sha1", "md5"),
    source: LogSource | None = None,
    limiter: RateLimiter | None = None,
    extra: Sequence[AnyCommand] = (),
) -> CommandService:
    """The gateway's commands over ``tmp_path/syslog`` (written from ``log_text``
    when given; ``/dev/null`` without a ``tmp_path``), hashing under ``roots``;
    ``source`` replaces the log source."""
    log = tmp_path / "syslog" if tmp_path is not None else Path("/dev/null")
    if tmp_path is None:
        pass
    elif isinstance(log_text, bytes):
        log.write_bytes(log_text)
    elif log_text is not None:
        log.write_text(log_text)
    elif not log.exists():
        log.write_text("".join(f"entry {i}\n" for i in range(20)))
    config = dataclasses.replace(
        Config(),
        lastlog=LastlogConfig(source=str(log)),
        comphash=ComphashConfig(
            allowed_roots=tuple(roots),
            algorithms=tuple(algorithms),
            default_algorithm=algorithms[0],
            timeout=60.0,
        ),
    )
    config.check()
    service = build_service(config, clock, quota, in_line_runners(), limiter, extra=extra)
    if source is not None:
        lastlog = config.lastlog
        service.replace(
            LastlogCommand(source, lastlog.default_lines, lastlog.max_lines, lastlog.timeout)
        )
    return service
