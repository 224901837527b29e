"""twistd plugin: ``twistd -n gateway --config FILE``."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters: ClassVar[list[list[str | None]]] = [
        ["config", "c", None, "TOML config file (default: built-in)"],
        ["tcp", None, None, "line server listener, e.g. tcp:9999"],
        ["http", None, None, "HTTP/WebSocket listener, e.g. tcp:8080"],
        ["max-clients", None, None, "client quota across all transports"],
    ]

    optFlags: ClassVar[list[list[str | None]]] = [
        [
            "allow-remote-without-auth",
            None,
            "listen beyond loopback even though no auth token is configured (unsafe)",
        ],
    ]

    def postOptions(self) -> None:
        from gateway.cli import unsafe_start
        from gateway.config import ConfigError, load

        flags = {
            "tcp.listen": self["tcp"],
            "http.listen": self["http"],
            "quota.max_clients": self["max-clients"],
        }
        path = self["config"] or os.environ.get("GATEWAY_CONFIG") or None
        try:
            config = load(path, os.environ, flags)
            refusal = None if self["allow-remote-without-auth"] else unsafe_start(config)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        if refusal:
            raise usage.UsageError(refusal)
        self["gateway-config"] = config

        def loader() -> Any:
            fresh = load(path, os.environ, flags)
            refusal = None if self["allow-remote-without-auth"] else unsafe_start(fresh)
            if refusal:
                raise ConfigError("", refusal)
            return fresh

        self["gateway-loader"] = loader


@implementer(IServiceMaker, IPlugin)
class GatewayServiceMaker:
    tapname = "gateway"
    description = "Remote-admin daemon: lastlog and comphash over netcat, HTTP and WebSocket."
    options = Options

    def makeService(self, options: Options) -> Any:
        from twisted.internet import reactor

        from gateway.app import Gateway

        return Gateway(options["gateway-config"], reactor, options["gateway-loader"])


serviceMaker = GatewayServiceMaker()
