"""/metrics (read from BPF maps at scrape time), /healthz; read-only HTTP."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

log = logging.getLogger("podscope.http")


class _Adapter(Collector):
    def __init__(self, source: Callable[[], Iterable[Metric]]):
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return self.source()


_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "histogram",
          "summary": "summary", "unknown": "untyped"}


def _value(v: str) -> str:
    if "\\" in v or '"' in v or "\n" in v:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return v


def render(metrics: Iterable[Metric]) -> bytes:
    """The Prometheus text format (0.0.4) of metric families: what prometheus_client's
    generate_latest writes for counters, gauges and histograms, without its per-sample name
    validation and label sorting (a node with 500 pods has ~100k samples: 3 s there, a few
    hundred ms here). Names are checked once per family; label values are escaped."""
    out: list[str] = []
    for m in metrics:
        mtype = _TYPES.get(m.type)
        if mtype is None:
            raise ValueError(f"metric {m.name}: type {m.type} is not rendered")
        mname = m.name + "_total" if m.type == "counter" else m.name
        if not _NAME.match(mname):
            raise ValueError(f"invalid metric name {mname!r}")
        doc = m.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {mname} {doc}\n# TYPE {mname} {mtype}\n")
        checked: set[str] = set()
        for smp in m.samples:
            labels = smp.labels
            if smp.name.endswith("_created"):
                continue  # OpenMetrics only
            if labels:
                for k in labels:
                    if k not in checked:
                        if not _NAME.match(k) or ":" in k:
                            raise ValueError(f"metric {mname}: invalid label name {k!r}")
                        checked.add(k)
                inner = ",".join([f'{k}="{_value(v)}"' for k, v in labels.items()])
                out.append(f"{smp.name}{{{inner}}} {floatToGoString(smp.value)}\n")
            else:
                out.append(f"{smp.name} {floatToGoString(smp.value)}\n")
    return "".join(out).encode()


def make_registry(source: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Adapter(source))
    return reg


Page = Callable[[], tuple[bytes, str]]  # -> (body, content type)
Files = Callable[[str], tuple[bytes, str] | None]  # path below a prefix -> page, None: 404


class HttpServer:
    """Read-only: GET (and HEAD) of /metrics, /healthz and the `pages` (the web page and its
    JSON API); everything else is 404, other methods 405."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 healthy: Callable[[], bool], pages: dict[str, Page] | None = None,
                 prefixes: dict[str, Files] | None = None):
        reg = registry
        extra = dict(pages or {})
        below = dict(prefixes or {})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    try:
                        body = render(reg.collect())
                    except Exception as e:  # a scrape error must not kill the agent
                        log.exception("scrape failed")
                        self._send(500, f"scrape failed: {e}\n".encode(), "text/plain")
                        return
                    self._send(200, body, CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = healthy()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n", "text/plain")
                elif path in extra:
                    try:
                        body, ctype = extra[path]()
                    except Exception as e:  # a page error must not kill the agent
                        log.exception("page %s failed", path)
                        self._send(500, f"failed: {e}\n".encode(), "text/plain")
                        return
                    self._send(200, body, ctype)
                elif (pre := next((p for p in below if path.startswith(p)), None)) and (
                        got := below[pre](path[len(pre):])):
                    self._send(200, *got)
                else:
                    self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")

            def do_HEAD(self) -> None:  # noqa: N802
                self.do_GET()

            def _read_only(self) -> None:
                self._send(405, b"read-only: GET only\n", "text/plain")

            do_POST = do_PUT = do_DELETE = do_PATCH = _read_only  # noqa: N815

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug("%s " + fmt, self.client_address[0], *args)

        ThreadingHTTPServer.daemon_threads = True
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.address = self.server.server_address
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
