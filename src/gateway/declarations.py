"""``[commands.<name>]`` in the config: programs operators expose, checked at load.

Each declaration becomes a command served on every transport (see
:mod:`gateway.commands.declared`).  Everything that can be checked before a
client asks is checked here, and a bad declaration is one
:class:`~gateway.config.ConfigError` naming its key: start-up stops, and a
SIGHUP reload is refused with the old set kept.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.commands.child import find_program
from gateway.core.params import compile_pattern

PARAM_TYPES = ("int", "choice", "string", "path")
NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")
PARAM_NAME = re.compile(r"[a-z_][a-z0-9_]{0,31}\Z")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: ``{name}`` in an argv element: where a parameter's value goes.
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: Names a declared command may not take: the built-in commands, and the HTTP
#: routes that are not commands (every command is served at ``/<name>``).
RESERVED_NAMES = frozenset(
    {"lastlog", "comphash", "help", "stats", "exit", "commands", "healthz", "metrics", "ws"}
)
COMMAND_KEYS = frozenset(
    {"summary", "argv", "timeout", "max_output_lines", "env", "stderr", "params"}
)
PARAM_KEYS: Mapping[str, frozenset[str]] = {
    "int": frozenset({"min", "max", "default"}),
    "choice": frozenset({"values", "default"}),
    "string": frozenset({"pattern", "default", "allow_dash"}),
    "path": frozenset({"roots"}),
}
COMMON_PARAM_KEYS = frozenset({"type", "required", "help"})


class DeclarationError(Exception):
    """A bad declaration: ``key`` (``commands.df.argv``) and what is wrong."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


@dataclass(frozen=True)
class DeclaredParam:
    name: str
    type: str
    required: bool = False
    help: str = ""
    default: int | str | None = None
    min: int | None = None
    max: int | None = None
    values: tuple[str, ...] = ()
    pattern: str | None = None
    roots: tuple[str, ...] = ()
    allow_dash: bool = False


@dataclass(frozen=True)
class DeclaredCommand:
    name: str
    argv: tuple[str, ...]
    summary: str = ""
    timeout: float = 30.0
    max_output_lines: int = 10000
    #: Added to the child's minimal environment (values may be secrets: never shown).
    env: tuple[tuple[str, str], ...] = ()
    #: ``log``: the last lines of stderr go to the log; ``send``: to the client too.
    stderr: str = "log"
    params: tuple[DeclaredParam, ...] = ()


def _table(key: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise DeclarationError(key, "expected a table")
    return value


def _unknown(key: str, table: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for name in table:
        if name not in allowed:
            raise DeclarationError(f"{key}.{name}", "unknown key")


def _string(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise DeclarationError(key, "expected a string")
    return value


def _strings(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DeclarationError(key, "expected a list of strings")
    return tuple(value)


def _int(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DeclarationError(key, "expected an integer")
    return value


def _bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise DeclarationError(key, "expected true or false")
    return value


def parse_commands(table: object) -> tuple[DeclaredCommand, ...]:
    """The ``[commands]`` table, checked; raises :class:`DeclarationError`."""
    return tuple(parse_command(name, spec) for name, spec in _table("commands", table).items())


def parse_command(name: str, spec: object) -> DeclaredCommand:
    key = f"commands.{name}"
    if not NAME.match(name):
        raise DeclarationError(key, "a command name is a-z, 0-9, _ and -, starting with a letter")
    if name in RESERVED_NAMES:
        raise DeclarationError(key, f"{name!r} is built in; choose another name")
    table = _table(key, spec)
    _unknown(key, table, COMMAND_KEYS)
    if "argv" not in table:
        raise DeclarationError(f"{key}.argv", "missing: the program and its arguments, a list")
    argv = _strings(f"{key}.argv", table["argv"])
    if not argv or not argv[0]:
        raise DeclarationError(f"{key}.argv", "must name a program to run")
    if PLACEHOLDER.search(argv[0]):
        raise DeclarationError(f"{key}.argv", "the program itself cannot be a parameter")
    if any("\x00" in arg for arg in argv):
        raise DeclarationError(f"{key}.argv", "contains a NUL character")
    program = argv[0]
    if find_program(program) is None:
        where = "" if "/" in program else " on the child PATH"
        raise DeclarationError(
            f"{key}.argv", f"{program}: no such executable{where} (or it is not executable)"
        )
    params = _params(key, table.get("params", {}))
    declared = {p.name for p in params}
    used: set[str] = set()
    for arg in argv[1:]:
        for placeholder in PLACEHOLDER.findall(arg):
            if placeholder not in declared:
                raise DeclarationError(
                    f"{key}.argv", f"{{{placeholder}}} names no parameter in {key}.params"
                )
            used.add(placeholder)
    for p in params:
        if p.name not in used:
            raise DeclarationError(
                f"{key}.params.{p.name}", f"is not used: write {{{p.name}}} in argv where it goes"
            )
    timeout = table.get("timeout", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise DeclarationError(f"{key}.timeout", "expected a number of seconds")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise DeclarationError(f"{key}.timeout", "must be greater than 0")
    max_lines = _int(f"{key}.max_output_lines", table.get("max_output_lines", 10000))
    if max_lines < 1:
        raise DeclarationError(f"{key}.max_output_lines", "must be at least 1")
    env: list[tuple[str, str]] = []
    for var, value in _table(f"{key}.env", table.get("env", {})).items():
        if not ENV_NAME.match(var):
            raise DeclarationError(f"{key}.env", f"not a variable name: {var!r}")
        if not isinstance(value, str) or "\x00" in value:
            raise DeclarationError(f"{key}.env.{var}", "expected a string")  # value not shown
        env.append((var, value))
    stderr = _string(f"{key}.stderr", table.get("stderr", "log"))
    if stderr not in ("log", "send"):
        raise DeclarationError(f"{key}.stderr", 'must be "log" or "send"')
    summary = _string(f"{key}.summary", table.get("summary", f"runs {os.path.basename(program)}"))
    return DeclaredCommand(
        name=name,
        argv=argv,
        summary=summary,
        timeout=float(timeout),
        max_output_lines=max_lines,
        env=tuple(env),
        stderr=stderr,
        params=params,
    )


def _params(key: str, value: object) -> tuple[DeclaredParam, ...]:
    out = []
    for name, spec in _table(f"{key}.params", value).items():
        out.append(_param(f"{key}.params.{name}", name, spec))
    return tuple(out)


def _param(key: str, name: str, spec: object) -> DeclaredParam:
    if not PARAM_NAME.match(name):
        raise DeclarationError(key, "a parameter name is a-z, 0-9 and _, starting with a letter")
    table = _table(key, spec)
    kind = table.get("type")
    if kind not in PARAM_TYPES:
        raise DeclarationError(f"{key}.type", f"must be one of {', '.join(PARAM_TYPES)}")
    _unknown(key, table, COMMON_PARAM_KEYS | PARAM_KEYS[kind])
    required = _bool(f"{key}.required", table.get("required", False))
    help = _string(f"{key}.help", table.get("help", ""))
    fields: dict[str, Any] = {}
    if kind == "int":
        low = _int(f"{key}.min", table["min"]) if "min" in table else None
        high = _int(f"{key}.max", table["max"]) if "max" in table else None
        if low is not None and high is not None and low > high:
            raise DeclarationError(f"{key}.min", "must not exceed max")
        if low is not None and low < 0:
            raise DeclarationError(f"{key}.min", "must be 0 or more (a value never starts with -)")
        if "default" in table:
            default = _int(f"{key}.default", table["default"])
            if (low is not None and default < low) or (high is not None and default > high):
                raise DeclarationError(f"{key}.default", "must be within min and max")
            fields["default"] = default
        fields.update(min=0 if low is None else low, max=high)
    elif kind == "choice":
        values = _strings(f"{key}.values", table.get("values", []))
        if not values:
            raise DeclarationError(f"{key}.values", "must list at least one value")
        fields["values"] = values
        if "default" in table:
            chosen = _string(f"{key}.default", table["default"])
            if chosen not in values:
                raise DeclarationError(f"{key}.default", "must be one of values")
            fields["default"] = chosen
    elif kind == "string":
        if "pattern" not in table:
            raise DeclarationError(
                f"{key}.pattern", "missing: a string parameter needs the pattern its values match"
            )
        pattern = _string(f"{key}.pattern", table["pattern"])
        try:
            compiled = compile_pattern(pattern)
        except ValueError as e:
            raise DeclarationError(f"{key}.pattern", str(e)) from None
        fields["pattern"] = pattern
        fields["allow_dash"] = _bool(f"{key}.allow_dash", table.get("allow_dash", False))
        if "default" in table:
            text = _string(f"{key}.default", table["default"])
            if compiled.fullmatch(text) is None:
                raise DeclarationError(f"{key}.default", "must match the pattern")
            fields["default"] = text
    else:
        roots = _strings(f"{key}.roots", table.get("roots", []))
        if not roots:
            raise DeclarationError(
                f"{key}.roots", "missing: the directories a path must stay under"
            )
        for root in roots:
            if not os.path.isabs(root):
                raise DeclarationError(f"{key}.roots", f"not an absolute path: {root!r}")
        fields["roots"] = roots
    return DeclaredParam(name=name, type=kind, required=required, help=help, **fields)
