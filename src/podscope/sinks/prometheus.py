"""/metrics (read from BPF maps at scrape time), /healthz; read-only HTTP."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger("podscope.http")


class _Adapter(Collector):
    def __init__(self, source: Callable[[], Iterable[Metric]]):
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return self.source()


def make_registry(source: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Adapter(source))
    return reg


class HttpServer:
    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 healthy: Callable[[], bool]):
        reg = registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    try:
                        body = generate_latest(reg)
                    except Exception as e:  # a scrape error must not kill the agent
                        log.exception("scrape failed")
                        self._send(500, f"scrape failed: {e}\n".encode(), "text/plain")
                        return
                    self._send(200, body, CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = healthy()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n", "text/plain")
                else:
                    self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")

            def do_HEAD(self) -> None:  # noqa: N802
                self.do_GET()

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
