"""Who may do what: identities and their scopes, without I/O.

An :class:`Identity` is who a client proved to be (a named token) and its
:class:`Scope`: which commands it may run and within which bounds.  The
command service asks :meth:`Scope.check` before every command, so every
transport answers the same ``forbidden`` for the same request, with a
message naming the scope that refused it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from gateway.core.errors import CommandError

#: Always allowed, whatever the scope says: ending the connection.
ALWAYS = frozenset({"exit"})


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True)
class Scope:
    """What an identity may do; ``None`` for a field: no narrowing."""

    #: The commands it may run.
    commands: frozenset[str] | None = None
    #: The most lines of a log it may ask for (``lastlog N``, a follow's replay).
    max_lines: int | None = None
    #: Whether it may follow a log.
    follow: bool = True
    #: Where its paths must lie (resolved; narrows ``comphash.allowed_roots``).
    roots: tuple[str, ...] | None = None
    #: The hash algorithms it may use.
    algorithms: frozenset[str] | None = None
    #: How many connections (and HTTP requests in flight) it may hold at once,
    #: within the quota of everyone.
    max_clients: int | None = None
    #: When it stops being accepted (seconds since the epoch).
    expires: float | None = None

    #: No narrowing of what may run (the quota share and expiry aside);
    #: worked out once, as it is asked before every command.
    full: bool = dataclass_field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        full = (
            self.commands is None
            and self.max_lines is None
            and self.follow
            and self.roots is None
            and self.algorithms is None
        )
        object.__setattr__(self, "full", full)

    def may_run(self, command: str) -> bool:
        return self.commands is None or command in self.commands or command in ALWAYS

    def require(self, who: str, command: str) -> None:
        """Raise ``forbidden``, naming the scope, unless ``who`` may run ``command``."""
        if not self.may_run(command):
            allowed = ", ".join(sorted(self.commands or ()))
            raise CommandError(
                "forbidden", f"{who} may not run {command} (its commands: {allowed or 'none'})"
            )

    def check(
        self, who: str, command: str, scoped: Mapping[str, str], checked: Mapping[str, Any]
    ) -> None:
        """Raise ``forbidden`` unless ``who`` may run ``command`` with the
        ``checked`` arguments; ``scoped`` says which scope field bounds which
        argument (``{"lines": "max_lines", "path": "roots", ...}``)."""
        self.require(who, command)
        self.check_arguments(who, scoped, checked)

    def check_arguments(
        self, who: str, scoped: Mapping[str, str], checked: Mapping[str, Any]
    ) -> None:
        """:meth:`check` for a command ``who`` may run (asked already)."""
        for name, field in scoped.items():
            value = checked.get(name)
            if value is None or value is False:
                continue
            if field == "max_lines" and self.max_lines is not None:
                if isinstance(value, int) and value > self.max_lines:
                    raise CommandError(
                        "forbidden", f"{who} may ask for at most {self.max_lines} lines"
                    )
            elif field == "follow" and not self.follow:
                raise CommandError("forbidden", f"{who} may not follow (its follow = false)")
            elif field == "algorithms" and self.algorithms is not None:
                if value not in self.algorithms:
                    allowed = ", ".join(sorted(self.algorithms))
                    raise CommandError(
                        "forbidden", f"{who} may not use {value} (its algorithms: {allowed})"
                    )
            elif field == "roots" and self.roots is not None:
                real = os.path.realpath(str(value))
                if not any(_inside(real, root) for root in self.roots):
                    roots = ", ".join(self.roots)
                    raise CommandError(
                        "forbidden", f"{who} may not use paths outside {roots}: {value}"
                    )


FULL = Scope()
#: How messages name each kind of proof.
KINDS = {"token": "token", "unix": "unix user", "certificate": "certificate"}


@dataclass(frozen=True)
class Identity:
    """Who a client is: a name (never the token), how it was proven, its scope."""

    name: str
    how: str
    scope: Scope = FULL
    #: How messages name it: ``token "ops"``, ``unix user "root"``, ``certificate "ci"``.
    shown: str = dataclass_field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        kind = KINDS.get(self.how)
        shown = f'{kind} "{self.name}"' if kind is not None else f'"{self.name}"'
        object.__setattr__(self, "shown", shown)


def no_longer_accepted(identity: Identity) -> CommandError:
    """What a client whose identity a reload removed is told."""
    return CommandError("unauthorized", f"{identity.shown} is no longer accepted")


#: Everyone, when the gateway asks for no token.
ANONYMOUS = Identity("anonymous", "none")
