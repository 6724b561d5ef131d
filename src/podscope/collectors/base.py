"""What every collector offers the agent. A collector knows its hooks, never the sinks."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from prometheus_client.core import Metric

from ..metadata.store import LABEL_NAMES, Labels

Record = dict[str, Any]
Emit = Callable[[str, Record], None]

HIST_SLOTS_DEFAULT = 40


class Collector(Protocol):
    name: str

    def start(self) -> None: ...

    def metrics(self) -> Iterable[Metric]: ...

    def poll(self, timeout_ms: int) -> int: ...

    def maintain(self) -> None: ...

    def forget_pods(self, uids: set[str]) -> None:
        """These pods are gone (deleted, past the grace period): drop their series."""
        ...

    def close(self) -> None: ...


class Sums:
    """Values keyed by (labels, extra label values), summed: recycled kernel ids that map to the
    same labels become one series, never a duplicate."""

    def __init__(self) -> None:
        self.values: dict[tuple[Labels, tuple[str, ...]], float] = defaultdict(float)

    def add(self, labels: Labels, extra: tuple[str, ...], value: float) -> None:
        self.values[(labels, extra)] += value

    def family(self, kind: type[Any], name: str, help_: str, *extra_names: str) -> Any:
        """A CounterMetricFamily or GaugeMetricFamily with one sample per summed series."""
        fam = kind(name, help_, labels=label_names(*extra_names))
        for (labels, extra), v in self.values.items():
            fam.add_metric(list(labels) + list(extra), v)
        return fam


def log2_histogram(family: Any, buckets: dict[tuple[Labels, tuple[str, ...]], list[int]],
                   sums: dict[tuple[Labels, tuple[str, ...]], float], unit_seconds: float) -> Any:
    """Fill a HistogramMetricFamily from log2 slots (slot 0: value 0; slot i: [2^(i-1), 2^i))."""
    for key, slots in buckets.items():
        labels, extra = key
        family.add_metric(list(labels) + list(extra), log2_buckets(slots, unit_seconds),
                          sums[key] * unit_seconds)
    return family


def log2_buckets(slots: Sequence[int], unit_seconds: float) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs of log2 slots; slot i's upper bound is 2^i units."""
    out, cum = [], 0
    for i, n in enumerate(slots[:-1]):
        cum += n
        out.append((f"{(2 ** i) * unit_seconds:.9g}", float(cum)))
    out.append(("+Inf", float(cum + slots[-1])))
    return out


def label_names(*extra: str) -> Sequence[str]:
    return list(LABEL_NAMES) + list(extra)
