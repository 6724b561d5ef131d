"""Trees of spans across hops: one trace id per tree.

Each agent derives a request's span ids from its TCP position, so a server span names its
client span as parent without the two agents talking (docs/traces.md). The trace id is another
matter: the server end of a hop cannot know whether the client end was itself serving a request
(and so belongs to an older trace), and takes one derived from the hop. `TraceJoiner` puts the
trees back together: it holds each span for a while, and when the span is due, gives it the
trace id of its highest ancestor it holds or has seen go out. The agent's OTLP export runs one
(the hops it sees itself), and `podscope join` runs one as an OTLP relay for the spans of many
agents (hops between nodes).

Children end before their parents, so they wait for them: a span whose ancestors come later
than `hold` keeps the trace id it had (counted as `late`). Both tables are bounded: spans past
`max_pending` go out at once (counted as `overflow`), and the trace ids of spans gone out are
remembered for the last `max_seen` of them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

T = TypeVar("T")


@dataclass
class _Held(Generic[T]):
    item: T
    trace: bytes
    parent: bytes | None
    due: float


@dataclass
class TraceJoiner(Generic[T]):
    """Spans in (`add`), spans out with their tree's trace id (`take`), in arrival order."""

    hold: float = 2.0
    max_pending: int = 100_000
    max_seen: int = 200_000
    clock: Callable[[], float] = time.monotonic
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("spans", "rekeyed", "overflow", "late"), 0))

    def __post_init__(self) -> None:
        self._pending: OrderedDict[bytes, _Held[T]] = OrderedDict()
        self._seen: OrderedDict[bytes, bytes] = OrderedDict()  # span id -> trace id it went with
        self._unmatched: OrderedDict[bytes, None] = OrderedDict()  # parents not seen (yet)

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, span_id: bytes, parent_id: bytes | None, trace_id: bytes, item: T) -> None:
        self.counts["spans"] += 1
        if span_id in self._unmatched:  # its children went out already, with another trace
            del self._unmatched[span_id]
            self.counts["late"] += 1
        if span_id in self._pending or len(self._pending) >= self.max_pending:
            self.counts["overflow"] += 1
            self._out(span_id, parent_id, trace_id)
            return
        self._pending[span_id] = _Held(item, trace_id, parent_id, self.clock() + self.hold)

    def take(self, everything: bool = False) -> list[tuple[T, bytes]]:
        """The spans that are due (all of them with everything=True), each with its trace id."""
        now = self.clock()
        out: list[tuple[T, bytes]] = []
        while self._pending:
            span_id, held = next(iter(self._pending.items()))
            if held.due > now and not everything:
                break
            del self._pending[span_id]
            trace = self._root_trace(held)
            self._out(span_id, held.parent, trace)
            if trace != held.trace:
                self.counts["rekeyed"] += 1
            out.append((held.item, trace))
        return out

    def _root_trace(self, held: _Held[T]) -> bytes:
        """The trace id of the highest ancestor held or gone out (the span's own if none)."""
        trace, parent = held.trace, held.parent
        for _ in range(64):  # a chain that long is a loop, or not worth following further
            if parent is None:
                break
            if (up := self._pending.get(parent)) is not None:
                trace, parent = up.trace, up.parent
                continue
            if (t := self._seen.get(parent)) is not None:
                return t
            break
        return trace

    def _out(self, span_id: bytes, parent_id: bytes | None, trace: bytes) -> None:
        self._seen[span_id] = trace
        if len(self._seen) > self.max_seen:
            self._seen.popitem(last=False)
        if parent_id is not None and parent_id not in self._seen and parent_id not in self._pending:
            self._unmatched[parent_id] = None
            if len(self._unmatched) > self.max_seen:
                self._unmatched.popitem(last=False)


def joiner_families(j: TraceJoiner[Any]) -> Iterator[Metric]:
    """The joiner's own counters: spans in, spans whose trace id it changed, spans that could
    not wait (table full), spans whose children had gone out before them; spans waiting."""
    spans = CounterMetricFamily("podscope_trace_join_spans", "Spans through the trace joiner, "
                                "by what happened to them", labels=["outcome"])
    c = j.counts
    spans.add_metric(["rekeyed"], c["rekeyed"])
    spans.add_metric(["kept"], c["spans"] - c["rekeyed"] - len(j))
    spans.add_metric(["overflow"], c["overflow"])
    spans.add_metric(["late"], c["late"])
    yield spans
    yield GaugeMetricFamily("podscope_trace_join_pending_spans",
                            "Spans waiting for their parents' trace ids", value=len(j))


MAX_TREES = 10_000  # trees being gathered at once (the oldest goes out first past it)


class Trees:
    """Request records to whole trees: the joiner gives each span its tree's trace id, then a
    tree is complete when no span came for it in `quiet` seconds."""

    def __init__(self, hold: float = 2.0, quiet: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.joiner: TraceJoiner[dict[str, Any]] = TraceJoiner(hold=hold, clock=clock)
        self.quiet = quiet
        self.clock = clock
        self._trees: dict[str, tuple[float, list[dict[str, Any]]]] = {}

    def add(self, rec: dict[str, Any]) -> None:
        if not rec.get("trace_id") or not rec.get("span_id"):
            self._trees[f"-{id(rec)}"] = (self.clock(), [rec])  # no link: a tree of one
            return
        parent = rec.get("parent_span_id")
        self.joiner.add(bytes.fromhex(rec["span_id"]), bytes.fromhex(parent) if parent else None,
                        bytes.fromhex(rec["trace_id"]), rec)

    def take(self, everything: bool = False) -> list[list[dict[str, Any]]]:
        now = self.clock()
        for rec, trace in self.joiner.take(everything):
            key = trace.hex()
            rec["trace_id"] = key
            self._trees.setdefault(key, (now, []))[1].append(rec)
            self._trees[key] = (now, self._trees[key][1])
        done = [k for k, (t, _) in self._trees.items()
                if everything or now - t >= self.quiet or len(self._trees) > MAX_TREES]
        return [self._trees.pop(k)[1] for k in done]


def tree_order(recs: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(depth, record) in tree order: each span after its parent, siblings by start time;
    spans whose parent is not here are roots."""
    ids = {r.get("span_id") for r in recs}
    kids: dict[str | None, list[dict[str, Any]]] = {}
    for r in sorted(recs, key=lambda r: r["time"]):
        p = r.get("parent_span_id")
        kids.setdefault(p if p in ids else None, []).append(r)
    out: list[tuple[int, dict[str, Any]]] = []

    def walk(r: dict[str, Any], depth: int) -> None:
        out.append((depth, r))
        for c in kids.get(r.get("span_id"), []) if r.get("span_id") else []:
            walk(c, depth + 1)

    for root in kids.get(None, []):
        walk(root, 0)
    return out


# what the web page shows of a span (no headers, no bodies: the path is already redacted)
_VIEW_FIELDS = ("time", "duration_seconds", "role", "method", "path", "route", "status",
                "grpc_status", "protocol", "peer_addr", "peer_port", "span_id",
                "parent_span_id")


class SlowTrees:
    """For the web page: the slowest whole requests of the last `window` seconds, the `per_pod`
    slowest for every pod a tree touches (at most `max_pods` pods: past them the pod with the
    fewest slow trees is forgotten). `add` takes the agent's request records, `take` (once a
    second) completes trees; `view` is /api/v1/traces."""

    def __init__(self, key_of: Callable[[dict[str, Any]], str], per_pod: int = 5,
                 max_pods: int = 500, window: float = 600.0, hold: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.key_of = key_of
        self.per_pod, self.max_pods, self.window = per_pod, max_pods, window
        self.clock = clock
        self.trees = Trees(hold=hold, quiet=1.0, clock=clock)
        # pod -> [(root duration, seen at, tree id)], slowest first; tree id -> its view
        self._by_pod: dict[str, list[tuple[float, float, str]]] = {}
        self._views: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def add(self, rec: dict[str, Any]) -> None:
        with self._lock:
            self.trees.add(rec)

    def take(self) -> None:
        now = self.clock()
        with self._lock:
            done = self.trees.take()
            for recs in done:
                self._keep(recs, now)
            self._expire(now)

    def _keep(self, recs: list[dict[str, Any]], now: float) -> None:
        order = tree_order(recs)
        roots = [r for d, r in order if d == 0]
        dur = max(r["duration_seconds"] for r in roots)
        pods = sorted({k for r in recs if (k := self.key_of(r))})
        tid = f"{recs[0].get('trace_id') or ''}/{roots[0].get('span_id') or id(roots[0])}"
        kept = False
        for pod in pods:
            lst = self._by_pod.setdefault(pod, [])
            if len(lst) < self.per_pod or dur > lst[-1][0]:
                lst.append((dur, now, tid))
                lst.sort(key=lambda x: -x[0])
                del lst[self.per_pod:]
                kept = kept or any(t == tid for _d, _s, t in lst)
        if kept:
            self._views[tid] = {
                "trace_id": recs[0].get("trace_id"), "duration_seconds": dur,
                "time": min(r["time"] for r in recs), "pods": pods,
                "spans": [{"depth": d, "pod": self.key_of(r),
                           **{f: r.get(f) for f in _VIEW_FIELDS}} for d, r in order]}
        if len(self._by_pod) > self.max_pods:
            fewest = min(self._by_pod, key=lambda p: len(self._by_pod[p]))
            del self._by_pod[fewest]

    def _expire(self, now: float) -> None:
        for pod in list(self._by_pod):
            lst = [x for x in self._by_pod[pod] if now - x[1] < self.window]
            if lst:
                self._by_pod[pod] = lst
            else:
                del self._by_pod[pod]
        live = {t for lst in self._by_pod.values() for _d, _s, t in lst}
        for tid in [t for t in self._views if t not in live]:
            del self._views[tid]

    def view(self) -> dict[str, Any]:
        with self._lock:
            trees = sorted(self._views.values(), key=lambda v: -v["duration_seconds"])
        return {"window_seconds": self.window, "per_pod": self.per_pod, "trees": trees}

    def __len__(self) -> int:
        return len(self._views)
