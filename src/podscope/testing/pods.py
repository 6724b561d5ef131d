"""Real test pods: a network namespace on a bridge plus a cgroup v2 directory named exactly as
kubelet and containerd name it, with real processes inside. Used by the tests, the benchmarks
and demos; everything made is removed on close, also when a test fails.

    with PodNetwork() as net:
        server = net.pod("server", qos="burstable", driver="systemd")
        proc = server.popen(["nginx", ...])

Command line (for demos): python -m podscope.testing.pods --pods 2 -- CMD...
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..metadata.cgroups import cgroup2_mount, v1_mounts

SUBNET = "10.213"  # test hosts only ever live inside namespaces made here


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def cgroup_path(uid: str, container_id: str, qos: str, driver: str) -> str:
    """The cgroup directory (relative to the cgroup2 root) kubelet + containerd create; with
    driver "podman", the one podman (systemd manager) makes for a container outside Kubernetes."""
    if driver == "podman":
        return f"machine.slice/libpod-{container_id}.scope"
    if qos not in ("guaranteed", "burstable", "besteffort"):
        raise ValueError(f"qos {qos!r}")
    if driver == "systemd":
        u = uid.replace("-", "_")
        if qos == "guaranteed":
            return f"kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{container_id}.scope"
        return (f"kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice/"
                f"cri-containerd-{container_id}.scope")
    if driver == "cgroupfs":
        if qos == "guaranteed":
            return f"kubepods/pod{uid}/{container_id}"
        return f"kubepods/{qos}/pod{uid}/{container_id}"
    raise ValueError(f"cgroup driver {driver!r}")


@dataclass
class Pod:
    net: PodNetwork
    name: str
    uid: str
    container_id: str
    qos: str
    driver: str
    netns: str
    ip: str
    cgroup_rel: str
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)  # run after the processes
    containers: dict[str, str] = field(default_factory=dict)  # name -> container id
    dirs: list[str] = field(default_factory=list)  # cgroup directories only this pod uses
    v1_dirs: dict[str, list[str]] = field(default_factory=dict)  # container -> v1 cgroup dirs

    @property
    def cgroup_dir(self) -> str:
        return os.path.join(self.net.cg2, self.cgroup_rel)

    def container_dir(self, container: str | None = None) -> str:
        """The cgroup directory of a container (the first one by default)."""
        if container is None:
            return self.cgroup_dir
        cid = self.containers[container]
        return os.path.join(self.net.cg2, cgroup_path(self.uid, cid, self.qos, self.driver))

    def add_container(self, name: str) -> str:
        """A second (third, ...) container: its own cgroup in the pod, the pod's network."""
        cid = secrets.token_hex(32)
        self.containers[name] = cid
        d = self.container_dir(name)
        os.mkdir(d)
        self.dirs.append(d)
        return cid

    @property
    def cgroup_id(self) -> int:
        return os.stat(self.cgroup_dir).st_ino

    @property
    def netns_inode(self) -> int:
        return os.stat(f"/run/netns/{self.netns}").st_ino

    def _enter(self, container: str | None = None) -> None:
        with open(os.path.join(self.container_dir(container), "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        for d in self.v1_dirs.get(container or next(iter(self.containers)), []):
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    def set_limit(self, controller: str, name: str, value: str,
                  container: str | None = None) -> str:
        """Write a cgroup limit (pids.max, memory.max / memory.limit_in_bytes, cpu.max /
        cpu.cfs_quota_us, ...) for a container, as kubelet would. On nodes where the controller
        lives in a cgroup v1 hierarchy (hybrid ones), the container gets a directory there with
        the same path, and processes started afterwards join it. Returns the file written."""
        container = container or next(iter(self.containers))
        rel = cgroup_path(self.uid, self.containers[container], self.qos, self.driver)
        root = v1_mounts().get(controller)
        if root is None:  # cgroup v2: the controller must be enabled down the path
            parts = rel.split("/")
            for i in range(len(parts)):
                parent = os.path.join(self.net.cg2, *parts[:i])
                with open(os.path.join(parent, "cgroup.subtree_control"), "w") as f:
                    f.write(f"+{controller}")
            path = os.path.join(self.net.cg2, rel, name)
        else:
            made = []
            parts = rel.split("/")
            for i in range(1, len(parts) + 1):
                d = os.path.join(root, *parts[:i])
                if not os.path.isdir(d):
                    os.mkdir(d)
                    made.append(d)
            d = os.path.join(root, rel)
            self.v1_dirs.setdefault(container, []).append(d)
            self.net.v1_made.extend(made)
            path = os.path.join(d, name)
        with open(path, "w") as f:
            f.write(value)
        return path

    def set_resolver(self, nameserver: str, options: str = "") -> None:
        """The pod's /etc/resolv.conf (as kubelet writes one per pod): `ip netns exec` binds
        /etc/netns/NETNS/resolv.conf over /etc/resolv.conf for every process started here."""
        d = f"/etc/netns/{self.netns}"
        os.makedirs(d, exist_ok=True)
        with open(f"{d}/resolv.conf", "w") as f:
            f.write(f"nameserver {nameserver}\n" + (f"options {options}\n" if options else ""))

    def drop_etc(self) -> None:
        shutil.rmtree(f"/etc/netns/{self.netns}", ignore_errors=True)

    def popen(self, cmd: Sequence[str], container: str | None = None,
              **kw: Any) -> subprocess.Popen[Any]:
        """Start a process inside the pod: a container's cgroup and the pod's network."""
        p = subprocess.Popen(["ip", "netns", "exec", self.netns, *cmd],
                             preexec_fn=lambda: self._enter(container), **kw)
        self.procs.append(p)
        return p

    def run(self, cmd: Sequence[str], timeout: float = 120, check: bool = True,
            container: str | None = None, **kw: Any) -> subprocess.CompletedProcess[Any]:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(["ip", "netns", "exec", self.netns, *cmd],
                              preexec_fn=lambda: self._enter(container), timeout=timeout,
                              check=check, **kw)

    def nstat(self) -> dict[str, int]:
        """The namespace's own SNMP/netstat counters (absolute values)."""
        out = _run("ip", "netns", "exec", self.netns, "nstat", "-a", "-z", "-s").stdout
        vals = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                vals[parts[0]] = int(parts[1])
        return vals

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.terminate()
        deadline = time.monotonic() + 3
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        # Anything the processes started themselves (nginx workers, ...): by PID, from the cgroup.
        for name in list(self.containers):
            kill_cgroup_procs(self.container_dir(name))
        for fn in self.cleanups:
            fn()
        self.cleanups.clear()


class PodNetwork:
    """A bridge in the host namespace and any number of pods attached to it."""

    def __init__(self, prefix: str | None = None, reuse_addresses: bool = False):
        cg2 = cgroup2_mount()
        if not cg2:
            raise RuntimeError("no cgroup2 mount: test pods need one")
        self.cg2 = cg2
        self.tag = prefix or secrets.token_hex(2)
        self.bridge = f"psbr{self.tag}"
        self.subnet_id = int(self.tag, 16) % 250 + 1
        self.gateway = f"{SUBNET}.{self.subnet_id}.1"
        self.pods: list[Pod] = []
        self._count = 0  # pods made
        # Addresses are never reused, unless asked (long runs: a /24 has 253 of them); then the
        # one freed longest ago comes back first (its veth has long been destroyed).
        self._free: list[int] | None = [] if reuse_addresses else None
        self._made_dirs: list[str] = []
        self.v1_made: list[str] = []  # cgroup v1 directories made by Pod.set_limit
        self.bare_netns: list[str] = []  # made by netns()
        self._up = False

    def __enter__(self) -> PodNetwork:
        # a SIGTERM (a timeout, a kill by PID) ends the program through this __exit__, so the
        # namespaces, links and cgroups made here go too
        self._prev_term: Any = None
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL):
            self._prev_term = signal.signal(signal.SIGTERM, _exit_on_term)
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()
        finally:
            if self._prev_term is not None:
                signal.signal(signal.SIGTERM, self._prev_term)

    def start(self) -> None:
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            self._up = True
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
        except Exception:
            self.close()
            raise

    def _next_index(self) -> int:
        if self._free and (len(self._free) > 32 or self._count >= 253):
            return self._free.pop(0)
        if self._count >= 253:
            raise RuntimeError(f"pod network {self.bridge}: its 253 addresses are all in use")
        self._count += 1
        return self._count + 1

    def pod(self, name: str, qos: str = "burstable", driver: str = "systemd",
            container: str = "main") -> Pod:
        idx = self._next_index()
        uid = str(uuid.uuid4())
        cid = secrets.token_hex(32)
        ns = f"ps{self.tag}-{name}"
        rel = cgroup_path(uid, cid, qos, driver)
        pod = Pod(self, name, uid, cid, qos, driver, ns, f"{SUBNET}.{self.subnet_id}.{idx}", rel,
                  containers={container: cid})
        self.pods.append(pod)
        # cgroup directories, remembering which ones this network made (to remove them later);
        # the pod's own directory and its containers' are the pod's
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            d = os.path.join(self.cg2, *parts[:i])
            if not os.path.isdir(d):
                os.mkdir(d)
                self._made_dirs.append(d)
                if i >= len(parts) - 1:
                    pod.dirs.append(d)
        self._wire(ns, idx, pod.ip)
        # like the pause container: a pod's namespace always has a process in it
        pod.popen(["sleep", "infinity"])
        return pod

    def netns(self, name: str) -> tuple[str, str]:
        """A bare network namespace on the bridge, for a container runtime to join (podman's
        `--network ns:`, ctr's `--with-ns`): no cgroup, no process. Returns (name, address);
        removed with the network."""
        idx = self._next_index()
        ns = f"ps{self.tag}-{name}"
        ip = f"{SUBNET}.{self.subnet_id}.{idx}"
        self.bare_netns.append(ns)
        self._wire(ns, idx, ip)
        return ns, ip

    def _wire(self, ns: str, idx: int, ip: str) -> None:
        """A new network namespace `ns` on the bridge: a veth pair, `ip` on its eth0, the
        bridge as its default route."""
        host_if = f"psv{self.tag}{idx:02d}"
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "link", "set", host_if, "master", self.bridge, "up")
        _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", ns, "route", "add", "default", "via", self.gateway)

    def state(self) -> dict[str, Any]:
        """What this network made, for a later clean-up when this process cannot do it (it was
        killed): see clean_up_after()."""
        dirs = list(self._made_dirs) + list(self.v1_made)
        for pod in self.pods:
            dirs += [d for d in pod.dirs if d not in dirs]
        return {"bridge": self.bridge if self._up else "",
                "netns": [p.netns for p in self.pods] + list(self.bare_netns),
                "cgroups": sorted(dirs, key=len, reverse=True)}

    def drop_netns(self, ns: str) -> None:
        """Delete a namespace made by netns() (its veth pair goes with it)."""
        _run("ip", "netns", "del", ns, check=False)
        if ns in self.bare_netns:
            self.bare_netns.remove(ns)

    def remove(self, pod: Pod) -> None:
        """Tear one pod down as the kubelet does: processes, network namespace, cgroups."""
        pod.stop()
        _run("ip", "netns", "del", pod.netns, check=False)
        if self._free is not None:
            self._free.append(int(pod.ip.rsplit(".", 1)[1]))
        pod.drop_etc()
        for d in sorted(pod.dirs, key=len, reverse=True):
            rmdir_when_empty(d)
            if d in self._made_dirs:
                self._made_dirs.remove(d)
        self.pods.remove(pod)

    def close(self) -> None:
        errors = []
        for pod in self.pods:
            try:
                pod.stop()
            except Exception as e:  # keep cleaning
                errors.append(f"stopping pod {pod.name}: {e}")
            r = _run("ip", "netns", "del", pod.netns, check=False)
            pod.drop_etc()
            if r.returncode and "No such file" not in r.stderr:
                errors.append(f"ip netns del {pod.netns}: {r.stderr.strip()}")
        for ns in self.bare_netns:
            _run("ip", "netns", "del", ns, check=False)
        self.bare_netns.clear()
        for pod in self.pods:
            for d in pod.dirs:
                if d not in self._made_dirs:
                    self._made_dirs.append(d)  # a second container's directory
        for d in sorted(self._made_dirs, key=len, reverse=True) + sorted(
                self.v1_made, key=len, reverse=True):
            if not rmdir_when_empty(d) and not _has_subdirs(d):
                # (a shared parent such as kubepods.slice that another PodNetwork's pods still
                # use is theirs to remove)
                errors.append(f"cgroup {d} not removed")
        made = self._made_dirs + self.v1_made
        self.v1_made.clear()
        self._made_dirs.clear()
        _shared_parents(add=made)
        if self._up:
            _run("ip", "link", "del", self.bridge, check=False)
            self._up = False
        self.pods.clear()
        if errors:
            raise RuntimeError("; ".join(errors))


def kill_cgroup_procs(d: str) -> None:
    """SIGKILL every process of a cgroup directory (by PID), until it is empty (5 s at most)."""
    for _ in range(100):
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                pids = [int(x) for x in f.read().split()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def clean_up_after(state: dict[str, Any]) -> list[str]:
    """Remove what a PodNetwork that was killed left (its state()): the processes in its
    namespaces and cgroups (by PID), the namespaces, the bridge, the cgroup directories.
    Returns what could not be removed."""
    left = []
    if state.get("bridge"):  # the veths on it first (a namespace's goes only when it is freed)
        members = _run("ip", "-o", "link", "show", "master", state["bridge"], check=False).stdout
        for line in members.splitlines():
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name:
                _run("ip", "link", "del", name, check=False)
    for ns in state.get("netns", []):
        for word in _run("ip", "netns", "pids", ns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(word), signal.SIGKILL)
        _run("ip", "netns", "del", ns, check=False)
    for d in state.get("cgroups", []):
        kill_cgroup_procs(d)
        if not rmdir_when_empty(d) and os.path.isdir(d) and not _has_subdirs(d):
            left.append(d)
    if state.get("bridge"):
        _run("ip", "link", "del", state["bridge"], check=False)
    _shared_parents(add=[d for d in state.get("cgroups", []) if os.path.isdir(d)])
    return left


def _has_subdirs(d: str) -> bool:
    try:
        return any(e.is_dir(follow_symlinks=False) for e in os.scandir(d))
    except OSError:
        return False


def _exit_on_term(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


SHARED_PARENTS = "/run/podscope-tests/cgroup-parents"  # made by some PodNetwork, of any process


def _shared_parents(add: list[str]) -> None:
    """A parent such as kubepods.slice that a network made but left (another network's pods
    were in it then) is the last network's to remove: networks in other processes (tests run
    side by side) leave theirs on a list, and every close removes the empty ones on it. Only
    directories a PodNetwork made are ever on it."""
    import fcntl

    os.makedirs(os.path.dirname(SHARED_PARENTS), exist_ok=True)
    with open(SHARED_PARENTS, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        dirs = {d for d in f.read().split() if d} | {d for d in add if os.path.isdir(d)}
        for d in sorted(dirs, key=len, reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(d)  # fails while it has children (a live network's): kept
        f.seek(0)
        f.truncate()
        f.write("".join(d + "\n" for d in sorted(dirs) if os.path.isdir(d)))


def rmdir_when_empty(d: str) -> bool:
    """Remove a cgroup directory, waiting a little for its last process to leave."""
    for _ in range(40):
        try:
            os.rmdir(d)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            time.sleep(0.05)  # the last process may still be leaving
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="start test pods and run a command in the first")
    ap.add_argument("--pods", type=int, default=1)
    ap.add_argument("--driver", default="systemd", choices=["systemd", "cgroupfs"])
    ap.add_argument("--qos", default="burstable", choices=["guaranteed", "burstable", "besteffort"])
    ap.add_argument("cmd", nargs="*", default=["sleep", "infinity"])
    a = ap.parse_args(argv)
    with PodNetwork() as net:
        pods = [net.pod(f"pod{i}", a.qos, a.driver) for i in range(a.pods)]
        for p in pods:
            print(f"{p.name}: netns {p.netns} ip {p.ip} uid {p.uid} cgroup {p.cgroup_rel}")
        proc = pods[0].popen(a.cmd)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    raise SystemExit(main())
