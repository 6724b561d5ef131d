"""The one place where kernel ids become labels.

A pod key from BPF is (cgroup v2 id, netns inode). The cgroup id names the container (and so the
pod) when the socket or task lives in a pod's cgroup; otherwise, or when only the network
namespace is known (packets with no socket, cgroup v1-only nodes), the namespace's processes name
the pod. Processes outside any pod keep their cgroup path and container id."""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

from .cgroups import CgroupRef, CgroupResolver, parse_cgroup_path
from .namespaces import NetnsInfo, proc_cgroup_v2, scan_netns


class Labels(NamedTuple):
    k8s_pod_uid: str = ""
    container_id: str = ""
    k8s_namespace_name: str = ""
    k8s_pod_name: str = ""
    k8s_container_name: str = ""
    cgroup: str = ""


LABEL_NAMES: tuple[str, ...] = Labels._fields
_MAX_CACHE = 65536


class MetadataStore:
    def __init__(self, cgroup2_root: str | None, proc: str = "/proc", netns_ttl: float = 2.0):
        self.proc = proc
        self.resolver = CgroupResolver(cgroup2_root) if cgroup2_root else None
        self.netns_ttl = netns_ttl
        self._lock = threading.Lock()
        self._by_cgroup: dict[int, CgroupRef] = {}
        self._netns: dict[int, NetnsInfo] = {}
        self._netns_refs: dict[int, CgroupRef | None] = {}
        self._netns_at = 0.0

    # --- network namespaces ---
    def namespaces(self, max_age: float | None = None) -> dict[int, NetnsInfo]:
        """Network namespaces with processes (rescanned when older than max_age seconds)."""
        age = self.netns_ttl if max_age is None else max_age
        with self._lock:
            if time.monotonic() - self._netns_at >= age:
                self._netns = scan_netns(self.proc)
                self._netns_refs.clear()
                self._netns_at = time.monotonic()
            return dict(self._netns)

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
            for pid in info.pids[:64]:
                path = proc_cgroup_v2(pid, self.proc)
                if path is None:
                    continue
                ref = parse_cgroup_path(path)
                uids.add(ref.pod_uid)
                if ref.pod_uid and owner is None:
                    owner = ref
            if len(uids) != 1 or owner is None:
                owner = None
        self._netns_refs[inode] = owner
        return owner

    # --- cgroups ---
    def cgroup_ref(self, cgroup_id: int) -> CgroupRef | None:
        ref = self._by_cgroup.get(cgroup_id)
        if ref is not None or not self.resolver or cgroup_id == 0:
            return ref
        path = self.resolver.path(cgroup_id)
        if path is None:
            return None
        ref = parse_cgroup_path(path)
        if len(self._by_cgroup) >= _MAX_CACHE:
            self._by_cgroup.clear()
        self._by_cgroup[cgroup_id] = ref
        return ref

    def labels(self, cgroup_id: int, netns: int) -> Labels:
        ref = self.cgroup_ref(cgroup_id)
        if ref is not None and ref.in_pod:
            return Labels(k8s_pod_uid=ref.pod_uid, container_id=ref.container_id, cgroup=ref.path)
        owner = self._netns_owner(netns) if netns else None
        if owner is not None:
            # The namespace is one pod's: the pod is known, the container is not.
            return Labels(k8s_pod_uid=owner.pod_uid)
        if ref is not None:
            return Labels(container_id=ref.container_id, cgroup=ref.path)
        return Labels(cgroup=f"id:{cgroup_id}" if cgroup_id else "")
