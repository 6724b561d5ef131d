"""cgroup paths -> pod UID and container id, for the runtimes and cgroup drivers kubelet uses."""

from __future__ import annotations

import ctypes as ct
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

_HEX64 = r"[0-9a-f]{64}"
_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"

# Pod directory: systemd driver "kubepods-burstable-pod<uid with _>.slice", cgroupfs "pod<uid>".
_POD_RE = re.compile(rf"(?:^|/)(?:kubepods(?:-[a-z]+)?-)?pod(?P<uid>{_UID})(?:\.slice)?(?:/|$)")
# Container directory: "cri-containerd-<id>.scope", "crio-<id>.scope", "docker-<id>.scope",
# cgroupfs "<id>" (any runtime), and "crio-conmon-<id>" (the monitor, not the container).
_CTR_RE = re.compile(
    rf"(?:^|/)(?:(?P<rt>cri-containerd|crio|docker|libpod)-)?(?P<id>{_HEX64})(?:\.scope)?$")
_QOS_RE = re.compile(r"kubepods[-/](?P<qos>burstable|besteffort)(?:\.slice)?/")
# A podman pod outside Kubernetes: "libpod_parent/<pod id>" (cgroupfs manager) or
# "machine-libpod_pod_<pod id>.slice" (systemd manager); its containers are below it.
_RTPOD_RE = re.compile(rf"(?:^|/)(?:libpod_parent/|machine-libpod_pod_)(?P<id>{_HEX64})(?:\.slice)?(?:/|$)")


@dataclass(frozen=True)
class CgroupRef:
    """What a cgroup path says about its owner."""

    path: str
    pod_uid: str = ""
    container_id: str = ""
    runtime: str = ""
    qos: str = ""
    runtime_pod: str = ""  # outside Kubernetes: the runtime's pod (a podman pod's id)

    @property
    def in_pod(self) -> bool:
        return bool(self.pod_uid)


def parse_cgroup_path(path: str) -> CgroupRef:
    """Parse a cgroup path (v1 or v2, relative to the hierarchy root)."""
    path = path.rstrip("/") or "/"
    pod = _POD_RE.search(path)
    rtpod = _RTPOD_RE.search(path)
    ctr = _CTR_RE.search(path)
    if rtpod and ctr and ctr.group("id") == rtpod.group("id"):
        ctr = None  # the podman pod's own directory: a pod, not a container
    uid = pod.group("uid").replace("_", "-") if pod else ""
    cid = ctr.group("id") if ctr else ""
    runtime = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker",
               "libpod": "podman"}.get(ctr.group("rt") or "", "") if ctr else ""
    qos = ""
    if uid:
        q = _QOS_RE.search(path)
        qos = q.group("qos") if q else "guaranteed"
    return CgroupRef(path=path, pod_uid=uid, container_id=cid, runtime=runtime, qos=qos,
                     runtime_pod=rtpod.group("id") if rtpod and not uid else "")


def pod_containers(root: str) -> dict[int, str]:
    """cgroup id -> path of every pod container cgroup (below the kubepods trees only)."""
    out: dict[int, str] = {}
    try:
        tops = [e.path for e in os.scandir(root)
                if e.is_dir(follow_symlinks=False) and e.name.startswith("kubepods")]
    except OSError:
        return out
    for top in tops:
        for dirpath, _dirs, _files in os.walk(top):
            rel = "/" + os.path.relpath(dirpath, root)
            ref = parse_cgroup_path(rel)
            if ref.container_id and ref.pod_uid:
                try:
                    out[os.stat(dirpath).st_ino] = rel
                except OSError:
                    continue
    return out


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The cgroup v2 mount point ('/sys/fs/cgroup' on most nodes, '.../unified' on hybrid ones)."""
    try:
        with open(mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        return None
    return None


def v1_mounts(mountinfo: str = "/proc/self/mountinfo") -> dict[str, str]:
    """cgroup v1 controller -> its hierarchy's mount point."""
    out: dict[str, str] = {}
    try:
        with open(mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = right.split()
                if len(fields) >= 3 and fields[0] == "cgroup":
                    for opt in fields[2].split(","):
                        if opt in ("pids", "memory", "cpu", "cpuacct", "blkio"):
                            out.setdefault(opt, left.split()[4])
    except OSError:
        pass
    return out


_FILEID_KERNFS = 0xFE
_libc = ct.CDLL(None, use_errno=True)


class _KernfsHandle(ct.Structure):
    _fields_ = [("handle_bytes", ct.c_uint), ("handle_type", ct.c_int), ("id", ct.c_uint64)]


class CgroupResolver:
    """cgroup v2 id (the directory's inode number, as BPF sees it) -> path below the mount.

    Paths come from walking the tree (again when an unknown id shows up, at most once per
    `min_rescan` seconds), from the id itself (open_by_handle_at), and, fastest, from the kernel
    as directories are made and removed (`learn`, `removed`: collectors/cgroups.py). A removed
    directory's path is kept for `grace` seconds, so that what its processes did is still named
    after it; at most `max_dead` removed ones are kept (the oldest go first)."""

    def __init__(self, root: str, min_rescan: float = 1.0, grace: float = 60.0,
                 max_dead: int = 65536):
        self.root = root
        self.min_rescan = min_rescan
        self.grace = grace
        self.max_dead = max_dead
        self._paths: dict[int, str] = {}
        self._dead: OrderedDict[int, tuple[str, float]] = OrderedDict()  # id -> (path, removed)
        self._last_scan = 0.0
        self._lock = threading.Lock()
        self._mount_fd: int | None = None

    def _scan(self) -> None:
        paths: dict[int, str] = {}
        for dirpath, _dirs, _files in os.walk(self.root):
            try:
                ino = os.stat(dirpath).st_ino
            except OSError:
                continue
            rel = "/" + os.path.relpath(dirpath, self.root) if dirpath != self.root else "/"
            paths[ino] = rel
        self._paths = paths
        self._last_scan = time.monotonic()

    def _by_handle(self, cgroup_id: int) -> str | None:
        """One directory by its id: cgroup2 (kernfs) file handles carry the id, so
        open_by_handle_at finds a cgroup created after the last walk at once."""
        fh = _KernfsHandle(8, _FILEID_KERNFS, cgroup_id)
        try:
            if self._mount_fd is None:
                self._mount_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            fd = _libc.open_by_handle_at(self._mount_fd, ct.byref(fh), os.O_RDONLY)
            if fd < 0:
                return None
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
        except OSError:
            return None
        rel = os.path.relpath(target, self.root)
        return "/" if rel == "." else "/" + rel

    def sizes(self) -> tuple[int, int]:
        """Known live directories, and removed ones kept for the grace period."""
        return len(self._paths), len(self._dead)

    def learn(self, cgroup_id: int, path: str) -> None:
        """The kernel made this directory (cgroup_mkdir)."""
        with self._lock:
            self._paths[cgroup_id] = path or "/"
            self._dead.pop(cgroup_id, None)

    def removed(self, cgroup_id: int, path: str, at: float | None = None) -> None:
        """The kernel removed this directory (cgroup_rmdir): its path stays known for grace."""
        with self._lock:
            known = self._paths.pop(cgroup_id, None) or path or "/"
            self._dead[cgroup_id] = (known, time.monotonic() if at is None else at)
            self._dead.move_to_end(cgroup_id)
            while len(self._dead) > self.max_dead:
                self._dead.popitem(last=False)

    def expire(self, now: float | None = None) -> int:
        """Forget removed directories past their grace; returns how many."""
        now = time.monotonic() if now is None else now
        n = 0
        with self._lock:
            while self._dead:
                cid, (_path, at) = next(iter(self._dead.items()))
                if now - at < self.grace:
                    break
                del self._dead[cid]
                n += 1
        return n

    def alive(self, cgroup_id: int) -> bool:
        """Not known to be removed (an id never seen counts as alive)."""
        return cgroup_id not in self._dead

    def path(self, cgroup_id: int) -> str | None:
        with self._lock:
            p = self._paths.get(cgroup_id)
            if p is None and cgroup_id in self._dead:
                return self._dead[cgroup_id][0]
            if p is None:
                p = self._by_handle(cgroup_id)
                if p is not None:
                    self._paths[cgroup_id] = p
                    return p
            if p is None and time.monotonic() - self._last_scan >= self.min_rescan:
                self._scan()
                for cid in self._dead:  # a walk sees only what exists
                    self._paths.pop(cid, None)
                p = self._paths.get(cgroup_id)
            return p

    def live_paths(self, max_age: float = 30.0) -> list[str]:
        """Paths of the directories that exist (walked again when the last walk is older than
        max_age; between walks the kernel's mkdir/rmdir keep the table current)."""
        with self._lock:
            if time.monotonic() - self._last_scan >= max_age:
                self._scan()
                for cid in self._dead:
                    self._paths.pop(cid, None)
            return list(self._paths.values())

    def paths(self) -> dict[int, str]:
        """id -> path of the directories known to exist."""
        with self._lock:
            return dict(self._paths)

    def invalidate(self) -> None:
        with self._lock:
            self._last_scan = 0.0
