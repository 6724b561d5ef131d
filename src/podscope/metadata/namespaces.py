"""Network namespaces of the node: inode -> a process inside it, and entering them."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

CLONE_NEWNET = 0x40000000
CLONE_NEWUTS = 0x04000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


@dataclass
class NetnsInfo:
    inode: int
    pids: list[int] = field(default_factory=list)


def proc_cgroup_v2(pid: int, proc: str = "/proc") -> str | None:
    """The v2 ("0::") line of /proc/PID/cgroup."""
    paths = proc_cgroups(pid, proc)
    return paths[0][0] if paths and paths[0][1] == "" else None


def proc_cgroups(pid: int, proc: str = "/proc") -> list[tuple[str, str]]:
    """(path, controllers) of every line of /proc/PID/cgroup, the v2 line ("0::", controllers
    "") first. On cgroup v1 and hybrid nodes the pod may show only in the v1 lines
    ("4:memory:/kubepods/burstable/pod.../...")."""
    try:
        with open(f"{proc}/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append((parts[2].strip(), parts[1]))
    out.sort(key=lambda pc: pc[1] != "")
    return out


def scan_ns(kind: str, proc: str = "/proc") -> dict[int, NetnsInfo]:
    """Every namespace of a kind ("net", "pid", "uts") that has a process in it, with them.
    The agent itself is left out: its threads step into pods' namespaces for a moment
    (in_netns), and /proc/<pid>/ns shows where its main thread happens to be."""
    own = str(os.getpid()) if proc == "/proc" else ""
    out: dict[int, NetnsInfo] = {}
    for name in os.listdir(proc):
        if not name.isdigit() or name == own:
            continue
        try:
            link = os.readlink(f"{proc}/{name}/ns/{kind}")
        except OSError:
            continue
        ino = int(link[link.index("[") + 1: -1])
        out.setdefault(ino, NetnsInfo(ino)).pids.append(int(name))
    return out


def scan_netns(proc: str = "/proc") -> dict[int, NetnsInfo]:
    """Every network namespace that has a process in it, with those processes."""
    return scan_ns("net", proc)


def host_netns(proc: str = "/proc") -> int:
    """The node's own network namespace (0: unknown). init's, or where init's is not readable
    (a sandboxing init), kthreadd's: kernel threads always live in the initial namespace."""
    for pid in (1, 2):
        try:
            return os.stat(f"{proc}/{pid}/ns/net").st_ino
        except OSError:
            continue
    return 0


def self_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def in_netns(pid: int, inode: int, fn: Callable[[], T], proc: str = "/proc") -> T:
    """Run fn with the calling thread inside the network namespace of pid (checked by inode),
    then return to the original namespace. Only this thread moves."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"{proc}/{pid}/ns/net", os.O_RDONLY)
        try:
            if os.fstat(target).st_ino != inode:
                raise ProcessLookupError(f"pid {pid} left network namespace {inode}")
            if _libc.setns(target, CLONE_NEWNET):
                e = ctypes.get_errno()
                raise OSError(e, f"setns into network namespace {inode}: {os.strerror(e)}")
        finally:
            os.close(target)
        try:
            return fn()
        finally:
            if _libc.setns(own, CLONE_NEWNET):
                e = ctypes.get_errno()
                raise OSError(e, f"setns back to own network namespace: {os.strerror(e)}")
    finally:
        os.close(own)


def uts_nodename(pid: int, proc: str = "/proc") -> str | None:
    """The host name a process sees (its UTS namespace's nodename): kubelet sets it to the pod's
    name. Read by entering the namespace with this thread only, and coming back."""
    try:
        own = os.open("/proc/thread-self/ns/uts", os.O_RDONLY)
    except OSError:
        return None
    try:
        target = os.open(f"{proc}/{pid}/ns/uts", os.O_RDONLY)
    except OSError:
        os.close(own)
        return None
    try:
        if os.fstat(target).st_ino == os.fstat(own).st_ino:
            return os.uname().nodename
        if _libc.setns(target, CLONE_NEWUTS):
            return None
        try:
            return os.uname().nodename
        finally:
            if _libc.setns(own, CLONE_NEWUTS):
                e = ctypes.get_errno()
                raise OSError(e, f"setns back to own UTS namespace: {os.strerror(e)}")
    finally:
        os.close(target)
        os.close(own)


def read_netstat(pid: int, proc: str = "/proc") -> dict[str, int]:
    """The SNMP extension counters (TcpExt, IpExt, ...) of pid's network namespace."""
    out: dict[str, int] = {}
    with open(f"{proc}/{pid}/net/netstat") as f:
        lines = f.read().splitlines()
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        prefix, _, names = head.partition(":")
        _, _, values = vals.partition(":")
        for n, v in zip(names.split(), values.split(), strict=False):
            out[prefix + n] = int(v)
    return out
