"""What a running command hands to a front-end: small immutable events.

A command produces, in order: zero or more :class:`Lines` and
:class:`Progress` events, then exactly one :class:`Result` or :class:`Error`.
A followed log may also say :class:`Following` (live from here),
:class:`Dropped` (lines this client lost) and :class:`Gap` (a resume from a
cursor too old).  Any command may add a :class:`Notice` for people.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Lines:
    """Output lines (without line endings), in order; a followed log's lines
    carry their ``cursors`` (one each), where a client may resume."""

    lines: tuple[str, ...]
    cursors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Following:
    """What comes next is live: the command runs until the client stops it."""


@dataclass(frozen=True)
class Dropped:
    """``count`` lines were dropped for this client: it did not read them in time."""

    count: int


@dataclass(frozen=True)
class Gap:
    """The resume cursor was older than what is kept: ``missing`` lines may be
    lost (``None``: unknown, the cursor is from an earlier run of the reader)."""

    missing: int | None


@dataclass(frozen=True)
class Notice:
    """Something a person should know that is not output (a file skipped):
    shown to people (a line client, the console), kept out of a manifest
    that ``text/plain`` or the JSON ``lines`` carry."""

    text: str


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units (bytes for a hash) processed so far; a
    command working through many files also says how many of them."""

    done: int
    total: int
    files_done: int | None = None
    files_total: int | None = None


@dataclass(frozen=True)
class Result:
    """The final value of a command.

    ``data`` is the structured answer (JSON front-ends; its fields are the
    command's declared ``result_fields``), ``text`` the lines a line-oriented
    front-end prints, ``body`` the lines of a plain-text HTTP answer when they
    differ from ``text``, ``summary`` one line a client may show beside the
    output ("3 lines from /var/log/syslog"), ``close`` asks the front-end to
    end the connection (``exit``).
    """

    command: str
    data: Mapping[str, Any] = field(default_factory=dict)
    text: tuple[str, ...] = ()
    body: tuple[str, ...] | None = None
    summary: str = ""
    close: bool = False

    @property
    def plain(self) -> tuple[str, ...]:
        return self.text if self.body is None else self.body

    def document(self) -> dict[str, Any]:
        """The JSON form: the declared fields, then ``text`` and ``summary``.

        Every JSON result carries its text form (:attr:`plain`: the lines
        ``curl`` reads, after any streamed lines), so a client can show any
        command's answer without knowing the command.
        """
        return {**self.data, "text": list(self.plain), "summary": self.summary}


@dataclass(frozen=True)
class Error:
    """The command failed with a stable ``code`` (see :mod:`gateway.core.errors`)."""

    code: str
    message: str
    retry_after: int | None = None


Event = Lines | Progress | Result | Error | Following | Dropped | Gap | Notice
Sink = Callable[[Event], None]
