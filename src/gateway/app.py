"""Wires config, quota, command service and front-ends into one service tree."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, TimeoutError, gatherResults
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from gateway import __version__
from gateway.auditlog import AuditLog, target_for
from gateway.commands.follow import Followers
from gateway.commands.hashworker import Workers
from gateway.commands.lastlog import prime_file
from gateway.commands.registry import Runners, build_service, reconfigure
from gateway.config import Config, ConfigError, TLSConfig
from gateway.frontends.admission import LINGER, Admission
from gateway.frontends.http.openapi import document
from gateway.frontends.http.routes import Console, RestAPI, console_dir
from gateway.frontends.http.site import GuardedSite
from gateway.frontends.line import LineFactory
from gateway.frontends.tls import TLSError, client_cert_endpoint
from gateway.frontends.websocket import GatewayWebSocketFactory, websocket_resource
from gateway.logfmt import Logger, RecentLog

if TYPE_CHECKING:
    from gateway.cluster.shared import Cluster

log = Logger(namespace="gateway.app")

#: Threads reading log files backwards (each read is short and bounded).
LOG_READERS = 2


class ListeningService(Service):
    """Listens on an endpoint while running; ``ready`` fires once listening."""

    def __init__(self, label: str, endpoint: IStreamServerEndpoint, factory: Any) -> None:
        self.label = label
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self.ready: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        super().startService()

        def listening(port: IListeningPort) -> IListeningPort:
            self.port = port
            address: Any = port.getHost()
            where = f"{address.host}:{address.port}" if hasattr(address, "port") else str(address)
            log.info("{label} listening on {where}", label=self.label, where=where)
            return port

        self.endpoint.listen(self.factory).addCallback(listening).chainDeferred(self.ready)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


class ThreadPoolService(Service):
    """Starts a thread pool with the service and stops (joins) it with it."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


class HashWorkersService(Service):
    """Stops the hash worker processes with the daemon."""

    def __init__(self, workers: Workers) -> None:
        self.workers = workers

    def stopService(self) -> None:
        super().stopService()
        self.workers.close()


class ClusterService(Service):
    """Joins the cluster before the listeners listen; leaves it last, giving
    back every place this process held."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def startService(self) -> None:
        super().startService()
        self.cluster.quota.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.cluster.quota.stop()


def cluster_of(config: Config, reactor: Any) -> Cluster | None:
    """The Redis-backed sharing ``[cluster] redis`` asks for, or ``None``."""
    settings = config.cluster
    if not settings.redis:
        return None
    from gateway.cluster.link import read_password
    from gateway.cluster.shared import Cluster

    try:
        password = read_password(os.environ, settings.password_file)
    except OSError as e:
        raise ConfigError(
            "cluster.password_file", f"cannot read {settings.password_file}: {e.strerror}"
        ) from None
    return Cluster(
        reactor,
        settings.redis,
        settings.name,
        settings.lease_ttl,
        settings.timeout,
        settings.on_redis_down,
        config.quota.max_clients,
        config.quota.max_per_ip,
        password,
        settings.tls_ca,
    )


class InheritedEndpoint(AdoptedStreamServerEndpoint):
    """Listens on a socket a supervisor bound (``--workers``), with TLS when
    the listener is ``ssl:``."""

    def __init__(self, reactor: Any, fd: int, tls: Any = None) -> None:
        with socket.socket(fileno=os.dup(fd)) as s:
            family = s.family
        super().__init__(reactor, fd, family)
        self.tls = tls

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        if self.tls is not None:
            factory = TLSMemoryBIOFactory(self.tls, False, factory)
        listening: Deferred[IListeningPort] = super().listen(factory)
        return listening


def endpoint(
    reactor: Any,
    key: str,
    description: str,
    tls: TLSConfig | None = None,
    inherited: Mapping[str, int] | None = None,
) -> IStreamServerEndpoint:
    """Parse an endpoint string, or a ConfigError naming ``key``; an ``ssl:``
    one verifies client certificates when ``tls.client_ca`` is set.  With a
    socket in ``inherited`` under ``key``, listen on it instead (same TLS)."""
    if inherited and key in inherited:
        parsed = endpoint(reactor, key, description, tls)
        # Twisted's SSL4ServerEndpoint keeps its context factory here; plain
        # tcp: and unix: endpoints have none.
        return InheritedEndpoint(
            reactor, inherited[key], getattr(parsed, "_sslContextFactory", None)
        )
    if tls is not None and tls.client_ca and description.strip().lower().startswith("ssl:"):
        try:
            return client_cert_endpoint(
                reactor, description, tls.client_ca, tls.require_client_cert
            )
        except (TLSError, ValueError) as e:
            raise ConfigError(key, f"bad endpoint {description!r}: {e}") from None
    try:
        found: IStreamServerEndpoint = serverFromString(reactor, description)
        return found
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ConfigError(key, f"bad endpoint {description!r}: {e}") from None


class Gateway(MultiService):
    """The whole daemon.  ``ready`` fires when every listener listens."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        loader: Callable[[], Config] | None = None,
        inherited: Mapping[str, int] | None = None,
    ) -> None:
        """``loader`` reads the configuration again, for SIGHUP; ``inherited``:
        listening sockets a supervisor bound (``--workers``), by listener key."""
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.loader = loader
        #: The daemon's own last log lines: what ``lastlog`` shows on a
        #: machine with no system log at all.
        self.recent_log = RecentLog(level=config.log.level)
        #: What is shared with other gateway processes through Redis, if anything.
        self.cluster = cluster = cluster_of(config, reactor)
        #: Who may come in, on what terms: one for every front-end.
        if cluster is None:
            self.admission = admission = Admission.from_config(config, reactor)
        else:
            limits = config.limits
            self.admission = admission = Admission.from_config(
                config,
                reactor,
                cluster.quota,
                cluster.rate_limiter(limits.commands_per_second, limits.command_burst),
            )
            cluster.share_lockouts(admission.auth)
            ClusterService(cluster).setServiceParent(self)
        self.quota = admission.quota
        # Two pools, so that log reads never queue behind long hashes.
        read_log = self._thread_pool("gateway-lastlog", LOG_READERS)
        read_file = self._thread_pool("gateway-comphash", config.comphash.workers)

        self.followers = Followers(reactor, read_log, config.follow.replay_lines, prime_file)
        # A tree's small files go to worker processes when it may use several
        # cores (threads would only hand the interpreter lock back and forth).
        self.hash_workers = Workers()
        HashWorkersService(self.hash_workers).setServiceParent(self)
        self.runners = Runners(
            read_log,
            read_file,
            lambda f, *args: reactor.callFromThread(f, *args),
            reactor,
            self.followers,
            self.hash_workers,
            reactor,
        )
        self.service = build_service(
            config, reactor, self.quota, self.runners, admission.limiter, self.recent_log.tail
        )
        # A token's holder runs each command with its scope as last loaded.
        self.service.identities = admission.auth.current
        self.audit: AuditLog | None = None
        self._set_audit(config.audit.file)
        self.service.metrics.sources.append(
            lambda: self.audit.samples() if self.audit is not None else []
        )

        tcp = config.tcp
        sockets = GatewayWebSocketFactory(
            admission,
            self.service,
            config.websocket,
            secure=config.http.listen.startswith("ssl:"),
        )
        api = RestAPI(
            admission,
            self.service,
            config.http,
            lambda scope: document([c for c in self.service.commands if scope.may_run(c.name)]),
            websocket=websocket_resource(sockets),
            console=Console.load(console_dir()),
        )
        self.api = api
        api.problems = self.problems
        self.sockets = sockets
        self.lines = LineFactory(admission, self.service, tcp)
        self.site = GuardedSite(api.resource(), config.http, reactor)
        self.site.body_limit = self._body_limit
        self.listeners = [
            ListeningService(
                "TCP",
                endpoint(reactor, "tcp.listen", tcp.listen, config.tls, inherited),
                self.lines,
            ),
            ListeningService(
                "HTTP",
                endpoint(reactor, "http.listen", config.http.listen, config.tls, inherited),
                self.site,
            ),
        ]
        for listener in self.listeners:
            listener.setServiceParent(self)

        self.exit_status = 0

    def _set_audit(self, setting: str) -> None:
        """Start, switch or stop the audit trail (``[audit] file``)."""
        audit = self.audit
        if not setting:
            self.service.audit = None
            self.audit = None
            if audit is not None:
                audit.disownServiceParent()  # writes what is queued, then stops
            return
        if audit is None:
            audit = AuditLog(
                target_for(setting),
                self.reactor.callFromThread,
                self.reactor.seconds,
                call_later=self.reactor.callLater,
            )
            # Stopped with the others, once the commands whose records it writes ended.
            audit.setServiceParent(self)
            self.audit = audit
        else:
            changed = target_for(setting) if setting != self.config.audit.file else None
            audit.reopen(changed)  # SIGHUP: the file again (logrotate), or the new one
        self.service.audit = audit.record

    def problems(self) -> list[str]:
        """What makes ``/healthz`` say ``degraded``."""
        audit, cluster = self.audit, self.cluster
        found = [
            audit.problem if audit is not None else None,
            cluster.problem if cluster is not None else None,
        ]
        return [problem for problem in found if problem is not None]

    def reload(self, config: Config) -> None:
        """Apply a new config without dropping anyone (SIGHUP).

        Quota sizes, rate limits, tokens, lastlog and comphash settings, and
        the line, HTTP and WebSocket limits take effect for what starts from
        now on; listen addresses need a restart.  ``config`` must be checked.
        """
        old = self.config
        for key, before, after in (
            ("tcp.listen", old.tcp.listen, config.tcp.listen),
            ("http.listen", old.http.listen, config.http.listen),
            ("comphash.workers", old.comphash.workers, config.comphash.workers),
            ("[cluster]", old.cluster, config.cluster),
        ):
            if before != after:
                log.warn("{key} changed: restart the daemon to apply it", key=key)
        self.admission.reload(config)  # may raise ConfigError first: nothing changed yet
        current = self.admission.auth.current
        self.lines.revoke(current)  # connections whose token was removed
        self.sockets.revoke(current)
        reconfigure(self.service, config, self.runners, self.recent_log.tail)
        self._set_audit(config.audit.file)
        self.lines.settings = config.tcp
        self.site.configure(config.http)
        self.api.settings = config.http
        self.sockets.configure(config.websocket)
        self.config = config
        log.info("Configuration reloaded")

    def _thread_pool(self, name: str, size: int) -> Callable[[Callable[[], Any]], Deferred[Any]]:
        """A pool started and stopped with the daemon; returns its runner."""
        pool = ThreadPool(minthreads=0, maxthreads=size, name=name)
        ThreadPoolService(pool).setServiceParent(self)

        def run_in_thread(f: Callable[[], Any]) -> Deferred[Any]:
            return deferToThreadPool(self.reactor, pool, f)

        return run_in_thread

    def ready(self) -> Deferred[list[Any]]:
        return gatherResults([listener.ready for listener in self.listeners], consumeErrors=True)

    def startService(self) -> None:
        from importlib.metadata import version

        import autobahn.websocket

        nvx = "on" if getattr(autobahn.websocket, "USES_NVX", False) else "off"
        log.info(
            "gateway {version}: Autobahn {autobahn}, native WebSocket helpers (NVX) {nvx}"
            " (AUTOBAHN_USE_NVX=0 turns them off)",
            version=__version__,
            autobahn=version("autobahn"),
            nvx=nvx,
        )
        globalLogPublisher.addObserver(self.recent_log)
        if self.loader is not None:
            # Before listening: a SIGHUP that arrives as soon as the listeners
            # are announced must reload, not end the daemon (SIGHUP's default).
            signal.signal(signal.SIGHUP, self._sighup)
        if threading.current_thread() is threading.main_thread():
            # The kernel sends SIGIO when someone wants to write a file the
            # gateway holds a read lease on (a mapped BLAKE3 hash): the hash
            # asks about its lease between chunks instead (commands/mapped.py).
            signal.signal(signal.SIGIO, signal.SIG_IGN)
        super().startService()
        self.ready().addErrback(self._cannot_listen)

    def _sighup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload_from_source)

    def _body_limit(self, path: str) -> int | None:
        """A POST route's own body limit (``POST /comphash/check``: the manifest)."""
        command = self.service.at_post_route(path)
        return command.post.max_bytes if command is not None and command.post is not None else None

    def reload_from_source(self) -> None:
        """Read the configuration again and apply it; keep the old one if it is bad."""
        assert self.loader is not None
        try:
            self.reload(self.loader())
        except ConfigError as e:
            log.error("Configuration not reloaded, the running one stays: {error}", error=str(e))

    def stopService(self) -> Deferred[None]:
        """Graceful stop: stop accepting, let what runs finish, then go.

        Clients are told (``Server shutting down.`` on the line server, close
        1001 on WebSockets, 503 for new HTTP requests); commands still running
        after ``limits.shutdown_grace`` seconds are cancelled (children killed,
        hashes stopped) so that the thread pools can be joined.
        """
        log.info("Shutting down: no new clients; finishing what runs")
        if self.loader is not None:
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
        self.api.shutting_down = True
        stopped = [listener.stopService() for listener in self.listeners]
        self.lines.shutdown()
        self.sockets.shutdown()
        self.site.stop()
        grace = self.config.limits.shutdown_grace
        self.service.stop_open_ended()  # follows end now (End lastlog), not after the grace
        idle = self.service.when_idle()
        idle.addTimeout(grace, self.reactor)

        def overdue(failure: Failure) -> None:
            failure.trap(TimeoutError)
            log.info("Cancelling what still runs after {grace:g} s", grace=grace)
            self.service.cancel_all()

        def connections_closed(_: object) -> Deferred[None]:
            # What was written must reach the clients before the reactor drops
            # every connection, so wait for them to close (LINGER at most).
            return self._wait_until(
                lambda: (
                    not self.lines.sessions
                    and not self.sockets.sessions
                    and not self.site.connections
                ),
                LINGER + 1.0,
            )

        def finish(_: object) -> Deferred[None]:
            globalLogPublisher.removeObserver(self.recent_log)
            d: Deferred[None] = super(Gateway, self).stopService()
            return d

        waiting = gatherResults([d for d in stopped if d is not None] + [idle.addErrback(overdue)])
        return waiting.addCallback(connections_closed).addCallback(finish)

    def _wait_until(self, done: Callable[[], bool], timeout: float) -> Deferred[None]:
        result: Deferred[None] = Deferred()
        deadline = self.reactor.seconds() + timeout

        def check() -> None:
            if done() or self.reactor.seconds() >= deadline:
                result.callback(None)
            else:
                self.reactor.callLater(0.05, check)

        check()
        return result

    def _cannot_listen(self, failure: Failure) -> None:
        """A listener could not start (port taken, no permission): stop, status 1."""
        value = failure.value
        inner = getattr(value, "subFailure", None)
        if inner is not None:
            value = inner.value
        log.critical("cannot start: {why}", why=str(value))
        self.exit_status = 1
        if self.reactor.running:
            self.reactor.stop()
