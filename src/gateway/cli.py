"""The ``gateway`` command (also ``python -m gateway``)."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.logger import globalLogBeginner

from gateway import __version__
from gateway.config import Config, ConfigError, load, redacted, unsafe_listeners
from gateway.logfmt import Logger
from gateway.tokens import TokenError, new_token

#: flag -> config key, for the common keys.
FLAG_KEYS: dict[str, str] = {
    "tcp": "tcp.listen",
    "http": "http.listen",
    "max_clients": "quota.max_clients",
    "log_format": "log.format",
    "workers": "cluster.workers",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gateway",
        description="Remote-admin daemon: lastlog and comphash over netcat, HTTP and WebSocket.",
        epilog="gateway token new NAME: make a named token and the config block that accepts it.",
    )
    p.add_argument("--config", "-c", metavar="FILE", help="TOML config file (default: built-in)")
    p.add_argument("--tcp", metavar="ENDPOINT", help="line server listener, e.g. tcp:9999")
    p.add_argument("--http", metavar="ENDPOINT", help="HTTP/WebSocket listener, e.g. tcp:8080")
    p.add_argument("--max-clients", metavar="N", help="client quota across all transports")
    p.add_argument("--log-format", choices=("text", "json"), help="log output format")
    p.add_argument(
        "--workers",
        metavar="N",
        help="N processes accepting on the same listeners (needs [cluster] redis)",
    )
    # A worker of --workers: the supervisor's listening sockets, key=fd,...
    p.add_argument("--inherited-listeners", help=argparse.SUPPRESS)
    p.add_argument(
        "--allow-remote-without-auth",
        action="store_true",
        help="listen beyond loopback even though no auth token is configured (unsafe)",
    )
    p.add_argument(
        "--check-config", action="store_true", help="print the effective config and exit"
    )
    p.add_argument(
        "--print-config-example",
        action="store_true",
        help="print the documented config file (every key, with its default) and exit",
    )
    p.add_argument(
        "--print-systemd-unit",
        action="store_true",
        help="print an example systemd unit for the gateway and exit",
    )
    p.add_argument(
        "--print-systemd-socket",
        action="store_true",
        help="print an example systemd socket unit (socket activation) and exit",
    )
    p.add_argument("--version", action="version", version=f"gateway {__version__}")
    return p


def shipped(name: str) -> str:
    """A file shipped with the package (``data/``): the documented config, the unit."""
    from importlib import resources

    return (resources.files("gateway") / "data" / name).read_text(encoding="utf-8")


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    path = args.config or environ.get("GATEWAY_CONFIG") or None
    flags = {key: getattr(args, name) for name, key in FLAG_KEYS.items()}
    return load(path, environ, flags)


def unsafe_start(config: Config) -> str | None:
    """Why starting would expose the gateway without auth, or ``None``."""
    exposed = unsafe_listeners(config)
    if not exposed:
        return None
    return (
        f"refusing to listen beyond loopback without auth tokens ({'; '.join(exposed)}): "
        "set [auth] tokens or GATEWAY_TOKEN, listen on 127.0.0.1, "
        "or pass --allow-remote-without-auth"
    )


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    reactor: Any = None,
) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["token"]:
        return token_command(argv[1:])
    args = parser().parse_args(argv)
    for flag, name in (
        (args.print_config_example, "gateway.toml"),
        (args.print_systemd_unit, "gateway.service"),
        (args.print_systemd_socket, "gateway.socket"),
    ):
        if flag:
            sys.stdout.write(shipped(name))
            return 0
    environ = os.environ if environ is None else environ
    try:
        config = config_from_args(args, environ)
        refusal = None if args.allow_remote_without_auth else unsafe_start(config)
    except ConfigError as e:
        print(f"gateway: {e}", file=sys.stderr)
        return 2
    if refusal:
        print(f"gateway: {refusal}", file=sys.stderr)
        return 2
    if args.check_config:
        import json

        print(json.dumps(redacted(config), indent=2))
        return 0
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor

    def loader() -> Config:
        fresh = config_from_args(args, os.environ)
        refusal = None if args.allow_remote_without_auth else unsafe_start(fresh)
        if refusal:
            raise ConfigError("", refusal)
        return fresh

    if args.inherited_listeners is None and config.cluster.workers > 1:
        return supervise(config, argv)
    inherited = inherited_listeners(args.inherited_listeners)
    return run(config, reactor, loader, inherited)


def inherited_listeners(text: str | None) -> dict[str, int]:
    """``tcp.listen=3,http.listen=4`` -> ``{"tcp.listen": 3, "http.listen": 4}``."""
    if not text:
        return {}
    pairs = (part.partition("=") for part in text.split(","))
    return {key: int(fd) for key, _, fd in pairs}


def supervise(config: Config, argv: Sequence[str]) -> int:
    from gateway.logfmt import make_observer
    from gateway.supervisor import Supervisor

    globalLogBeginner.beginLoggingTo(
        [make_observer(config.log.format, config.log.level, sys.stdout)],
        redirectStandardIO=False,
    )
    return Supervisor(config, argv).run()


def token_command(argv: Sequence[str]) -> int:
    """``gateway token new NAME``: a fresh token, shown once, and its config block."""
    p = argparse.ArgumentParser(
        prog="gateway token",
        description="Make a named token: the token is printed once; the config keeps its SHA-256.",
    )
    p.add_argument("action", choices=("new",))
    p.add_argument("name", help="what logs and messages call its holder, e.g. dashboard")
    args = p.parse_args(argv)
    try:
        token, block = new_token(args.name)
    except TokenError as e:
        print(f"gateway token: {e}", file=sys.stderr)
        return 2
    print(f"# The token for {args.name} (shown only now; give it to its holder):")
    print(f"# {token}")
    print("# Paste this into the config (or the token file) and reload (SIGHUP):")
    sys.stdout.write(block)
    return 0


def raise_open_files_limit() -> None:
    """Every client is a file descriptor: allow as many as the system lets us."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, OSError, ValueError):
        pass


def tune_gc() -> None:
    """Never look at what start-up made again, and make full collections rarer.

    A full collection walks every object the daemon holds; with a thousand
    followers that took about 100 ms on a small machine, a pause every client
    sees.  Start-up's objects (modules, the configuration) are frozen out of
    collections for good, and a full collection is considered after 20 middle
    ones instead of 10.  The young generation keeps Python's 700: collected
    later, cyclic garbage (Twisted makes some per request) piles up and the
    daemon's memory grows under a storm of clients.
    """
    gc.freeze()
    young, _, old = gc.get_threshold()
    gc.set_threshold(young, 20, old)


def run(
    config: Config,
    reactor: Any,
    loader: Callable[[], Config] | None = None,
    inherited: Mapping[str, int] | None = None,
) -> int:
    from gateway.app import Gateway
    from gateway.logfmt import TurnFlush, make_observer

    try:
        gateway = Gateway(config, reactor, loader, inherited)
    except ConfigError as e:
        print(f"gateway: {e}", file=sys.stderr)
        return 2
    raise_open_files_limit()
    # The log's own buffered stream (whatever PYTHONUNBUFFERED says), flushed
    # once per reactor turn: a line per command costs no system call of its own.
    out = open(  # noqa: SIM115 (open for the daemon's life)
        sys.stdout.fileno(), "w", buffering=1 << 16, encoding="utf-8", closefd=False
    )
    flush = TurnFlush(out, reactor.callLater)
    globalLogBeginner.beginLoggingTo(
        [make_observer(config.log.format, config.log.level, out, flush)],
        redirectStandardIO=False,
    )
    reactor.callWhenRunning(stop_once_on_signals, reactor)
    reactor.callWhenRunning(gateway.startService)
    reactor.callWhenRunning(tune_gc)
    reactor.addSystemEventTrigger("before", "shutdown", gateway.stopService)
    reactor.run()
    out.flush()
    return gateway.exit_status


def stop_once_on_signals(reactor: Any) -> None:
    """SIGTERM and SIGINT stop the daemon once; a second one while it shuts down
    (Ctrl+C twice, a supervisor's repeat) is noted, not a traceback."""
    import signal

    log = Logger(namespace="gateway.cli")
    stopping = [False]

    def stop() -> None:
        if reactor.running:
            reactor.stop()

    def handler(signum: int, frame: object) -> None:
        if stopping[0]:
            reactor.callFromThread(
                log.info,
                "{signal} again: already shutting down",
                signal=signal.Signals(signum).name,
            )
            return
        stopping[0] = True
        reactor.callFromThread(
            log.info, "Received {signal}, shutting down.", signal=signal.Signals(signum).name
        )
        reactor.callFromThread(stop)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)


def entry() -> None:
    sys.exit(main())
