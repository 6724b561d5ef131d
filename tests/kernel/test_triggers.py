"""Triggers: a rule on a pod's p99 fires under injected latency, profiles that pod for its
window, writes a report served at /api/reports, and detaches every deep probe again (root, real
BPF, real pods)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
from pathlib import Path
from typing import Any

from podscope.flamegraph import parse_folded
from podscope.testing.pods import PodNetwork
from tests.conftest import PODSCOPE, AgentProc, python_cmd
from tests.kernel.test_http import start_py_server
from tests.kernel.test_pressure import cold_file
from tests.kernel.test_profile import attached_profile_programs
from tests.kernel.test_tcp import wait_for


def linked_programs() -> set[str]:
    """Names of the BPF programs attached through a link right now."""
    def bj(*args: str) -> list[dict[str, Any]]:
        out = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True,
                             check=True).stdout
        return list(json.loads(out or "[]"))
    names = {p["id"]: p.get("name", "") for p in bj("prog", "show")}
    return {names.get(link.get("prog_id"), "?") for link in bj("link", "show")}


def reports(agent: AgentProc) -> list[dict[str, Any]]:
    return list(json.loads(agent.get("/api/reports"))["reports"])


def test_p99_rule_fires_reports_and_detaches(pods: PodNetwork, tmp_path: Path) -> None:
    server, client = pods.pod("slow-server"), pods.pod("caller")
    start_py_server(server)
    cfg = tmp_path / "triggers.toml"
    cfg.write_text(f'reports_dir = "{tmp_path / "reports"}"\ntrigger_interval = 1.0\n'
                   '[[triggers]]\nname = "slow-http"\nsignal = "http_p99_seconds"\n'
                   'above = 0.08\nfor_seconds = 2\nwindow_seconds = 3\n')
    exp = tmp_path / "http.jsonl"
    agent = AgentProc(["--config", str(cfg), "--export", f"jsonl:{exp}"], tmp_path)
    loader = None
    try:
        # healthy traffic: nothing fires
        client.run(python_cmd("http_client.py", server.ip, 8080,
                              json.dumps([["GET", "/status/200", 100]])))
        time.sleep(4)
        assert reports(agent) == []
        assert attached_profile_programs() == []
        assert not {"http_offcpu", "netlat_xmit"} & linked_programs()
        assert "http_recv" in linked_programs()
        # injected latency: every request takes 100 ms, for about 15 s
        loader = client.popen(python_cmd("http_client.py", server.ip, 8080,
                                         json.dumps([["GET", "/sleep/100", 150]])),
                              stdout=subprocess.DEVNULL)
        wait_for(lambda: any(r["status"] == "done" for r in reports(agent)), timeout=40)
        assert attached_profile_programs() == []  # the window is over: probes detached
        assert not {"http_offcpu", "netlat_xmit", "netlat_copy"} & linked_programs()
        (r,) = reports(agent)  # one report: the rule cools down for this pod after firing
        print({k: v for k, v in r.items() if k != "pod"})
        assert r["rule"]["name"] == "slow-http" and r["signal"] == "http_p99_seconds"
        assert r["pod"]["uid"] == server.uid and r["value"] > 0.08
        assert r["probes"] == ["on_cpu_stacks", "off_cpu_stacks", "request_blocked_reasons",
                               "network_latency"]
        # the server pod's packets during the window: received and read at once (it is slow
        # to answer, not to read)
        rx = [n for n in r["network"] if n["kind"] == "rx_sock"]
        assert rx and sum(n["count"] for n in rx) >= 10 and all(
            n["p50_seconds"] < 0.01 for n in rx), r["network"]
        assert 2.9 <= r["profile"]["seconds"] <= 3.5
        assert {"cpu.svg", "cpu.folded", "offcpu.svg", "offcpu.folded", "report.json"} <= set(
            r["files"])
        # the handler threads blocked in their 100 ms sleeps
        off = parse_folded(agent.get(f"/api/reports/{r['id']}/offcpu.folded"))
        slept = sum(v for s, v in off.items() if "nanosleep" in s)
        assert slept >= 1.5e9, off.most_common(3)
        assert agent.get(f"/api/reports/{r['id']}/offcpu.svg").startswith("<?xml")
        # requests inside the window say why they were blocked; those before and after do not
        time.sleep(1.5)
        recs = [json.loads(x) for x in exp.read_text().split("\n")[:-1]]
        slow = [x for x in recs if x.get("type") == "http_request" and x["role"] == "server"
                and x["path"] == "/sleep/100"]
        inside = [x for x in slow if r["started"] + 0.3 < x["time"] < r["ended"] - 0.3]
        after = [x for x in slow if x["time"] > r["ended"] + 0.3]
        assert len(inside) >= 15 and after
        assert all(x["blocked_sleep_seconds"] >= 0.09 for x in inside), inside[:2]
        assert all(x["blocked_sleep_seconds"] is None and x["blocked_seconds"] >= 0.09
                   for x in after)
        m = agent.metrics()
        assert m.value("podscope_trigger_fired_total", rule="slow-http") == 1
        assert m.value("podscope_deep_probes_active") == 0
        for bad in ("/api/reports/../../etc/passwd", f"/api/reports/{r['id']}/../report.json",
                    "/api/reports/x/y.sh"):
            try:
                agent.get(bad)
                raise AssertionError(f"{bad} served")
            except urllib.error.HTTPError as e:
                assert e.code == 404
    finally:
        if loader is not None:
            loader.kill()
            loader.wait()
        agent.stop()


def test_memory_pressure_rule_reports_the_pods_stalls(pods: PodNetwork, tmp_path: Path) -> None:
    """A pod that reads a file three times its memory limit, over and over, stalls on memory: a
    rule on its PSI memory share fires, and the report holds, beside the profile, the window's
    stalls: memory stalled share, reclaim stalls, the pod's disk reads; the overview shows its
    reclaim rate while it runs."""
    tight = pods.pod("tight")
    v1 = os.path.isdir("/sys/fs/cgroup/memory")
    tight.set_limit("memory", "memory.limit_in_bytes" if v1 else "memory.high", str(32 << 20))
    data = cold_file(96)
    cfg = tmp_path / "triggers.toml"
    cfg.write_text(f'reports_dir = "{tmp_path / "reports"}"\ntrigger_interval = 1.0\n'
                   '[[triggers]]\nname = "memory-stall"\nsignal = "memory_pressure_ratio"\n'
                   'above = 0.01\nfor_seconds = 2\nwindow_seconds = 3\noff_cpu = false\n')
    agent = AgentProc(["--config", str(cfg)], tmp_path)
    loader = None
    try:
        loader = tight.popen(["sh", "-c", f"while :; do cat {data} > /dev/null; done"])

        def reclaiming() -> bool:
            pod = [p for p in json.loads(agent.get("/api/v1/overview"))["pods"]
                   if p["uid"] == tight.uid]
            return bool(pod) and pod[0]["reclaim_seconds_per_second"] > 0 and \
                pod[0]["memory_pressure_ratio"] > 0
        assert wait_for(reclaiming, timeout=20)
        assert wait_for(lambda: any(r["status"] == "done" for r in reports(agent)), timeout=40)
        (r,) = reports(agent)
        print(r["pressure"])
        assert r["signal"] == "memory_pressure_ratio" and r["pod"]["uid"] == tight.uid
        p = r["pressure"]
        assert 0 < p["stalled_ratio"]["memory"]["some"] <= 1.0, p
        memcg = [x for x in p["reclaim"] if x["kind"] == "memcg"]
        assert memcg and memcg[0]["count"] > 0 and 0 < memcg[0]["seconds"] <= 3.5, p
        assert memcg[0]["mean_seconds"] <= memcg[0]["p99_seconds"] * 2, p
        disk = os.path.realpath(f"/sys/dev/block/{os.major(os.stat(data).st_dev)}:"
                                f"{os.minor(os.stat(data).st_dev)}").rsplit("/", 1)[1]
        reads = [x for x in p["io_requests"] if x["device"] == disk and x["direction"] == "read"]
        assert reads and reads[0]["count"] > 0 and reads[0]["bytes"] > 0, p
        assert p["refaults"] > 0, p
    finally:
        if loader is not None:
            loader.kill()
            loader.wait()
        agent.stop()
        data.unlink(missing_ok=True)


def test_bad_rule_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[triggers]]\nname = "x"\nsignal = "cpu_temperature"\nabove = 1\n')
    r = subprocess.run([PODSCOPE, "run", "--config",
                        str(cfg), "--duration", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "signal 'cpu_temperature' is not one of" in r.stderr
    assert "Traceback" not in r.stderr


def test_on_demand_profile_is_listed_as_a_report(pods: PodNetwork, tmp_path: Path) -> None:
    pod = pods.pod("on-demand")
    pod.popen(["sh", "-c", "while true; do sleep 0.1; done"])
    rdir = tmp_path / "reports"
    cfg = tmp_path / "r.toml"
    cfg.write_text(f'reports_dir = "{rdir}"\n')
    agent = AgentProc(["--config", str(cfg)], tmp_path)
    try:
        assert reports(agent) == []
        r = subprocess.run([PODSCOPE, "profile", "--pod", pod.uid, "--duration", "1.5s",
                            "--off-cpu", "--reports-dir", str(rdir)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        (rep,) = reports(agent)
        assert rep["rule"]["name"] == "on-demand" and rep["status"] == "done"
        assert rep["pod"]["uid"] == pod.uid
        assert {"cpu.svg", "offcpu.svg", "report.json"} <= set(rep["files"])
        off = parse_folded(agent.get(f"/api/reports/{rep['id']}/offcpu.folded"))
        assert any(s.startswith("sh;") for s in off), off  # the shell waiting for each sleep
    finally:
        agent.stop()
