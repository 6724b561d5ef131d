"""OpenTelemetry export over OTLP/HTTP (protobuf), with the OpenTelemetry SDK's data model and
exporters: one span per request record, and every metric family every `interval` seconds.

Each pod (container, or process outside Kubernetes) is an OpenTelemetry resource with the k8s
resource attributes (`k8s.namespace.name`, `k8s.pod.name`, `k8s.pod.uid`,
`k8s.container.name`, `k8s.node.name`, `k8s.deployment.name`/..., `container.id`,
`service.name`): the exporter groups spans and data points by resource. Spans carry the HTTP and
RPC semantic-convention attributes; their status is an error for a 5xx answer on the server
side, a 4xx/5xx on the client side, and the gRPC codes the conventions name.

Spans go through the SDK's BatchSpanProcessor (bounded queue: when the collector is slow or
away, spans are dropped and counted, never piled up).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from prometheus_client.core import Metric as PromMetric

from .. import __version__
from ..metadata.store import LABEL_NAMES
from ..traces import TraceJoiner, joiner_families

log = logging.getLogger("podscope.otlp")

SCOPE = InstrumentationScope("podscope", __version__)

# Prometheus names of the semantic-convention metrics -> their OpenTelemetry names
METRIC_NAMES = {
    "http_server_request_duration_seconds": "http.server.request.duration",
    "http_client_request_duration_seconds": "http.client.request.duration",
    "rpc_server_duration_seconds": "rpc.server.duration",
    "rpc_client_duration_seconds": "rpc.client.duration",
    "db_client_operation_duration_seconds": "db.client.operation.duration",
}
ATTRIBUTE_NAMES = {
    "http_request_method": "http.request.method",
    "http_response_status_code": "http.response.status_code",
    "http_route": "http.route",
    "network_protocol_version": "network.protocol.version",
    "url_scheme": "url.scheme",
    "server_address": "server.address",
    "server_port": "server.port",
    "rpc_system": "rpc.system",
    "rpc_service": "rpc.service",
    "rpc_method": "rpc.method",
    "rpc_grpc_status_code": "rpc.grpc.status_code",
    "db_system_name": "db.system.name",
    "db_operation_name": "db.operation.name",
    "db_response_status_code": "db.response.status_code",
    "db_collection_name": "db.collection.name",
    "db_namespace": "db.namespace",
}
_WORKLOAD_ATTR = {"Deployment": "k8s.deployment.name", "StatefulSet": "k8s.statefulset.name",
                  "DaemonSet": "k8s.daemonset.name", "ReplicaSet": "k8s.replicaset.name",
                  "Job": "k8s.job.name", "CronJob": "k8s.cronjob.name"}
# gRPC codes that are errors on the server side (semantic conventions): UNKNOWN,
# DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS; on the client, all but OK
_GRPC_SERVER_ERRORS = {2, 4, 12, 13, 14, 15}


def resource_of(labels: dict[str, str], node: str) -> Resource:
    attrs: dict[str, str] = {"k8s.node.name": labels.get("k8s_node_name") or node}
    for src, dst in (("k8s_namespace_name", "k8s.namespace.name"),
                     ("k8s_pod_name", "k8s.pod.name"), ("k8s_pod_uid", "k8s.pod.uid"),
                     ("k8s_container_name", "k8s.container.name"),
                     ("container_id", "container.id"), ("container_name", "container.name"),
                     ("process_name", "process.executable.name"), ("cgroup", "podscope.cgroup")):
        if labels.get(src):
            attrs[dst] = labels[src]
    kind, name = labels.get("k8s_workload_kind", ""), labels.get("k8s_workload_name", "")
    if kind in _WORKLOAD_ATTR and name:
        attrs[_WORKLOAD_ATTR[kind]] = name
    attrs["service.name"] = (name or labels.get("k8s_pod_name") or labels.get("container_name")
                             or labels.get("process_name") or "unknown_service")
    if labels.get("k8s_namespace_name"):
        attrs["service.namespace"] = labels["k8s_namespace_name"]
    return Resource(attrs)


def span_status(rec: dict[str, Any]) -> Status:
    status, grpc = rec.get("status"), rec.get("grpc_status")
    server = rec.get("role") == "server"
    if grpc is not None:
        bad = grpc in _GRPC_SERVER_ERRORS if server else grpc != 0
        return Status(StatusCode.ERROR, f"grpc status {grpc}") if bad else Status(StatusCode.UNSET)
    if not status:
        return Status(StatusCode.ERROR, "no response")
    if status >= 500 or (not server and status >= 400):
        return Status(StatusCode.ERROR)
    return Status(StatusCode.UNSET)


_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def span_context(rec: dict[str, Any]) -> tuple[SpanContext, SpanContext | None]:
    """A record's span and its parent: the ids the record carries (derived on both ends of
    the request, docs/traces.md; the trace id as the joiner set it), else new random ones and no
    parent."""
    trace, span, parent = rec.get("trace_id"), rec.get("span_id"), rec.get("parent_span_id")
    if not trace or not span:
        return SpanContext(random.getrandbits(128) or 1, random.getrandbits(64) or 1,
                           is_remote=False, trace_flags=_SAMPLED), None
    t = int(trace, 16)
    ctx = SpanContext(t, int(span, 16), is_remote=False, trace_flags=_SAMPLED)
    return ctx, (SpanContext(t, int(parent, 16), is_remote=True, trace_flags=_SAMPLED)
                 if parent else None)


def span_of(rec: dict[str, Any], resource: Resource) -> ReadableSpan:
    server = rec.get("role") == "server"
    start = int(rec["time"] * 1e9)
    end = start + int((rec.get("duration_seconds") or 0) * 1e9)
    grpc = rec.get("grpc_status") is not None
    path = str(rec.get("path") or "")
    attrs: dict[str, Any] = {
        "network.protocol.name": "http",
        "network.protocol.version": str(rec.get("protocol") or "1.1"),
        "network.peer.address": str(rec.get("peer_addr") or ""),
        "network.peer.port": int(rec.get("peer_port") or 0),
        "url.scheme": str(rec.get("url_scheme") or "http"),
    }
    if rec.get("tls"):
        attrs["tls.protocol.name"] = "tls"
    if grpc:
        service, _, method = path.lstrip("/").partition("/")
        attrs.update({"rpc.system": "grpc", "rpc.service": service, "rpc.method": method,
                      "rpc.grpc.status_code": int(rec["grpc_status"])})
        name = f"{service}/{method}"
    else:
        method = str(rec.get("method") or "_OTHER")
        route = str(rec.get("route") or "")
        attrs.update({"http.request.method": method, "url.path": path.split("?", 1)[0]})
        if rec.get("method_original"):
            attrs["http.request.method_original"] = str(rec["method_original"])
        if route:
            attrs["http.route"] = route
        if rec.get("status"):
            attrs["http.response.status_code"] = int(rec["status"])
        verb = "HTTP" if method == "_OTHER" else method  # the conventions' name for _OTHER
        name = f"{verb} {route}" if route else verb
    if server:
        attrs["server.port"] = int(rec.get("local_port") or 0)
        attrs["client.address"] = attrs["network.peer.address"]
    else:
        attrs["server.address"] = attrs["network.peer.address"]
        attrs["server.port"] = attrs["network.peer.port"]
    ctx, parent = span_context(rec)
    return ReadableSpan(name, context=ctx, parent=parent, resource=resource, attributes=attrs,
                        kind=SpanKind.SERVER if server else SpanKind.CLIENT,
                        status=span_status(rec), start_time=start, end_time=end,
                        instrumentation_scope=SCOPE)


def db_span_of(rec: dict[str, Any], resource: Resource) -> ReadableSpan:
    """A database operation as a span, by OpenTelemetry's database conventions: named
    "{operation} {collection}", with db.* attributes and the sanitised statement."""
    server = rec.get("role") == "server"
    start = int(rec["time"] * 1e9)
    end = start + int((rec.get("duration_seconds") or 0) * 1e9)
    op, coll = str(rec.get("db_operation_name") or ""), str(rec.get("db_collection_name") or "")
    system = str(rec.get("db_system_name") or "")
    attrs: dict[str, Any] = {"db.system.name": system, "db.operation.name": op,
                             "network.peer.address": str(rec.get("peer_addr") or ""),
                             "network.peer.port": int(rec.get("peer_port") or 0)}
    for key, attr in (("db_collection_name", "db.collection.name"),
                      ("db_namespace", "db.namespace"), ("db_query_text", "db.query.text"),
                      ("db_response_status_code", "db.response.status_code")):
        if rec.get(key):
            attrs[attr] = str(rec[key])
    if not server:
        attrs["server.address"] = attrs["network.peer.address"]
        attrs["server.port"] = attrs["network.peer.port"]
    code = str(rec.get("db_response_status_code") or "")
    status = Status(StatusCode.ERROR, f"{system} error {code}") if code \
        else Status(StatusCode.UNSET)
    name = " ".join(p for p in (op, coll) if p) or system
    ctx = SpanContext(random.getrandbits(128) or 1, random.getrandbits(64) or 1, is_remote=False,
                      trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return ReadableSpan(name, context=ctx, resource=resource, attributes=attrs,
                        kind=SpanKind.SERVER if server else SpanKind.CLIENT, status=status,
                        start_time=start, end_time=end, instrumentation_scope=SCOPE)


class OtlpSink:
    def __init__(self, url: str, source: Callable[[], Iterable[PromMetric]], node: str,
                 interval: float = 15.0, timeout: float = 10.0, join_hold: float = 2.0):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--otlp {url!r}: expected an http:// or https:// URL (OTLP/HTTP)")
        base = url.rstrip("/")
        self.node = node
        self.source = source
        self.interval = interval
        self.spans = BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces",
                                                         timeout=timeout),
                                        max_queue_size=8192, schedule_delay_millis=1000)
        self.metric_exporter = OTLPMetricExporter(endpoint=f"{base}/v1/metrics", timeout=timeout)
        self.exports = {"ok": 0, "error": 0}
        self._resources: dict[tuple[str, ...], Resource] = {}
        self._start_ns = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # spans wait join_hold seconds for their parents' trace ids (traces.py); 0: no wait
        self.joiner: TraceJoiner[tuple[str, dict[str, Any], Resource]] | None = (
            TraceJoiner(hold=join_hold) if join_hold > 0 else None)
        self._lock = threading.Lock()

    def _resource(self, labels: dict[str, str]) -> Resource:
        key = tuple(labels.get(n, "") for n in LABEL_NAMES)
        r = self._resources.get(key)
        if r is None:
            if len(self._resources) > 10_000:
                self._resources.clear()
            r = self._resources[key] = resource_of(labels, self.node)
        return r

    # --- records -> spans ---
    def record(self, kind: str, rec: dict[str, Any]) -> None:
        of = {"http_request": span_of, "db_operation": db_span_of}.get(kind)
        if of is None:
            return
        labels = {n: str(rec.get(n) or "") for n in LABEL_NAMES}
        res = self._resource(labels)
        trace, span = rec.get("trace_id"), rec.get("span_id")
        if self.joiner is None or not trace or not span:
            self.spans.on_end(of(rec, res))
            return
        parent = rec.get("parent_span_id")
        with self._lock:
            self.joiner.add(bytes.fromhex(span), bytes.fromhex(parent) if parent else None,
                            bytes.fromhex(trace), (kind, rec, res))

    def flush(self, everything: bool = False) -> None:
        """Spans whose wait is over to the span processor (it sends on its own schedule)."""
        if self.joiner is None:
            return
        with self._lock:
            due = self.joiner.take(everything)
        for (kind, rec, res), trace in due:
            if trace.hex() != rec["trace_id"]:
                rec = {**rec, "trace_id": trace.hex()}
            self.spans.on_end((span_of if kind == "http_request" else db_span_of)(rec, res))

    # --- metrics ---
    def start(self) -> None:
        self._start_ns = time.time_ns()
        self._thread = threading.Thread(target=self._run, name="podscope-otlp", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_export = time.monotonic() + self.interval
        while not self._stop.wait(0.25):
            self.flush()
            if time.monotonic() >= next_export:
                self.export_metrics()
                next_export = time.monotonic() + self.interval

    def export_metrics(self) -> bool:
        try:
            data = self.metrics_data(self.source())
            ok = self.metric_exporter.export(data) == MetricExportResult.SUCCESS
        except Exception:  # noqa: BLE001 (an export must never stop the agent)
            log.exception("OTLP metrics export")
            ok = False
        self.exports["ok" if ok else "error"] += 1
        return ok

    def metrics_data(self, families: Iterable[PromMetric]) -> MetricsData:
        now = time.time_ns()
        per_resource: dict[int, tuple[Resource, dict[str, Metric]]] = {}
        ident = set(LABEL_NAMES)
        for fam in families:
            if fam.type not in ("counter", "gauge", "histogram"):
                continue
            name = METRIC_NAMES.get(fam.name, fam.name)
            points: dict[int, list[Any]] = {}
            hist: dict[tuple[int, tuple[tuple[str, str], ...]], dict[str, Any]] = {}
            for s in fam.samples:
                labels = s.labels
                res = self._resource(labels) if ident & labels.keys() else self._resource({})
                rid = id(res)
                per_resource.setdefault(rid, (res, {}))
                attrs = {ATTRIBUTE_NAMES.get(k, k): v for k, v in labels.items()
                         if k not in ident and k != "le"}
                if fam.type == "histogram":
                    h = hist.setdefault((rid, tuple(sorted(attrs.items()))),
                                        {"attrs": attrs, "le": [], "sum": 0.0, "count": 0})
                    if s.name.endswith("_bucket"):
                        h["le"].append((float(labels["le"]), s.value))
                    elif s.name.endswith("_sum"):
                        h["sum"] = s.value
                    elif s.name.endswith("_count"):
                        h["count"] = int(s.value)
                    continue
                if s.name.endswith("_created"):
                    continue
                points.setdefault(rid, []).append(NumberDataPoint(
                    attributes=attrs, start_time_unix_nano=self._start_ns, time_unix_nano=now,
                    value=s.value))
            for (rid, _k), h in hist.items():
                les = sorted(h["le"])
                bounds = [le for le, _ in les if le != float("inf")]
                cum = [int(v) for _, v in les]
                counts = [b - a for a, b in zip([0, *cum[:-1]], cum, strict=True)]
                points.setdefault(rid, []).append(HistogramDataPoint(
                    attributes=h["attrs"], start_time_unix_nano=self._start_ns,
                    time_unix_nano=now, count=h["count"], sum=h["sum"], bucket_counts=counts,
                    explicit_bounds=bounds, min=float("nan"), max=float("nan"),
                    exemplars=[]))
            for rid, pts in points.items():
                unit = "s" if fam.name.endswith("_seconds") else "1"
                if fam.type == "counter":
                    data: Any = Sum(data_points=pts, is_monotonic=True,
                                    aggregation_temporality=AggregationTemporality.CUMULATIVE)
                elif fam.type == "gauge":
                    data = Gauge(data_points=pts)
                else:
                    data = Histogram(data_points=pts,
                                     aggregation_temporality=AggregationTemporality.CUMULATIVE)
                per_resource[rid][1][name] = Metric(name=name, description=fam.documentation,
                                                    unit=unit, data=data)
        return MetricsData(resource_metrics=[
            ResourceMetrics(resource=res, scope_metrics=[ScopeMetrics(
                scope=SCOPE, metrics=list(metrics.values()), schema_url="")], schema_url="")
            for res, metrics in per_resource.values() if metrics])

    def metrics(self) -> Iterable[PromMetric]:
        from prometheus_client.core import CounterMetricFamily

        fam = CounterMetricFamily("podscope_otlp_metric_exports",
                                  "OTLP metric exports, by result", labels=["result"])
        for result, n in self.exports.items():
            fam.add_metric([result], n)
        yield fam
        if self.joiner is not None:
            yield from joiner_families(self.joiner)

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
            self._thread = None
        self.export_metrics()  # the last state
        self.flush(everything=True)
        self.spans.shutdown()  # sends what is queued
        self.metric_exporter.shutdown()
