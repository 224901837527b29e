"""The audit trail's writer: records go to a file or the journal from a
thread of their own, so the reactor never waits on a disk.

:meth:`AuditLog.record` only queues (a bounded queue: when it is full, the
record is counted as lost, never waited for).  The writer thread appends
what is queued, in order.  A failed write (a full disk, a journal that is
gone) is counted and logged (once, then once a minute), and makes
:attr:`AuditLog.problem` say so, which ``/healthz`` reports as ``degraded``,
until a write succeeds again.  :meth:`reopen` (SIGHUP) opens the file again,
for logrotate.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service

from gateway.core.audit import Record, journal_datagram, journal_fields, json_line
from gateway.core.metrics import Family
from gateway.logfmt import Logger

log = Logger(namespace="gateway.audit")

#: Records waiting to be written, at most; more are lost (and counted).
QUEUE_RECORDS = 10_000
#: Records are handed to the writer thread together, at most this often
#: (seconds): one wake-up of the thread per batch, not per command.
HAND_OVER_SECONDS = 0.05
#: The journal's socket for structured entries.
JOURNAL_SOCKET = "/run/systemd/journal/socket"
#: Seconds between two log lines about failing writes.
COMPLAIN_EVERY = 60.0

_STOP = object()
_REOPEN = object()


class FileTarget:
    """Appends JSON lines to ``path`` (created 0640 if missing)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.description = path
        self._fd: int | None = None

    def open(self) -> None:
        self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    @staticmethod
    def encode(records: Sequence[Record]) -> bytes:
        """The lines for ``records`` (made in the reactor thread, so the
        writer thread holds the GIL only to start its write)."""
        return b"".join(map(json_line, records))

    def write(self, data: Any) -> None:
        if self._fd is None:
            self.open()
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class JournalTarget:
    """Sends each record to journald with structured ``GATEWAY_*`` fields."""

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self.description = "the journal"
        self._sock: socket.socket | None = None

    def open(self) -> None:
        self.close()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    @staticmethod
    def encode(records: Sequence[Record]) -> list[bytes]:
        return [journal_datagram(journal_fields(r)) for r in records]

    def write(self, datagrams: Any) -> None:
        if self._sock is None:
            self.open()
        assert self._sock is not None
        for datagram in datagrams:
            self._sock.sendto(datagram, self.path)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


Target = FileTarget | JournalTarget


def target_for(setting: str) -> Target:
    """``[audit] file``: ``"journal"`` or an absolute path."""
    return JournalTarget() if setting == "journal" else FileTarget(setting)


class AuditLog(Service):
    def __init__(
        self,
        target: Target,
        call_in_reactor: Callable[..., Any],
        seconds: Callable[[], float],
        max_queue: int = QUEUE_RECORDS,
        call_later: Callable[..., Any] | None = None,
    ) -> None:
        """``call_in_reactor`` runs a call in the reactor thread (for logging);
        ``seconds`` is the clock, for spacing complaints; ``call_later``
        (the reactor's) gathers records for :data:`HAND_OVER_SECONDS` before
        they go to the thread (without it, each goes at once)."""
        self.target = target
        #: What encodes the records handed over now (the writer switches to
        #: a new target in the queue's order).
        self._encoder: Target = target
        self._call = call_in_reactor
        self._seconds = seconds
        self._call_later = call_later
        self._max = max_queue
        #: Records gathered in the reactor thread, not yet handed over.
        self._gathered: list[Record] = []
        self._handing: Any = None
        self._queue: queue.Queue[object] = queue.Queue()
        self._waiting = 0  # records handed over and not yet written
        self._thread: threading.Thread | None = None
        self.written = 0
        self.failed = 0
        self.lost = 0
        #: Why the last write failed, until one succeeds (``None``: all is well).
        self.error: str | None = None
        self._complained = -COMPLAIN_EVERY

    def samples(self) -> list[Family]:
        """The audit metrics: records written, failed and lost; failing now."""
        return [
            (
                "gateway_audit_records_total",
                "counter",
                "Audit records, by what became of them (written, failed, lost).",
                [
                    ({"state": "written"}, self.written),
                    ({"state": "failed"}, self.failed),
                    ({"state": "lost"}, self.lost),
                ],
            ),
            (
                "gateway_audit_failing",
                "gauge",
                "1 while the audit log cannot be written.",
                [({}, 1 if self.error is not None else 0)],
            ),
        ]

    @property
    def problem(self) -> str | None:
        """What ``/healthz`` reports, if anything."""
        if self.error is not None:
            return f"audit log failing ({self.target.description}: {self.error})"
        return None

    def record(self, rec: Record) -> None:
        """Queue ``rec`` (an entry is made a record when written); never waits."""
        if self._waiting + len(self._gathered) >= self._max:
            self.lost += 1
            self._complain("audit queue full: records lost")
            return
        self._gathered.append(rec)
        if self._call_later is None:
            self._hand_over()
        elif self._handing is None:
            self._handing = self._call_later(HAND_OVER_SECONDS, self._hand_over)

    def _hand_over(self) -> None:
        self._handing = None
        batch, self._gathered = self._gathered, []
        if batch:
            self._waiting += len(batch)
            # Encoded for the target it will reach: the queue keeps the order
            # of batches and switches.
            self._queue.put((len(batch), self._encoder.encode(batch)))

    def reopen(self, target: Target | None = None) -> None:
        """Open the file again (logrotate moved it), or switch to ``target``."""
        self._hand_over()  # what was gathered goes where it was meant to
        if target is not None:
            self._encoder = target
        self._queue.put((_REOPEN, target))

    def startService(self) -> None:
        super().startService()
        thread = threading.Thread(target=self._run, name="gateway-audit", daemon=True)
        self._thread = thread
        thread.start()

    def stopService(self) -> None:
        super().stopService()
        if self._handing is not None and self._handing.active():
            self._handing.cancel()
        self._hand_over()
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(10)

    # -- the writer thread

    def _run(self) -> None:
        try:
            self.target.open()
        except OSError as e:
            self._failed(0, e)
        while True:
            item = self._queue.get()
            if item is _STOP:
                self.target.close()
                return
            if isinstance(item, tuple) and item[0] is _REOPEN:
                self._reopen(item[1])
                continue
            assert isinstance(item, tuple)
            count: int = item[0]
            self._write(count, item[1])

    def _reopen(self, target: Target | None) -> None:
        self.target.close()
        if target is not None:
            self.target = target
        try:
            self.target.open()
        except OSError as e:
            self._failed(0, e)

    def _write(self, count: int, payload: Any) -> None:
        self._waiting -= count  # (a racy count is fine: it only bounds memory)
        try:
            self.target.write(payload)
        except OSError as e:
            self._failed(count, e)
            return
        self.written += count
        if self.error is not None:
            self.error = None
            self._call(
                log.info, "audit log writing again to {target}", target=self.target.description
            )

    def _failed(self, count: int, e: OSError) -> None:
        self.failed += count
        self.error = e.strerror or str(e)
        self._complain(f"cannot write the audit log to {self.target.description}: {self.error}")

    def _complain(self, message: str) -> None:
        now = self._seconds()
        if now - self._complained < COMPLAIN_EVERY:
            return
        self._complained = now
        self._call(
            log.error,
            "{message} ({failed} records not written, {lost} lost so far)",
            message=message,
            failed=self.failed,
            lost=self.lost,
        )
