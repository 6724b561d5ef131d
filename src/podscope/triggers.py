"""Triggers: rules that switch the costly probes on when a pod looks wrong, for a bounded window
and a bounded budget, then off again, and keep what they saw as a report.

A rule (config `[[triggers]]`) watches one signal of the per-pod overview, checked every
`trigger_interval` seconds (5) over a window of twice that (at least 5 s):
when it stays above `above` for `for_seconds`, the pod's containers are profiled for
`window_seconds` (on-CPU stacks, and off-CPU stacks unless `off_cpu = false`), then every probe is
detached. The report (report.json with the rule, the value, the pod's signals when it fired and
the profile summary; cpu.svg/.folded, offcpu.svg/.folded) goes to `reports_dir/<id>/` and is
listed at /api/reports and on the web page. One deep window runs at a time; a rule waits
`cooldown_seconds` per pod after firing; at most `reports_per_hour` reports are made."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .metadata.store import MetadataStore
from .trace import pod_matches

log = logging.getLogger("podscope.triggers")

# rule signal -> field of an overview pod
SIGNALS = {
    "http_p99_seconds": "p99_seconds",
    "error_ratio": "error_ratio",
    "retransmits_per_second": "retransmits_per_second",
    "drops_per_second": "drops_per_second",
    "runqueue_p99_seconds": "runqueue_p99_seconds",
    "throttled_ratio": "throttled_ratio",
    "kernel_errors_per_second": "kernel_errors_per_second",
    # pressure stall information: share of the window some task of the pod was stalled
    "pressure_max_ratio": "pressure_max_ratio",
    "cpu_pressure_ratio": "cpu_pressure_ratio",
    "memory_pressure_ratio": "memory_pressure_ratio",
    "io_pressure_ratio": "io_pressure_ratio",
    "reclaim_seconds_per_second": "reclaim_seconds_per_second",
}


@dataclass(frozen=True)
class Rule:
    name: str
    signal: str
    above: float
    for_seconds: float = 10.0
    pod: str = ""  # namespace/name, name, UID or container id prefix; "" = every pod
    window_seconds: float = 10.0
    off_cpu: bool = True
    blocked_reasons: bool = True  # server requests' blocked time by reason, in the window
    net_probes: bool = True  # network stack latency (transmit, socket queue), in the window
    cooldown_seconds: float = 300.0

    @classmethod
    def parse(cls, raw: Any) -> Rule:
        if not isinstance(raw, dict):
            raise ValueError(f"trigger {raw!r}: expected a table")
        from .config import parse_bool, parse_seconds

        name = raw.get("name", "?")
        known = {f.name: f for f in fields(cls)}
        unknown = set(raw) - set(known)
        if unknown:
            raise ValueError(f"trigger {name}: unknown settings {sorted(unknown)}")
        missing = [k for k in ("name", "signal", "above") if k not in raw]
        if missing:
            raise ValueError(f"trigger {name}: missing {', '.join(missing)}")
        vals: dict[str, Any] = {}
        for k, v in raw.items():
            where = f"trigger {name}: {k}"
            kind = str(known[k].type)
            if kind == "bool":
                vals[k] = parse_bool(v, where)
            elif k.endswith("_seconds"):
                vals[k] = parse_seconds(v, where)
            elif kind == "float":
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise ValueError(f"{where} = {v!r}: expected a number")
                vals[k] = float(v)
            elif not isinstance(v, str):
                raise ValueError(f"{where} = {v!r}: expected a string")
            else:
                vals[k] = v
        r = cls(**vals)
        if r.signal not in SIGNALS:
            raise ValueError(f"trigger {r.name}: signal {r.signal!r} is not one of "
                             f"{sorted(SIGNALS)}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", r.name):
            raise ValueError(f"trigger {r.name!r}: names are letters, digits, '_', '.', '-'")
        if not 0 < r.window_seconds <= 300:
            raise ValueError(f"trigger {r.name}: window_seconds must be in (0, 300]")
        return r


# (pod uid, rule, report directory) -> summary: runs the deep probes for the rule's window
Deep = Callable[[str, Rule, str], dict[str, Any]]


def pressure_summary(before: dict[str, Any], after: dict[str, Any],
                     seconds: float) -> dict[str, Any]:
    """What the pod's memory, I/O and pressure did over a window (PressureCollector.pod_state
    before and after it): the share of the window stalled per resource and kind (PSI), reclaim
    stalls and block I/O requests (count, total, mean, p50, p99), memory.high events, refaults."""
    dt = max(seconds, 1e-9)
    stalled = {res: {k: round(max(v - before["psi"].get(res, {}).get(k, 0.0), 0.0) / dt, 6)
                     for k, v in kinds.items()} for res, kinds in after["psi"].items()}

    def hists(name: str) -> list[dict[str, Any]]:
        out = []
        for key, (slots, total, nbytes) in sorted(after[name].items()):
            old = before[name].get(key, [[0] * len(slots), 0, 0])
            d = [a - b for a, b in zip(slots, old[0], strict=True)]
            n = sum(d)
            if n <= 0:
                continue
            row: dict[str, Any] = dict(zip(("device", "direction"), key.split(" "), strict=True)) \
                if name == "io" else {"kind": key}
            row.update(count=n, seconds=(total - old[1]) / 1e9,
                       mean_seconds=(total - old[1]) / n / 1e9,
                       p50_seconds=_quantile(0.5, d, n, 1e-9),
                       p99_seconds=_quantile(0.99, d, n, 1e-9))
            if name == "io":
                row["bytes"] = nbytes - old[2]
            out.append(row)
        return out

    return {"stalled_ratio": stalled, "reclaim": hists("reclaim"), "io_requests": hists("io"),
            "memory_high_events": after["memory_high_events"] - before["memory_high_events"],
            "refaults": after["refaults"] - before["refaults"]}


def _quantile(p: float, d: list[int], n: int, unit: float) -> float:
    """A quantile of log2 buckets (slot i holds values below 2**i units): its bucket's bound."""
    cum = 0
    for i, c in enumerate(d):
        cum += c
        if cum >= p * n:
            return (2 ** i) * unit
    return (2 ** (len(d) - 1)) * unit


def net_summary(before: dict[Any, tuple[list[int], int]], after: dict[Any, tuple[list[int], int]],
                uid: str) -> list[dict[str, Any]]:
    """The pod's network latency histograms over the window: count, mean, p50, p99 per kind
    and device (log2 buckets: a quantile is its bucket's upper bound)."""
    out = []
    for (kind, labels, dev), (slots, total) in sorted(after.items(), key=lambda kv: str(kv[0])):
        if labels.k8s_pod_uid != uid:
            continue
        old_slots, old_total = before.get((kind, labels, dev), ([0] * len(slots), 0))
        d = [a - b for a, b in zip(slots, old_slots, strict=True)]
        n = sum(d)
        if n <= 0:
            continue
        out.append({"kind": kind.removeprefix("NETLAT_").lower(), "device": dev, "count": n,
                    "mean_seconds": (total - old_total) / n * 1e-6,
                    "p50_seconds": _quantile(0.5, d, n, 1e-6),
                    "p99_seconds": _quantile(0.99, d, n, 1e-6)})
    return out


class Triggers:
    def __init__(self, rules: list[Rule], snapshot: Callable[[], dict[str, Any]],
                 store: MetadataStore, reports_dir: str, reports_per_hour: int = 6,
                 deep: Deep | None = None, interval: float = 5.0,
                 blocked_reasons: Callable[[bool], bool] | None = None,
                 net_probes: Callable[[bool], bool] | None = None,
                 net_view: Callable[[], dict[Any, tuple[list[int], int]]] | None = None,
                 pressure_view: Callable[[str], dict[str, Any]] | None = None):
        self.rules = rules
        self.snapshot = snapshot
        self.store = store
        self.dir = reports_dir
        self.per_hour = reports_per_hour
        self.deep = deep or self._profile
        self.interval = interval
        self.blocked_reasons = blocked_reasons  # switches the HTTP off-CPU probe
        self.net_probes = net_probes  # switches the network latency probe
        self.net_view = net_view  # its histograms now
        self.pressure_view = pressure_view  # a pod's PSI, reclaim and block I/O totals now
        self._since: dict[tuple[str, str], float] = {}
        self._last: dict[tuple[str, str], float] = {}
        self._made: deque[float] = deque()
        self._busy = threading.Lock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.active = 0  # deep windows running now
        os.makedirs(self.dir, exist_ok=True)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="triggers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        # a window still running ends when its profile does (bounded by window_seconds)
        if self._busy.acquire(timeout=330):
            self._busy.release()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check(time.monotonic())
            except Exception:  # the agent goes on without triggers for this round
                log.exception("trigger check failed")

    def check(self, now: float) -> None:
        snap = self.snapshot()
        for rule in self.rules:
            field = SIGNALS[rule.signal]
            for pod in snap.get("pods", []):
                if rule.pod and not pod_matches(
                        {"k8s_namespace_name": pod["namespace"], "k8s_pod_name": pod["name"],
                         "k8s_pod_uid": pod["uid"], "container_id": ""}, rule.pod):
                    continue
                if not pod.get("uid"):
                    continue  # not a pod (the host, a system cgroup): nothing to profile
                key = (rule.name, pod["uid"])
                value = pod.get(field)
                if value is None or value <= rule.above:
                    self._since.pop(key, None)
                    continue
                since = self._since.setdefault(key, now)
                if now - since >= rule.for_seconds:
                    self._fire(rule, pod, float(value), now)

    def _fire(self, rule: Rule, pod: dict[str, Any], value: float, now: float) -> None:
        key = (rule.name, pod["uid"])
        if now - self._last.get(key, -1e18) < rule.cooldown_seconds:
            return
        while self._made and now - self._made[0] > 3600:
            self._made.popleft()
        if len(self._made) >= self.per_hour or not self._busy.acquire(blocking=False):
            self.skipped[rule.name] = self.skipped.get(rule.name, 0) + 1
            return
        self._last[key] = now
        self._made.append(now)
        self.fired[rule.name] = self.fired.get(rule.name, 0) + 1
        log.warning("trigger %s: pod %s %s = %.4g > %g for %gs: deep probes on for %gs",
                    rule.name, pod.get("name") or pod["uid"], rule.signal, value, rule.above,
                    rule.for_seconds, rule.window_seconds)
        threading.Thread(target=self._window, args=(rule, pod, value), daemon=True,
                         name=f"trigger-{rule.name}").start()

    def _window(self, rule: Rule, pod: dict[str, Any], value: float) -> None:
        started = time.time()
        rid = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(started))}-{rule.name}-{pod['uid'][:8]}"
        out = os.path.join(self.dir, rid)
        report: dict[str, Any] = {
            "id": rid, "rule": asdict(rule), "signal": rule.signal, "value": value,
            "threshold": rule.above, "pod": {k: v for k, v in pod.items()
                                             if k != "latency_buckets"},
            "started": started, "status": "running"}
        with self._lock:
            self.active += 1
        switched = net_on = False
        net_before: dict[Any, tuple[list[int], int]] = {}
        pressure_before = None
        try:
            os.makedirs(out, exist_ok=True)
            probes = ["on_cpu_stacks"] + (["off_cpu_stacks"] if rule.off_cpu else [])
            if rule.blocked_reasons and self.blocked_reasons is not None:
                switched = self.blocked_reasons(True)
                if switched:
                    probes.append("request_blocked_reasons")
            if rule.net_probes and self.net_probes is not None:
                net_before = self.net_view() if self.net_view else {}
                net_on = self.net_probes(True)
                if net_on:
                    probes.append("network_latency")
            report["probes"] = probes
            self._write(out, report)
            if self.pressure_view is not None:
                pressure_before = (time.monotonic(), self.pressure_view(pod["uid"]))
            report.update(status="done", profile=self.deep(pod["uid"], rule, out))
            if net_on and self.net_view is not None:
                report["network"] = net_summary(net_before, self.net_view(), pod["uid"])
            if pressure_before is not None and self.pressure_view is not None:
                t0, before = pressure_before
                report["pressure"] = pressure_summary(before, self.pressure_view(pod["uid"]),
                                                      time.monotonic() - t0)
        except Exception as e:
            log.error("trigger %s: deep probes failed: %s", rule.name, e)
            report.update(status="failed", error=str(e))
        finally:
            if switched:
                assert self.blocked_reasons is not None
                self.blocked_reasons(False)
            if net_on:
                assert self.net_probes is not None
                self.net_probes(False)
            with self._lock:
                self.active -= 1
            report["ended"] = time.time()
            try:
                self._write(out, report)
            finally:
                self._busy.release()

    def _profile(self, uid: str, rule: Rule, out: str) -> dict[str, Any]:
        from .collectors.profile import Profiler, as_dict
        from .profiling import pod_cgroups, write

        chosen = pod_cgroups(self.store, uid)
        if not chosen:
            raise RuntimeError(f"no container of pod {uid} on this node")
        prof = Profiler(list(chosen), off_cpu=rule.off_cpu)
        prof.start()
        try:
            self._stop.wait(rule.window_seconds)
        finally:
            p = prof.stop()
        files = write(p, out, f"{rule.name}: pod {uid}")
        return {**as_dict(p), "files": sorted(os.path.basename(f) for f in files.values())}

    @staticmethod
    def _write(out: str, report: dict[str, Any]) -> None:
        tmp = os.path.join(out, ".report.json")
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, os.path.join(out, "report.json"))

    def metrics(self) -> list[Metric]:
        fired = CounterMetricFamily("podscope_trigger_fired_total",
                                    "Deep-probe windows a trigger rule started", labels=["rule"])
        skipped = CounterMetricFamily("podscope_trigger_skipped_total",
                                      "Times a rule held but no window started (another one "
                                      "was running, or the hourly budget was spent)",
                                      labels=["rule"])
        for rule in self.rules:
            fired.add_metric([rule.name], self.fired.get(rule.name, 0))
            skipped.add_metric([rule.name], self.skipped.get(rule.name, 0))
        active = GaugeMetricFamily("podscope_deep_probes_active",
                                   "Deep-probe windows running now")
        active.add_metric([], self.active)
        return [fired, skipped, active]


# ---- what the web page and /api/reports read (trigger reports and `profile --reports-dir`) ----

def list_reports(reports_dir: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    try:
        names = sorted(os.listdir(reports_dir), reverse=True)
    except OSError:
        return out
    for name in names[:200]:
        try:
            with open(os.path.join(reports_dir, name, "report.json")) as f:
                r = json.load(f)
            r["files"] = sorted(x for x in os.listdir(os.path.join(reports_dir, name))
                                if x.endswith((".svg", ".folded", ".json")) and x[0] != ".")
        except (OSError, ValueError):
            continue
        out.append(r)
    return out


def report_file(reports_dir: str, rel: str) -> tuple[bytes, str] | None:
    """GET /api/reports/<id>/<file>: only files of a report, never a path outside."""
    rid, _, name = rel.partition("/")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", rid) or rid.startswith(".") or not re.fullmatch(
            r"[a-z]+\.(svg|folded|json)", name):
        return None
    try:
        with open(os.path.join(reports_dir, rid, name), "rb") as f:
            body = f.read()
    except OSError:
        return None
    ctype = {"svg": "image/svg+xml", "json": "application/json"}.get(
        name.rsplit(".", 1)[1], "text/plain; charset=utf-8")
    return body, ctype
