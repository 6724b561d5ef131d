"""An OTLP/HTTP receiver for tests: accepts POST /v1/traces and /v1/metrics, decodes the protobuf
payloads with opentelemetry-proto, keeps them. No OpenTelemetry Collector package exists for
Debian 12; this decodes exactly what a collector would receive."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


class OtlpReceiver:
    def __init__(self) -> None:
        self.traces: list[dict[str, Any]] = []  # ExportTraceServiceRequest as dicts
        self.metrics: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        rx = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (the http.server interface)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.headers.get("Content-Type") != "application/x-protobuf":
                    rx.errors.append(f"content type {self.headers.get('Content-Type')}")
                if self.path == "/v1/traces":
                    req: Any = trace_service_pb2.ExportTraceServiceRequest()
                    resp: Any = trace_service_pb2.ExportTraceServiceResponse()
                    into = rx.traces
                elif self.path == "/v1/metrics":
                    req = metrics_service_pb2.ExportMetricsServiceRequest()
                    resp = metrics_service_pb2.ExportMetricsServiceResponse()
                    into = rx.metrics
                else:
                    self.send_error(404)
                    return
                req.ParseFromString(body)
                with rx._lock:
                    into.append(MessageToDict(req))
                out = resp.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def spans(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(resource attributes, span) of every span received."""
        out = []
        with self._lock:
            for req in self.traces:
                for rs in req.get("resourceSpans", []):
                    res = attrs(rs.get("resource", {}).get("attributes", []))
                    for ss in rs.get("scopeSpans", []):
                        out += [(res, sp) for sp in ss.get("spans", [])]
        return out

    def last_metrics(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(resource attributes, metric) of the last metrics export."""
        with self._lock:
            if not self.metrics:
                return []
            req = self.metrics[-1]
        out = []
        for rm in req.get("resourceMetrics", []):
            res = attrs(rm.get("resource", {}).get("attributes", []))
            for sm in rm.get("scopeMetrics", []):
                out += [(res, m) for m in sm.get("metrics", [])]
        return out


def attrs(kvs: list[dict[str, Any]]) -> dict[str, Any]:
    """OTLP KeyValue list (as a dict from MessageToDict) -> {key: python value}."""
    out: dict[str, Any] = {}
    for kv in kvs:
        v = kv.get("value", {})
        if "stringValue" in v:
            out[kv["key"]] = v["stringValue"]
        elif "intValue" in v:
            out[kv["key"]] = int(v["intValue"])
        elif "doubleValue" in v:
            out[kv["key"]] = float(v["doubleValue"])
        elif "boolValue" in v:
            out[kv["key"]] = bool(v["boolValue"])
        else:
            out[kv["key"]] = v
    return out
