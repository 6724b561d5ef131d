"""Debian's real Prometheus scraping the agent and a real Pushgateway the agent pushes to:
PromQL returns what the workload did (root, real BPF, real pods)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from podscope.testing.kubeapi import KubeAPIServer, pod_object_for
from podscope.testing.pods import PodNetwork
from podscope.testing.servers import start_prometheus, start_pushgateway
from tests.conftest import AgentProc, free_port, python_cmd
from tests.kernel.test_db import redis_cli, start_nats, start_redis
from tests.kernel.test_tcp import start_server, wait_for

NODE = "prom-node-1"
DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"
PROM_CONFIG = """
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: podscope-agent
    static_configs:
      - targets: ["127.0.0.1:{agent}"]
  - job_name: pushgateway
    honor_labels: true
    static_configs:
      - targets: ["127.0.0.1:{gateway}"]
"""


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def scalar(port: int, promql: str) -> float | None:
    res = query(port, promql)
    return float(res[0]["value"][1]) if res else None


def wait_query(port: int, promql: str, want: float, timeout: float = 30) -> None:
    got = wait_for(lambda: scalar(port, promql) == want, timeout=timeout, step=0.5)
    assert got, f"{promql}: {scalar(port, promql)}, wanted {want}"


def check_dashboards(prom_port: int) -> None:
    """Every panel query of every Grafana dashboard returns at least one series."""
    exprs = []
    for f in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(f.read_text())["panels"]:
            exprs += [(f.name, panel["title"], t["expr"]) for t in panel.get("targets", [])]
    assert len(exprs) >= 40
    empty = []
    for name, title, expr in exprs:
        promql = (expr.replace("$__rate_interval", "1m").replace("$namespace", ".*")
                  .replace("$pod", ".*"))
        if not wait_for(lambda q=promql: query(prom_port, q), timeout=20, step=1.0):
            empty.append(f"{name} / {title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_prometheus_scrapes_agent_and_pushgateway(pods: PodNetwork, tmp_path: Path) -> None:
    server, client = pods.pod("server"), pods.pod("client", driver="cgroupfs")
    p = server.popen(python_cmd("http_server.py", 8080), stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "listening"
    start_server(server, 9000, 100_000, tmp_path / "tcp.jsonl")  # bulk data, some of it dropped
    start_server(server, 9090, 10, tmp_path / "unused", 8, "noaccept")  # never accepts
    g = server.popen(python_cmd("grpc_server.py", 50051), stdout=subprocess.PIPE, text=True)
    assert g.stdout is not None and g.stdout.readline().strip() == "listening"
    start_redis(server, tmp_path)
    start_nats(server, client)
    gw_port, prom_port, agent_port = free_port(), free_port(), free_port()
    gw = start_pushgateway(gw_port, tmp_path)
    api = KubeAPIServer().start()
    api.add_pod(pod_object_for(server, "shop", NODE, owner=("StatefulSet", "backend")))
    api.add_pod(pod_object_for(client, "shop", NODE, owner=("DaemonSet", "loadgen")))
    cfg = tmp_path / "podscope.toml"
    cfg.write_text("http_route_budget = 3\n")  # so that the over-budget panel has data
    prom = None
    agent = None
    try:
        agent = AgentProc(["--pushgateway", f"http://127.0.0.1:{gw_port}", "--push-interval", "1",
                           "--node-name", NODE, "--config", str(cfg), "--kubeconfig",
                           str(api.write_kubeconfig(tmp_path / "kubeconfig"))],
                          tmp_path, port=agent_port)
        prom = start_prometheus(prom_port, tmp_path, PROM_CONFIG.format(agent=agent_port,
                                                                        gateway=gw_port))
        ns0 = client.nstat()
        # the workload: 17 HTTP requests; 3 connections left in an accept queue; bulk transfers
        # into a server that drops every 8th segment it receives (the client retransmits; a random
        # drop can miss all of a few dozen large segments on veth with TSO)
        out = client.run(python_cmd("http_client.py", server.ip, 8080,
                                    json.dumps([["GET", "/status/200", 12],
                                                ["GET", "/status/503", 5]])))
        assert json.loads(out.stdout) == {"GET 200": 12, "GET 503": 5, "_connections": 1}
        holder = client.popen([sys.executable, "-c", (
            "import socket, time\n"
            f"c = [socket.create_connection(('{server.ip}', 9090)) for _ in range(3)]\n"
            "print('ok', flush=True); time.sleep(120)")], stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        server.run(["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "9000", "-m", "statistic",
                    "--mode", "nth", "--every", "8", "--packet", "0", "-j", "DROP"])
        out = client.run(python_cmd("tcp_client.py", server.ip, 9000, 10, 300_000))
        assert json.loads(out.stdout)["connections"] == 10
        wait_for(lambda: len((tmp_path / "tcp.jsonl").read_text().splitlines()) == 10, 30)
        time.sleep(1.5)  # the closes are in the kernel's counters; one more iterator pass
        retrans = client.nstat().get("TcpRetransSegs", 0) - ns0.get("TcpRetransSegs", 0)
        assert retrans > 0

        srv = f'k8s_pod_uid="{server.uid}"'
        cl = f'k8s_pod_uid="{client.uid}"'
        # (the bulk transfers are HTTP uploads too: 10 requests to /upload)
        route = 'http_route="/status/{id}"'
        # scraped from the agent
        wait_query(prom_port, f'sum(http_server_request_duration_seconds_count{{{srv},{route},'
                              f'job="podscope-agent"}})', 17)
        wait_query(prom_port, f'sum(http_server_request_duration_seconds_count{{{srv},'
                              f'job="podscope-agent",http_route="/upload"}})', 10)
        wait_query(prom_port, f'sum(http_server_request_duration_seconds_count{{{srv},'
                              f'job="podscope-agent",http_response_status_code="503"}})', 5)
        wait_query(prom_port, f'sum(http_client_request_duration_seconds_count{{{cl},{route},'
                              f'job="podscope-agent"}})', 17)
        wait_query(prom_port, f'sum(podscope_tcp_retransmits_total{{{cl},job="podscope-agent"}})',
                   retrans)
        wait_query(prom_port, f'max(podscope_tcp_accept_queue_depth{{{srv},port="9090",'
                              f'job="podscope-agent"}})', 3)
        # the same numbers through the Pushgateway (labels kept: honor_labels)
        wait_query(prom_port, f'sum(http_server_request_duration_seconds_count{{{srv},{route},'
                              f'job="podscope",instance="{NODE}"}})', 17)
        wait_query(prom_port, f'sum(podscope_tcp_retransmits_total{{{cl},job="podscope",'
                              f'instance="{NODE}"}})', retrans)
        wait_query(prom_port, f'max(podscope_tcp_accept_queue_depth{{{srv},port="9090",'
                              f'job="podscope",instance="{NODE}"}})', 3)
        # histograms work in PromQL: a p99 (since the start) from the kernel's log2 buckets
        p99 = scalar(prom_port, 'histogram_quantile(0.99, sum by (le) ('
                                f'http_server_request_duration_seconds_bucket{{{srv},{route},'
                                'job="podscope-agent"}))')
        assert p99 is not None and 0 < p99 < 1.0
        # more of what the dashboards show, once the routes above are in the budget: routes
        # past it, a request whose client gives up, a refused connection, gRPC calls
        client.run(python_cmd("http_client.py", server.ip, 8080, json.dumps(
            [["GET", "/bytes/10", 1], ["GET", "/work/10", 1], ["GET", "/chunked/2", 1]])))
        client.run([sys.executable, "-c", (
            "import socket, time\n"
            f"s = socket.create_connection(('{server.ip}', 8080))\n"
            "s.sendall(b'GET /sleep/1500 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); time.sleep(0.3)\n"
            "s.close()\n"
            f"try:\n    socket.create_connection(('{server.ip}', 9999), timeout=3)\n"
            "except ConnectionRefusedError:\n    pass\n")])
        out = client.run(python_cmd("grpc_client.py", server.ip, 50051,
                                    json.dumps({"ok": 4, "internal": 1})))
        assert json.loads(out.stdout)["Unary INTERNAL"] == 1
        # a cache: three SETs, a GET, and an INCR of a string (an ERR)
        for args in (("SET", "a", "1"), ("SET", "b", "x"), ("SET", "c", "3"), ("GET", "a")):
            redis_cli(client, server, *args)
        assert redis_cli(client, server, "INCR", "b").startswith("ERR")
        wait_query(prom_port, f'sum(podscope_db_server_operation_duration_seconds_count{{{srv},'
                              'job="podscope-agent",db_system_name="redis",'
                              'db_operation_name="SET"})', 3)
        wait_query(prom_port, f'sum(db_client_operation_duration_seconds_count{{{cl},'
                              'job="podscope-agent",db_response_status_code="ERR"})', 1)
        # messaging: a subscriber and responder in the server pod, a client's publishes and
        # requests
        worker = server.popen(python_cmd("nats_client.py", "worker", f"nats://{server.ip}:4222"),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        out = client.run(python_cmd("nats_client.py", "client", f"nats://{server.ip}:4222",
                                    json.dumps({"orders.new": 5, "requests": 3}))).stdout
        assert json.loads(out)["replies"] == 3
        worker.kill()
        worker.wait(10)
        wait_query(prom_port, f'sum(messaging_client_sent_messages_total{{{cl},'
                              'job="podscope-agent",messaging_destination_name="orders.new"})', 5)
        # kernel errors and CPU: limits as kubelet sets them, then a workload that hits them
        v1 = Path("/sys/fs/cgroup/memory").is_dir()
        server.set_limit("pids", "pids.max", "30")
        server.set_limit("memory", "memory.limit_in_bytes" if v1 else "memory.max", str(48 << 20))
        if Path("/sys/fs/cgroup/cpu").is_dir():
            server.set_limit("cpu", "cpu.cfs_quota_us", "50000")
        else:
            server.set_limit("cpu", "cpu.max", "50000 100000")
        out = json.loads(server.run(python_cmd("kernel_workload.py", "forks", 40)).stdout)
        assert out.get("EAGAIN", 0) > 0
        assert server.run(python_cmd("kernel_workload.py", "oom", 200), check=False
                          ).returncode == -9
        assert server.run(["sh", "-c", "kill -SEGV $$"], check=False).returncode == -11
        assert "mounted" not in json.loads(
            server.run(python_cmd("kernel_workload.py", "mounts")).stdout)
        server.run(python_cmd("kernel_workload.py", "burn", 0.5))
        check_dashboards(prom_port)
        holder.kill()
    finally:
        api.stop()
        if agent is not None:
            agent.stop()
        for proc in (prom, gw):
            if proc is not None:
                proc.kill()
                proc.wait()
