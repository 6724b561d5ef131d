"""Container names from the Docker Engine API, on hosts without Kubernetes.

`DockerNames` asks the engine (`GET /containers/json?all=1` over its unix socket) for every
container's id and name, and asks again when an id it does not know shows up (at most every
`min_interval` seconds). A socket that is missing or unreadable means no names, said once in the
log; nothing else changes.

Containers that share one network namespace without a runtime pod (`--network container:<x>`,
as Docker Compose's `network_mode: service:x` makes) are one unit, as a pod is: each keeps its
own container labels, and all carry `pod_name` = the name of the container whose namespace they
share. The engine says who joined whom in a container's `HostConfig.NetworkMode` (Docker's list
has it; podman's compatible list does not, so its containers are inspected once each); a joiner
of a moment, gone before the list, is found by the metadata store from its sockets' namespace.
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
    def __init__(self, path: str, timeout: float | None):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class DockerNames:
    """Container names (and, from podman's API, its pods' names) by id. Docker and podman's
    `podman system service` both answer the Docker-compatible `/containers/json`; podman also
    answers `/libpod/pods/json`, which names its pods (a 404 from Docker: no pods there)."""

    def __init__(self, path: str = DEFAULT_SOCKET, min_interval: float = 5.0,
                 timeout: float = 2.0, max_names: int = 65536):
        self.path = path
        self.min_interval = min_interval
        self.timeout = timeout
        self.max_names = max_names
        self._names: dict[str, str] = {}
        self._pods: dict[str, str] = {}  # podman pod id -> name
        self._joined: dict[str, str] = {}  # container id -> the container whose netns it joined
        self._owners: set[str] = set()  # containers others joined
        self._netmode_known: set[str] = set()  # ids whose NetworkMode was read
        self._libpod = True  # until the engine says it has no such endpoint
        self._at = -1e9
        self._lock = threading.Lock()
        self._warned = False
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None

    def size(self) -> int:
        return len(self._names) + len(self._pods) + len(self._netmode_known)

    def available(self) -> bool:
        return os.access(self.path, os.R_OK | os.W_OK)

    def follow(self) -> None:
        """Learn names from the engine's event stream as containers are made: one that lives for
        a moment (`run --rm`) is gone from the container list before anyone asks for it."""
        if self._follower is None:
            self._follower = threading.Thread(target=self._follow_loop, name="podscope-engine",
                                              daemon=True)
            self._follower.start()

    def close(self) -> None:
        self._stop.set()

    def _follow_loop(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._follow_once()
            except (OSError, ValueError, http.client.HTTPException) as e:
                log.debug("container engine events at %s: %s", self.path, e)
            if time.monotonic() - started > 30:
                backoff = 0.5  # it ran a while: a fresh failure starts over
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)

    def _follow_once(self) -> None:
        conn = _UnixConnection(self.path, None)  # a stream: no read timeout
        try:
            conn.request("GET", '/events?filters={"type":["container"]}')
            resp = conn.getresponse()
            if resp.status != 200:
                raise OSError(f"events: HTTP {resp.status}")
            for line in resp:
                if self._stop.is_set():
                    return
                ev = json.loads(line)
                actor = ev.get("Actor") if isinstance(ev, dict) else None
                if not isinstance(actor, dict) or ev.get("Action") not in ("create", "start"):
                    continue
                cid = str(actor.get("ID", ""))
                name = str((actor.get("Attributes") or {}).get("name", ""))
                if cid and name:
                    if len(self._names) >= self.max_names:
                        self._names.clear()
                    self._names[cid] = name
        finally:
            conn.close()

    def name(self, container_id: str) -> str:
        """The container's name ("" when unknown or no engine)."""
        if not container_id:
            return ""
        got = self._names.get(container_id)
        if got is not None:
            return got
        self._maybe_refresh()
        return self._names.get(container_id, "")

    def pod_name(self, pod_id: str) -> str:
        """A podman pod's name ("" when unknown, or not podman)."""
        if not pod_id:
            return ""
        got = self._pods.get(pod_id)
        if got is not None:
            return got
        self._maybe_refresh()
        return self._pods.get(pod_id, "")

    def network_pod(self, container_id: str) -> str:
        """For containers sharing one network namespace outside any runtime pod: the name of
        the container that owns the namespace, for it and for those that joined it ("" when
        the container shares its namespace with no other, or is unknown)."""
        if not container_id:
            return ""
        self.name(container_id)  # an id not known yet: the list is asked (rate-limited)
        owner = self.network_owner(container_id)
        return self._names.get(owner, "") if owner else ""

    def network_owner(self, container_id: str) -> str:
        """The id of the container whose network namespace this one uses, when namespaces are
        shared (itself, if others joined it); "" otherwise."""
        owner = self._joined.get(container_id)
        if owner is not None:
            return owner
        return container_id if container_id in self._owners else ""

    def _read_netmode(self, cid: str, host_config: object) -> None:
        """Remember whose network namespace `cid` joined; `host_config` from the list, or None
        to inspect the container."""
        if not isinstance(host_config, dict):
            try:
                status, body = self._get(f"/containers/{cid}/json")
            except (OSError, http.client.HTTPException):
                return
            if status != 200:
                self._netmode_known.add(cid)  # gone: nothing to learn any more
                return
            try:
                doc = json.loads(body)
            except ValueError:
                return
            host_config = doc.get("HostConfig") if isinstance(doc, dict) else None
            if not isinstance(host_config, dict):
                host_config = {}
        if len(self._netmode_known) >= self.max_names:
            self._netmode_known.clear()
            self._joined.clear()
            self._owners.clear()
        self._netmode_known.add(cid)
        mode = str(host_config.get("NetworkMode") or "")
        if mode.startswith("container:"):
            target = mode.partition(":")[2]
            # the engine writes the id; a name or a short id is looked up
            if target not in self._names:
                target = next((i for i, n in self._names.items()
                               if n == target or i.startswith(target)), target)
            if target and target != cid:
                self._joined[cid] = target
                self._owners.add(target)

    def _maybe_refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._at >= self.min_interval:
                self._at = time.monotonic()
                self._refresh()

    def _get(self, path: str) -> tuple[int, bytes]:
        conn = _UnixConnection(self.path, self.timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _refresh(self) -> None:
        if not self.available():
            return
        try:
            status, body = self._get("/containers/json?all=1")
            if status != 200:
                raise OSError(f"HTTP {status}")
            names = {}
            listed = [c for c in json.loads(body) if isinstance(c, dict)]
            for c in listed:
                cid, cnames = str(c.get("Id", "")), c.get("Names") or []
                if cid and cnames:
                    names[cid] = str(cnames[0]).lstrip("/")
            # names of containers that are gone stay until the table is full (their series
            # keep their names through the grace period)
            if len(self._names) + len(names) > self.max_names:
                self._names.clear()
            self._names.update(names)
            inspected = 0
            for c in listed:
                cid = str(c.get("Id", ""))
                if cid and cid not in self._netmode_known and inspected < 256:
                    hc = c.get("HostConfig")
                    inspected += not isinstance(hc, dict)
                    self._read_netmode(cid, hc)
            if self._libpod:
                status, body = self._get("/v4.0.0/libpod/pods/json")
                if status == 404:
                    self._libpod = False
                elif status == 200:
                    pods = {str(p.get("Id", "")): str(p.get("Name", ""))
                            for p in json.loads(body) if isinstance(p, dict)}
                    if len(self._pods) + len(pods) > self.max_names:
                        self._pods.clear()
                    self._pods.update({k: v for k, v in pods.items() if k and v})
        except (OSError, ValueError, http.client.HTTPException) as e:
            if not self._warned:
                log.warning("container engine API at %s: %s (container names left out)",
                            self.path, e)
                self._warned = True
