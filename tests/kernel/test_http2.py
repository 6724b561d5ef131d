"""HTTP/2 and gRPC against real grpcio servers and clients in test pods (root, real BPF)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from podscope.testing.pods import Pod, PodNetwork
from podscope.testing.servers import start_nginx
from tests.conftest import AgentProc, Metrics, python_cmd
from tests.kernel.test_http import records, wait_records

CODES = {"OK": "0", "NOT_FOUND": "5", "INTERNAL": "13"}


def start_grpc_server(pod: Pod, port: int = 50051) -> None:
    p = pod.popen(python_cmd("grpc_server.py", port), stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "listening"


def rpc_counts(m: Metrics, name: str, **labels: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for s in m.samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            assert s.labels["rpc_system"] == "grpc" and s.labels["rpc_service"] == "demo.Echo"
            out[f"{s.labels['rpc_method']} {s.labels['rpc_grpc_status_code']}"] += int(s.value)
    return out


def test_grpc_unary_mix_and_server_streaming(pods: PodNetwork, tmp_path: Path) -> None:
    server = pods.pod("server")
    client = pods.pod("client")
    start_grpc_server(server)
    exp = tmp_path / "r.jsonl"
    agent = AgentProc(["--export", f"jsonl:{exp}"], tmp_path)
    try:
        plan = {"ok": 17, "notfound": 5, "internal": 3}
        out = json.loads(client.run(python_cmd("grpc_client.py", server.ip, 50051,
                                               json.dumps(plan))).stdout)
        assert out["stream_parts"] == 5
        truth = Counter({f"{k.split()[0]} {CODES[k.split()[1]]}": v for k, v in out.items()
                         if k.startswith(("Unary", "Stream"))})
        assert truth == Counter({"Unary 0": 17, "Unary 5": 5, "Unary 13": 3, "Stream 0": 1})
        time.sleep(1.0)
        m = agent.metrics()
        assert rpc_counts(m, "rpc_server_duration_seconds_count", k8s_pod_uid=server.uid) == truth
        assert rpc_counts(m, "rpc_client_duration_seconds_count", k8s_pod_uid=client.uid,
                          server_address=server.ip, server_port="50051") == truth
        # the streaming call: one record per side, its whole duration
        for pod, role in ((server, "server"), (client, "client")):
            recs = [r for r in wait_records(exp, 26, role=role, k8s_pod_uid=pod.uid)
                    if r["path"] == "/demo.Echo/Stream"]
            assert len(recs) == 1, recs
            assert 0.15 <= recs[0]["duration_seconds"] <= out["stream_seconds"] + 0.01
            assert recs[0]["protocol"] == "2" and recs[0]["decode"] == "full"
        assert m.value("podscope_http2_decode_total", k8s_pod_uid=server.uid,
                       outcome="full") == 26
        assert not [r for r in records(exp) if r.get("protocol") == "2"
                    and r["decode"] != "full"]
    finally:
        agent.stop()


H2_LOCATIONS = """
    location = /ok {{ return 200 "podscope h2 payload\\n"; }}
    location = /missing {{ return 404; }}
"""


@pytest.mark.parametrize("hooks", ["auto", "syscalls"])
def test_h2load_against_nginx_h2c_exact_count(pods: PodNetwork, tmp_path: Path,
                                              hooks: str) -> None:
    server = pods.pod("server")
    client = pods.pod("client", driver="cgroupfs")
    start_nginx(server, port="8080 http2", locations=H2_LOCATIONS)
    cfg = tmp_path / "podscope.toml"
    cfg.write_text(f'http_hooks = "{hooks}"\n')
    agent = AgentProc(["--config", str(cfg)], tmp_path)
    try:
        out = client.run(["h2load", "-n", "300", "-c", "3", "-m", "10",
                          f"http://{server.ip}:8080/ok"]).stdout
        done = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded", out)
        assert done, out
        assert int(done.group(4)) == 300
        status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        assert status and int(status.group(1)) == 300, out
        out = client.run(["h2load", "-n", "40", "-c", "2", "-m", "5",
                          f"http://{server.ip}:8080/missing"]).stdout
        assert "40 succeeded" in out or re.search(r"40 done", out), out
        time.sleep(1.0)
        m = agent.metrics()
        for pod, name, extra in ((server, "http_server_request_duration_seconds_count", {}),
                                 (client, "http_client_request_duration_seconds_count",
                                  {"server_address": server.ip, "server_port": "8080"})):
            assert m.value(name, k8s_pod_uid=pod.uid, network_protocol_version="2",
                           http_request_method="GET", http_response_status_code="200",
                           http_route="/ok", **extra) == 300
            assert m.value(name, k8s_pod_uid=pod.uid, network_protocol_version="2",
                           http_response_status_code="404", **extra) == 40
        assert m.value("podscope_http2_decode_total", k8s_pod_uid=server.uid, outcome="full") == 340
        # every answered stream has a first byte (its response HEADERS), no later than its end
        for pod, side in ((server, "server"), (client, "client")):
            fb = f"podscope_http_{side}_time_to_first_byte_seconds"
            dur = f"http_{side}_request_duration_seconds"
            assert m.value(fb + "_count", k8s_pod_uid=pod.uid, network_protocol_version="2") == 340
            assert 0 < m.value(fb + "_sum", k8s_pod_uid=pod.uid) <= m.value(
                dur + "_sum", k8s_pod_uid=pod.uid)
    finally:
        agent.stop()


def test_h2c_upgrade_from_http1(pods: PodNetwork, tmp_path: Path) -> None:
    """nghttp -u: an HTTP/1.1 request with `Upgrade: h2c`, 101, then HTTP/2 on the same
    connection (an `h2` library server). The upgrade exchange is counted as what went over the
    wire in HTTP/1.1 (101); the later streams are HTTP/2, decoded from the start."""
    server = pods.pod("server")
    client = pods.pod("client")
    p = server.popen(python_cmd("h2c_server.py", 8080), stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "listening"
    agent = AgentProc([], tmp_path)
    try:
        paths = ["/first"] + ["/status/404"] * 3 + ["/status/503"] * 2 + ["/ok"] * 4
        # distinct URIs (nghttp fetches a URI once)
        out = client.run(["nghttp", "-u", "-v"] + [f"http://{server.ip}:8080{x}?n={i}"
                                                   for i, x in enumerate(paths)]).stdout
        assert "HTTP/1.1 101 Switching Protocols" in out, out
        # nghttp's own view: every response, stream 1 (the upgrade request's) included
        seen = Counter(re.findall(r"recv \(stream_id=(\d+)\) :status: (\d+)", out))
        h2_truth = Counter(code for sid, code in seen if sid != "1")
        assert h2_truth == Counter({"404": 3, "503": 2, "200": 4}), out
        time.sleep(1.0)
        m = agent.metrics()
        for pod, name in ((server, "http_server_request_duration_seconds_count"),
                          (client, "http_client_request_duration_seconds_count")):
            assert m.value(name, k8s_pod_uid=pod.uid, network_protocol_version="1.1",
                           http_response_status_code="101", http_route="/first") == 1
            for code, n in h2_truth.items():
                assert m.value(name, k8s_pod_uid=pod.uid, network_protocol_version="2",
                               http_response_status_code=code) == n, (
                    pod.name, code, [s for s in m.samples if "http2" in s.name
                                     or ("parse_errors" in s.name and s.value)])
            assert m.value("podscope_http2_decode_total", k8s_pod_uid=pod.uid,
                           outcome="full") == 9
    finally:
        agent.stop()


def test_agent_started_during_a_busy_grpc_connection(pods: PodNetwork, tmp_path: Path) -> None:
    server = pods.pod("server")
    client = pods.pod("client")
    start_grpc_server(server)
    plan = {"ok": 20, "notfound": 4}
    p = client.popen(python_cmd("grpc_client.py", server.ip, 50051, json.dumps(plan), "wait"),
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline().strip() == "ready"  # the connection exists, its tables are filled
    exp = tmp_path / "r.jsonl"
    agent = AgentProc(["--export", f"jsonl:{exp}"], tmp_path)
    try:
        p.stdin.write("go\n")
        p.stdin.flush()
        out = json.loads(p.stdout.readline())
        assert out["Unary OK"] == 20 and out["Unary NOT_FOUND"] == 4
        time.sleep(1.0)
        m = agent.metrics()
        assert agent.proc.poll() is None
        calls = 20 + 4 + 1
        for pod in (server, client):
            outcomes = {o: m.value("podscope_http2_decode_total", k8s_pod_uid=pod.uid, outcome=o)
                        for o in ("full", "partial", "none")}
            assert outcomes["partial"] > 0, outcomes
            # every call after the first frame the kernel recognised is counted once
            assert calls - 2 <= sum(outcomes.values()) <= calls, outcomes
        recs = records(exp, role="server", k8s_pod_uid=server.uid)
        assert all(r["decode"] in ("full", "partial", "none") for r in recs)
        # the streaming call's path was new after the agent started: a literal, decoded
        assert [r["path"] for r in recs].count("/demo.Echo/Stream") == 1
        assert "__unknown__" in {r["path"] for r in recs}  # and the rest is said to be unknown
    finally:
        agent.stop()
        p.wait(10)
