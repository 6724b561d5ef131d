"""DNS per pod against the DNS server's own counts: a server pod (dnspython on port 53, UDP and
TCP) and a client pod that resolves through glibc, dnspython over UDP and over TCP (root, real
BPF, real pods)."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from podscope.testing.pods import Pod, PodNetwork
from tests.conftest import AgentProc, python_cmd
from tests.kernel.test_tcp import wait_for


def start_server(pod: Pod, counts: Path, *flags: str) -> subprocess.Popen[str]:
    p = pod.popen(python_cmd("dns_server.py", counts, *flags), stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def names(prefix: str, suffix: str, n: int) -> list[str]:
    return [f"{prefix}{i}.{suffix}" for i in range(n)]


@pytest.fixture(params=["auto"])
def dns_agent(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AgentProc]:
    cfg = tmp_path / "dns.toml"
    cfg.write_text(f'dns_timeout = 1.5\nhttp_hooks = "{request.param}"\n')
    exp = tmp_path / "dns.jsonl"
    a = AgentProc(["--config", str(cfg), "--export", f"jsonl:{exp}"], tmp_path)
    a.export = exp  # type: ignore[attr-defined]
    yield a
    a.stop()


def records(agent: AgentProc) -> list[dict]:  # type: ignore[type-arg]
    path: Path = agent.export  # type: ignore[attr-defined]
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().split("\n")[:-1])
            if r.get("type") == "dns_query"]


@pytest.mark.parametrize("dns_agent", ["auto", "syscalls"], indirect=True)
def test_query_count_and_rcode_mix_exact(pods: PodNetwork, dns_agent: AgentProc,
                                         tmp_path: Path) -> None:
    server, client = pods.pod("dnsd"), pods.pod("resolver")
    counts = tmp_path / "counts.json"
    start_server(server, counts)
    client.set_resolver(server.ip, "timeout:2 attempts:1")
    # glibc: 7 names that resolve, 4 NXDOMAIN, 3 SERVFAIL (each an A and an AAAA query)
    glibc = names("web", "ok.test", 7) + names("gone", "nx.test", 4) + names("db", "fail.test", 3)
    out = json.loads(client.run(python_cmd("dns_client.py", "glibc", *glibc)).stdout)
    assert out.get("resolved") == 7
    # dnspython over unconnected UDP (sendto/recvfrom): MX, 5 REFUSED
    json.loads(client.run(python_cmd("dns_client.py", "udp", server.ip, "MX",
                                     *names("mx", "refused.test", 5))).stdout)
    # and over TCP: 6 TXT, NOERROR
    json.loads(client.run(python_cmd("dns_client.py", "tcp", server.ip, "TXT",
                                     *names("txt", "ok.test", 6))).stdout)
    truth = json.loads(counts.read_text())
    answered = Counter({tuple(k.split()): v for k, v in truth["answered"].items()})
    total = sum(answered.values())
    assert sum(truth["received"].values()) == total >= 7 * 2 + 4 + 3 + 5 + 6

    def got() -> Counter[tuple[str, str]]:
        m = dns_agent.metrics()
        c: Counter[tuple[str, str]] = Counter()
        for s in m.samples:
            if (s.name == "podscope_dns_request_duration_seconds_count"
                    and s.labels.get("k8s_pod_uid") == client.uid):
                c[(s.labels["qtype"], s.labels["rcode"])] += int(s.value)
        return c

    wait_for(lambda: sum(got().values()) >= total, timeout=10)
    print("server", dict(answered), "agent", dict(got()))
    assert got() == answered
    m = dns_agent.metrics()
    assert m.value("podscope_dns_timeouts_total", k8s_pod_uid=client.uid) == 0
    assert m.value("podscope_dns_unparsed_total", k8s_pod_uid=client.uid) == 0
    assert m.value("podscope_dns_request_duration_seconds_count", k8s_pod_uid=client.uid,
                   network_transport="tcp", qtype="TXT") == 6
    assert m.value("podscope_dns_request_duration_seconds_count", k8s_pod_uid=client.uid,
                   server_address=server.ip) == total
    # the server pod answers DNS: none of that is counted as its own queries
    assert m.value("podscope_dns_request_duration_seconds_count", k8s_pod_uid=server.uid) == 0
    # one record per query, with the queried name
    wait_for(lambda: len(records(dns_agent)) >= total, timeout=10)
    recs = [r for r in records(dns_agent) if r["k8s_pod_uid"] == client.uid]
    assert len(recs) == total
    assert {r["query_name"] for r in recs if r["rcode"] == "NXDOMAIN"} >= set(
        names("gone", "nx.test", 4))
    assert all(0 < r["duration_seconds"] < 2 for r in recs)
    assert {r["comm"] for r in recs} == {"python3"} or all(r["comm"] for r in recs)


def test_unanswered_queries_are_timeouts(pods: PodNetwork, dns_agent: AgentProc,
                                         tmp_path: Path) -> None:
    server, client = pods.pod("blackhole"), pods.pod("waiter")
    counts = tmp_path / "counts.json"
    start_server(server, counts, "--silent")
    out = json.loads(client.run(python_cmd("dns_client.py", "udp", server.ip, "A",
                                           *names("q", "ok.test", 4))).stdout)
    assert out == {"timeout": 4}
    client.set_resolver(server.ip, "timeout:1 attempts:2")
    r = json.loads(client.run(python_cmd("dns_client.py", "glibc", "slow.ok.test")).stdout)
    assert "resolved" not in r
    received = sum(json.loads(counts.read_text())["received"].values())
    assert received > 4  # glibc sent its A and AAAA queries, twice
    time.sleep(1.5)  # the agent's timeout
    wait_for(lambda: dns_agent.metrics().value("podscope_dns_timeouts_total",
                                               k8s_pod_uid=client.uid) >= received, timeout=10)
    m = dns_agent.metrics()
    assert m.value("podscope_dns_timeouts_total", k8s_pod_uid=client.uid) == received
    assert m.value("podscope_dns_request_duration_seconds_count", k8s_pod_uid=client.uid) == 0
    recs = [r for r in records(dns_agent) if r["k8s_pod_uid"] == client.uid]
    assert len(recs) == received and {r["rcode"] for r in recs} == {"TIMEOUT"}
