"""Render once what many clients are sent: the last rendering, by identity.

A followed log's batch of lines is one :class:`~gateway.core.events.Lines`
event handed to every watcher in turn.  Each front-end renders it (text,
Server-Sent Events, WebSocket frames); a :class:`LastRendered` keeps the last
rendering with the object it was made from, so the second to thousandth
watcher of a batch reuse the first one's bytes.  The object is held while it
is the last one, so its identity cannot be taken by another.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_NOTHING = object()


class LastRendered(Generic[K, V]):
    """``render(key, extra)``, kept for the last ``key`` (by identity) and ``extra`` (by value)."""

    __slots__ = ("_extra", "_key", "_render", "_value")

    def __init__(self, render: Callable[[K, Hashable], V]) -> None:
        self._render = render
        self._key: object = _NOTHING
        self._extra: Hashable = None
        self._value: V | None = None

    def __call__(self, key: K, extra: Hashable = None) -> V:
        if key is self._key and extra == self._extra:
            value = self._value
            assert value is not None
            return value
        value = self._render(key, extra)
        self._key, self._extra, self._value = key, extra, value
        return value
