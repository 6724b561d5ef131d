"""TCP golden signals against real pods and kernel ground truth (root, real BPF)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from podscope.testing.pods import Pod, PodNetwork
from tests.conftest import AgentProc, python_cmd

N = 23


def start_server(pod: Pod, port: int, response: int, log: Path, *extra: object) -> None:
    p = pod.popen(python_cmd("tcp_server.py", port, response, log, *extra),
                  stdout=__import__("subprocess").PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "listening"


def wait_for(pred, timeout: float = 10.0, step: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


def test_connections_and_bytes_per_pod(pods: PodNetwork, agent: AgentProc, tmp_path: Path) -> None:
    server = pods.pod("server", qos="burstable", driver="systemd")
    client = pods.pod("client", qos="besteffort", driver="cgroupfs")
    log = tmp_path / "server.jsonl"
    start_server(server, 8080, 20000, log)
    before = agent.metrics()
    out = client.run(python_cmd("tcp_client.py", server.ip, 8080, N, 3000))
    truth = json.loads(out.stdout)
    assert truth["connections"] == N

    srv_lines = wait_for(lambda: log.read_text().splitlines() if log.exists() and
                         len(log.read_text().splitlines()) == N else None)
    assert srv_lines and len(srv_lines) == N
    srv_recv = sum(json.loads(x)["received"] for x in srv_lines)
    srv_sent = sum(json.loads(x)["sent"] for x in srv_lines)

    def delta(name: str, pod: Pod, **lab: str) -> float:
        m = agent.metrics()
        return m.value(name, k8s_pod_uid=pod.uid, **lab) - before.value(
            name, k8s_pod_uid=pod.uid, **lab)

    closed = wait_for(lambda: delta("podscope_tcp_connections_closed_total", server) == N
                      and delta("podscope_tcp_connections_closed_total", client) == N)
    m = agent.metrics()
    cl = {"k8s_pod_uid": client.uid}
    sv = {"k8s_pod_uid": server.uid}
    assert m.value("podscope_tcp_connections_opened_total", direction="outbound", **cl) == N
    assert m.value("podscope_tcp_connections_opened_total", direction="inbound", **cl) == 0
    assert m.value("podscope_tcp_connections_opened_total", direction="inbound", **sv) == N
    assert m.value("podscope_tcp_connections_opened_total", direction="outbound", **sv) == 0
    assert closed, (m.value("podscope_tcp_connections_closed_total", **cl),
                    m.value("podscope_tcp_connections_closed_total", **sv))
    # bytes: what the programs themselves sent and received (SYN/FIN are not payload)
    assert m.value("podscope_tcp_sent_bytes_total", **cl) == pytest.approx(truth["sent"], rel=0.01)
    assert m.value("podscope_tcp_received_bytes_total", **cl) == pytest.approx(truth["received"],
                                                                                rel=0.01)
    assert m.value("podscope_tcp_sent_bytes_total", **sv) == pytest.approx(srv_sent, rel=0.01)
    assert m.value("podscope_tcp_received_bytes_total", **sv) == pytest.approx(srv_recv, rel=0.01)
    # the right container, not just the right pod
    assert m.series("podscope_tcp_connections_opened_total", direction="outbound", **cl)[0][
        "container_id"] == client.container_id
    assert m.series("podscope_tcp_connections_opened_total", direction="inbound", **sv)[0][
        "container_id"] == server.container_id
    # histograms observed once per connection
    assert m.value("podscope_tcp_connect_duration_seconds_count", **cl) == N
    assert m.value("podscope_tcp_connection_duration_seconds_count", **sv) == N
    assert m.value("podscope_tcp_rtt_seconds_count", **cl) == N
