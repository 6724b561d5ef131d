"""Network stack latency (the deep probe): a server that leaves each message 0.2 s in its socket
before reading it shows that wait in its receive-queue histogram (root, real BPF, real pods)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from podscope.testing.pods import PodNetwork
from tests.conftest import AgentProc, Metrics, python_cmd


def buckets(m: Metrics, name: str, uid: str) -> dict[float, float]:
    out: dict[float, float] = {}
    for s in m.samples:
        if s.name == name + "_bucket" and s.labels.get("k8s_pod_uid") == uid:
            le = float(s.labels["le"])
            out[le] = out.get(le, 0.0) + s.value
    return out


def test_socket_queueing_seen_and_probe_switch(pods: PodNetwork, tmp_path: Path) -> None:
    server, client = pods.pod("slow-reader"), pods.pod("sender")
    cfg = tmp_path / "netlat.toml"
    cfg.write_text("netlat = true\n")
    agent = AgentProc(["--config", str(cfg)], tmp_path)
    try:
        assert agent.metrics().value("podscope_netlat_active") == 1
        srv = server.popen(python_cmd("slow_reader.py", "server", 9300, 5, 0.2),
                           stdout=subprocess.PIPE, text=True)
        assert srv.stdout is not None and srv.stdout.readline().strip() == "listening"
        client.run(python_cmd("slow_reader.py", "client", server.ip, 9300, 5))
        assert srv.wait(10) == 0
        m = agent.metrics()
        rx = buckets(m, "podscope_net_rx_socket_latency_seconds", server.uid)
        print("rx", rx)
        # each of the 5 messages waited 0.2 s in the queue (bucket 0.131-0.262 s); the rest of
        # what the server read (nothing else here) was fast
        assert rx[0.262144] - rx[0.131072] == 5
        assert rx[float("inf")] - rx[0.262144] == 0
        # the client's reads of the answers did not wait
        crx = buckets(m, "podscope_net_rx_socket_latency_seconds", client.uid)
        assert crx[float("inf")] >= 5 and crx.get(0.131072, 0) == crx[float("inf")]
        # transmit: packets the client's namespace sent, released by now: at most what its
        # device says it sent (ARP and IPv6 neighbour packets have no socket and are the pod's
        # too, so the namespace's TcpOutSegs is no upper bound)
        tx = m.value("podscope_net_tx_latency_seconds_count", k8s_pod_uid=client.uid)
        link = subprocess.run(["ip", "-n", client.netns, "-s", "-j", "link", "show", "eth0"],
                              capture_output=True, text=True, check=True).stdout
        sent = json.loads(link)[0]["stats64"]["tx"]["packets"]
        assert 0 < tx <= sent, (tx, sent)
    finally:
        agent.stop()
