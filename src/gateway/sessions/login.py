"""One connection's way in, shared by the line and the JSON conversation.

A conversation on a gateway with tokens starts logged out.  This object holds
what that costs and bounds it: a place among the connections waiting to log
in (refused when too many wait), the login timer, and the commands sent before
logging in (answered ``Authentication required.``, rate limited, logged once,
and the connection closed after a few).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from gateway.core.auth import MAX_UNAUTHENTICATED_LINES, REQUIRED, TOO_MANY_WAITING, Authenticator
from gateway.core.command import Client
from gateway.core.errors import CommandError
from gateway.core.ratelimit import RateLimiter
from gateway.core.scope import Identity, no_longer_accepted
from gateway.logfmt import Logger


class Login:
    log = Logger(namespace="gateway.sessions.login")
    __slots__ = (
        "_held",
        "_identity",
        "_on_timeout",
        "_strikes",
        "_timeout",
        "_timer",
        "auth",
        "authenticated",
        "clock",
        "peer",
    )

    def __init__(
        self,
        auth: Authenticator | None,
        peer: str,
        clock: IReactorTime,
        timeout: float,
        on_timeout: Callable[[], None],
        authenticated: bool = False,
    ) -> None:
        """``auth`` ``None`` or disabled: nobody needs to log in.  ``on_timeout``
        is called if the client has not logged in after ``timeout`` seconds."""
        self.auth = auth if auth is not None and auth.enabled else None
        self.peer = peer
        self.clock = clock
        self.authenticated = self.auth is None or authenticated
        self._timeout = timeout
        self._on_timeout = on_timeout
        self._timer: IDelayedCall | None = None
        self._held = False
        self._identity: Identity | None = None
        self._strikes = 0

    def begin(self) -> CommandError | None:
        """The client is admitted: take a waiting place and start the timer.

        Returns the refusal to send (and close on) when too many wait.
        """
        if self.authenticated or self.auth is None:
            return None
        if not self.auth.begin_login(self.peer):
            self.log.info("Too many clients waiting to log in; refusing {peer}", peer=self.peer)
            return CommandError("quota_exceeded", TOO_MANY_WAITING)
        self._held = True
        if self._timeout:
            self._timer = self.clock.callLater(self._timeout, self._expired)
        return None

    def _expired(self) -> None:
        self._timer = None
        if not self.authenticated:
            self._on_timeout()

    def refuse(self, limiter: RateLimiter | None) -> tuple[CommandError, bool]:
        """A command before logging in: the error to answer, and whether to close."""
        self._strikes += 1
        if self._strikes == 1:  # one log line per client, however much it sends
            self.log.info("Command from {peer} before logging in: refused", peer=self.peer)
        try:
            if limiter is not None:
                limiter.take(self.peer)
        except CommandError as e:
            return e, True
        if self._strikes >= MAX_UNAUTHENTICATED_LINES:
            self.log.info("Closing {peer}: too many commands before logging in", peer=self.peer)
            return CommandError("unauthorized", REQUIRED), True
        return CommandError("unauthorized", REQUIRED), False

    def succeeded(self) -> None:
        """The client presented a valid token."""
        self.authenticated = True
        self.end()

    def claim(self, identity: Identity) -> CommandError | None:
        """Hold one of ``identity``'s places while connected (its
        ``max_clients``); the refusal to send, and close on, if all are held."""
        if self.auth is None:
            return None
        refusal = self.auth.hold(identity)
        if refusal is None:
            self._identity = identity
        else:
            self.log.info("{peer}: {message}; closing", peer=self.peer, message=refusal.message)
        return refusal

    def leave(self) -> None:
        """The connection ends: its waiting place and its identity's place go back."""
        self.end()
        identity, self._identity = self._identity, None
        if identity is not None and self.auth is not None:
            self.auth.release(identity)

    def end(self) -> None:
        """Give back the waiting place and stop the timer (logged in, or gone)."""
        if self._held and self.auth is not None:
            self._held = False
            self.auth.end_login(self.peer)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def revocation(
    client: Client, current: Callable[[Identity], Identity | None]
) -> CommandError | None:
    """The error to close ``client`` with if a reload removed who it proved
    to be (``current`` says who it is now), logged; else ``None``."""
    identity = client.identity
    if identity.how == "none" or current(identity) is not None:
        return None
    Login.log.info("Closing {peer}: {who} was removed", peer=client.peer, who=identity.shown)
    return no_longer_accepted(identity)
