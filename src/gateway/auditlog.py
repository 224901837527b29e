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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from gateway.core.audit import journal_datagram, journal_fields, json_line

log = Logger(namespace="gateway.audit")

#: Records waiting to be written, at most; more are lost (and counted).
QUEUE_RECORDS = 10_000
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

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        if self._fd is None:
            self.open()
        assert self._fd is not None
        data = b"".join(json_line(r) for r in records)
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

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        if self._sock is None:
            self.open()
        assert self._sock is not None
        for r in records:
            self._sock.sendto(journal_datagram(journal_fields(r)), self.path)

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
    ) -> None:
        """``call_in_reactor`` runs a call in the reactor thread (for logging);
        ``seconds`` is the clock, for spacing complaints."""
        self.target = target
        self._call = call_in_reactor
        self._seconds = seconds
        self._queue: queue.Queue[object] = queue.Queue(max_queue)
        self._thread: threading.Thread | None = None
        self.written = 0
        self.failed = 0
        self.lost = 0
        #: Why the last write failed, until one succeeds (``None``: all is well).
        self.error: str | None = None
        self._complained = -COMPLAIN_EVERY

    @property
    def problem(self) -> str | None:
        """What ``/healthz`` reports, if anything."""
        if self.error is not None:
            return f"audit log failing ({self.target.description}: {self.error})"
        return None

    def record(self, rec: Mapping[str, Any]) -> None:
        """Queue ``rec``; never waits."""
        try:
            self._queue.put_nowait(rec)
        except queue.Full:
            self.lost += 1
            self._complain("audit queue full: records lost")

    def reopen(self, target: Target | None = None) -> None:
        """Open the file again (logrotate moved it), or switch to ``target``."""
        self._queue.put((_REOPEN, target))

    def startService(self) -> None:
        super().startService()
        thread = threading.Thread(target=self._run, name="gateway-audit", daemon=True)
        self._thread = thread
        thread.start()

    def stopService(self) -> None:
        super().stopService()
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
            batch: list[Mapping[str, Any]] = []
            while True:
                if item is _STOP:
                    self._write(batch)
                    self.target.close()
                    return
                if isinstance(item, tuple) and item and item[0] is _REOPEN:
                    self._write(batch)
                    batch = []
                    self._reopen(item[1])
                else:
                    batch.append(item)  # type: ignore[arg-type]
                if len(batch) >= 1000:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._write(batch)

    def _reopen(self, target: Target | None) -> None:
        self.target.close()
        if target is not None:
            self.target = target
        try:
            self.target.open()
        except OSError as e:
            self._failed(0, e)

    def _write(self, batch: list[Mapping[str, Any]]) -> None:
        if not batch:
            return
        try:
            self.target.write(batch)
        except OSError as e:
            self._failed(len(batch), e)
            return
        self.written += len(batch)
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
