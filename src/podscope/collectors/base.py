"""What every collector offers the agent. A collector knows its hooks, never the sinks."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample

from .. import libbpf
from ..features import Signal
from ..metadata.store import LABEL_NAMES, Labels

Record = dict[str, Any]
Emit = Callable[[str, Record], None]
# Records already encoded as JSON lines, a batch at a time: (kind, lines, how many). Offered
# when every record sink takes such lines (the jsonl export), so compiled code can write them.
EmitLines = Callable[[str, bytes, int], None]

HIST_SLOTS_DEFAULT = 40


class Collector(Protocol):
    name: str

    def start(self) -> None: ...

    def signals(self) -> list[Signal]:
        """Each signal of this collector as this kernel runs it (after start)."""
        ...

    def metrics(self) -> Iterable[Metric]: ...

    def poll(self, timeout_ms: int) -> int: ...

    # A collector with ring buffers also has `wait_fd() -> int | None`: readable when poll()
    # has events to take. The agent waits on all of them at once (agent.serve).

    def maintain(self) -> None: ...

    def forget_pods(self, uids: set[str]) -> None:
        """These pods and containers are gone (past the grace period): drop their series.
        `uids` holds identities (metadata.store.identity): pod UIDs, "container:<id>"."""
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


class Histogram(HistogramMetricFamily):
    """HistogramMetricFamily with a cheaper add_metric: one label dict per series, copied per
    bucket (a node with hundreds of pods has tens of thousands of bucket samples per scrape)."""

    def add_metric(self, labels: Sequence[str], buckets: Sequence[Any],
                   sum_value: float | None, timestamp: Any = None) -> None:
        base = dict(zip(self._labelnames, labels, strict=True))
        name = self.name + "_bucket"
        for le, value in buckets:
            d = base.copy()
            d["le"] = le
            self.samples.append(Sample(name, d, value, timestamp, None))
        if sum_value is not None:
            self.samples.append(Sample(self.name + "_count", base, buckets[-1][1], timestamp))
            self.samples.append(Sample(self.name + "_sum", base, sum_value, timestamp))


def loss_families(lost: dict[str, float], collector: str, map_full: float) -> Iterable[Metric]:
    """The two counters every collector exports about what its BPF side could not record:
    podscope_events_lost_total{source} (ring buffers full) and podscope_bpf_map_full_total."""
    fam = CounterMetricFamily("podscope_events_lost_total",
                              "Records dropped because a ring buffer was full", labels=["source"])
    for source, n in lost.items():
        fam.add_metric([source], n)
    yield fam
    full = CounterMetricFamily("podscope_bpf_map_full_total",
                               "Updates refused because a BPF map was full", labels=["collector"])
    full.add_metric([collector], map_full)
    yield full


def add_hist(buckets: dict[Any, list[int]], sums: dict[Any, float], key: Any, hist: Any) -> None:
    """Fold one kernel log2 histogram (slots, sum) into the series `key`: recycled ids with
    the same labels become one series."""
    slots = list(hist.slots)
    if key in buckets:
        buckets[key] = [a + b for a, b in zip(buckets[key], slots, strict=True)]
        sums[key] += hist.sum
    else:
        buckets[key] = slots
        sums[key] = hist.sum


def top_slot(all_slots: Iterable[Sequence[int]]) -> int:
    """The highest log2 slot any series of a family has used: buckets above it are all equal
    to +Inf, in every series, and are left out (the set only grows while the agent runs)."""
    top = 0
    for slots in all_slots:
        for i in range(len(slots) - 1, top, -1):
            if slots[i]:
                top = i
                break
    return top


def log2_histogram(family: Any, buckets: dict[tuple[Labels, tuple[str, ...]], list[int]],
                   sums: dict[tuple[Labels, tuple[str, ...]], float], unit_seconds: float) -> Any:
    """Fill a HistogramMetricFamily from log2 slots (slot 0: value 0; slot i: [2^(i-1), 2^i))."""
    top = top_slot(buckets.values())
    for key, slots in buckets.items():
        labels, extra = key
        family.add_metric(list(labels) + list(extra), log2_buckets(slots, unit_seconds, top),
                          sums[key] * unit_seconds)
    return family


def log2_buckets(slots: Sequence[int], unit_seconds: float,
                 top: int | None = None) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs of log2 slots; slot i's upper bound is 2^i units. With
    `top`, buckets end at slot top + 1 (then +Inf)."""
    last = len(slots) - 1 if top is None else min(top + 2, len(slots) - 1)
    out, cum = [], 0
    for i in range(last):
        cum += slots[i]
        out.append((_LE[unit_seconds][i], float(cum)))
    out.append(("+Inf", float(sum(slots))))
    return out


class _LeTable(dict[float, list[str]]):
    """The `le` strings of each unit, formatted once."""

    def __missing__(self, unit: float) -> list[str]:
        v = self[unit] = [f"{(2 ** i) * unit:.9g}" for i in range(64)]
        return v


_LE = _LeTable()


def label_names(*extra: str) -> Sequence[str]:
    return list(LABEL_NAMES) + list(extra)


def attach(obj: libbpf.BpfObject, optional: Iterable[str] = (),
           skip: Iterable[str] = ()) -> dict[str, libbpf.Link]:
    """Attach every loaded program of obj by its section (iterators too: their links are
    returned by name), except `skip`. An optional program that fails to attach is dropped
    (obj.refused says why); any other failure raises."""
    optional, skip = set(optional), set(skip)
    links: dict[str, libbpf.Link] = {}
    for prog in obj.programs():
        if not prog.autoload or prog.name in obj.refused or prog.name in skip:
            continue
        try:
            links[prog.name] = (prog.attach_iter() if prog.section.startswith("iter/")
                                else prog.attach())
        except libbpf.BpfError as e:
            if prog.name not in optional:
                raise
            obj.refused[prog.name] = str(e)
    return links


def program_signals(collector: str, obj: libbpf.BpfObject, table: dict[str, list[str]],
                    hooks: str = "", degraded: dict[str, str] | None = None,
                    default: bool = True, partial: bool = False) -> list[Signal]:
    """The state of each signal of `table` (signal -> the programs it needs): unavailable when
    the kernel refused one of them (with `partial`: all of them; some is degraded), degraded
    (with the reason given) when listed in `degraded`. `hooks`: the hook set in use; by default
    the sections of the signal's programs that run."""
    out = []
    sections = {p.name: p.section for p in obj.programs()}
    for sig, progs in table.items():
        refused = [f"{p}: {obj.refused[p]}" for p in progs if p in obj.refused]
        missing = [p for p in progs if p not in sections]
        used = hooks or ", ".join(dict.fromkeys(sections[p] for p in progs
                                                if p in sections and p not in obj.refused))
        if partial and refused and len(refused) < len(progs) and not missing:
            out.append(Signal(sig, collector, "degraded", used, "; ".join(refused), default,
                              obj.load_ms))
        elif refused or missing:
            out.append(Signal(sig, collector, "unavailable", used,
                              "; ".join(refused + [f"program {m} missing" for m in missing]),
                              default, obj.load_ms))
        elif degraded and sig in degraded:
            out.append(Signal(sig, collector, "degraded", used, degraded[sig], default,
                              obj.load_ms))
        else:
            out.append(Signal(sig, collector, "works", used, "", default, obj.load_ms))
    return out
