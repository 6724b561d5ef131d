"""Finding a pod from what a user types: one resolver for every command (trace, profile, report).

A query is `namespace/name`, a pod name, a pod UID or its prefix, or a container id prefix (4
characters at least). Names come from the Kubernetes API, read with the same settings as the
agent (`--kubeconfig`, `$KUBECONFIG`, in-cluster); without an API, UIDs and container ids still
work. No match, or more than one, is a ValueError in one line that names the closest candidates."""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass

from . import kube
from .cgroups import parse_cgroup_path, pod_containers
from .store import Labels, MetadataStore

MIN_PREFIX = 4


@dataclass(frozen=True)
class Target:
    """What a query found: one pod (or one container outside Kubernetes)."""
    uid: str
    namespace: str
    name: str
    container_ids: frozenset[str]

    @property
    def title(self) -> str:
        if self.name:
            return f"{self.namespace}/{self.name}"
        return f"pod {self.uid}" if self.uid else f"container {next(iter(self.container_ids))[:12]}"

    def matches(self, labels: dict[str, str] | Labels) -> bool:
        """Whether a record's or series' labels are this target's."""
        d = labels._asdict() if isinstance(labels, Labels) else labels
        if self.uid:
            return d.get("k8s_pod_uid") == self.uid
        return d.get("container_id", "") in self.container_ids


def cli_store(cg2: str | None, kubeconfig: str = "", node: str = "",
              wait: float = 10.0) -> MetadataStore:
    """A metadata store for a command: the pods of this node from the API when there is one
    (waited for up to `wait` seconds), as the agent would see them."""
    store = MetadataStore(cg2, node=kube.node_name(node))
    if kube.cluster_configured(kubeconfig):
        w = kube.KubeWatcher(store.node, store.set_pods, store.pod_event, kubeconfig=kubeconfig)
        store.api = w
        w.start()
        deadline = time.monotonic() + wait
        while not w.up and time.monotonic() < deadline:
            time.sleep(0.1)
        w.stop()
    return store


def candidates(store: MetadataStore) -> list[Target]:
    """Every pod of this node (its containers' cgroups, its API entry) and every container
    outside Kubernetes that has a cgroup here."""
    by_uid: dict[str, set[str]] = {}
    if store.resolver is not None:
        for cid in pod_containers(store.resolver.root):
            lab = store.labels(cid, 0)
            if lab.k8s_pod_uid:
                by_uid.setdefault(lab.k8s_pod_uid, set()).add(lab.container_id)
    for uid, meta in store.pods().items():
        if meta.deleted_at is None:
            by_uid.setdefault(uid, set()).update(meta.containers)
    out = []
    for uid, cids in by_uid.items():
        known = store.pod(uid)
        out.append(Target(uid, known.namespace if known else "", known.name if known else "",
                          frozenset(cids)))
    if store.resolver is not None:  # containers outside Kubernetes: by their id
        seen: set[str] = set()
        for path in store.resolver.live_paths(max_age=0):
            ref = parse_cgroup_path(path)
            if ref.container_id and not ref.pod_uid and ref.container_id not in seen:
                seen.add(ref.container_id)
                out.append(Target("", "", "", frozenset({ref.container_id})))
    return out


def container_cgroups(store: MetadataStore, target: Target) -> dict[int, str]:
    """cgroup id -> path of the target's containers on this node."""
    if store.resolver is None:
        return {}
    if target.uid:
        return {cid: rel for cid, rel in pod_containers(store.resolver.root).items()
                if target.matches(store.labels(cid, 0))}
    store.resolver.live_paths(max_age=0)
    return {cid: path for cid, path in store.resolver.paths().items()
            if parse_cgroup_path(path).container_id in target.container_ids}


def resolve(store: MetadataStore | None, query: str, flag: str = "--pod",
            pods: list[Target] | None = None) -> Target:
    """The one pod `query` names, among `pods` (default: this node's, from `store`);
    ValueError (one line, with the closest names) otherwise."""
    query = query.strip()
    if not query:
        raise ValueError(f"{flag}: empty (a name, namespace/name, pod UID or container id)")
    if pods is None:
        pods = candidates(store) if store is not None else []
    ns, sep, name = query.rpartition("/")
    if sep:
        found = [p for p in pods if (p.namespace, p.name) == (ns, name)]
    else:
        found = [p for p in pods if p.name == query or p.uid == query]
        if not found and len(query) >= MIN_PREFIX:
            found = [p for p in pods if p.uid.startswith(query)] or [
                p for p in pods if any(c.startswith(query) for c in p.container_ids)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise ValueError(f"{flag} {query}: {len(found)} pods match ("
                         + ", ".join(p.title for p in found[:5]) + "): say namespace/name")
    named = [p for p in pods if p.name]
    keys: dict[str, list[str]] = {}  # what the query is compared with -> the titles it names
    for p in named:
        keys.setdefault(p.title if sep else p.name, []).append(p.title)
    close = [t for k in difflib.get_close_matches(query, list(keys), n=3, cutoff=0.4)
             for t in keys[k]]
    titles = sorted(p.title for p in named)
    hint = (f"; closest: {', '.join(close[:5])}" if close else
            f"; pods here: {', '.join(titles[:5])}" if titles else
            "; no pod names known here (is the Kubernetes API reachable? --kubeconfig)")
    raise ValueError(f"{flag} {query}: no pod or container on this node matches{hint}")
