"""The agent pushing to Debian's real prometheus-pushgateway: values, an outage, the group deleted
at shutdown (root, real BPF, real pods)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

from podscope.testing.pods import PodNetwork
from podscope.testing.servers import start_pushgateway
from tests.conftest import AgentProc, Metrics, free_port, python_cmd

NODE = "push-node-1"


def gateway_metrics(port: int) -> Metrics:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return Metrics(r.read().decode())


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def wait_value(port: int, name: str, want: float, timeout: float = 20, **labels: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = gateway_metrics(port).value(name, **labels)
        except OSError:
            got = None
        if got == want:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels}: {got}, wanted {want}")
        time.sleep(0.3)


def test_push_outage_and_group_deleted(pods: PodNetwork, tmp_path: Path) -> None:
    server, client = pods.pod("server"), pods.pod("client")
    p = server.popen(python_cmd("http_server.py", 8080), stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "listening"
    port = free_port()
    gateways = [start_pushgateway(port, tmp_path)]
    agent = None
    try:
        agent = AgentProc(["--pushgateway", f"http://127.0.0.1:{port}", "--push-interval", "1",
                           "--node-name", NODE], tmp_path)

        def requests(n: int) -> None:
            out = client.run(python_cmd("http_client.py", server.ip, 8080,
                                        json.dumps([["GET", "/status/200", n]])))
            assert json.loads(out.stdout)["GET 200"] == n

        requests(13)
        key = {"job": "podscope", "instance": NODE, "k8s_pod_uid": server.uid}
        wait_value(port, "http_server_request_duration_seconds_count", 13, **key)
        wait_value(port, "podscope_tcp_connections_opened_total", 1, direction="inbound", **key)
        ok_before = agent.metrics().value("podscope_pushgateway_pushes_total", result="ok")
        # the gateway goes away for 30 s while traffic goes on
        gateways[0].kill()
        gateways[0].wait()
        rss0 = rss_mb(agent.proc.pid)
        t0 = time.monotonic()
        requests(7)
        samples = []
        while time.monotonic() - t0 < 30:
            time.sleep(3)
            assert agent.proc.poll() is None
            samples.append(rss_mb(agent.proc.pid))
        assert max(samples) - rss0 < 8, (rss0, samples)  # nothing piles up
        errors = agent.metrics().value("podscope_pushgateway_pushes_total", result="error")
        assert errors >= 3
        gateways.append(start_pushgateway(port, tmp_path))
        wait_value(port, "http_server_request_duration_seconds_count", 20, timeout=90, **key)
        assert agent.metrics().value("podscope_pushgateway_pushes_total",
                                     result="ok") > ok_before
        agent.stop()
        agent = None
        # the agent deleted its group when it stopped
        m = gateway_metrics(port)
        assert not [s for s in m.samples if s.labels.get("instance") == NODE]
    finally:
        if agent is not None:
            agent.stop()
        for gw in gateways:  # by PID, also when the test failed
            if gw.poll() is None:
                gw.kill()
            gw.wait()
