"""The operator's view: per-pod golden signals and a service map, from the agent's own metric
families. Served as JSON at /api/v1/overview (the web page and `podscope top` read it).

Counters become rates over the last `window` seconds (snapshots are kept at most once a second);
latency quantiles come from the histogram buckets' increase over that window, or from all
buckets when the window has no requests. Pods are keyed by namespace/name when the Kubernetes
API named them, else by UID, else by container or cgroup (plain hosts).

Service-map edges come from the client side of HTTP, gRPC and database and cache operations:
(client pod) -> (server address, port), with the protocols seen on it (http, grpc, postgresql,
mysql, redis, memcached); an address that is a pod of this node (status.podIPs) becomes that
pod, any other is grouped under one "external" node with its addresses listed. A database
operation is an error when it has a status (an SQLSTATE, an error number, a Redis prefix).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import Metric

from .metadata.store import MetadataStore

EXTERNAL = "external"


@dataclass
class _PodTotals:
    requests: float = 0.0  # server side: HTTP and gRPC, database and cache operations
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    retransmits: float = 0.0
    drops: float = 0.0
    connections: float = 0.0
    resets: float = 0.0
    accept_queue: float = 0.0
    accept_limit: float = 0.0
    kernel_errors: float = 0.0  # fork and mount failures, OOM kills, fatal signals
    throttled: float = 0.0  # seconds
    runq: dict[float, float] = field(default_factory=dict)
    pressure: dict[str, float] = field(default_factory=dict)  # resource -> stalled (some) seconds
    reclaim: float = 0.0  # seconds its tasks spent in memory reclaim


@dataclass
class _EdgeTotals:
    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)
    peers: set[str] = field(default_factory=set)
    protocols: set[str] = field(default_factory=set)


def pod_key(labels: dict[str, str]) -> str:
    if labels.get("k8s_pod_name"):
        return f"{labels.get('k8s_namespace_name', '')}/{labels['k8s_pod_name']}"
    if labels.get("k8s_pod_uid"):
        return f"pod:{labels['k8s_pod_uid']}"
    if labels.get("pod_name"):  # a runtime's pod outside Kubernetes: one unit, like a pod
        return f"pod:{labels['pod_name']}"
    if labels.get("container_id"):
        name = labels.get("container_name") or labels["container_id"][:12]
        return f"container:{name}"
    cgroup = labels.get("cgroup", "")
    if not cgroup:
        return ""
    # processes outside pods and containers: the node itself
    return "node:" + (labels.get("process_name") or ("(root cgroup)" if cgroup == "/" else cgroup))


# a pod's requests: HTTP and gRPC it served, and database or cache operations (a database pod)
_SERVER_FAMILIES = ("http_server_request_duration_seconds", "rpc_server_duration_seconds",
                    "podscope_db_server_operation_duration_seconds")
_CLIENT_FAMILIES = ("http_client_request_duration_seconds", "rpc_client_duration_seconds",
                    "db_client_operation_duration_seconds")


def _error(fam: str, labels: dict[str, str]) -> bool:
    if fam.startswith(("db_", "podscope_db_")):
        return bool(labels.get("db_response_status_code"))
    if fam.startswith("rpc_"):
        code = labels.get("rpc_grpc_status_code", "")
        return code not in ("0", "")
    code = labels.get("http_response_status_code", "")
    if fam.startswith("http_server"):
        return code.startswith("5")
    return code[:1] in ("4", "5")


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile of cumulative (le -> count) buckets, interpolated as Prometheus does."""
    items = sorted(buckets.items())
    if not items or items[-1][1] <= 0:
        return None
    total = items[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in items:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


def bucket_delta(now_b: dict[float, float], then_b: dict[float, float] | None
                 ) -> dict[float, float]:
    """Cumulative buckets' increase since `then_b`. A bucket missing from the older snapshot was
    above every value then (the exposition leaves those out), so its count then was the total."""
    if not then_b:
        return dict(now_b)
    then_total = then_b.get(float("inf"), 0.0)
    return {le: c - then_b.get(le, then_total) for le, c in now_b.items()}


def window_buckets(now_b: dict[float, float], then_b: dict[float, float] | None
                   ) -> dict[float, float]:
    """The buckets' increase over the window (all of them when nothing came in)."""
    d = bucket_delta(now_b, then_b)
    return d if then_b and d.get(float("inf"), 0.0) > 0 else now_b


class Overview:
    def __init__(self, source: Callable[[], Iterable[Metric]], store: MetadataStore,
                 window: float = 10.0):
        self.source = source
        self.store = store
        self.window = window
        self._history: deque[tuple[float, dict[str, Any]]] = deque()
        self._lock = threading.Lock()

    def totals(self) -> dict[str, Any]:
        pods: dict[str, _PodTotals] = {}
        info: dict[str, dict[str, str]] = {}
        edges: dict[tuple[str, str], _EdgeTotals] = {}
        peers: dict[str, str] = {}  # server address -> pod id or EXTERNAL, once per address
        for fam in self.source():
            name = fam.name
            for s in fam.samples:
                labels = s.labels
                key = pod_key(labels)
                if not key:
                    continue
                if key not in info:
                    info[key] = {k: labels.get(k, "") for k in (
                        "k8s_namespace_name", "k8s_pod_name", "k8s_pod_uid",
                        "k8s_workload_kind", "k8s_workload_name", "container_name",
                        "process_name", "cgroup")}
                p = pods.setdefault(key, _PodTotals())
                if name in _SERVER_FAMILIES:
                    if s.name.endswith("_count"):
                        p.requests += s.value
                        if _error(name, labels):
                            p.errors += s.value
                    elif s.name.endswith("_bucket"):
                        le = float(labels["le"])
                        p.buckets[le] = p.buckets.get(le, 0.0) + s.value
                elif name in _CLIENT_FAMILIES:
                    addr = labels.get("server_address", "")
                    to = peers.get(addr, "")
                    if not to:
                        peer = self.store.pod_by_ip(addr)
                        to = peers[addr] = f"{peer.namespace}/{peer.name}" if peer else EXTERNAL
                    e = edges.setdefault((key, to), _EdgeTotals())
                    e.peers.add(f"{addr}:{labels.get('server_port', '')}")
                    e.protocols.add(labels.get("db_system_name") or name.split("_", 1)[0]
                                    .replace("rpc", "grpc"))
                    if s.name.endswith("_count"):
                        e.requests += s.value
                        if _error(name, labels):
                            e.errors += s.value
                    elif s.name.endswith("_bucket"):
                        le = float(labels["le"])
                        e.buckets[le] = e.buckets.get(le, 0.0) + s.value
                elif name == "podscope_tcp_retransmits":
                    p.retransmits += s.value
                elif name == "podscope_packet_drops":
                    p.drops += s.value
                elif name == "podscope_tcp_connections_opened":
                    p.connections += s.value
                elif name in ("podscope_tcp_resets_sent", "podscope_tcp_resets_received"):
                    p.resets += s.value
                elif name == "podscope_tcp_accept_queue_depth":
                    p.accept_queue = max(p.accept_queue, s.value)
                elif name == "podscope_tcp_accept_queue_limit":
                    p.accept_limit = max(p.accept_limit, s.value)
                elif name in ("podscope_process_fork_failures", "podscope_mount_failures",
                              "podscope_oom_kills", "podscope_process_signal_exits"):
                    p.kernel_errors += s.value
                elif name == "podscope_cpu_throttled_seconds":
                    p.throttled += s.value
                elif name == "podscope_pressure_stalled_seconds" and labels.get("kind") == "some":
                    r = labels.get("resource", "")
                    p.pressure[r] = p.pressure.get(r, 0.0) + s.value
                elif name == "podscope_memory_reclaim_stall_seconds" and s.name.endswith("_sum"):
                    p.reclaim += s.value
                elif name == "podscope_cpu_runqueue_delay_seconds" and s.name.endswith("_bucket"):
                    le = float(labels["le"])
                    p.runq[le] = p.runq.get(le, 0.0) + s.value
        return {"pods": pods, "info": info, "edges": edges}

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            cur = self.totals()
            while self._history and now - self._history[0][0] > self.window:
                self._history.popleft()
            if not self._history or now - self._history[-1][0] >= 1.0:
                self._history.append((now, cur))
            t0, old = self._history[0]
        dt = now - t0
        return self._view(cur, old if dt > 0.5 else None, dt)

    def _view(self, cur: dict[str, Any], old: dict[str, Any] | None, dt: float) -> dict[str, Any]:
        def rate(a: float, b: float) -> float:
            return max(a - b, 0.0) / dt if old is not None and dt > 0 else 0.0

        pods_out = []
        for key, p in cur["pods"].items():
            o = old["pods"].get(key) if old else None
            i = cur["info"][key]
            req_rate = rate(p.requests, o.requests if o else 0.0)
            err_rate = rate(p.errors, o.errors if o else 0.0)
            b = window_buckets(p.buckets, o.buckets if o else None)
            workload = (f"{i['k8s_workload_kind']}/{i['k8s_workload_name']}"
                        if i["k8s_workload_name"] else "")
            pods_out.append({
                "id": key, "namespace": i["k8s_namespace_name"], "name": i["k8s_pod_name"],
                "uid": i["k8s_pod_uid"], "workload": workload,
                "process": i["process_name"], "container": i["container_name"],
                "requests_total": p.requests, "errors_total": p.errors,
                "requests_per_second": req_rate,
                "error_ratio": (err_rate / req_rate) if req_rate else (
                    p.errors / p.requests if p.requests else 0.0),
                "p50_seconds": quantile(0.5, b), "p99_seconds": quantile(0.99, b),
                "latency_buckets": sorted([le, c] for le, c in p.buckets.items()
                                          if le != float("inf")),
                "retransmits_per_second": rate(p.retransmits, o.retransmits if o else 0.0),
                "retransmits_total": p.retransmits,
                "drops_per_second": rate(p.drops, o.drops if o else 0.0),
                "drops_total": p.drops,
                "connections_per_second": rate(p.connections, o.connections if o else 0.0),
                "resets_per_second": rate(p.resets, o.resets if o else 0.0),
                "accept_queue_depth": p.accept_queue, "accept_queue_limit": p.accept_limit,
                "kernel_errors_total": p.kernel_errors,
                "kernel_errors_per_second": rate(p.kernel_errors,
                                                 o.kernel_errors if o else 0.0),
                "throttled_ratio": rate(p.throttled, o.throttled if o else 0.0),
                "runqueue_p99_seconds": quantile(0.99, window_buckets(
                    p.runq, o.runq if o else None)),
                # share of the window some of its tasks were stalled, per resource (PSI)
                "pressure_ratio": {r: rate(v, o.pressure.get(r, 0.0) if o else 0.0)
                                   for r, v in sorted(p.pressure.items())},
            })
            ratios = pods_out[-1]["pressure_ratio"]
            pods_out[-1]["pressure_max_ratio"] = max(ratios.values(), default=0.0)
            for r in ("cpu", "memory", "io"):  # one number each, for trigger rules
                pods_out[-1][f"{r}_pressure_ratio"] = ratios.get(r, 0.0)
            pods_out[-1]["reclaim_seconds_per_second"] = rate(p.reclaim, o.reclaim if o else 0.0)
        edges_out = []
        for (src, dst), e in cur["edges"].items():
            o = old["edges"].get((src, dst)) if old else None
            req_rate = rate(e.requests, o.requests if o else 0.0)
            b = window_buckets(e.buckets, o.buckets if o else None)
            edges_out.append({
                "from": src, "to": dst, "peers": sorted(e.peers),
                "protocols": sorted(e.protocols),
                "requests_total": e.requests, "errors_total": e.errors,
                "requests_per_second": req_rate,
                "error_ratio": e.errors / e.requests if e.requests else 0.0,
                "p99_seconds": quantile(0.99, b),
            })
        pods_out.sort(key=lambda x: -x["requests_total"])
        return {"node": self.store.node, "time": time.time(), "window_seconds": dt,
                "pods": pods_out, "edges": edges_out}
