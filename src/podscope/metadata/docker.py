"""Container names from the Docker Engine API, on hosts without Kubernetes.

`DockerNames` asks the engine (`GET /containers/json?all=1` over its unix socket) for every
container's id and name, and asks again when an id it does not know shows up (at most every
`min_interval` seconds). A socket that is missing or unreadable means no names, said once in the
log; nothing else changes.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import threading
import time

log = logging.getLogger("podscope.docker")

DEFAULT_SOCKET = "/var/run/docker.sock"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class DockerNames:
    def __init__(self, path: str = DEFAULT_SOCKET, min_interval: float = 5.0,
                 timeout: float = 2.0):
        self.path = path
        self.min_interval = min_interval
        self.timeout = timeout
        self._names: dict[str, str] = {}
        self._at = -1e9
        self._lock = threading.Lock()
        self._warned = False

    def available(self) -> bool:
        return os.access(self.path, os.R_OK | os.W_OK)

    def name(self, container_id: str) -> str:
        """The container's name ("" when unknown or no engine)."""
        if not container_id:
            return ""
        got = self._names.get(container_id)
        if got is not None:
            return got
        with self._lock:
            if time.monotonic() - self._at >= self.min_interval:
                self._at = time.monotonic()
                self._refresh()
        return self._names.get(container_id, "")

    def _refresh(self) -> None:
        if not self.available():
            return
        conn = _UnixConnection(self.path, self.timeout)
        try:
            conn.request("GET", "/containers/json?all=1")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise OSError(f"HTTP {resp.status}")
            names = {}
            for c in json.loads(body):
                cid, cnames = str(c.get("Id", "")), c.get("Names") or []
                if cid and cnames:
                    names[cid] = str(cnames[0]).lstrip("/")
            self._names = names
        except (OSError, ValueError, http.client.HTTPException) as e:
            if not self._warned:
                log.warning("Docker Engine API at %s: %s (container names left out)", self.path, e)
                self._warned = True
        finally:
            conn.close()
