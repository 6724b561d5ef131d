"""The part of the Docker Engine API podscope reads (`GET /containers/json`), on a unix socket,
for tests on hosts where no Docker engine can run. Containers are (id, name) pairs; as Docker's
list does, each entry carries its HostConfig.NetworkMode ("default", or "container:<id>" for
one that joined another's network namespace)."""

from __future__ import annotations

import json
import os
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any


class DockerAPIServer:
    def __init__(self, path: str):
        self.path = path
        self.containers: dict[str, str] = {}  # id -> name
        self.network_modes: dict[str, str] = {}  # id -> NetworkMode (absent: "default")
        self.requests = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def address_string(self) -> str:
                return "unix"

            def do_GET(self) -> None:  # noqa: N802 (the http.server interface)
                api.requests += 1
                if not self.path.startswith("/containers/json"):
                    self.send_error(404)
                    return
                body = json.dumps([{"Id": cid, "Names": ["/" + name], "State": "running",
                                    "HostConfig": {"NetworkMode":
                                                   api.network_modes.get(cid, "default")}}
                                   for cid, name in api.containers.items()]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self._server = Server(path, Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> DockerAPIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        os.unlink(self.path)
