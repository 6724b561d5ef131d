"""`podscope join`: an OTLP/HTTP relay that gives each tree of spans one trace id, across nodes.

Every agent derives a request's span ids from the request's TCP position, so the spans of two
agents name each other as parents without the agents ever talking (docs/traces.md). What an
agent cannot know is the trace id of a request that came in on another node: the server span
of a hop starts a trace of its own. The agents send their spans here (`--otlp` of `podscope
run` pointed at this relay) and the relay sends them on to the real collector, each span
holding `hold` seconds for its ancestors, then re-keyed to the trace id of its highest
ancestor (traces.TraceJoiner). Metrics are passed through unchanged.

Bounded: a request body over MAX_BODY is refused (413); spans past the joiner's table go out at
once; a batch the collector refuses is dropped and counted, never retried forever.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric

from .traces import TraceJoiner, joiner_families

log = logging.getLogger("podscope.join")

MAX_BODY = 32 << 20  # bytes of one export request
MAX_BATCH = 2000  # spans per request sent on


class Relay:
    def __init__(self, listen: tuple[str, int], upstream: str, hold: float = 5.0,
                 timeout: float = 10.0):
        if not upstream.startswith(("http://", "https://")):
            raise ValueError(f"--otlp {upstream!r}: expected an http:// or https:// URL")
        self.upstream = upstream.rstrip("/")
        self.timeout = timeout
        # item: (resource, scope, span) as messages: re-grouped when sent on
        self.joiner: TraceJoiner[tuple[bytes, bytes, trace_pb2.Span]] = TraceJoiner(hold=hold)
        self.counts = dict.fromkeys(("requests", "bad_requests", "sent", "send_errors",
                                     "metrics_passed", "metrics_errors"), 0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (the http.server interface)
                if self.path != "/metrics":
                    self.send_error(404, "GET serves /metrics only")
                    return
                body = relay.metrics_text()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                if self.path not in ("/v1/traces", "/v1/metrics"):
                    self.send_error(404, "POST /v1/traces or /v1/metrics")
                    return
                try:
                    n = int(self.headers.get("Content-Length", ""))
                except ValueError:
                    self.send_error(411, "Content-Length required")
                    return
                if not 0 <= n <= MAX_BODY:
                    self.send_error(413, f"over {MAX_BODY} bytes")
                    return
                body = self.rfile.read(n)
                if self.headers.get("Content-Encoding") == "gzip":
                    try:
                        body = gzip.decompress(body)
                    except (OSError, EOFError):
                        relay.counts["bad_requests"] += 1
                        self.send_error(400, "bad gzip body")
                        return
                if self.path == "/v1/metrics":
                    code = relay.pass_metrics(body)
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                try:
                    relay.take_in(body)
                except DecodeError as e:
                    relay.counts["bad_requests"] += 1
                    self.send_error(400, f"not an OTLP ExportTraceServiceRequest: {e}")
                    return
                out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(listen, Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def take_in(self, body: bytes) -> None:
        req = trace_service_pb2.ExportTraceServiceRequest()
        req.ParseFromString(body)
        self.counts["requests"] += 1
        with self._lock:
            for rs in req.resource_spans:
                res = rs.resource.SerializeToString(deterministic=True)
                for ss in rs.scope_spans:
                    scope = ss.scope.SerializeToString(deterministic=True)
                    for sp in ss.spans:
                        self.joiner.add(sp.span_id, sp.parent_span_id or None, sp.trace_id,
                                        (res, scope, sp))

    def send_due(self, everything: bool = False) -> None:
        with self._lock:
            due = self.joiner.take(everything)
        for i in range(0, len(due), MAX_BATCH):
            req = trace_service_pb2.ExportTraceServiceRequest()
            groups: dict[tuple[bytes, bytes], Any] = {}
            for (res, scope, sp), trace in due[i: i + MAX_BATCH]:
                ss = groups.get((res, scope))
                if ss is None:
                    rs = req.resource_spans.add()
                    rs.resource.ParseFromString(res)
                    ss = groups[(res, scope)] = rs.scope_spans.add()
                    ss.scope.ParseFromString(scope)
                sp.trace_id = trace
                ss.spans.append(sp)
            n = len(due[i: i + MAX_BATCH])
            if self._post("/v1/traces", req.SerializeToString()) == 200:
                self.counts["sent"] += n
            else:
                self.counts["send_errors"] += n

    def pass_metrics(self, body: bytes) -> int:
        code = self._post("/v1/metrics", body)
        self.counts["metrics_passed" if code == 200 else "metrics_errors"] += 1
        return 200 if code == 200 else 502

    def _post(self, path: str, body: bytes) -> int:
        rq = urllib.request.Request(self.upstream + path, data=body, method="POST",
                                    headers={"Content-Type": "application/x-protobuf"})
        try:
            with urllib.request.urlopen(rq, timeout=self.timeout) as r:
                r.read()
                return int(r.status)
        except urllib.error.HTTPError as e:
            log.warning("%s%s: %s", self.upstream, path, e)
            return int(e.code)
        except OSError as e:
            log.warning("%s%s: %s", self.upstream, path, e)
            return 0

    def metrics_text(self) -> bytes:
        relay = self

        class Source:
            def collect(self) -> list[Metric]:
                fam = CounterMetricFamily("podscope_join_requests", "OTLP requests and spans "
                                          "through the relay, by what happened",
                                          labels=["what"])
                for k, v in relay.counts.items():
                    fam.add_metric([k], v)
                return [fam, *joiner_families(relay.joiner)]

        reg = CollectorRegistry()
        reg.register(Source())
        return generate_latest(reg)

    def serve(self, duration: float | None = None) -> None:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        end = time.monotonic() + duration if duration else None
        try:
            while not self._stop.wait(0.25):
                self.send_due()
                if end is not None and time.monotonic() >= end:
                    break
        finally:
            self.server.shutdown()
            self.server.server_close()
            self.send_due(everything=True)

    def stop(self) -> None:
        self._stop.set()


def run(listen: str, upstream: str, hold: float, duration: float | None) -> int:
    from .config import parse_listen

    relay = Relay(parse_listen(listen, "--listen"), upstream, hold)
    log.info("joining traces on %s:%d, sending on to %s", *relay.server.server_address[:2],
             upstream)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: relay.stop())
    try:
        relay.serve(duration)
    except KeyboardInterrupt:
        pass
    return 0
