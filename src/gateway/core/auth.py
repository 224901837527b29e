"""Token authentication, and slowing down then locking out whoever keeps guessing.

Pure: a clock is passed in.  Tokens are compared in constant time, all of them
every time, so neither the token nor which one matched leaks through timing.
A token never appears in a message this module produces.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from gateway.core.errors import CommandError
from gateway.core.peers import limit_key
from gateway.core.scope import Identity
from gateway.logfmt import Logger

log = Logger(namespace="gateway.auth")

#: A token the gateway accepts: the SHA-256 of the token, and who it proves.
Grant = tuple[bytes, Identity]


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def grants(tokens: Sequence[Grant | str]) -> list[Grant]:
    """Grants; a plain token string proves a full-access identity
    (``tokens[1]``, ``tokens[2]``, ... in the order given)."""
    out: list[Grant] = []
    plain = 0
    for token in tokens:
        if isinstance(token, str):
            plain += 1
            out.append((digest(token), Identity(f"tokens[{plain}]", "token")))
        else:
            out.append(token)
    return out


REQUIRED = "Authentication required."
TOO_MANY_WAITING = "Too many clients waiting to log in; try again later. Bye!"
#: Lines a client may send before logging in; then it is closed.
MAX_UNAUTHENTICATED_LINES = 8


@dataclass
class _Failures:
    count: int = 0
    first: float = 0.0
    locked_until: float = 0.0


class Authenticator:
    def __init__(
        self,
        tokens: Sequence[Grant | str],
        clock: IReactorTime,
        max_failures: int = 5,
        window: float = 60.0,
        lockout: float = 300.0,
        max_pending: int = 5,
        max_pending_per_ip: int = 2,
    ) -> None:
        self._grants = grants(tokens)
        #: Counts token reloads: what was proven before one is proven again.
        self.generation = 0
        #: Who each kind of proof makes a client: by (how, name).
        self._by_name = {("token", identity.name): identity for _, identity in self._grants}
        #: Local users and groups (a unix: listener), verified certificates' names.
        self._uids: dict[int, Identity] = {}
        self._gids: dict[int, Identity] = {}
        self._cns: dict[str, Identity] = {}
        #: Places held per identity (those with a max_clients).
        self._holding: dict[tuple[str, str], int] = {}
        self.clock = clock
        self.configure(max_failures, window, lockout, max_pending, max_pending_per_ip)
        self._failures: dict[str, _Failures] = {}
        #: Told each failed login's address (a lockout shared with other processes).
        self.on_failure: Callable[[str], None] | None = None
        #: Told the address of a login that ended a run of failures.
        self.on_success: Callable[[str], None] | None = None
        self._pending: dict[str, int] = {}
        self._pending_total = 0

    def configure(
        self,
        max_failures: int,
        window: float,
        lockout: float,
        max_pending: int = 5,
        max_pending_per_ip: int = 2,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.max_pending = max_pending
        self.max_pending_per_ip = max_pending_per_ip

    # -- connections that hold a quota slot but have not logged in yet

    def begin_login(self, peer: str) -> bool:
        """A connection from ``peer`` starts waiting to log in; ``False``: too many wait.

        Bounds what clients without a token can hold: at most ``max_pending``
        quota slots in all, ``max_pending_per_ip`` from one address, each for
        at most the login timeout.  Every ``True`` is matched by one
        :meth:`end_login`.
        """
        key = limit_key(peer)
        held = self._pending.get(key, 0)
        if self._pending_total >= self.max_pending or held >= self.max_pending_per_ip:
            return False
        self._pending[key] = held + 1
        self._pending_total += 1
        return True

    def end_login(self, peer: str) -> None:
        """The connection logged in, or left."""
        key = limit_key(peer)
        held = self._pending.get(key, 0)
        if held <= 0:
            return
        self._pending_total -= 1
        if held == 1:
            del self._pending[key]
        else:
            self._pending[key] = held - 1

    @property
    def pending_logins(self) -> int:
        return self._pending_total

    @property
    def enabled(self) -> bool:
        """Whether anyone must prove who it is (tokens, or any other proof configured)."""
        return bool(self._grants or self._uids or self._gids or self._cns)

    def replace_tokens(self, tokens: Sequence[Grant | str]) -> None:
        """New tokens (config reload).  Who is already in keeps its name: its
        next command runs with the scope that name has now (:meth:`current`)."""
        self._grants = grants(tokens)
        self.generation += 1
        self._index()

    def replace_peers(
        self,
        uids: Mapping[int, Identity],
        gids: Mapping[int, Identity],
        cns: Mapping[str, Identity],
    ) -> None:
        """Who a local user, a local group, a certificate's name is (reload)."""
        self._uids, self._gids, self._cns = dict(uids), dict(gids), dict(cns)
        self._index()

    def _index(self) -> None:
        by_name = {("token", identity.name): identity for _, identity in self._grants}
        for identity in (*self._uids.values(), *self._gids.values(), *self._cns.values()):
            by_name[(identity.how, identity.name)] = identity
        self._by_name = by_name

    def current(self, identity: Identity) -> Identity | None:
        """``identity`` as the configuration now says (``None``: removed)."""
        if identity.how == "none":
            return identity
        return self._by_name.get((identity.how, identity.name))

    def unix_peer(self, uid: int, gid: int) -> Identity | None:
        """Who a local peer is: its user's identity, else its group's."""
        return self._uids.get(uid) or self._gids.get(gid)

    def certificate(self, cn: str) -> Identity | None:
        """Who a verified certificate with subject ``cn`` is."""
        return self._cns.get(cn)

    def _match(self, presented: str) -> Identity | None:
        # Every stored digest is compared, in constant time, whichever matches.
        given = digest(presented)
        found: Identity | None = None
        for stored, identity in self._grants:
            if hmac.compare_digest(stored, given):
                found = identity
        return found

    def hold(self, identity: Identity) -> CommandError | None:
        """Take one of ``identity``'s places (its ``max_clients``); the refusal
        if all are held.  Every ``None`` is matched by one :meth:`release`."""
        cap = identity.scope.max_clients
        if cap is None:
            return None
        key = (identity.how, identity.name)
        held = self._holding.get(key, 0)
        if held >= cap:
            return CommandError(
                "quota_exceeded",
                f"{identity.shown} already holds its {cap} "
                f"{'connection' if cap == 1 else 'connections'} (its max_clients)",
            )
        self._holding[key] = held + 1
        return None

    def release(self, identity: Identity) -> None:
        if identity.scope.max_clients is None:
            return
        key = (identity.how, identity.name)
        held = self._holding.get(key, 0) - 1
        if held > 0:
            self._holding[key] = held
        else:
            self._holding.pop(key, None)

    def expired(self, identity: Identity) -> bool:
        expires = identity.scope.expires
        return expires is not None and self.clock.seconds() >= expires

    def locked(self, peer: str) -> float:
        """Seconds ``peer`` must still wait (0 when it may try)."""
        state = self._failures.get(limit_key(peer))
        if state is None:
            return 0.0
        left = state.locked_until - self.clock.seconds()
        return left if left > 0 else 0.0

    def check(self, peer: str, presented: str | None) -> Identity:
        """Who ``presented`` proves ``peer`` to be, else raise.

        ``unauthorized`` for a missing, wrong or expired token (the log says
        which token expired, the client only that it is not accepted);
        ``rate_limited`` while ``peer`` is locked out after too many wrong ones.
        """
        wait = self.locked(peer)
        if wait:
            raise CommandError(
                "rate_limited", f"Too many failed attempts; try again in {math.ceil(wait)} s."
            )
        identity = self._match(presented) if presented is not None else None
        if identity is not None and not self.expired(identity):
            if self._failures.pop(limit_key(peer), None) is not None and self.on_success:
                self.on_success(limit_key(peer))
            return identity
        if identity is not None:
            log.info("{peer}: token {name} has expired", peer=peer, name=identity.name)
        if presented is not None:
            self._fail(peer)
        raise CommandError("unauthorized", REQUIRED)

    def _fail(self, peer: str) -> None:
        now = self.clock.seconds()
        key = limit_key(peer)
        state = self._failures.get(key)
        if state is None or now - state.first > self.window:
            state = self._failures[key] = _Failures(first=now)
        state.count += 1
        if state.count >= self.max_failures:
            state.locked_until = now + self.lockout
        self._forget_old(now)
        if self.on_failure is not None:
            self.on_failure(key)

    def failed_elsewhere(self, key: str, count: int, locked: float) -> None:
        """What the processes sharing the lockout know of address ``key``:
        ``count`` failures in the window, locked for ``locked`` more seconds."""
        now = self.clock.seconds()
        state = self._failures.get(key)
        if state is None:
            state = self._failures[key] = _Failures(first=now)
        state.count = max(state.count, count)
        if locked > 0:
            state.locked_until = max(state.locked_until, now + locked)

    def delay(self, peer: str) -> float:
        """How long to hold back the answer to ``peer``'s last failure."""
        state = self._failures.get(limit_key(peer))
        if state is None:
            return 0.0
        return float(min(0.25 * 2 ** (state.count - 1), 4.0))

    def _forget_old(self, now: float) -> None:
        if len(self._failures) < 10_000:
            return
        stale = [
            p
            for p, s in self._failures.items()
            if now - s.first > self.window and s.locked_until <= now
        ]
        for peer in stale:
            del self._failures[peer]


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
