"""Latency baselines per pod: how its server-side latency looks when it is idle and when it is
under load, and how it looks now, from the same histograms the overview reads.

Every `interval` seconds each pod's request rate and latency histogram over the interval are
kept (the last `keep` intervals: 20 minutes at 10 s). Load is relative to the pod itself: its
intervals at up to 20 % of its busiest one are "idle" (except next to a loaded one: load began
or ended within it), those at 50 % or more "load". A report
merges the intervals of each class and the latest one, and gives count, rate, p50 and p99."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .overview import bucket_delta, quantile

IDLE_BELOW = 0.2  # of the busiest interval's rate
LOAD_FROM = 0.5


@dataclass
class _Interval:
    seconds: float
    count: float
    buckets: dict[float, float]  # cumulative, over the interval

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


def _next_to_load(seq: list[_Interval], n: int, peak: float) -> bool:
    """An interval beside a loaded one is where load started or stopped: part of it was under
    load, so it is neither idle nor load."""
    return any(0 <= m < len(seq) and seq[m].rate >= LOAD_FROM * peak for m in (n - 1, n + 1))


def _merge(intervals: list[_Interval]) -> dict[str, Any] | None:
    if not intervals:
        return None
    merged: dict[float, float] = {}
    for i in intervals:
        for le, c in i.buckets.items():
            merged[le] = merged.get(le, 0.0) + c
    count = sum(i.count for i in intervals)
    secs = sum(i.seconds for i in intervals)
    return {"intervals": len(intervals), "requests": count,
            "requests_per_second": count / secs if secs else 0.0,
            "p50_seconds": quantile(0.5, merged), "p99_seconds": quantile(0.99, merged)}


class Baselines:
    def __init__(self, totals: Callable[[], dict[str, Any]], interval: float = 10.0,
                 keep: int = 120):
        self.totals = totals
        self.interval = interval
        self.keep = keep
        self._last: dict[str, tuple[float, float, dict[float, float]]] = {}
        self._ring: dict[str, deque[_Interval]] = {}
        self._info: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.tick(time.monotonic())
        self._thread = threading.Thread(target=self._run, name="baselines", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick(time.monotonic())
            except Exception:  # noqa: BLE001 - the next interval tries again
                pass

    def tick(self, now: float) -> None:
        cur = self.totals()
        with self._lock:
            for key, p in cur["pods"].items():
                self._info[key] = cur["info"][key]
                last = self._last.get(key)
                self._last[key] = (now, p.requests, dict(p.buckets))
                if last is None:
                    continue
                t0, req0, b0 = last
                n = p.requests - req0
                if n < 0:  # series restarted: start over
                    continue
                ring = self._ring.setdefault(key, deque(maxlen=self.keep))
                ring.append(_Interval(now - t0, n, bucket_delta(p.buckets, b0) if n else {}))
            # a pod whose series are gone (retired pod_grace after it ended) leaves no baseline
            for key in [k for k in self._last if k not in cur["pods"]]:
                self._last.pop(key, None)
            for key in [k for k in self._ring if k not in cur["pods"]]:
                self._ring.pop(key, None)
            for key in [k for k in self._info if k not in cur["pods"]]:
                self._info.pop(key, None)

    def size(self) -> int:
        return len(self._last) + len(self._ring) + len(self._info)

    def view(self) -> dict[str, Any]:
        out = []
        with self._lock:
            for key, ring in self._ring.items():
                busy = [i for i in ring if i.count > 0]
                if not busy:
                    continue
                peak = max(i.rate for i in busy)
                info = self._info.get(key, {})
                seq = list(ring)
                idle = [i for n, i in enumerate(seq) if i.count > 0
                        and i.rate <= IDLE_BELOW * peak and not _next_to_load(seq, n, peak)]
                out.append({
                    "id": key, "namespace": info.get("k8s_namespace_name", ""),
                    "name": info.get("k8s_pod_name", ""), "uid": info.get("k8s_pod_uid", ""),
                    "peak_requests_per_second": peak,
                    "idle": _merge(idle),
                    "load": _merge([i for i in busy if i.rate >= LOAD_FROM * peak]),
                    "now": _merge([ring[-1]] if ring[-1].count > 0 else []),
                })
        return {"interval_seconds": self.interval, "kept_intervals": self.keep,
                "idle_below": IDLE_BELOW, "load_from": LOAD_FROM, "pods": out}


def format_report(view: dict[str, Any], pods: list[dict[str, Any]]) -> str:
    def ms(v: float | None) -> str:
        return "–" if v is None else f"{v * 1e3:.1f}ms"

    lines = [f"{'pod':<40} {'':<5} {'req/s':>8} {'requests':>9} {'p50':>9} {'p99':>9}"]
    for p in pods:
        name = f"{p['namespace']}/{p['name']}" if p["name"] else (p["uid"] or p["id"])
        for cls in ("idle", "load", "now"):
            c = p.get(cls)
            if c is None:
                lines.append(f"{name[:40]:<40} {cls:<5} {'–':>8}")
            else:
                lines.append(f"{name[:40]:<40} {cls:<5} {c['requests_per_second']:8.1f} "
                             f"{c['requests']:9.0f} {ms(c['p50_seconds']):>9} "
                             f"{ms(c['p99_seconds']):>9}")
            name = ""
    lines.append(f"(idle: intervals at <= {view['idle_below']:.0%} of the pod's busiest, load: "
                 f">= {view['load_from']:.0%}; {view['interval_seconds']:g} s intervals)")
    return "\n".join(lines)


def report_cli(agent: str, pod: str | None, as_json: bool) -> int:
    """`podscope report`: the baselines of a running agent (GET /api/v1/baselines)."""
    import json
    import urllib.error
    import urllib.request

    from .metadata.resolve import Target, resolve

    url = agent.rstrip("/") + "/api/v1/baselines"
    if "://" not in url:
        url = "http://" + url
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            view = json.loads(r.read())
    except (OSError, ValueError, urllib.error.URLError) as e:
        raise ValueError(f"cannot read {url}: {e} (is an agent running with --listen?)") from None
    pods = view["pods"]
    if pod:  # the agent's pods: the same matching as every command's
        targets = [Target(p["uid"], p["namespace"], p["name"], frozenset()) for p in pods]
        t = resolve(None, pod, pods=targets)
        pods = [p for p in pods if p["uid"] == t.uid]
    if as_json:
        print(json.dumps({**view, "pods": pods}))
    else:
        print(format_report(view, pods))
    return 0
