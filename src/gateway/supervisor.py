"""``gateway --workers N``: N gateway processes on the same listeners.

The supervisor binds each listener once and hands the listening sockets to
its workers, which accept on them side by side (one accept queue per
listener, shared).  Chosen over SO_REUSEPORT, where each process has its own
queue, because:

- a worker that dies or restarts loses no connection waiting to be accepted
  (with SO_REUSEPORT, the connections queued on its socket are reset);
- it works the same for ``unix:`` listeners and for sockets systemd passes;
- ``tcp:0`` and privileged ports are bound once, by the parent.

The supervisor restarts a worker that exits unexpectedly (waiting longer
each time it fails quickly), forwards SIGHUP (reload) and SIGTERM/SIGINT
(graceful stop: it waits for every worker to finish), and runs no reactor
of its own.  The workers share the client quota through ``[cluster] redis``;
without it, more than one worker is refused (the configuration check).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from gateway.config import Config, split_endpoint
from gateway.logfmt import Logger

log = Logger(namespace="gateway.supervisor")

#: A worker that ends sooner than this after its start is restarted ever later.
QUICK_EXIT = 5.0
MOST_BACKOFF = 30.0


class BindError(Exception):
    """A listener could not be bound (port taken, no permission)."""


def bind(description: str) -> socket.socket:
    """A listening socket for ``description`` (tcp:, tcp6:, ssl:, unix:, systemd:)."""
    kind, positional, named = split_endpoint(description)
    try:
        if kind == "systemd":
            from twisted.internet.endpoints import serverFromString

            found = serverFromString(None, description)
            inherited = socket.socket(fileno=os.dup(found.fileno))
            return inherited
        backlog = int(named.get("backlog", "50"))
        if kind == "unix":
            path = named.get("address") or (positional[0] if positional else "")
            if os.path.exists(path) and not os.path.isdir(path):
                os.unlink(path)  # a stale socket from an earlier run
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(path)
            if "mode" in named:
                os.chmod(path, int(named["mode"], 8))
        else:
            port = int(named.get("port") or positional[0])
            interface = named.get("interface", "").strip("[]")
            six = kind == "tcp6" or ":" in interface
            s = socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((interface or ("::" if six else ""), port))
        s.listen(backlog)
        return s
    except (OSError, ValueError, IndexError, KeyError) as e:
        raise BindError(f"cannot listen on {description}: {e}") from None


def where(s: socket.socket) -> str:
    name = s.getsockname()
    if isinstance(name, tuple):
        host = f"[{name[0]}]" if ":" in name[0] else name[0]
        return f"{host}:{name[1]}"
    return str(name)


class Supervisor:
    """Starts, watches and stops the workers."""

    def __init__(self, config: Config, argv: Sequence[str]) -> None:
        self.config = config
        self.count = config.cluster.workers
        self.argv = without_workers(argv)
        self.sockets: dict[str, socket.socket] = {}
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.started: dict[int, float] = {}
        self.backoff: dict[int, float] = {}
        self.stopping = False
        self.reload = False

    def worker_argv(self) -> list[str]:
        fds = ",".join(f"{key}={s.fileno()}" for key, s in self.sockets.items())
        return [sys.executable, "-m", "gateway", *self.argv, f"--inherited-listeners={fds}"]

    def spawn(self, index: int) -> None:
        fds = [s.fileno() for s in self.sockets.values()]
        env = dict(os.environ)
        env.pop("LISTEN_FDS", None)  # the sockets come through --inherited-listeners
        env.pop("LISTEN_PID", None)
        proc = subprocess.Popen(
            self.worker_argv(),
            pass_fds=fds,
            env=env,
            # Its own process group: a Ctrl+C or a signal to the supervisor's
            # group reaches the workers once, through the supervisor.
            process_group=0,
            preexec_fn=_end_with_parent,
        )
        self.workers[index] = proc
        self.started[index] = time.monotonic()
        log.info("worker {index} started (pid {pid})", index=index, pid=proc.pid)

    def run(self) -> int:
        listeners = {"tcp.listen": self.config.tcp.listen, "http.listen": self.config.http.listen}
        try:
            for key, description in listeners.items():
                self.sockets[key] = bind(description)
        except BindError as e:
            log.critical("cannot start: {why}", why=str(e))
            return 1
        for key, s in self.sockets.items():
            log.info(
                "supervisor: {key} bound on {where}, shared by {n} workers",
                key=key,
                where=where(s),
                n=self.count,
            )

        def on_stop(signum: int, frame: Any) -> None:
            self.stopping = True

        def on_hup(signum: int, frame: Any) -> None:
            self.reload = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        for index in range(self.count):
            self.spawn(index)
        due: dict[int, float] = {}
        while not self.stopping:
            if self.reload:
                self.reload = False
                log.info("SIGHUP: every worker reloads its configuration")
                for proc in self.workers.values():
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGHUP)
            now = time.monotonic()
            for index, proc in list(self.workers.items()):
                status = proc.poll()
                if status is None or index in due:
                    continue
                quick = now - self.started[index] < QUICK_EXIT
                wait = min(MOST_BACKOFF, self.backoff.get(index, 0.5) * 2) if quick else 1.0
                self.backoff[index] = wait if quick else 0.5
                log.error(
                    "worker {index} (pid {pid}) ended with {status}; restarting in {wait:g} s",
                    index=index,
                    pid=proc.pid,
                    status=_status(status),
                    wait=wait,
                )
                due[index] = now + wait
            for index, when in list(due.items()):
                if now >= when and not self.stopping:
                    del due[index]
                    self.spawn(index)
            time.sleep(0.1)
        return self.shutdown()

    def shutdown(self) -> int:
        log.info("supervisor: stopping {n} workers", n=len(self.workers))
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.limits.shutdown_grace + 15
        status = 0
        for index, proc in self.workers.items():
            try:
                code = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker {index} did not stop in time; killing it", index=index)
                proc.kill()
                code = proc.wait()
                status = 1
            if code not in (0, -signal.SIGTERM):
                status = 1
        for s in self.sockets.values():
            s.close()
        log.info("supervisor: every worker has stopped")
        return status


def without_workers(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--workers N`` (a worker is one process)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


def _end_with_parent() -> None:
    """In the worker, before it starts: end (SIGTERM) if the supervisor dies."""
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _status(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"status {code}"
