"""A Kubernetes API server for pods, for tests: the real list and watch protocol over HTTP.

What the official client (and kubectl) relies on is served as the API server serves it:
  GET /api/v1/pods, /api/v1/namespaces/NS/pods   PodList with metadata.resourceVersion;
      fieldSelector (spec.nodeName, metadata.name, metadata.namespace, status.phase; `=`, `==`,
      `!=`, comma-joined), labelSelector (`k=v`, `k!=v`, `k`, comma-joined)
  ...?watch=true[&resourceVersion=RV][&timeoutSeconds=N][&allowWatchBookmarks=true]
      a chunked stream of {"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...} lines;
      no resourceVersion (or "0"): synthetic ADDED events for the current pods first; an RV older
      than the retained history: one ERROR event with a 410 Status ("too old resource version")
  GET /api/v1/namespaces/NS/pods/NAME, /api/v1/nodes/NAME, /version
Tests drive it: add_pod, update_pod, delete_pod, compact (forget history, so the next watch
from an old RV gets 410), stop and start again on the same port (an outage).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pods import Pod

Obj = dict[str, Any]


def pod_object(name: str, namespace: str, node: str, uid: str | None = None,
               containers: list[tuple[str, str]] | None = None,
               owner: tuple[str, str] | None = None, labels: dict[str, str] | None = None,
               runtime: str = "containerd") -> Obj:
    """A v1 Pod as the API server returns it. containers: (name, container id) pairs; owner:
    the controller's (kind, name)."""
    containers = containers or []
    meta: Obj = {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4()),
                 "labels": dict(labels or {}),
                 "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                    "uid": str(uuid.uuid4()), "controller": True,
                                    "blockOwnerDeletion": True}]
    return {
        "kind": "Pod", "apiVersion": "v1", "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": n, "image": "example/" + n}
                                                  for n, _ in containers]},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": n, "containerID": f"{runtime}://{cid}", "ready": True, "restartCount": 0,
             "image": "example/" + n, "imageID": "", "started": True,
             "state": {"running": {"startedAt": meta["creationTimestamp"]}}}
            for n, cid in containers]},
    }


def pod_object_for(pod: Pod, namespace: str, node: str, owner: tuple[str, str] | None = None,
                   labels: dict[str, str] | None = None) -> Obj:
    """The API's view of a test pod (testing.pods): same UID, same container ids."""
    obj = pod_object(pod.name, namespace, node, uid=pod.uid,
                     containers=list(pod.containers.items()), owner=owner, labels=labels)
    obj["status"]["podIP"] = pod.ip
    obj["status"]["podIPs"] = [{"ip": pod.ip}]
    return obj


def _status(code: int, reason: str, message: str) -> Obj:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _field(obj: Obj, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part, "") if isinstance(cur, dict) else ""
    return str(cur)


def _matches(obj: Obj, fields: str, labels: str) -> bool:
    for term in filter(None, fields.split(",")):
        neg = "!=" in term
        key, val = term.replace("!=", "=").replace("==", "=").split("=", 1)
        if (_field(obj, key) == val) == neg:
            return False
    have = obj["metadata"].get("labels") or {}
    for term in filter(None, labels.split(",")):
        if "!=" in term:
            key, val = term.split("!=", 1)
            if have.get(key) == val:
                return False
        elif "=" in term:
            key, val = term.replace("==", "=").split("=", 1)
            if have.get(key) != val:
                return False
        elif term not in have:
            return False
    return True


class KubeAPIServer:
    def __init__(self, port: int = 0, node: str = "node-1"):
        self.node = node
        self.port = port
        self.requests: list[str] = []  # paths with queries, in order (tests look for relists)
        self._pods: dict[str, Obj] = {}  # by uid
        self._rv = 100
        self._history: list[tuple[int, str, Obj]] = []
        self._oldest = 0  # watches from an RV below this get 410
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self.extra_items: list[Any] = []  # added to every list as they are (malformed items)
        self.fail_watches = False  # answer every watch with a 500

    # --- life cycle ---
    def start(self) -> KubeAPIServer:
        api = self

        class Handler(_Handler):
            server_api = api

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._running = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut every open watch (the process goes away)."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path) -> Path:
        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "test",
               "clusters": [{"name": "test", "cluster": {"server": self.url}}],
               "users": [{"name": "test", "user": {}}],
               "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}
        path.write_text(json.dumps(cfg))  # JSON is YAML
        return path

    def __enter__(self) -> KubeAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the cluster, as tests change it ---
    def _event(self, kind: str, pod: Obj) -> None:
        self._rv += 1
        pod["metadata"]["resourceVersion"] = str(self._rv)
        self._history.append((self._rv, kind, copy.deepcopy(pod)))
        self._cond.notify_all()

    def add_pod(self, pod: Obj) -> Obj:
        with self._cond:
            self._pods[pod["metadata"]["uid"]] = pod
            self._event("ADDED", pod)
        return pod

    def update_pod(self, uid: str, change: Callable[[Obj], None]) -> None:
        with self._cond:
            change(self._pods[uid])
            self._event("MODIFIED", self._pods[uid])

    def delete_pod(self, uid: str) -> None:
        with self._cond:
            pod = self._pods.pop(uid)
            pod["metadata"]["deletionTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                 time.gmtime())
            self._event("DELETED", pod)

    def compact(self) -> None:
        """Forget the event history (etcd compaction): older resourceVersions are gone."""
        with self._cond:
            self._history.clear()
            self._oldest = self._rv + 1

    # --- serving ---
    def list_pods(self, fields: str, labels: str, namespace: str | None) -> Obj:
        with self._cond:
            items = [copy.deepcopy(p) for p in self._pods.values()
                     if (namespace is None or p["metadata"]["namespace"] == namespace)
                     and _matches(p, fields, labels)]
            return {"kind": "PodList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(self._rv)},
                    "items": items + copy.deepcopy(self.extra_items)}

    def watch(self, rv: str, fields: str, labels: str, namespace: str | None,
              timeout: float, bookmarks: bool, send: Callable[[Obj], None]) -> None:
        def wanted(pod: Obj) -> bool:
            return ((namespace is None or pod["metadata"]["namespace"] == namespace)
                    and _matches(pod, fields, labels))

        deadline = time.monotonic() + timeout
        with self._cond:
            if rv in ("", "0"):
                start = self._rv
                initial = [copy.deepcopy(p) for p in self._pods.values() if wanted(p)]
            else:
                start = int(rv)
                initial = []
                if start < self._oldest - 1 or start > self._rv:
                    msg = f"too old resource version: {start} ({self._oldest})"
                    send({"type": "ERROR", "object": _status(410, "Expired", msg)})
                    return
        for pod in initial:
            send({"type": "ADDED", "object": pod})
        last_bookmark = time.monotonic()
        while True:
            with self._cond:
                pending = [(rv2, k, p) for rv2, k, p in self._history if rv2 > start]
                if not pending:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._running:
                        return
                    self._cond.wait(min(left, 1.0))
                    if not self._running:
                        return
                    pending = [(rv2, k, p) for rv2, k, p in self._history if rv2 > start]
                current = self._rv
            for rv2, kind, pod in pending:
                start = rv2
                if wanted(pod):
                    send({"type": kind, "object": pod})
            if bookmarks and time.monotonic() - last_bookmark > 5:
                send({"type": "BOOKMARK", "object": {
                    "kind": "Pod", "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(current)}}})
                start = max(start, current)
                last_bookmark = time.monotonic()


class _Handler(BaseHTTPRequestHandler):
    server_api: KubeAPIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, code: int, obj: Obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (the http.server interface)
        api = self.server_api
        api.requests.append(self.path)
        url = urllib.parse.urlsplit(self.path)
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        if parts == ["version"]:
            self._json(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0-podscope-test"})
            return
        namespace: str | None = None
        if parts[:2] == ["api", "v1"] and len(parts) == 4 and parts[2] == "nodes":
            self._json(200, {"kind": "Node", "apiVersion": "v1",
                             "metadata": {"name": parts[3], "uid": "node-uid"}})
            return
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 6 and parts[4] == "pods":
            found = api.list_pods(f"metadata.name={parts[5]}", "", parts[3])["items"]
            if found:
                self._json(200, found[0])
            else:
                self._json(404, _status(404, "NotFound", f'pods "{parts[5]}" not found'))
            return
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 5 and parts[4] == "pods":
            namespace = parts[3]
        elif parts != ["api", "v1", "pods"]:
            self._json(404, _status(404, "NotFound", "the server could not find the resource"))
            return
        fields, labels = q.get("fieldSelector", ""), q.get("labelSelector", "")
        if q.get("watch") not in ("true", "1"):
            self._json(200, api.list_pods(fields, labels, namespace))
            return
        if api.fail_watches:
            self._json(500, _status(500, "InternalError", "watch refused (test)"))
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(ev: Obj) -> None:
            line = json.dumps(ev).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()

        try:
            api.watch(q.get("resourceVersion", ""), fields, labels, namespace,
                      float(q.get("timeoutSeconds", "1800")),
                      q.get("allowWatchBookmarks") == "true", send)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True
