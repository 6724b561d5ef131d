"""Every program kind podscope uses attaches through libbpf.py and fires (real kernel)."""

from __future__ import annotations

import ctypes as ct
import os
import socket
import time
from collections.abc import Iterator

import pytest

from podscope import libbpf
from podscope.testing.pods import PodNetwork

KINDS = ["probe_uprobe", "probe_perf", "probe_cgroup_skb", "probe_raw_tp", "probe_tracepoint"]


@pytest.fixture
def obj() -> Iterator[libbpf.BpfObject]:
    o = libbpf.BpfObject(libbpf.bpf_object_path("features"))
    for p in o.programs():
        p.autoload = p.name in KINDS
    o.set_rodata(probe_tgid=os.getpid())
    o.load()
    yield o
    o.close()


def hits(o: libbpf.BpfObject, slot: int) -> int:
    v = ct.c_uint64()
    assert o.map("probe_hits").lookup(ct.c_uint32(slot), v)
    return v.value


def libc_path() -> str:
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if "/libc.so" in path or "/libc-" in path:
                return path
    raise AssertionError("libc not mapped")


def test_uprobe_on_a_shared_library(obj: libbpf.BpfObject) -> None:
    obj.program("probe_uprobe").attach_uprobe(libc_path(), "getppid", pid=os.getpid())
    for _ in range(23):
        os.getppid()
    assert hits(obj, 0) == 23


def test_tracepoint_and_raw_tp(obj: libbpf.BpfObject) -> None:
    obj.program("probe_tracepoint").attach()
    obj.program("probe_raw_tp").attach()
    for _ in range(23):
        os.getppid()
    assert hits(obj, 4) == 23
    assert hits(obj, 3) >= 23


def test_perf_event_software_clock(obj: libbpf.BpfObject) -> None:
    attr = (ct.c_uint8 * 128)()
    ct.c_uint32.from_buffer(attr, 0).value = 1  # PERF_TYPE_SOFTWARE
    ct.c_uint32.from_buffer(attr, 4).value = 128  # size
    ct.c_uint64.from_buffer(attr, 8).value = 0  # PERF_COUNT_SW_CPU_CLOCK
    ct.c_uint64.from_buffer(attr, 16).value = 1000  # sample_freq
    ct.c_uint64.from_buffer(attr, 40).value = 1 << 10  # flags: freq
    libc = ct.CDLL(None, use_errno=True)
    fd = libc.syscall(298, attr, 0, -1, -1, 0)  # perf_event_open(this process, any CPU)
    assert fd >= 0, os.strerror(ct.get_errno())
    try:
        link = obj.program("probe_perf").attach_perf_event(fd)
    except libbpf.BpfError:
        os.close(fd)
        raise
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        pass
    assert hits(obj, 1) > 50
    link.destroy()  # the link owns the perf event's fd and closes it
    with pytest.raises(OSError):
        os.fstat(fd)


def test_cgroup_skb_on_a_pod_cgroup(obj: libbpf.BpfObject) -> None:
    with PodNetwork() as net:
        pod = net.pod("p")
        fd = os.open(pod.cgroup_dir, os.O_RDONLY)
        try:
            obj.program("probe_cgroup_skb").attach_cgroup(fd)
            script = ("import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                      "for _ in range(23): s.sendto(b'x', ('127.0.0.1', 9))\n")
            pod.run(["python3", "-c", script])
            assert hits(obj, 2) == 23
            # a process outside that cgroup is not seen
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"x", ("127.0.0.1", 9))
            s.close()
            assert hits(obj, 2) == 23
        finally:
            for link in obj.links:
                link.destroy()
            obj.links.clear()
            os.close(fd)


def test_errors_name_the_program_and_hook(obj: libbpf.BpfObject) -> None:
    with pytest.raises(libbpf.BpfError, match=r"probe_uprobe.*features: No such file"):
        obj.program("probe_uprobe").attach_uprobe("/nonexistent/binary", "main")
