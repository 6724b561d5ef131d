"""Cost of the always-on memory, I/O and pressure signals (issue 21): the pressure collector
(cgroup files at each scrape; reclaim and block I/O tracepoints) against the default agent
without it, in the same invocation.

Workloads, in one test pod, alternating rounds: no agent, the agent with `pressure = false`, the
default agent (pressure on):
  fio-randread   fio 4 KiB random reads, O_DIRECT, libaio, one at a time: the most block I/O
                 requests per second one task makes here (each goes through the block
                 tracepoints: queue, issue, complete)
  reclaim        `cat` of a 96 MiB file, over and over, in a pod limited to 32 MiB: the page
                 cache it fills is reclaimed all the time (thousands of memory-cgroup reclaims a
                 second, each through the vmscan tracepoints), and the file is read from disk

Reports per workload: median throughput ratio against no agent for both agents (the pressure
part is their difference), the BPF run time of the pressure programs per I/O request and per
reclaim (kernel.bpf_stats_enabled, a separate run), agent CPU per second, peak RSS.

    .venv/bin/python bench/pressure_overhead.py [--rounds 5] [--seconds 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_overhead import bpf_stats  # noqa: E402
from tcp_overhead import Agent, bpf_prog_stats, proc_cpu_seconds, proc_hwm_mb, write_results  # noqa: E402

from podscope.testing.pods import Pod, PodNetwork  # noqa: E402

IO_PROGS = {"prs_bio_q", "prs_rq_issue", "prs_rq_done"}
RECLAIM_PROGS = {"prs_direct_b", "prs_direct_e", "prs_memcg_b", "prs_memcg_e"}


def disk_reads(dev: str) -> int:
    """Reads the disk completed (/sys/block/DEV/stat)."""
    return int(Path(f"/sys/block/{dev}/stat").read_text().split()[0])


def workload(name: str, pod: Pod, tmp: Path) -> Callable[[float], float]:
    """A function that runs the workload for some seconds and returns its throughput."""
    data = tmp / "data"
    with open(data, "wb") as f:
        for _ in range(96 if name == "reclaim" else 64):
            f.write(os.urandom(1 << 20))
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    if name == "fio-randread":
        def fio(secs: float) -> float:
            out = pod.run(["fio", "--name=r", f"--filename={data}", "--rw=randread", "--bs=4k",
                           "--direct=1", "--ioengine=libaio", "--iodepth=1",
                           f"--runtime={secs:g}", "--time_based", "--size=64M",
                           "--output-format=json"], timeout=secs + 60).stdout
            return float(json.loads(out[out.index("{"):])["jobs"][0]["read"]["iops"])
        return fio
    v1 = os.path.isdir("/sys/fs/cgroup/memory")
    pod.set_limit("memory", "memory.limit_in_bytes" if v1 else "memory.high", str(32 << 20))

    def cat(secs: float) -> float:  # MiB read per second
        out = pod.run(["sh", "-c", f"end=$(($(date +%s%N) + {int(secs * 1e9)})); n=0; "
                       f"while [ $(date +%s%N) -lt $end ]; do cat {data} > /dev/null; "
                       "n=$((n+1)); done; echo $n"], timeout=secs + 120).stdout
        return int(out.split()[-1]) * 96 / secs
    return cat


def measure(net: PodNetwork, name: str, rounds: int, seconds: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="podscope-bench-", dir="/var/tmp"))
    pod = net.pod("p" + name.split("-")[0][:6])
    try:
        run = workload(name, pod, tmp)
        (tmp / "nopressure.toml").write_text("pressure = false\n")
        agents = {"without": ["--config", str(tmp / "nopressure.toml")], "default": []}
        modes = ["off", *agents]
        ratios: dict[str, list[float]] = {m: [] for m in agents}
        cpu = dict.fromkeys(agents, 0.0)
        hwm = dict.fromkeys(agents, 0.0)
        run(2)  # warm-up
        for i in range(rounds):
            got: dict[str, float] = {}
            for mode in modes[i % len(modes):] + modes[:i % len(modes)]:
                if mode == "off":
                    got[mode] = run(seconds)
                    continue
                agent = Agent(agents[mode])
                try:
                    time.sleep(1.0)
                    c0 = proc_cpu_seconds(agent.proc.pid)
                    got[mode] = run(seconds)
                    cpu[mode] += proc_cpu_seconds(agent.proc.pid) - c0
                    hwm[mode] = max(hwm[mode], proc_hwm_mb(agent.proc.pid))
                finally:
                    agent.stop()
            for m in agents:
                ratios[m].append(got[m] / got["off"])
            print(f"  {name} round {i + 1}: " + ", ".join(f"{m} {got[m]:.0f}" for m in modes),
                  flush=True)
        # BPF run time per event, apart (bpf_stats costs two clock reads per program run)
        dev = os.path.realpath(f"/sys/dev/block/{os.major(os.stat(tmp).st_dev)}:"
                               f"{os.minor(os.stat(tmp).st_dev)}").rsplit("/", 1)[1]
        with bpf_stats():
            agent = Agent([])
            try:
                time.sleep(1.0)
                io0, rc0, d0 = bpf_prog_stats(IO_PROGS), bpf_prog_stats(RECLAIM_PROGS), \
                    disk_reads(dev)
                run(seconds)
                io1, rc1, d1 = bpf_prog_stats(IO_PROGS), bpf_prog_stats(RECLAIM_PROGS), \
                    disk_reads(dev)
            finally:
                agent.stop()
        reads = d1 - d0
        reclaims = (rc1[1] - rc0[1]) / 2  # a begin and an end each
        return {
            "scenario": name, "rounds": rounds, "seconds_per_run": seconds,
            "unit": "IOPS" if name == "fio-randread" else "MiB/s",
            "median_ratio_default_agent": statistics.median(ratios["default"]),
            "median_ratio_agent_without_pressure": statistics.median(ratios["without"]),
            "ratios_default_agent": ratios["default"],
            "ratios_agent_without_pressure": ratios["without"],
            "disk_reads_in_bpf_run": reads,
            "bpf_ns_per_disk_read": (io1[0] - io0[0]) / reads if reads else None,
            "reclaims_in_bpf_run": reclaims,
            "bpf_ns_per_reclaim": (rc1[0] - rc0[0]) / reclaims if reclaims else None,
            "agent_cpu_seconds_per_second": {m: cpu[m] / (rounds * seconds) for m in agents},
            "agent_peak_rss_mb": hwm,
        }
    finally:
        net.remove(pod)
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--only", nargs="*", choices=["fio-randread", "reclaim"])
    ap.add_argument("--out", default=f"bench/results/{time.strftime('%Y-%m-%d')}/"
                                     "pressure_overhead.json")
    a = ap.parse_args()
    with PodNetwork() as net:
        results = [measure(net, n, a.rounds, a.seconds)
                   for n in (a.only or ["fio-randread", "reclaim"])]
    write_results(a.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
