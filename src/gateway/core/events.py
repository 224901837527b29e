"""What a running command hands to a front-end: small immutable events.

A command produces, in order: zero or more :class:`Lines` and
:class:`Progress` events, then exactly one :class:`Result` or :class:`Error`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Lines:
    """Output lines (without line endings), in order."""

    lines: tuple[str, ...]


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units (bytes for a hash) processed so far."""

    done: int
    total: int


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


Event = Lines | Progress | Result | Error
Sink = Callable[[Event], None]
