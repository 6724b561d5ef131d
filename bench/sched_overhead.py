"""Overhead of the CPU collector (sched.bpf.c) on a context-switch-heavy workload.

`perf bench sched pipe` (two processes ping-ponging over pipes: every round trip is two context
switches and two wake-ups) runs in a test pod, whose container the CPU collector watches. Rounds
alternate between the agent with `cpu = false` (baseline: everything else on) and the default
agent (`cpu = true`), and report the median throughput ratio on/off, the agent's CPU, and the
BPF run time per context switch (kernel.bpf_stats_enabled, in a separate run).
Usage: python bench/sched_overhead.py [--rounds N] [--loops N] [--out FILE]
"""

from __future__ import annotations

import argparse
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
PROGS = {"sched_switch", "sched_wake"}


def pipe_bench(pod: Pod, loops: int) -> float:
    """ops/s of perf's pipe ping-pong in the pod."""
    # both processes on one CPU: every round trip is two direct switches (stable numbers)
    out = pod.run(["taskset", "-c", "0", "perf", "bench", "sched", "pipe", "-l", str(loops)],
                  timeout=300).stdout
    m = re.search(r"([\d.]+) ops/sec", out)
    if not m:
        raise RuntimeError(f"cannot parse perf bench output:\n{out}")
    return float(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--loops", type=int, default=100_000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "sched_overhead.json"))
    a = ap.parse_args()
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
                time.sleep(1.5)  # the collector has found the pod's container
                cpu0 = proc_cpu_seconds(agent.proc.pid)
                got[mode] = pipe_bench(pod, a.loops)
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
        ops = a.loops
        result: dict[str, Any] = {
            "scenario": "perf-bench-sched-pipe", "rounds": a.rounds, "loops": a.loops,
            "median_ratio_on_off": statistics.median(ratios), "ratios": ratios,
            "off_ops_per_second": off_ops, "on_ops_per_second": on_ops,
            "bpf_ns_per_op": (ns1 - ns0) / ops, "bpf_runs_per_op": (cnt1 - cnt0) / ops,
            "bpf_ns_per_run": (ns1 - ns0) / max(cnt1 - cnt0, 1),
            "agent_cpu_seconds_off": agent_cpu["off"], "agent_cpu_seconds_on": agent_cpu["on"],
        }
    write_results(a.out, [result])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
