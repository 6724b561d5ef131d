"""The one place where kernel ids become labels.

A pod key from BPF is (cgroup v2 id, netns inode). The cgroup id names the container (and so the
pod) when the socket or task lives in a pod's cgroup; otherwise, or when only the network
namespace is known (packets with no socket, cgroup v1-only nodes), the namespace's processes name
the pod. Processes outside any pod keep their cgroup path and container id."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .cgroups import CgroupRef, CgroupResolver, parse_cgroup_path
from .docker import DockerNames
from .kube import KubeWatcher, PodMeta
from .namespaces import NetnsInfo, host_netns, proc_cgroups, scan_netns, scan_ns, uts_nodename


class Labels(NamedTuple):
    k8s_pod_uid: str = ""
    container_id: str = ""
    k8s_namespace_name: str = ""
    k8s_pod_name: str = ""
    k8s_container_name: str = ""
    k8s_node_name: str = ""
    k8s_workload_kind: str = ""
    k8s_workload_name: str = ""
    container_name: str = ""  # outside Kubernetes: the Docker container's name
    process_name: str = ""  # the command of the processes in the cgroup (outside pods)
    cgroup: str = ""
    pod_name: str = ""  # outside Kubernetes: the runtime's pod (a podman pod) the container is in


LABEL_NAMES: tuple[str, ...] = Labels._fields


def identity(labels: Labels) -> str:
    """What a series belongs to, for retiring it: the pod's UID, else "container:<id>" (outside
    Kubernetes), else "" (the node itself: never retired)."""
    if labels.k8s_pod_uid:
        return labels.k8s_pod_uid
    return f"container:{labels.container_id}" if labels.container_id else ""
_MAX_CACHE = 65536


class MetadataStore:
    def __init__(self, cgroup2_root: str | None, proc: str = "/proc", netns_ttl: float = 2.0,
                 node: str = "", grace: float = 60.0):
        self.proc = proc
        self.node = node
        self.grace = grace  # seconds a deleted pod's series stay (their last increments scraped)
        self._pods: dict[str, PodMeta] = {}  # from the Kubernetes API, by UID
        self._retired: dict[str, float] = {}  # identities (see identity()) gone for good -> when
        # Identities labels were made for, and since when each has had no cgroup, no network
        # namespace and no live pod in the API: gone for `grace`, it is retired (with or
        # without an API that reported the deletion).
        self._seen: dict[str, float] = {}
        self._dead_since: dict[str, float] = {}
        self._alive_at = 0.0
        self.api: KubeWatcher | None = None  # when there is a cluster
        self.docker: DockerNames | None = None  # container names on plain Docker hosts
        self._comm: dict[str, tuple[float, str]] = {}  # cgroup path -> (when, process name)
        self.resolver = CgroupResolver(cgroup2_root, grace=grace) if cgroup2_root else None
        self.netns_ttl = max(netns_ttl, 0.2)  # a rescan looks owners up: not again at once
        self._lock = threading.Lock()
        self._by_cgroup: dict[int, CgroupRef] = {}
        self._netns: dict[int, NetnsInfo] = {}
        self._netns_refs: dict[int, CgroupRef | None] = {}
        # Outside pods, containers seen using another container's network namespace
        # (--network container:): joiner id -> owner id, and the owners. Learned from the
        # sockets' own namespaces, so a joiner that lived for a moment is grouped too.
        self._joined: dict[str, str] = {}
        self._joined_owners: set[str] = set()
        self._joined_checked: dict[tuple[str, int], float] = {}
        self._netns_at = 0.0
        # Network namespace inode numbers are reused once a namespace is gone. The pod each
        # inode last belonged to, and the inodes that now belong to another pod (collectors
        # drop what they keyed by the inode alone before the switch: it was the old pod's).
        self._netns_last: dict[int, str] = {}  # pod UID, or "container:<id>"
        self._recycled: set[int] = set()
        self.host_netns = host_netns(proc)

    # --- network namespaces ---
    def namespaces(self, max_age: float | None = None) -> dict[int, NetnsInfo]:
        """Network namespaces with processes (rescanned when older than max_age seconds)."""
        age = self.netns_ttl if max_age is None else max_age
        rescanned = False
        with self._lock:
            if time.monotonic() - self._netns_at >= age:
                self._netns = scan_netns(self.proc)
                self._netns_refs.clear()
                self._netns_at = time.monotonic()
                rescanned = True
            found = dict(self._netns)
        if rescanned:  # a pod's namespace whose inode now names another pod: notice it now
            for inode in [i for i in self._netns_last if i in found]:
                self._netns_owner(inode)
        return found

    def take_recycled_netns(self) -> set[int]:
        """Inodes that named one pod's network namespace and now name another's."""
        with self._lock:
            out, self._recycled = self._recycled, set()
        return out

    def netns_of(self, uids: set[str]) -> set[int]:
        """Namespace inodes last seen belonging to these pods and to no other pod since."""
        return {i for i, uid in self._netns_last.items() if uid in uids}

    def _netns_owner(self, inode: int) -> CgroupRef | None:
        """The pod all processes of a network namespace belong to (None when not one pod)."""
        if inode in self._netns_refs:
            return self._netns_refs[inode]
        info = self.namespaces().get(inode)
        if info is None:  # a namespace newer than the last scan: look again (rate-limited)
            info = self.namespaces(max_age=0.2).get(inode)
        owner: CgroupRef | None = None
        if info:
            uids: set[str] = set()
            pairs = [(pid, r) for pid in info.pids[:64] if (r := proc_pod_ref(pid, self.proc))]
            refs = [r for _, r in pairs]
            for ref in refs:
                uids.add(ref.pod_uid)
                if ref.pod_uid and owner is None:
                    owner = ref
            if len(uids) != 1 or owner is None:
                owner = None
            if owner is None and not any(uids) and info.pids:
                owner = self._owner_by_hostname(info.pids[0])
            cids = {r.container_id for r in refs}
            rtpods = {r.runtime_pod for r in refs}
            if owner is None and not any(uids) and len(cids) == 1 and refs[0].container_id:
                # outside Kubernetes: a namespace all of whose processes are one container's
                owner = refs[0]
            elif owner is None and not any(uids) and len(rtpods) == 1 and refs[0].runtime_pod:
                # or one runtime pod's (a podman pod: its containers share the namespace)
                owner = CgroupRef(path=refs[0].path.rsplit("/", 1)[0],
                                  runtime_pod=refs[0].runtime_pod)
            elif owner is None and not any(uids) and not any(rtpods) and cids and all(cids):
                # or containers that joined one container's namespace (--network container:):
                # the namespace is that container's, as the engine says, or else the one
                # whose process has been in it longest
                groups = ({self.docker.network_owner(c) for c in cids} if self.docker
                          else {""})
                if len(groups) == 1 and (group := groups.pop()):
                    owner = next((r for r in refs if r.container_id == group),
                                 CgroupRef(path="", container_id=group))
                else:
                    owner = min(pairs, key=lambda pr: _start_time(pr[0], self.proc))[1]
        if owner is not None:
            who = (owner.pod_uid or (f"container:{owner.container_id}" if owner.container_id
                                     else f"runtime-pod:{owner.runtime_pod}"))
            prev = self._netns_last.get(inode)
            if prev is not None and prev != who:
                with self._lock:
                    self._recycled.add(inode)
            if len(self._netns_last) >= _MAX_CACHE:
                self._netns_last.clear()
            self._netns_last[inode] = who
        elif info is None and inode not in self._netns_last:
            # not known yet: a namespace whose first process the last scan missed is asked
            # about again (a later scan finds it), never remembered as nobody's
            return None
        elif info is None:
            # the namespace is gone: what was keyed by it is still its owner's (until retired)
            last = self._netns_last[inode]
            kind, _, ident = last.partition(":")
            owner = (CgroupRef(path="", container_id=ident) if kind == "container" else
                     CgroupRef(path="", runtime_pod=ident) if kind == "runtime-pod" else
                     CgroupRef(path="", pod_uid=last))
        self._netns_refs[inode] = owner
        return owner

    def pidns_labels(self, inode: int) -> Labels | None:
        """Labels for what only a PID namespace identifies (task events on nodes where the v2
        cgroup of every task is the root): a container has its own PID namespace, so when all
        of the namespace's processes are in one container, that container; one pod, the pod."""
        info = scan_ns("pid", self.proc).get(inode)
        if info is None:
            return None
        refs = [r for r in (proc_pod_ref(pid, self.proc) for pid in info.pids[:64]) if r]
        uids = {r.pod_uid for r in refs}
        if len(uids) != 1 or not refs[0].pod_uid:
            return None
        cids = {r.container_id for r in refs}
        if len(cids) == 1:
            return self._pod_labels(refs[0].pod_uid, refs[0].container_id, refs[0].path)
        return self._pod_labels(refs[0].pod_uid, "", "")

    def _owner_by_hostname(self, pid: int) -> CgroupRef | None:
        """Extra evidence where the cgroups name no pod (e.g. a v1-only node whose v1 paths are
        not readable): the UTS nodename kubelet gives a pod's containers is the pod's name. Used
        only when exactly one live pod of this node in the API has that name."""
        if not self._pods:
            return None
        nodename = uts_nodename(pid, self.proc)
        if not nodename or nodename == self.node:
            return None
        found = [p for p in list(self._pods.values())
                 if p.name == nodename and p.deleted_at is None]
        return CgroupRef(path="", pod_uid=found[0].uid) if len(found) == 1 else None

    # --- cgroups ---
    def cgroup_ref(self, cgroup_id: int) -> CgroupRef | None:
        ref = self._by_cgroup.get(cgroup_id)
        if ref is not None or not self.resolver or cgroup_id == 0:
            return ref
        path = self.resolver.path(cgroup_id)
        if path is None:
            return None
        ref = parse_cgroup_path(path)
        if not self.resolver.alive(cgroup_id) or self._retired_ref(ref):
            return ref  # a late event of a removed cgroup: named, never cached again
        if len(self._by_cgroup) >= _MAX_CACHE:
            self._by_cgroup.clear()
        self._by_cgroup[cgroup_id] = ref
        return ref

    def _retired_ref(self, ref: CgroupRef) -> bool:
        return bool(ref.pod_uid and ref.pod_uid in self._retired
                    or f"container:{ref.container_id}" in self._retired
                    or f"runtime-pod:{ref.runtime_pod}" in self._retired)

    # --- pods from the Kubernetes API ---
    def set_pods(self, pods: list[PodMeta]) -> None:
        """A full list: pods missing from it were deleted while we were not watching."""
        now = time.monotonic()
        with self._lock:
            fresh = {p.uid: p for p in pods}
            for uid, old in self._pods.items():
                if uid not in fresh:
                    fresh[uid] = old if old.deleted_at else _deleted(old, now)
            self._pods = fresh

    def pod_event(self, kind: str, pod: PodMeta) -> None:
        with self._lock:
            if kind == "DELETED":
                pod = _deleted(pod, pod.deleted_at or time.monotonic())
            self._pods[pod.uid] = pod

    def state_sizes(self) -> dict[str, int]:
        """Entries in each table this store keeps (each bounded and expiring): exported so that
        an operator, and the churn tests, can see that nothing only grows."""
        out = {"metadata_pods": len(self._pods), "metadata_identities_seen": len(self._seen),
               "metadata_identities_dying": len(self._dead_since),
               "metadata_identities_retired": len(self._retired),
               "metadata_cgroup_refs": len(self._by_cgroup),
               "metadata_netns_owners": len(self._netns_last),
               "metadata_process_names": len(self._comm),
               "metadata_shared_networks": len(self._joined) + len(self._joined_checked)}
        if self.resolver is not None:
            live, dead = self.resolver.sizes()
            out["cgroup_paths_live"] = live
            out["cgroup_paths_removed"] = dead
        if self.docker is not None:
            out["runtime_names"] = self.docker.size()
        return out

    def metrics(self) -> Iterable[Metric]:
        if self.api is None:
            return
        up = GaugeMetricFamily("podscope_metadata_api_up",
                               "1 when the last list or watch of pods reached the Kubernetes API")
        up.add_metric([], 1.0 if self.api.up else 0.0)
        yield up
        pods = GaugeMetricFamily("podscope_metadata_pods",
                                 "Pods of this node known from the Kubernetes API", labels=["state"])
        deleted = sum(1 for p in list(self._pods.values()) if p.deleted_at is not None)
        pods.add_metric(["live"], len(self._pods) - deleted)
        pods.add_metric(["deleted"], deleted)
        yield pods
        lists = CounterMetricFamily("podscope_metadata_api_lists_total",
                                    "Full lists of the node's pods (the first, then after a 410 "
                                    "Gone or an error)")
        lists.add_metric([], self.api.lists)
        yield lists
        errors = CounterMetricFamily("podscope_metadata_api_errors_total",
                                     "Failed attempts to list or watch pods")
        errors.add_metric([], self.api.errors)
        yield errors
        bad = CounterMetricFamily("podscope_metadata_api_malformed_total",
                                  "Pod list items and watch events that were not pods (skipped)")
        bad.add_metric([], self.api.malformed)
        yield bad

    def pod_by_ip(self, ip: str) -> PodMeta | None:
        """The live pod of this node with that address (service-map edges)."""
        for p in list(self._pods.values()):
            if ip in p.ips and p.deleted_at is None:
                return p
        return None

    def pod(self, uid: str) -> PodMeta | None:
        return self._pods.get(uid)

    def pods(self) -> dict[str, PodMeta]:
        return dict(self._pods)

    def _saw(self, ident: str) -> None:
        if ident not in self._seen and ident not in self._retired:
            if len(self._seen) >= _MAX_CACHE:
                self._seen.clear()
            self._seen[ident] = time.monotonic()

    def _alive(self) -> set[str]:
        """Identities with a cgroup or a network namespace now. The API's word counts only
        where no cgroup v2 tree can say it: a pod that died while the API was away is still
        listed as running, and must go like any other."""
        alive: set[str] = set()
        if self.resolver is None:
            alive = {uid for uid, p in list(self._pods.items()) if p.deleted_at is None}
        else:
            for path in self.resolver.live_paths():
                ref = parse_cgroup_path(path)
                if ref.pod_uid:
                    alive.add(ref.pod_uid)
                elif ref.container_id:
                    alive.add(f"container:{ref.container_id}")
        for inode in self.namespaces():
            owner = self._netns_last.get(inode)
            if owner:
                alive.add(owner)
        return alive

    def retire(self) -> set[str]:
        """Identities gone for more than `grace` seconds — pods the API deleted, and pods and
        containers whose cgroups and network namespaces are gone, API or not: forgotten, and
        returned so that collectors drop their series. A retired identity never comes back."""
        now = time.monotonic()
        gone: set[str] = set()
        with self._lock:
            for uid, p in list(self._pods.items()):
                if p.deleted_at is not None and now - p.deleted_at >= self.grace:
                    del self._pods[uid]
                    self._retired[uid] = now
                    gone.add(uid)
            for ident, at in list(self._retired.items()):
                if now - at > max(3600, 2 * self.grace):  # its cgroups are long gone
                    del self._retired[ident]
        checked = now - self._alive_at >= min(10.0, self.grace / 2)
        if checked:
            self._alive_at = now
            alive = self._alive()
            for ident in list(self._seen):
                if ident in alive or ident in gone:
                    self._dead_since.pop(ident, None)
                    continue
                since = self._dead_since.setdefault(ident, now)
                if now - since >= self.grace:
                    gone.add(ident)
                    self._retired[ident] = now
                    del self._dead_since[ident]
        for ident in gone:
            self._seen.pop(ident, None)
            self._dead_since.pop(ident, None)
            if ident.startswith("container:"):
                container = ident.partition(":")[2]
                self._joined.pop(container, None)
                self._joined_owners.discard(container)
        if gone or checked:  # cgroups of the retired, and removed ones, are gone for good
            exists = self.resolver.alive if self.resolver else (lambda _cid: True)
            for cid, ref in list(self._by_cgroup.items()):
                if self._retired_ref(ref) or not exists(cid):
                    del self._by_cgroup[cid]
        return gone

    def forget_netns(self, inodes: set[int]) -> None:
        """Collectors dropped what these inodes keyed: they name nobody now."""
        with self._lock:
            for inode in inodes:
                self._netns_last.pop(inode, None)
                self._netns_refs.pop(inode, None)

    def retired(self, ident: str) -> bool:
        return ident in self._retired

    def labels(self, cgroup_id: int, netns: int) -> Labels:
        """Who a (cgroup id, netns inode) pair from BPF is. A container's own cgroup says it best,
        even after the container is gone (the resolver keeps a removed cgroup's path for the
        grace period): the namespace inode could by then name another pod's namespace. The
        namespace's owner speaks only where no container cgroup does (the root, a slice, a
        packet with no socket; on cgroup v1-only nodes every v2 id is the root)."""
        ref = self.cgroup_ref(cgroup_id)
        if ref is not None and ref.in_pod:
            return self._pod_labels(ref.pod_uid, ref.container_id, ref.path)
        if ref is not None and (ref.container_id or ref.runtime_pod):
            if ref.container_id and not ref.runtime_pod and netns and netns != self.host_netns:
                self._note_joined(ref.container_id, netns)
            return self._container_labels(ref)
        owner = self._netns_owner(netns) if netns else None
        if owner is not None and owner.in_pod:
            # The namespace is one pod's: the pod is known, the container is not.
            return self._pod_labels(owner.pod_uid, "", "")
        if ref is not None:
            return self._container_labels(ref)
        if owner is not None:  # a namespace of one container outside Kubernetes
            return self._container_labels(owner)
        if cgroup_id:
            return Labels(cgroup=f"id:{cgroup_id}", k8s_node_name=self.node)
        if netns and netns != self.host_netns:
            # known only by a namespace no pod or single container owns: kept apart from the
            # node's own (and from each other)
            return Labels(cgroup=f"netns:{netns}", k8s_node_name=self.node)
        return Labels(k8s_node_name=self.node)

    def _note_joined(self, cid: str, netns: int) -> None:
        """A container's socket in a namespace that another container owns: it joined that
        container's network (checked again every 5 s while the owner is unclear)."""
        if cid in self._joined or cid in self._joined_owners:
            return
        now = time.monotonic()
        if now - self._joined_checked.get((cid, netns), -1e9) < 5.0:
            return
        if len(self._joined_checked) >= _MAX_CACHE:
            self._joined_checked.clear()
        self._joined_checked[(cid, netns)] = now
        owner = self._netns_owner(netns)
        if (owner is None or owner.in_pod or owner.runtime_pod or not owner.container_id
                or owner.container_id == cid):
            return
        if len(self._joined) >= _MAX_CACHE:
            self._joined.clear()
            self._joined_owners.clear()
        self._joined[cid] = owner.container_id
        self._joined_owners.add(owner.container_id)

    def _network_pod(self, cid: str) -> str:
        """The name of the container whose network namespace `cid` shares with others."""
        if self.docker is None or not cid:
            return ""
        named = self.docker.network_pod(cid)
        if named:
            return named
        owner = self._joined.get(cid) or (cid if cid in self._joined_owners else "")
        return self.docker.name(owner) if owner else ""

    def _container_labels(self, ref: CgroupRef) -> Labels:
        """A container (or a runtime's pod) outside Kubernetes: its id, its runtime's names."""
        if ref.container_id:
            self._saw(f"container:{ref.container_id}")
        name = self.docker.name(ref.container_id) if self.docker and ref.container_id else ""
        pod = ""
        if self.docker is not None:
            pod = (self.docker.pod_name(ref.runtime_pod) if ref.runtime_pod
                   else self._network_pod(ref.container_id))
        return Labels(container_id=ref.container_id, cgroup=ref.path, k8s_node_name=self.node,
                      container_name=name, process_name=self._process_name(ref), pod_name=pod)

    def _process_name(self, ref: CgroupRef) -> str:
        """The command of the cgroup's first process (rechecked every 30 s; processes exec).
        The root cgroup and the node's slices hold many programs: no name there."""
        if ref.path in ("/", "") or ref.path.endswith(".slice") or not self.resolver:
            return ""
        now = time.monotonic()
        hit = self._comm.get(ref.path)
        if hit is not None and now - hit[0] < 30:
            return hit[1]
        name = ""
        try:
            with open(f"{self.resolver.root}{ref.path}/cgroup.procs") as f:
                first = f.readline().strip()
            if first:
                with open(f"{self.proc}/{first}/comm") as f:
                    name = f.read().strip()
        except OSError:
            pass
        if not name and hit is not None:  # emptied or gone: the series keeps the name it had
            name = hit[1]
        if len(self._comm) >= _MAX_CACHE:
            self._comm.clear()
        self._comm[ref.path] = (now, name)
        return name

    def renamed(self, labels: Labels) -> Labels:
        """The same series with the names known now: labels made earlier may have had only the
        pod's UID (the API was away), or a container's id before its runtime named it. One
        container keeps one label set."""
        if labels.k8s_pod_uid:
            return self._pod_labels(labels.k8s_pod_uid, labels.container_id, labels.cgroup)
        if labels.cgroup.startswith("id:"):
            # a cgroup id not known when the series was made (its directory came and went
            # before the kernel's word of it was read): named as soon as it is known
            cid = int(labels.cgroup[3:]) if labels.cgroup[3:].isdigit() else 0
            return self.labels(cid, 0) if cid and self.cgroup_ref(cid) is not None else labels
        if self.docker and labels.cgroup and (not labels.container_name or not labels.pod_name):
            ref = parse_cgroup_path(labels.cgroup)
            name = labels.container_name or self.docker.name(labels.container_id)
            pod = labels.pod_name or (self.docker.pod_name(ref.runtime_pod) if ref.runtime_pod
                                      else self._network_pod(labels.container_id))
            return labels._replace(container_name=name, pod_name=pod)
        return labels

    def _pod_labels(self, uid: str, cid: str, path: str) -> Labels:
        self._saw(uid)
        p = self._pods.get(uid)
        if p is None:  # not (yet) known to the API, or the API is away: the UID says who
            return Labels(k8s_pod_uid=uid, container_id=cid, cgroup=path, k8s_node_name=self.node)
        return Labels(k8s_pod_uid=uid, container_id=cid, k8s_namespace_name=p.namespace,
                      k8s_pod_name=p.name, k8s_container_name=p.containers.get(cid, "") if cid
                      else "", k8s_node_name=self.node, k8s_workload_kind=p.workload_kind,
                      k8s_workload_name=p.workload_name, cgroup=path)


def _start_time(pid: int, proc: str) -> int:
    """A process's start time in clock ticks since boot (a gone one: last)."""
    try:
        with open(f"{proc}/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return 1 << 62


def proc_pod_ref(pid: int, proc: str = "/proc") -> CgroupRef | None:
    """What a process's cgroups say about it: the v2 path, or on cgroup v1 / hybrid nodes the
    first v1 hierarchy that names a pod (None: no such process)."""
    paths = proc_cgroups(pid, proc)
    if not paths:
        return None
    refs = [parse_cgroup_path(path) for path, _ in paths]
    return next((r for r in refs if r.pod_uid), refs[0])


def _deleted(p: PodMeta, at: float) -> PodMeta:
    return PodMeta(p.uid, p.namespace, p.name, p.node, p.workload_kind, p.workload_name,
                   p.containers, at, p.ips)
