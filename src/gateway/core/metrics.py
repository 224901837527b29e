"""Counters for ``/metrics``, and their Prometheus text exposition (format 0.0.4)."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable

from gateway.core.quota import QuotaSnapshot

#: Upper bounds (seconds) of the command duration histogram.
BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


#: One metric family a part of the gateway adds: name, type, help, and its
#: samples as (labels, value).
Family = tuple[str, str, str, list[tuple[dict[str, str], float]]]


class CommandMetrics:
    """Commands run, by name and outcome, and how long they took.  Pure; O(1).

    ``sources`` are callables that other parts (the follow readers) register
    to add their own families to ``/metrics``.
    """

    def __init__(self, known: Iterable[str] = ()) -> None:
        self.sources: list[Callable[[], list[Family]]] = []
        self.known = set(known)
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.buckets: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}
        self.counts: Counter[str] = Counter()

    def label(self, command: str) -> str:
        # Anything a client typed that is not a command is one label, so a
        # client cannot grow the metrics without bound.
        return command if command in self.known else "unknown"

    def record(self, command: str, outcome: str, seconds: float) -> None:
        name = self.label(command)
        self.outcomes[name, outcome] += 1
        counts = self.buckets.get(name)
        if counts is None:
            counts = self.buckets[name] = [0] * len(BUCKETS)
        index = bisect_left(BUCKETS, seconds)
        if index < len(BUCKETS):
            counts[index] += 1
        self.sums[name] = self.sums.get(name, 0.0) + seconds
        self.counts[name] += 1


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{{{inner}}}" if inner else ""


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def render(quota: QuotaSnapshot, commands: CommandMetrics, in_flight: int, uptime: float) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

    metric(
        "gateway_clients_in_use",
        "gauge",
        "Quota slots held, per transport.",
        [(_labels(transport=t), n) for t, n in quota.in_use.items()],
    )
    metric("gateway_clients_max", "gauge", "Size of the client quota.", [("", quota.max_clients)])
    metric(
        "gateway_clients_served_total",
        "counter",
        "Quota slots granted, per transport.",
        [(_labels(transport=t), n) for t, n in quota.granted.items()],
    )
    metric(
        "gateway_clients_refused_total",
        "counter",
        "Clients refused for lack of a quota slot, per transport.",
        [(_labels(transport=t), n) for t, n in quota.refused.items()],
    )
    cluster = quota.cluster
    if cluster is not None:
        metric(
            "gateway_cluster_up",
            "gauge",
            "1 while the quota is shared through Redis, 0 while Redis is unreachable.",
            [("", 1 if cluster["state"] == "up" else 0)],
        )
        for key, help_text in (
            ("processes", "Gateway processes sharing the quota."),
            ("in_use", "Clients in use across every process (as of each one's last report)."),
            ("allotted", "Quota places allotted across every process, spare ones included."),
            ("allotted_here", "Quota places allotted to this process, spare ones included."),
        ):
            metric(f"gateway_cluster_{key}", "gauge", help_text, [("", int(cluster[key]))])
    metric(
        "gateway_commands_total",
        "counter",
        "Commands run, by command and outcome (ok or an error code).",
        [(_labels(command=c, outcome=o), n) for (c, o), n in sorted(commands.outcomes.items())],
    )
    lines.append("# HELP gateway_command_duration_seconds Time from request to final answer.")
    lines.append("# TYPE gateway_command_duration_seconds histogram")
    for name in sorted(commands.buckets):
        cumulative = 0
        for bound, count in zip(BUCKETS, commands.buckets[name], strict=True):
            cumulative += count
            le = _labels(command=name, le=repr(bound))
            lines.append(f"gateway_command_duration_seconds_bucket{le} {cumulative}")
        inf = _labels(command=name, le="+Inf")
        total = commands.counts[name]
        lines.append(f"gateway_command_duration_seconds_bucket{inf} {total}")
        lines.append(
            f"gateway_command_duration_seconds_sum{_labels(command=name)} "
            f"{_number(commands.sums[name])}"
        )
        lines.append(f"gateway_command_duration_seconds_count{_labels(command=name)} {total}")
    metric("gateway_commands_in_flight", "gauge", "Commands running now.", [("", in_flight)])
    for source in commands.sources:
        for name, kind, help_text, samples in source():
            metric(name, kind, help_text, [(_labels(**labels), v) for labels, v in samples])
    metric("gateway_uptime_seconds", "gauge", "Seconds since the daemon started.", [("", uptime)])
    return "\n".join(lines) + "\n"
