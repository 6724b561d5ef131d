"""The little shop `podscope demo` runs in its pods: a load generator calls the frontend, which
calls the backend over HTTP and gRPC. Some answers fail on purpose (so errors show).

    python -m podscope.testing.demo_apps backend HTTP_PORT GRPC_PORT
    python -m podscope.testing.demo_apps frontend PORT BACKEND_IP HTTP_PORT GRPC_PORT
    python -m podscope.testing.demo_apps loadgen FRONTEND_IP PORT RATE
"""

from __future__ import annotations

import http.client
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def backend(http_port: int, grpc_port: int) -> None:
    from concurrent import futures

    import grpc  # type: ignore[import-untyped]

    class Handler(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            time.sleep(random.uniform(0.001, 0.02))
            if self.path.startswith("/price"):
                self.reply(500 if random.random() < 0.05 else 200, b"42\n")
            else:
                self.reply(404, b"no such thing\n")

    def price(request: bytes, context: Any) -> bytes:
        time.sleep(random.uniform(0.001, 0.01))
        if random.random() < 0.03:
            context.abort(grpc.StatusCode.INTERNAL, "stock service down")
        return b"in stock"

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("demo.Stock", {
        "Check": grpc.unary_unary_rpc_method_handler(price)})])
    server.add_insecure_port(f"0.0.0.0:{grpc_port}")
    server.start()
    print("listening", flush=True)
    ThreadingHTTPServer(("0.0.0.0", http_port), Handler).serve_forever()


def frontend(port: int, backend_ip: str, http_port: int, grpc_port: int) -> None:
    import grpc

    local = threading.local()
    channel = grpc.insecure_channel(f"{backend_ip}:{grpc_port}")
    check = channel.unary_unary("/demo.Stock/Check")

    def backend_price() -> int:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection(backend_ip, http_port, timeout=5)
        try:
            local.conn.request("GET", "/price")
            resp = local.conn.getresponse()
            resp.read()
            return resp.status
        except (OSError, http.client.HTTPException):
            del local.conn
            return 599

    class Handler(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/checkout":
                status = backend_price()
                try:
                    check(b"sku-1", timeout=5)
                    ok = True
                except grpc.RpcError:
                    ok = False
                self.reply(200 if status == 200 and ok else 502, b"checked out\n")
            elif self.path == "/health":
                self.reply(200, b"ok\n")
            else:
                self.reply(404, b"no such page\n")

    print("listening", flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()


def loadgen(frontend_ip: str, port: int, rate: float) -> None:
    conn = http.client.HTTPConnection(frontend_ip, port, timeout=10)
    print("running", flush=True)
    while True:
        path = random.choices(["/checkout", "/health", "/missing"], [8, 2, 0.3])[0]
        try:
            conn.request("GET", path)
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(frontend_ip, port, timeout=10)
            time.sleep(0.5)
        time.sleep(random.expovariate(rate))


def main(argv: list[str]) -> None:
    role, args = argv[0], argv[1:]
    if role == "backend":
        backend(int(args[0]), int(args[1]))
    elif role == "frontend":
        frontend(int(args[0]), args[1], int(args[2]), int(args[3]))
    elif role == "loadgen":
        loadgen(args[0], int(args[1]), float(args[2]))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
