"""The kernel matrix smoke: one agent, every default signal family driven by real traffic, each
count compared exactly with what the traffic generator itself counted (root, real BPF, real pods).

It runs on this host in `make test`, and inside each kernel of the matrix (tests/matrix/run.py,
under qemu). With PODSCOPE_SMOKE_OUT set, every comparison and the agent's start time are also
written there (JSON lines) for the kernel x signal table."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podscope.testing.pods import PodNetwork
from podscope.testing.servers import start_nginx
from tests.conftest import AgentProc, python_cmd
from tests.kernel.test_http import by_method_status
from tests.kernel.test_tcp import wait_for

OUT = os.environ.get("PODSCOPE_SMOKE_OUT")
H2_LOCATIONS = """
location = /ok { return 200 "ok\\n"; }
location = /missing { return 404 "missing\\n"; }
"""


def record(**fields: Any) -> None:
    if OUT:
        with open(OUT, "a") as f:
            f.write(json.dumps(fields) + "\n")


def exact(signal: str, what: str, expected: Any, got: Any) -> None:
    """One comparison: recorded for the table, then asserted."""
    record(signal=signal, what=what, expected=expected, got=got, ok=expected == got)
    assert got == expected, (signal, what)


@pytest.fixture(scope="module")
def net() -> Iterator[PodNetwork]:
    if os.geteuid() != 0:
        pytest.fail("kernel tests run as root (make test runs them as root)")
    with PodNetwork() as n:
        yield n


@pytest.fixture(scope="module")
def smoke_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    tmp = tmp_path_factory.mktemp("smoke")
    cfg = tmp / "podscope.toml"
    cfg.write_text("dns_timeout = 3.0\n")
    a = AgentProc(["--config", str(cfg)], tmp)
    record(agent_start_seconds=round(a.started_in, 2))
    m = a.metrics()
    record(signals=[s.labels for s in m.samples if s.name == "podscope_signal_info"])
    yield a
    a.stop()


def test_http1_requests(net: PodNetwork, smoke_agent: AgentProc) -> None:
    server, client = net.pod("web"), net.pod("shop")
    start_nginx(server)
    plan = [["GET", "/ok", 7], ["GET", "/missing", 5], ["HEAD", "/ok", 2], ["POST", "/ok", 3, 900],
            ["GET", "/error", 3]]
    truth = Counter(json.loads(client.run(
        python_cmd("http_client.py", server.ip, 80, json.dumps(plan))).stdout))
    truth.pop("_connections")
    out = client.run(["ab", "-n", "23", "-c", "2", "-k", f"http://{server.ip}/ok"]).stdout
    assert re.search(r"Complete requests:\s+23\b", out) and re.search(r"Failed requests:\s+0\b",
                                                                        out), out
    truth["GET 200"] += 23
    total = sum(truth.values())
    wait_for(lambda: sum(by_method_status(smoke_agent.metrics(), "http_client_request_duration_seconds"
                                   "_count", k8s_pod_uid=client.uid).values()) >= total)
    m = smoke_agent.metrics()
    exact("http/1.x", "server requests by method and status",
          dict(truth), dict(by_method_status(m, "http_server_request_duration_seconds_count",
                                      k8s_pod_uid=server.uid)))
    exact("http/1.x", "client requests by method and status",
          dict(truth), dict(by_method_status(m, "http_client_request_duration_seconds_count",
                                      k8s_pod_uid=client.uid, server_address=server.ip)))


def test_http2_requests(net: PodNetwork, smoke_agent: AgentProc) -> None:
    server, client = net.pod("h2"), net.pod("h2client")
    start_nginx(server, port="8080 http2", locations=H2_LOCATIONS)
    out = client.run(["h2load", "-n", "30", "-c", "2", "-m", "5",
                      f"http://{server.ip}:8080/ok"]).stdout
    done = re.search(r"(\d+) succeeded", out)
    status = re.search(r"status codes: (\d+) 2xx", out)
    assert done and status, out
    out = client.run(["h2load", "-n", "12", "-c", "1", "-m", "4",
                      f"http://{server.ip}:8080/missing"]).stdout
    missing = re.search(r"status codes: \d+ 2xx, \d+ 3xx, (\d+) 4xx", out)
    assert missing, out
    truth = {"GET 200": int(status.group(1)), "GET 404": int(missing.group(1))}
    name = "http_{}_request_duration_seconds_count"
    wait_for(lambda: sum(by_method_status(smoke_agent.metrics(), name.format("client"),
                                   k8s_pod_uid=client.uid).values()) >= sum(truth.values()))
    m = smoke_agent.metrics()
    for side, pod in (("server", server), ("client", client)):
        exact("http/2", f"{side} streams by status (h2load's own counts)", truth,
              dict(by_method_status(m, name.format(side), k8s_pod_uid=pod.uid,
                             network_protocol_version="2")))


def test_dns_queries(net: PodNetwork, smoke_agent: AgentProc, tmp_path: Path) -> None:
    import subprocess

    server, client = net.pod("dnsd"), net.pod("resolver")
    counts = tmp_path / "counts.json"
    p = server.popen(python_cmd("dns_server.py", counts), stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    client.set_resolver(server.ip, "timeout:3 attempts:1")
    # glibc (A and AAAA together, sendmmsg), unconnected UDP (sendto), TCP
    glibc = [f"web{i}.ok.test" for i in range(3)] + ["gone.nx.test", "db.fail.test"]
    client.run(python_cmd("dns_client.py", "glibc", *glibc))
    client.run(python_cmd("dns_client.py", "udp", server.ip, "MX", "mx.refused.test",
                          "mx2.refused.test"))
    client.run(python_cmd("dns_client.py", "tcp", server.ip, "TXT", "txt.ok.test",
                          "txt2.ok.test"))
    answered = json.loads(counts.read_text())["answered"]
    total = sum(answered.values())

    def got() -> dict[str, int]:
        c: Counter[str] = Counter()
        for s in smoke_agent.metrics().samples:
            if (s.name == "podscope_dns_request_duration_seconds_count"
                    and s.labels.get("k8s_pod_uid") == client.uid):
                c[f"{s.labels['qtype']} {s.labels['rcode']}"] += int(s.value)
        return dict(c)

    wait_for(lambda: sum(got().values()) >= total)
    exact("dns", "queries by type and rcode (the server's own counts)", answered, got())
    m = smoke_agent.metrics()
    exact("dns", "timeouts and unparsed", 0,
          m.value("podscope_dns_timeouts_total", k8s_pod_uid=client.uid)
          + m.value("podscope_dns_unparsed_total", k8s_pod_uid=client.uid))


def test_tcp_connections_and_refused_connect(net: PodNetwork, smoke_agent: AgentProc,
                                             tmp_path: Path) -> None:
    import subprocess

    server, client = net.pod("tcpd"), net.pod("dialer")
    log = tmp_path / "server.jsonl"
    p = server.popen(python_cmd("tcp_server.py", 8080, 3000, log), stdout=subprocess.PIPE,
                     text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "listening"
    truth = json.loads(client.run(python_cmd("tcp_client.py", server.ip, 8080, 11, 500)).stdout)
    # a refused connect (the server pod's kernel answers the SYN with a reset), and an abortive
    # close (SO_LINGER 0: the client sends a reset on its socket)
    script = ("import socket, struct\n"
              f"try:\n socket.create_connection(('{server.ip}', 9), timeout=5)\n"
              "except ConnectionRefusedError:\n print('refused')\n"
              f"s = socket.create_connection(('{server.ip}', 8080), timeout=5)\n"
              "s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n"
              "s.close()\nprint('aborted')\n")
    assert client.run(["python3", "-c", script]).stdout.split() == ["refused", "aborted"]
    conns = truth["connections"] + 1

    def opened(pod_uid: str, direction: str) -> float:
        return smoke_agent.metrics().value("podscope_tcp_connections_opened_total",
                                           k8s_pod_uid=pod_uid, direction=direction)

    wait_for(lambda: smoke_agent.metrics().value("podscope_tcp_connections_closed_total",
                                                 k8s_pod_uid=server.uid) >= conns)
    m = smoke_agent.metrics()
    exact("tcp", "connections opened (client's count)", conns,
          int(opened(client.uid, "outbound")))
    exact("tcp", "connections accepted by the server pod", conns,
          int(opened(server.uid, "inbound")))
    exact("tcp", "connections closed", conns,
          int(m.value("podscope_tcp_connections_closed_total", k8s_pod_uid=server.uid)))
    exact("tcp", "refused connects", 1,
          int(m.value("podscope_tcp_connect_failures_total", k8s_pod_uid=client.uid,
                      reason="ECONNREFUSED")))
    exact("tcp", "resets sent on a socket (the abortive close)", 1,
          int(m.value("podscope_tcp_resets_sent_total", k8s_pod_uid=client.uid)))
    exact("tcp", "resets received (the refusal and the abortive close)", 2,
          int(m.value("podscope_tcp_resets_received_total", k8s_pod_uid=client.uid)
              + m.value("podscope_tcp_resets_received_total", k8s_pod_uid=server.uid)))
    resets = next(s.labels for s in m.samples if s.name == "podscope_signal_info"
                  and s.labels["signal"] == "resets sent and received")
    if resets["state"] == "works":  # Linux 6.10 and newer trace a reset sent without a socket
        exact("tcp", "resets sent by the server pod (the refusal)", 1,
              int(m.value("podscope_tcp_resets_sent_total", k8s_pod_uid=server.uid)))


def test_fork_failures_and_oom_kill(net: PodNetwork, smoke_agent: AgentProc) -> None:
    pod = net.pod("limits")
    limit_file = pod.set_limit("pids", "pids.max", "12")
    out = json.loads(pod.run(python_cmd("kernel_workload.py", "forks", 20)).stdout)
    failed = out.get("EAGAIN", 0)
    assert failed > 0
    wait_for(lambda: smoke_agent.metrics().value("podscope_process_fork_failures_total",
                                                 k8s_pod_uid=pod.uid) >= failed)
    events = Path(limit_file).with_name("pids.events").read_text().split()
    exact("kernel", "fork failures (the workload's count)", failed,
          int(smoke_agent.metrics().value("podscope_process_fork_failures_total",
                                          k8s_pod_uid=pod.uid, errno="EAGAIN")))
    exact("kernel", "fork failures (pids.events max)", int(events[events.index("max") + 1]),
          failed)
    hungry = net.pod("hungry")
    name = ("memory.max" if not os.path.isdir("/sys/fs/cgroup/memory")
            else "memory.limit_in_bytes")
    hungry.set_limit("memory", name, str(32 << 20))
    r = hungry.run(python_cmd("kernel_workload.py", "oom", 200), check=False)
    assert r.returncode == -9, (r.returncode, r.stderr)
    wait_for(lambda: smoke_agent.metrics().value("podscope_oom_kills_total",
                                                 k8s_pod_uid=hungry.uid) >= 1)
    exact("kernel", "OOM kills", 1,
          int(smoke_agent.metrics().value("podscope_oom_kills_total", k8s_pod_uid=hungry.uid)))
