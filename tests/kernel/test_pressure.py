"""Pressure, block I/O and memory events per pod from the cgroup files, and reclaim stalls from
the vmscan tracepoints (root, real BPF, real pods): PSI totals equal the pod's own *.pressure
files at the same moment, block I/O bytes equal what dd read with O_DIRECT, memory reclaim under
a limit shows as memory pressure, refaults and reclaim stalls within what PSI counted."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from podscope.collectors.cgroupfiles import read_pressure
from podscope.testing.pods import Pod, PodNetwork
from tests.conftest import AgentProc, Metrics, python_cmd
from tests.kernel.test_tcp import wait_for

STALLED = "podscope_pressure_stalled_seconds_total"


def pressure(pod: Pod, resource: str) -> dict[str, float]:
    return read_pressure(os.path.join(pod.cgroup_dir, f"{resource}.pressure"))


def scraped_between(agent: AgentProc, pod: Pod, resource: str) -> tuple[dict[str, float], Metrics,
                                                                         dict[str, float]]:
    before = pressure(pod, resource)
    m = agent.metrics()
    return before, m, pressure(pod, resource)


def test_pressure_totals_equal_the_pods_own_files(pods: PodNetwork, agent: AgentProc) -> None:
    """A pod spinning under a 20 % CPU quota stalls on CPU; one reading a file three times its
    memory limit through the page cache, three times, stalls in reclaim and refaults: podscope's
    totals are the pod's own cpu.pressure and memory.pressure totals, read just before and after
    the scrape."""
    busy, tight = pods.pod("busy"), pods.pod("tight")
    if os.path.isdir("/sys/fs/cgroup/cpu"):
        busy.set_limit("cpu", "cpu.cfs_period_us", "100000")
        busy.set_limit("cpu", "cpu.cfs_quota_us", "20000")
    else:
        busy.set_limit("cpu", "cpu.max", "20000 100000")
    v1_memory = os.path.isdir("/sys/fs/cgroup/memory")
    tight.set_limit("memory", "memory.limit_in_bytes" if v1_memory else "memory.max",
                    str(32 << 20))
    data = Path(f"/var/tmp/podscope-pressure-{os.getpid()}")
    try:
        busy.run(python_cmd("kernel_workload.py", "burn", 1.5))
        # 96 MB on disk, out of the page cache: the pod reads it three times under 32 MB (the
        # page cache it fills is charged to it; clean pages: reclaim, never an OOM kill)
        with open(data, "wb") as f:
            for _ in range(96):
                f.write(os.urandom(1 << 20))
            f.flush()
            os.fsync(f.fileno())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        for _ in range(3):
            tight.run(["sh", "-c", f"cat {data} > /dev/null"])
        for pod, res in ((busy, "cpu"), (tight, "memory")):
            assert wait_for(lambda p=pod, r=res: agent.metrics().value(
                STALLED, k8s_pod_uid=p.uid, resource=r, kind="some") > 0, timeout=10), res
            before, m, after = scraped_between(agent, pod, res)
            for kind in ("some", "full"):
                got = m.value(STALLED, k8s_pod_uid=pod.uid, resource=res, kind=kind)
                assert before[kind] <= got <= after[kind], (res, kind, before, got, after)
            assert before["some"] > 0, (res, before)
        m = agent.metrics()
        assert m.value("podscope_memory_refaults_total", k8s_pod_uid=tight.uid, type="file") > 0
        # the reclaim itself, timed by the vmscan tracepoints, is what the pod's memory stalls
        # (PSI: one task at a time, so "some" sums its stalls) are mostly made of: the same
        # order of magnitude (PSI's clock is the scheduler's, and it counts a stall from just
        # outside the reclaim call)
        stalls = m.value("podscope_memory_reclaim_stall_seconds_count", k8s_pod_uid=tight.uid,
                         kind="memcg")
        reclaim = m.value("podscope_memory_reclaim_stall_seconds_sum", k8s_pod_uid=tight.uid,
                          kind="memcg")
        psi = pressure(tight, "memory")["some"]
        assert stalls > 0 and psi / 4 < reclaim < psi * 4, (stalls, reclaim, psi)
        assert not m.value("podscope_memory_reclaim_stall_seconds_count", k8s_pod_uid=busy.uid)
        # every pressure file of the pod's cgroup is exported, and only for pods' containers
        assert {s["resource"] for s in m.series(STALLED, k8s_pod_uid=busy.uid)} >= \
            {"cpu", "memory", "io"}
    finally:
        data.unlink(missing_ok=True)
        shutil.rmtree(f"/dev/shm/podscope-io-{os.getpid()}", ignore_errors=True)


def test_block_io_bytes_equal_what_dd_read_directly(pods: PodNetwork, agent: AgentProc) -> None:
    """dd reads 48 MiB with O_DIRECT in a pod: the pod's read bytes on that device grow by what
    dd says it copied (give or take the pages of the tools that start it), in at least 48
    operations of 1 MiB or less."""
    pod = pods.pod("reader")
    data = Path(f"/var/tmp/podscope-io-{os.getpid()}")
    st = os.stat("/var/tmp")
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    if os.path.isdir("/sys/fs/cgroup/blkio"):  # a v1 blkio directory for the pod, as kubelet
        pod.set_limit("blkio", "blkio.throttle.read_bps_device", f"{dev} 10000000000")
    else:
        pod.set_limit("io", "io.max", f"{dev} rbps=10000000000")
    name = Path(f"/sys/dev/block/{dev}/uevent").read_text()
    devname = re.search(r"DEVNAME=(\S+)", name)
    assert devname
    try:
        with open(data, "wb") as f:
            f.write(os.urandom(48 << 20))
            os.fsync(f.fileno())

        def read_bytes() -> float:
            return agent.metrics().value("podscope_io_bytes_total", k8s_pod_uid=pod.uid,
                                         device=devname.group(1), direction="read")

        # a static dd on tmpfs: none of its own pages comes from the disk (a dynamic one's and
        # its libraries' can, when the node reclaimed them)
        shm = Path(f"/dev/shm/podscope-io-{os.getpid()}")
        shm.mkdir(exist_ok=True)
        dd = shm / "busybox"  # the name busybox goes by its first argument
        shutil.copy("/bin/busybox", dd)
        pod.run([str(dd), "dd", f"if={data}", "of=/dev/null", "bs=1048576", "count=1",
                 "iflag=direct"])
        assert wait_for(lambda: read_bytes() >= 1 << 20, timeout=10)
        before = read_bytes()
        out = pod.run([str(dd), "dd", f"if={data}", "of=/dev/null", "bs=1048576",
                       "iflag=direct"], capture_output=True, text=True)
        records = re.search(r"^(\d+)\+0 records in", out.stderr, re.M)
        assert records, out.stderr
        copied = int(records.group(1)) << 20  # whole 1 MiB blocks, none partial
        assert copied == 48 << 20
        assert wait_for(lambda: read_bytes() - before >= copied, timeout=10)
        m = agent.metrics()
        # what dd read, and perhaps a few pages of `ip netns exec`'s own program and libraries
        # read back from the disk (the node may have reclaimed them): never less, never 1 MiB
        # more
        got = m.value("podscope_io_bytes_total", k8s_pod_uid=pod.uid, device=devname.group(1),
                      direction="read") - before
        assert copied <= got < copied + (1 << 20), (got, copied)
        assert m.value("podscope_io_operations_total", k8s_pod_uid=pod.uid,
                       device=devname.group(1), direction="read") >= 48
    finally:
        data.unlink(missing_ok=True)
        shutil.rmtree(f"/dev/shm/podscope-io-{os.getpid()}", ignore_errors=True)
