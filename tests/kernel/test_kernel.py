"""Kernel and runtime failures per pod, against the workload's own counts and the cgroup's own
files (root, real BPF, real pods)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from podscope.testing.pods import PodNetwork
from tests.conftest import AgentProc, Metrics, python_cmd
from tests.kernel.test_tcp import wait_for


def settle(agent: AgentProc, name: str, want: float, **labels: str) -> Metrics:
    wait_for(lambda: agent.metrics().value(name, **labels) >= want, timeout=10)
    return agent.metrics()


def test_fork_failures_at_the_pids_limit(pods: PodNetwork, agent: AgentProc) -> None:
    pod = pods.pod("forker")
    limit_file = pod.set_limit("pids", "pids.max", "20")
    out = json.loads(pod.run(python_cmd("kernel_workload.py", "forks", 50)).stdout)
    failed = out.get("EAGAIN", 0)
    assert failed > 0 and out["started"] + failed == 50
    events = Path(limit_file).with_name("pids.events").read_text().split()
    limit_hits = int(events[events.index("max") + 1])
    settle(agent, "podscope_process_fork_failures_total", failed, k8s_pod_uid=pod.uid)
    # the cgroup files of a new container are read from the next scan of the tree (2 s)
    m = settle(agent, "podscope_pids_limit_hits_total", 1, k8s_pod_uid=pod.uid)
    assert m.value("podscope_process_fork_failures_total", k8s_pod_uid=pod.uid,
                   errno="EAGAIN") == failed
    assert m.value("podscope_process_fork_failures_total", k8s_pod_uid=pod.uid) == failed
    # the cgroup's own account agrees, and is exported beside it
    assert limit_hits == failed
    assert m.value("podscope_pids_limit_hits_total", k8s_pod_uid=pod.uid) == limit_hits
    assert m.value("podscope_pids_limit", k8s_pod_uid=pod.uid) == 20


def test_mount_failures_by_errno(pods: PodNetwork, agent: AgentProc) -> None:
    pod = pods.pod("mounter")
    out = json.loads(pod.run(python_cmd("kernel_workload.py", "mounts")).stdout)
    assert "mounted" not in out and sum(out.values()) == 4
    m = settle(agent, "podscope_mount_failures_total", 4, k8s_pod_uid=pod.uid)
    got = {s.labels["errno"]: s.value for s in m.samples
           if s.name == "podscope_mount_failures_total" and s.labels["k8s_pod_uid"] == pod.uid}
    assert got == {k: float(v) for k, v in out.items()}


def test_oom_kill_counted_for_the_pod_and_container(pods: PodNetwork,
                                                    agent: AgentProc) -> None:
    pod = pods.pod("hungry")
    name = ("memory.max" if not os.path.isdir("/sys/fs/cgroup/memory")
            else "memory.limit_in_bytes")
    limit = pod.set_limit("memory", name, str(64 << 20))
    r = pod.run(python_cmd("kernel_workload.py", "oom", 400), check=False)
    assert r.returncode == -9, (r.returncode, r.stdout, r.stderr)  # SIGKILL from the OOM killer
    ctl = Path(limit).with_name("memory.events" if name == "memory.max" else "memory.oom_control")
    kills = int(dict(line.split() for line in ctl.read_text().splitlines())["oom_kill"])
    assert kills == 1
    settle(agent, "podscope_oom_kills_total", 1, k8s_pod_uid=pod.uid)
    m = settle(agent, "podscope_memory_oom_kill_events_total", 1, k8s_pod_uid=pod.uid)
    assert m.value("podscope_oom_kills_total", k8s_pod_uid=pod.uid,
                   container_id=pod.container_id) == kills
    assert m.value("podscope_memory_oom_kill_events_total", k8s_pod_uid=pod.uid) == kills
    # a process killed by the OOM killer also ended by a signal
    assert m.value("podscope_process_signal_exits_total", k8s_pod_uid=pod.uid,
                   signal="SIGKILL") >= 1


def test_signal_exit_and_cpu_throttling(pods: PodNetwork, agent: AgentProc) -> None:
    pod = pods.pod("crashy")
    r = pod.run(["sh", "-c", "kill -SEGV $$"], check=False)
    assert r.returncode == -11
    m = settle(agent, "podscope_process_signal_exits_total", 1, k8s_pod_uid=pod.uid)
    assert m.value("podscope_process_signal_exits_total", k8s_pod_uid=pod.uid,
                   signal="SIGSEGV") == 1
    # a CPU quota of 20 %: the cgroup's own cpu.stat and podscope's numbers are the same file
    v1 = os.path.isdir("/sys/fs/cgroup/cpu")
    if v1:
        pod.set_limit("cpu", "cpu.cfs_period_us", "100000")
        stat = pod.set_limit("cpu", "cpu.cfs_quota_us", "20000")
    else:
        stat = pod.set_limit("cpu", "cpu.max", "20000 100000")
    out = json.loads(pod.run(python_cmd("kernel_workload.py", "burn", 1.5)).stdout)
    assert out["loops"] > 0
    time.sleep(0.3)
    st = dict(line.split() for line in Path(stat).with_name("cpu.stat").read_text().splitlines())
    m = settle(agent, "podscope_cpu_throttled_periods_total", int(st["nr_throttled"]),
               k8s_pod_uid=pod.uid)
    throttled = m.value("podscope_cpu_throttled_periods_total", k8s_pod_uid=pod.uid)
    assert throttled == int(st["nr_throttled"]) > 5
    assert m.value("podscope_cpu_throttled_seconds_total", k8s_pod_uid=pod.uid) > 0.5


def test_runqueue_delay_of_two_pods_on_one_cpu(pods: PodNetwork, agent: AgentProc) -> None:
    """Two pods spin on one CPU for 2 s, then nap 10 x 50 ms, each in a container of its own. The
    truth is what the kernel counted for each process, as it reports itself from
    /proc/self/schedstat and /proc/self/status."""
    a, b = pods.pod("cpu-a"), pods.pod("cpu-b")
    cids = [p.add_container("burn") for p in (a, b)]
    wait_for(lambda: agent.metrics().value("podscope_cpu_watched_containers") >= 4, timeout=10)
    procs = [p.popen(["taskset", "-c", "0", *python_cmd("kernel_workload.py", "burn", 2.0, 10)],
                     container="burn", stdout=__import__("subprocess").PIPE, text=True)
             for p in (a, b)]
    outs = [json.loads(p.communicate(timeout=30)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    time.sleep(0.3)
    m = agent.metrics()
    for pod, cid, own in zip((a, b), cids, outs, strict=True):
        def v(name: str, **lab: str) -> float:
            return m.value(name, container_id=cid, **lab)  # noqa: B023
        n = v("podscope_cpu_runqueue_delay_seconds_count")
        waited = v("podscope_cpu_runqueue_delay_seconds_sum")
        switches = {r: v("podscope_cpu_context_switches_total", reason=r)
                    for r in ("voluntary", "involuntary")}
        off = {r: v("podscope_cpu_off_seconds_total", reason=r)
               for r in ("voluntary", "involuntary")}
        print(pod.name, "own", own, "runq", n, waited, "switches", switches, "off", off)
        # sharing one CPU for 2 s, each waited for the other about half of the time
        assert 0.4 < waited < 2.0
        # the process's own counts, plus the few switches of printing them and exiting
        assert own["switched_in"] <= n <= own["switched_in"] + 10
        # (the histogram's sum is kept in whole microseconds per pass)
        assert own["run_delay_ns"] / 1e9 - 0.001 <= waited <= own["run_delay_ns"] / 1e9 + 0.02
        assert own["involuntary"] > 10
        assert own["involuntary"] <= switches["involuntary"] <= own["involuntary"] + 5
        assert own["voluntary"] >= 10
        assert own["voluntary"] <= switches["voluntary"] <= own["voluntary"] + 5
        # waiting is involuntary off-CPU time; the naps (10 x 50 ms) and the start-up's reads
        # are voluntary
        assert off["involuntary"] == pytest.approx(waited, abs=0.001)
        assert own["run_delay_ns"] / 1e9 <= off["involuntary"] <= own["run_delay_ns"] / 1e9 + 0.02
        assert 0.5 <= off["voluntary"] < 0.8
        # each switch-in waited about one time slice of the other pod: the buckets say so too
        le = {s.labels["le"]: s.value for s in m.samples
              if s.name == "podscope_cpu_runqueue_delay_seconds_bucket"
              and s.labels.get("container_id") == cid}
        print("buckets", le)
        assert le["+Inf"] == n
        assert le[next(k for k in le if float(k) >= 0.000512)] < n / 2


def test_kernel_events_in_the_record_export(pods: PodNetwork, tmp_path: Path) -> None:
    pod = pods.pod("recorded")
    pod.set_limit("pids", "pids.max", "8")
    exp = tmp_path / "k.jsonl"
    agent = AgentProc(["--export", f"jsonl:{exp}"], tmp_path)
    try:
        out = json.loads(pod.run(python_cmd("kernel_workload.py", "forks", 12)).stdout)
        failed = out["EAGAIN"]
        assert pod.run(["sh", "-c", "kill -ABRT $$"], check=False).returncode == -6

        def records() -> list[dict]:  # type: ignore[type-arg]
            if not exp.exists():
                return []
            return [r for r in map(json.loads, exp.read_text().split("\n")[:-1])
                    if r["type"] == "kernel_event" and r["k8s_pod_uid"] == pod.uid]

        wait_for(lambda: len(records()) >= failed + out["started"] + 1, timeout=10)
    finally:
        agent.stop()
    recs = records()
    forks = [r for r in recs if r["event"] == "fork_failure"]
    sigs = [r for r in recs if r["event"] == "signal_exit"]
    assert len(forks) == failed and {r["errno"] for r in forks} == {"EAGAIN"}
    assert all(r["comm"].startswith("python") and r["container_id"] == pod.container_id
               for r in forks)
    # the workload SIGKILLs the children it started; sh ends itself with SIGABRT
    assert sorted((r["signal"], r["comm"]) for r in sigs) == sorted(
        [("SIGABRT", "sh")] + [("SIGKILL", forks[0]["comm"])] * out["started"])
