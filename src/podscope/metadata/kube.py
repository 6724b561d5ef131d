"""The pods of this node from the Kubernetes API: names, namespaces, containers, owners.

`KubeWatcher` lists and watches pods with `spec.nodeName=<node>` using the official `kubernetes`
client: a list gives the state and a resourceVersion, a watch from that version gives the
changes; a watch that ends is resumed from the last version seen (bookmarks included), a 410
Gone (the version was compacted away) means a fresh list, and errors back off exponentially
(0.5 s doubling to 30 s, with jitter). `up` says whether the last attempt reached the API.

`pod_meta` turns a v1 Pod (as JSON) into the `PodMeta` labels are made of. Pure.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("podscope.kube")

# a Job made by a CronJob is named <cronjob>-<scheduled time in minutes since the epoch>
_CRONJOB_JOB = re.compile(r"^(.+)-\d{8,10}$")


@dataclass(frozen=True)
class PodMeta:
    uid: str
    namespace: str
    name: str
    node: str = ""
    workload_kind: str = ""
    workload_name: str = ""
    containers: Mapping[str, str] = field(default_factory=dict)  # container id -> name
    deleted_at: float | None = None  # monotonic time the API said it was deleted
    ips: tuple[str, ...] = ()  # status.podIPs (empty for host-network pods: not the pod's own)


def container_id(raw: str) -> str:
    """'containerd://<id>' (or cri-o://, docker://) -> '<id>'."""
    return raw.split("://", 1)[-1] if raw else ""


def workload(meta: Mapping[str, Any]) -> tuple[str, str]:
    """The owning workload from the controller owner reference. A ReplicaSet stands for its
    Deployment when its name is the Deployment's plus the pod-template-hash; a Job for its
    CronJob when its name ends with a CronJob's schedule stamp. Both without extra API calls
    (the agent may read pods only)."""
    owners = [o for o in meta.get("ownerReferences") or [] if o.get("controller")]
    if not owners:
        return "", ""
    kind, name = str(owners[0].get("kind", "")), str(owners[0].get("name", ""))
    if kind == "ReplicaSet":
        h = (meta.get("labels") or {}).get("pod-template-hash", "")
        if h and name.endswith("-" + h):
            return "Deployment", name[: -len(h) - 1]
    elif kind == "Job":
        m = _CRONJOB_JOB.match(name)
        if m:
            return "CronJob", m.group(1)
    return kind, name


def pod_meta(obj: Mapping[str, Any], deleted_at: float | None = None) -> PodMeta:
    """What podscope keeps of a pod object; ValueError (or AttributeError, TypeError) when it is
    not one (null, no UID)."""
    meta = obj.get("metadata") or {}
    if not meta.get("uid"):
        raise ValueError("a pod without metadata.uid")
    status = obj.get("status") or {}
    containers: dict[str, str] = {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or []:
            cid = container_id(cs.get("containerID", ""))
            if cid:
                containers[cid] = cs.get("name", "")
            # a restarted container's previous id still names it while its cgroup lingers
            last = ((cs.get("lastState") or {}).get("terminated") or {}).get("containerID", "")
            if last:
                containers[container_id(last)] = cs.get("name", "")
    kind, name = workload(meta)
    spec = obj.get("spec") or {}
    ips: tuple[str, ...] = ()
    if not spec.get("hostNetwork"):
        ips = tuple(str(a.get("ip")) for a in status.get("podIPs") or [] if a.get("ip"))
        if not ips and status.get("podIP"):
            ips = (str(status["podIP"]),)
    return PodMeta(uid=str(meta.get("uid", "")), namespace=str(meta.get("namespace", "")),
                   name=str(meta.get("name", "")), node=str(spec.get("nodeName", "")),
                   workload_kind=kind, workload_name=name, containers=containers,
                   deleted_at=deleted_at, ips=ips)


def node_name(configured: str = "") -> str:
    return configured or os.environ.get("NODE_NAME", "") or socket.gethostname()


def cluster_configured(kubeconfig: str = "") -> bool:
    """In a pod (service account), or a kubeconfig given or at its usual place."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return True
    path = kubeconfig or os.environ.get("KUBECONFIG", "") or os.path.expanduser("~/.kube/config")
    return os.path.exists(path.split(os.pathsep)[0])


STABLE_WATCH_SECONDS = 60.0  # a watch that ran this long resets the backoff


class KubeWatcher:
    """on_list(pods) replaces the whole set; on_event(kind, pod) applies one change."""

    def __init__(self, node: str, on_list: Callable[[list[PodMeta]], None],
                 on_event: Callable[[str, PodMeta], None], kubeconfig: str = "",
                 watch_timeout: int = 300, max_backoff: float = 30.0):
        self.node = node
        self.on_list = on_list
        self.on_event = on_event
        self.kubeconfig = kubeconfig
        self.watch_timeout = watch_timeout
        self.max_backoff = max_backoff
        self.up = False
        self.lists = 0  # full lists done (the first, and one per 410 or error)
        self.errors = 0
        self.malformed = 0  # list items and watch events that were not pods: skipped
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._api: Any = None
        self._watch: Any = None

    def _client(self) -> Any:
        from kubernetes import client, config  # slow to import: only when a cluster is there

        if os.environ.get("KUBERNETES_SERVICE_HOST") and not self.kubeconfig:
            config.load_incluster_config()
        else:
            config.load_kube_config(config_file=self.kubeconfig or None)
        return client.CoreV1Api()

    def start(self) -> None:
        # import the client here, in the caller's thread: imports racing in two threads (this
        # one's and, say, the OTLP exporter's, both pulling in `requests`) can fail half-way
        import kubernetes.client  # noqa: F401
        import kubernetes.config  # noqa: F401
        import kubernetes.watch  # noqa: F401

        # urllib3 logs three lines per retry of every attempt: the watcher says one per change
        # of the API's state instead (_failed)
        logging.getLogger("urllib3").setLevel(logging.ERROR)
        self._thread = threading.Thread(target=self._run, name="podscope-kube", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def _run(self) -> None:
        """List, then watch from the list's version. Failures back off like client-go's
        reflector: 0.8 s doubling to max_backoff with jitter, reset only by a watch that ran
        stably for a while (a watch failing right after each list must not relist every second
        from every node of a cluster)."""
        from kubernetes.client.rest import ApiException

        backoff = 0.8
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if self._api is None:
                    self._api = self._client()
                rv = self._list()
                self._follow(rv)
            except ApiException as e:
                if e.status == 410 and time.monotonic() - started > 1.0:
                    log.info("pod watch expired (410 Gone): listing again")
                    continue  # our version was compacted away: list again, at once
                self._failed(f"Kubernetes API: {e.status} {e.reason}")
            except Exception as e:  # noqa: BLE001 (unreachable, refused, bad config: retry)
                self._failed(f"Kubernetes API: {type(e).__name__}: {e}")
            else:
                continue
            if time.monotonic() - started > STABLE_WATCH_SECONDS:
                backoff = 0.8
            self._stop.wait(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self.max_backoff)

    def _failed(self, msg: str) -> None:
        if self._stop.wait(0.2):
            return  # the agent is stopping (a signal can cut the watch's read short)
        if self.up or msg != self.last_error:
            log.warning("%s (retrying; metrics go on, labelled by pod UID)", msg)
        self.up = False
        self.errors += 1
        self.last_error = msg

    def _selector(self) -> str:
        return f"spec.nodeName={self.node}"

    def _list(self) -> str:
        resp = self._api.list_pod_for_all_namespaces(field_selector=self._selector(),
                                                     _preload_content=False,
                                                     _request_timeout=30)
        body = json.loads(resp.data)
        pods = []
        for p in body.get("items") or []:
            try:
                pods.append(pod_meta(p))
            except (AttributeError, TypeError, KeyError, ValueError):
                self.malformed += 1  # one bad item never costs the whole list
        self.on_list(pods)
        self.lists += 1
        self.up = True
        return str(body["metadata"]["resourceVersion"])

    def _follow(self, rv: str) -> None:
        """Watch from rv until stopped; raises on errors (410 included)."""
        from kubernetes import watch

        while not self._stop.is_set():
            self._watch = w = watch.Watch()
            for ev in w.stream(self._api.list_pod_for_all_namespaces,
                               field_selector=self._selector(), resource_version=rv,
                               timeout_seconds=self.watch_timeout, allow_watch_bookmarks=True,
                               _request_timeout=self.watch_timeout + 30):
                obj = ev["raw_object"]
                rv = str((obj.get("metadata") or {}).get("resourceVersion", rv))
                if ev["type"] == "BOOKMARK":
                    continue
                deleted = time.monotonic() if ev["type"] == "DELETED" else None
                try:
                    meta = pod_meta(obj, deleted)
                except (AttributeError, TypeError, KeyError, ValueError):
                    self.malformed += 1
                    continue
                self.on_event(ev["type"], meta)
                self.up = True
            self.up = True  # a watch that ended by its timeout: resume from rv
