"""Latency baselines: a pod's server latency when idle and under load, kept by the agent and
shown by `podscope report` (root, real BPF, real pods, wrk as the load)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

from podscope.testing.pods import PodNetwork
from tests.conftest import PODSCOPE, AgentProc, python_cmd


def test_idle_and_load_baselines(pods: PodNetwork, tmp_path: Path) -> None:
    server, client = pods.pod("baselined"), pods.pod("load")
    # one CPU, 3 ms of CPU per request: under load requests queue for it
    p = server.popen(["taskset", "-c", "0", *python_cmd("http_server.py", 8080)],
                     stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "listening"
    cfg = tmp_path / "b.toml"
    cfg.write_text("baseline_interval = 1.0\n")
    agent = AgentProc(["--config", str(cfg)], tmp_path)
    try:
        # idle: one request at a time, about two a second, for 6 s
        for _ in range(12):
            client.run(python_cmd("http_client.py", server.ip, 8080,
                                  json.dumps([["GET", "/work/3000", 1]])))
            time.sleep(0.4)
        # load: wrk with 20 connections for 4 s (Python's server handles them in turn)
        out = client.run(["wrk", "-t", "2", "-c", "20", "-d", "4s",
                          f"http://{server.ip}:8080/work/3000"]).stdout
        done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        time.sleep(2.5)  # the last interval closes
        r = subprocess.run([PODSCOPE, "report", "--pod", server.uid, "--agent",
                            f"http://127.0.0.1:{agent.port}", "--json"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        (b,) = json.loads(r.stdout)["pods"]
        print(json.dumps(b, indent=1))
        idle, load = b["idle"], b["load"]
        assert idle and load
        # (an interval where the load started may count as idle: classes are by interval)
        assert idle["requests"] >= 8 and load["requests"] >= 0.5 * done
        assert load["requests_per_second"] > 10 * idle["requests_per_second"]
        # under load the same handler answers much more slowly: requests wait for the CPU
        assert idle["p50_seconds"] < 0.01 and load["p50_seconds"] > 3 * idle["p50_seconds"]
        text = subprocess.run([PODSCOPE, "report", "--pod", server.uid, "--agent",
                               f"127.0.0.1:{agent.port}"], capture_output=True, text=True,
                              timeout=30).stdout
        assert "idle" in text and "load" in text and "now" in text
        # a pod that is not there: one line naming it, exit 2 (never "no baseline yet")
        miss = subprocess.run([PODSCOPE, "report", "--pod", "nosuchpod", "--agent",
                               f"127.0.0.1:{agent.port}"], capture_output=True, text=True,
                              timeout=30)
        assert miss.returncode == 2 and "--pod nosuchpod" in miss.stderr, miss.stderr
        assert miss.stderr.strip().count("\n") == 0 and "baseline" not in miss.stderr
    finally:
        agent.stop()


def test_report_without_agent_is_a_clear_error() -> None:
    r = subprocess.run([PODSCOPE, "report", "--agent", "http://127.0.0.1:9"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "is an agent running" in r.stderr and "Traceback" not in r.stderr
