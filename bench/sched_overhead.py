"""Overhead of the CPU collector (sched.bpf.c) on a context-switch-heavy workload.

`perf bench sched pipe` (two processes ping-ponging over pipes: every round trip is two context
switches and two wake-ups) runs in a test pod, whose container the CPU collector watches. Rounds
alternate between the agent with `cpu = false` (baseline: everything else on) and the default
agent (`cpu = true`), and report the median throughput ratio on/off, the agent's CPU, and the
BPF run time of the task iterator per task it visits (kernel.bpf_stats_enabled, in a separate run).
The agent and this script run on the other CPU: the workload's CPU runs only the workload and
the kernel, so the ratio is the in-kernel cost on the workload, and the agent's is counted apart.
Usage: python bench/sched_overhead.py [--rounds N] [--loops N] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_overhead import bpf_stats  # noqa: E402
from tcp_overhead import Agent, bpf_prog_stats, proc_cpu_seconds, write_results  # noqa: E402

from podscope.testing.pods import Pod, PodNetwork  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROGS = {"sched_iter"}


def pipe_bench(pod: Pod, loops: int, cpu: int = 0) -> float:
    """ops/s of perf's pipe ping-pong in the pod."""
    # both processes on one CPU: every round trip is two direct switches (stable numbers)
    out = pod.run(["taskset", "-c", str(cpu), "perf", "bench", "sched", "pipe", "-l", str(loops)],
                  timeout=300).stdout
    m = re.search(r"([\d.]+) ops/sec", out)
    if not m:
        raise RuntimeError(f"cannot parse perf bench output:\n{out}")
    return float(m.group(1))


def pin_agent(agent: Agent, cpu: int) -> None:
    """All the agent's threads on `cpu`: the workload's CPU runs the workload (and the kernel)."""
    for tid in os.listdir(f"/proc/{agent.proc.pid}/task"):
        os.sched_setaffinity(int(tid), {cpu})


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--loops", type=int, default=100_000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "sched_overhead.json"))
    ap.add_argument("--cpu", type=int, default=0, help="the workload's CPU")
    a = ap.parse_args()
    other = sorted(os.sched_getaffinity(0) - {a.cpu})
    if other:  # this process (and its scraper threads) and the agent keep off the workload's CPU
        os.sched_setaffinity(0, {other[0]})
    with PodNetwork() as net, tempfile.TemporaryDirectory(prefix="podscope-bench-") as tmp:
        pod = net.pod("pingpong")
        off_cfg = Path(tmp) / "off.toml"
        off_cfg.write_text("cpu = false\n")
        on_cfg = Path(tmp) / "on.toml"
        on_cfg.write_text("cpu = true\n")
        pipe_bench(pod, a.loops // 10)  # warm-up
        ratios, off_ops, on_ops = [], [], []
        agent_cpu = {"off": 0.0, "on": 0.0}
        for i in range(a.rounds):
            got: dict[str, float] = {}
            for mode in (("off", "on") if i % 2 == 0 else ("on", "off")):
                agent = Agent(["--config", str(off_cfg if mode == "off" else on_cfg)])
                if other:
                    pin_agent(agent, other[0])
                time.sleep(1.5)  # the collector has found the pod's container
                cpu0 = proc_cpu_seconds(agent.proc.pid)
                got[mode] = pipe_bench(pod, a.loops, a.cpu)
                agent_cpu[mode] += proc_cpu_seconds(agent.proc.pid) - cpu0
                agent.stop()
            off_ops.append(got["off"])
            on_ops.append(got["on"])
            ratios.append(got["on"] / got["off"])
            print(f"  round {i + 1}: off {got['off']:.0f} ops/s, on {got['on']:.0f} ops/s, "
                  f"ratio {ratios[-1]:.4f}", flush=True)
        with bpf_stats():
            agent = Agent(["--config", str(on_cfg)])
            time.sleep(1.5)
            ns0, cnt0 = bpf_prog_stats(PROGS)
            pipe_bench(pod, a.loops)
            ns1, cnt1 = bpf_prog_stats(PROGS)
            agent.stop()
        tasks = sum(len(os.listdir(f"/proc/{p}/task")) for p in os.listdir("/proc") if p.isdigit()
                    and os.path.isdir(f"/proc/{p}/task"))
        ops = a.loops
        result: dict[str, Any] = {
            "scenario": "perf-bench-sched-pipe", "rounds": a.rounds, "loops": a.loops,
            "median_ratio_on_off": statistics.median(ratios),
            "ratio_of_means": statistics.mean(on_ops) / statistics.mean(off_ops),
            "ratio_quartiles": statistics.quantiles(ratios, n=4), "ratios": ratios,
            "off_ops_per_second": off_ops, "on_ops_per_second": on_ops,
            "bpf_ns_per_op": (ns1 - ns0) / ops, "iterator_tasks_visited": cnt1 - cnt0,
            "iterator_ns_per_task": (ns1 - ns0) / max(cnt1 - cnt0, 1),
            "tasks_on_node": tasks,
            "agent_cpu_seconds_off": agent_cpu["off"], "agent_cpu_seconds_on": agent_cpu["on"],
        }
    write_results(a.out, [result])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
