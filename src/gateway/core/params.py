"""A command's parameters, declared once.

From one tuple of :class:`Param` come the line syntax (``comphash -a md5 /x``),
the validation every transport shares (a query string, a JSON message, a
parsed line all end in :func:`validate`), the usage line ``help`` prints, the
list ``GET /commands`` returns, and the OpenAPI schema of each query
parameter.  Pure: no transport, no reactor.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import re2

from gateway.core.errors import CommandError

Kind = Literal["int", "choice", "path", "string", "flag"]
#: How a ``flag`` is written where it has a value (a query string, JSON).
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_DIGITS = frozenset("0123456789")


@dataclass(frozen=True)
class Param:
    """One parameter.

    ``flag`` (``"-a"``) makes it an option on the command line (also written
    ``--<name> VALUE`` and ``--<name>=VALUE``); without one it is positional
    (and may still be named, ``--<name>=VALUE``),
    and the last positional parameter of kind ``path`` or ``string`` takes the
    rest of the line (paths with spaces).  ``missing`` is what a client is
    told when a required parameter is absent; ``noun`` names an option's
    value when it is left out (``-a needs an algorithm name``).
    """

    name: str
    kind: Kind
    help: str
    required: bool = False
    default: object = None
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    flag: str | None = None
    metavar: str | None = None
    missing: str | None = None
    noun: str | None = None
    #: For ``string``: the whole value must match (RE2: linear time, whatever
    #: a client sends).
    pattern: str | None = None
    #: The scope field that bounds it for a scoped identity (``max_lines``,
    #: ``follow``, ``algorithms``); a ``path`` is bounded by ``roots``.
    scope: str | None = None
    #: A required parameter another one may stand in for (comphash's
    #: ``manifest`` for ``path``): documented as required unless that is given.
    unless: str | None = None

    def __post_init__(self) -> None:
        if self.pattern is not None:
            _compiled(self.pattern)  # a bad pattern fails at declaration, not per request

    @property
    def shown(self) -> str:
        return self.metavar or self.name.upper()


def compile_pattern(pattern: str) -> Any:
    """``pattern`` compiled by RE2 (linear-time matching), or ``ValueError`` saying why.

    RE2 would also print its complaint on stderr; it is told not to.
    """
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as e:
        reason = e.args[0] if e.args else e
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(f"bad pattern {pattern!r}: {reason}") from None


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> Any:
    return compile_pattern(pattern)


def usage(command: str, params: Sequence[Param]) -> str:
    """``comphash [-a ALGO] <path>``, ``lastlog [N]``."""
    words = [command]
    for p in params:
        if p.kind == "flag" and p.flag is not None:
            words.append(f"[{p.flag}]")
        elif p.flag is not None:
            words.append(f"[{p.flag} {p.shown}]")
        elif p.required:
            words.append(f"<{p.metavar or p.name}>")
        else:
            words.append(f"[{p.shown}]")
    return " ".join(words)


@dataclass(frozen=True)
class _Plan:
    """What parsing and validating need, worked out once per declaration."""

    known: frozenset[str]
    order: tuple[Param, ...]  # positional parameters (the subject) before options
    options: dict[str, Param]
    positional: tuple[Param, ...]
    #: Which scope field bounds which parameter (a path: ``roots``).
    scoped: dict[str, str]


#: Plans by the identity of the declaration they were made for (parsing is on
#: the hot path: a declaration is a command's attribute and lives as long).
_PLANS: dict[int, tuple[Sequence[Param], _Plan]] = {}


def _plan(params: Sequence[Param]) -> _Plan:
    found = _PLANS.get(id(params))
    if found is not None and found[0] is params:
        return found[1]
    plan = _make_plan(tuple(params))
    if len(_PLANS) > 1024:
        _PLANS.clear()
    _PLANS[id(params)] = (params, plan)
    return plan


def _make_plan(params: tuple[Param, ...]) -> _Plan:
    options = {p.flag: p for p in params if p.flag is not None}
    # Every parameter may also be named: ``--name VALUE`` or ``--name=VALUE``.
    options.update({f"--{p.name}": p for p in params})
    positional = tuple(p for p in params if p.flag is None)
    scoped: dict[str, str] = {}
    for p in params:
        field = p.scope or ("roots" if p.kind == "path" else None)
        if field is not None:
            scoped[p.name] = field
    return _Plan(
        frozenset(p.name for p in params),
        positional + tuple(p for p in params if p.flag is not None),
        options,
        positional,
        scoped,
    )


def parse_line(command: str, params: Sequence[Param], rest: str) -> dict[str, object]:
    """The named arguments in the text after the command name (not yet validated)."""
    text = rest.strip()
    if not params:
        if text:
            raise CommandError("bad_argument", f"{command} takes no arguments")
        return {}
    plan = _plan(params)
    options = plan.options
    out: dict[str, object] = {}
    while text.startswith("-"):
        head, _, tail = text.partition(" ")
        option = options.get(head)
        if option is None and "=" in head and head.startswith("--"):
            name, _, value = head.partition("=")
            option = options.get(name)
            if option is not None:
                out[option.name] = value
                text = tail.strip()
                continue
        if option is None:
            break  # not an option: a positional value that starts with "-"
        if option.kind == "flag":  # takes no value
            out[option.name] = True
            text = tail.strip()
            continue
        value, _, tail = tail.strip().partition(" ")
        if not value:
            noun = option.noun or f"a value for {option.name}"
            raise CommandError("bad_argument", f"{head} needs {noun}")
        out[option.name] = value
        text = tail.strip()
    positional = plan.positional
    if out:  # a positional parameter given by name is not taken again
        positional = tuple(p for p in positional if p.name not in out)
    for index, p in enumerate(positional):
        if not text:
            break
        if index == len(positional) - 1:  # the last one takes the rest of the line
            out[p.name], text = text, ""
        else:
            out[p.name], _, text = text.partition(" ")
            text = text.strip()
    if text:
        raise CommandError("bad_argument", f"{command}: unexpected {text.split()[0]!r}")
    return out


def validate(command: str, params: Sequence[Param], raw: Mapping[str, object]) -> dict[str, Any]:
    """Checked, typed arguments (defaults filled in), or a :class:`CommandError`."""
    plan = _plan(params)
    if not plan.known.issuperset(raw):
        unknown = sorted(set(raw) - plan.known)
        raise CommandError("bad_argument", f"{command}: unknown argument {unknown[0]!r}")
    out: dict[str, Any] = {}
    # Positional parameters (the subject: a path) are checked before options.
    for p in plan.order:
        value = raw.get(p.name)
        if p.name not in raw or (value == "" and p.required):
            if p.required:
                message = p.missing or f"{command} needs {p.name}"
                raise CommandError("missing_argument", message)
            out[p.name] = p.default
            continue
        out[p.name] = _check(p, value)
    return out


def _check(p: Param, value: object) -> object:
    if p.kind == "flag":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE:
            return True
        if isinstance(value, str) and value.lower() in _FALSE:
            return False
        raise CommandError("bad_argument", f"{p.name} must be true or false (1 or 0)")
    if p.kind == "int":
        if isinstance(value, str) and value and len(value) <= 12 and set(value) <= _DIGITS:
            value = int(value)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or (p.minimum is not None and value < p.minimum)
            or (p.maximum is not None and value > p.maximum)
        ):
            raise CommandError(
                "bad_argument", f"{p.name} must be an integer from {p.minimum} to {p.maximum}"
            )
        return value
    if not isinstance(value, str):
        raise CommandError("bad_argument", f"{p.name} must be a string")
    if p.kind == "choice":
        if value not in p.choices:
            raise CommandError(
                "bad_argument",
                f"Unknown {p.name}: {value} (allowed: {', '.join(p.choices)})",
            )
        return value
    if p.kind == "path":
        if "\x00" in value:
            raise CommandError("bad_argument", "Path contains a NUL byte.")
        if any("\ud800" <= c <= "\udfff" for c in value):
            raise CommandError("bad_argument", "Path holds an unpaired surrogate; send UTF-8.")
        if not value.startswith("/"):
            raise CommandError("bad_argument", f"Path must be absolute: {value}")
    if p.kind == "string":
        if "\x00" in value:  # never a valid argument, file name or log text
            raise CommandError("bad_argument", f"{p.name} contains a NUL character")
        if any("\ud800" <= c <= "\udfff" for c in value):
            raise CommandError("bad_argument", f"{p.name} holds an unpaired surrogate; send UTF-8.")
    if p.pattern is not None and _compiled(p.pattern).fullmatch(value) is None:
        raise CommandError("bad_argument", f"{p.name} must match {p.pattern}")
    return value


def describe(p: Param) -> dict[str, object]:
    """The parameter as ``GET /commands`` lists it."""
    out: dict[str, object] = {"name": p.name, "type": p.kind, "required": p.required}
    if p.unless is not None:
        out["required_unless"] = p.unless
    if p.help:
        out["help"] = p.help
    if p.default is not None:
        out["default"] = p.default
    if p.choices:
        out["choices"] = list(p.choices)
    if p.minimum is not None:
        out["minimum"] = p.minimum
    if p.maximum is not None:
        out["maximum"] = p.maximum
    if p.flag is not None:
        out["flag"] = p.flag
    if p.pattern is not None:
        out["pattern"] = p.pattern
    return out


def query_parameter(p: Param) -> dict[str, Any]:
    """The parameter as an OpenAPI query parameter."""
    schema: dict[str, Any]
    if p.kind == "flag":
        schema = {"type": "boolean"}
    elif p.kind == "int":
        schema = {"type": "integer"}
        if p.minimum is not None:
            schema["minimum"] = p.minimum
        if p.maximum is not None:
            schema["maximum"] = p.maximum
    elif p.kind == "choice":
        schema = {"type": "string", "enum": list(p.choices)}
    elif p.kind == "path":
        schema = {"type": "string", "minLength": 1, "pattern": "^/[^\\x00]*$"}
    else:
        schema = {"type": "string"}
        if p.pattern is not None:
            schema["pattern"] = f"^(?:{p.pattern})$"
    if p.default is not None:
        schema["default"] = p.default
    required = p.required and p.unless is None
    out: dict[str, Any] = {"name": p.name, "in": "query", "required": required}
    if p.help or p.unless:
        unless = f" (required unless {p.unless} is given)" if p.unless and p.required else ""
        out["description"] = p.help + unless
    out["schema"] = schema
    return out


def scoped(params: Sequence[Param]) -> dict[str, str]:
    """Which scope field bounds which parameter (a path: ``roots``); worked out once."""
    return _plan(params).scoped


def scoped_values(params: Sequence[Param], raw: Mapping[str, object]) -> dict[str, Any]:
    """The checked values of the scoped parameters only (``raw`` was validated)."""
    plan = _plan(params)
    out: dict[str, Any] = {}
    for p in plan.order:
        if p.name in plan.scoped:
            out[p.name] = _check(p, raw[p.name]) if p.name in raw else p.default
    return out
