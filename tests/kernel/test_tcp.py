"""TCP golden signals against real pods and kernel ground truth (root, real BPF)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from podscope.testing.pods import Pod, PodNetwork
from tests.conftest import SLOW, AgentProc, python_cmd

N = 23


def start_server(pod: Pod, port: int, response: int, log: Path, *extra: object) -> None:
    p = pod.popen(python_cmd("tcp_server.py", port, response, log, *extra),
                  stdout=__import__("subprocess").PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "listening"


def wait_for(pred, timeout: float = 10.0, step: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout * SLOW
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


def test_retransmits_and_drops_match_netns_counters(pods: PodNetwork, agent: AgentProc,
                                                    tmp_path: Path) -> None:
    server = pods.pod("server", qos="guaranteed", driver="systemd")
    client = pods.pod("client", qos="burstable", driver="systemd")
    log = tmp_path / "server.jsonl"
    start_server(server, 8080, 400_000, log)
    # 2 % of the server pod's incoming packets are dropped, in its own namespace only
    server.run(["iptables", "-A", "INPUT", "-p", "tcp", "-m", "statistic", "--mode", "random",
                "--probability", "0.02", "-j", "DROP"])
    before = agent.metrics()
    ns_srv0, ns_cl0 = server.nstat(), client.nstat()
    n = 40
    out = json.loads(client.run(python_cmd("tcp_client.py", server.ip, 8080, n, 200_000)).stdout)
    assert out["connections"] == n
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == n, timeout=30)

    def settled() -> bool:
        m = agent.metrics()
        return all(m.value("podscope_tcp_connections_closed_total", k8s_pod_uid=p.uid)
                   - before.value("podscope_tcp_connections_closed_total", k8s_pod_uid=p.uid) == n
                   for p in (server, client))

    assert wait_for(settled, timeout=30)
    time.sleep(0.5)
    m = agent.metrics()
    ns_srv1, ns_cl1 = server.nstat(), client.nstat()
    for pod, a, b in ((server, ns_srv0, ns_srv1), (client, ns_cl0, ns_cl1)):
        want = b.get("TcpRetransSegs", 0) - a.get("TcpRetransSegs", 0)
        got = (m.value("podscope_tcp_retransmits_total", k8s_pod_uid=pod.uid)
               - before.value("podscope_tcp_retransmits_total", k8s_pod_uid=pod.uid))
        print(pod.name, "retransmits podscope", got, "TcpRetransSegs", want)
        assert got == want
    # the client's data was dropped, so it retransmitted; the drops are the server's, by reason
    assert ns_cl1["TcpRetransSegs"] - ns_cl0.get("TcpRetransSegs", 0) > 0
    drops = m.value("podscope_packet_drops_total", k8s_pod_uid=server.uid, reason="NETFILTER_DROP")
    ipt = server.run(["iptables", "-L", "INPUT", "-v", "-x", "-n"]).stdout.splitlines()[2].split()
    print("drops podscope", drops, "iptables", ipt[0])
    assert drops == int(ipt[0])
    assert m.value("podscope_packet_drops_total", k8s_pod_uid=client.uid,
                   reason="NETFILTER_DROP") == 0


def test_accept_and_syn_queues(pods: PodNetwork, agent: AgentProc, tmp_path: Path) -> None:
    import subprocess

    server = pods.pod("server", qos="burstable", driver="cgroupfs")
    client = pods.pod("client", qos="burstable", driver="cgroupfs")
    # port 9090: backlog 4, never accepts -> the accept queue fills and overflows
    start_server(server, 9090, 10, tmp_path / "unused", 4, "noaccept")
    # port 9091: the client never sees the SYN-ACKs -> requests wait in the SYN queue
    start_server(server, 9091, 10, tmp_path / "unused", 64, "noaccept")
    client.run(["iptables", "-A", "INPUT", "-p", "tcp", "--sport", "9091", "--tcp-flags",
                "SYN,ACK", "SYN,ACK", "-j", "DROP"])
    ns0 = server.nstat()
    before = agent.metrics()
    flood = client.popen(python_cmd("syn_flood_client.py", server.ip, 9090, 20, 4.0),
                         stdout=subprocess.PIPE, text=True)
    half = client.popen(python_cmd("syn_flood_client.py", server.ip, 9091, 6, 4.0),
                        stdout=subprocess.PIPE, text=True)
    sv = {"k8s_pod_uid": server.uid, "port": "9090"}
    seen_depth = seen_syn = seen_syn_full = 0.0
    limit = 0.0
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        m = agent.metrics()
        seen_depth = max(seen_depth, m.value("podscope_tcp_accept_queue_depth", **sv))
        seen_syn_full = max(seen_syn_full, m.value("podscope_tcp_syn_queue_depth", **sv))
        seen_syn = max(seen_syn, m.value("podscope_tcp_syn_queue_depth", k8s_pod_uid=server.uid,
                                         port="9091"))
        limit = m.value("podscope_tcp_accept_queue_limit", **sv)
        time.sleep(0.3)
    flood.wait(30)
    half.wait(30)
    time.sleep(0.6)  # one more iterator pass
    m = agent.metrics()
    ns1 = server.nstat()
    want = ns1.get("TcpExtListenOverflows", 0) - ns0.get("TcpExtListenOverflows", 0)
    got = (m.value("podscope_tcp_listen_overflows_total", k8s_pod_uid=server.uid)
           - before.value("podscope_tcp_listen_overflows_total", k8s_pod_uid=server.uid))
    drops_want = ns1.get("TcpExtListenDrops", 0) - ns0.get("TcpExtListenDrops", 0)
    drops_got = (m.value("podscope_tcp_listen_drops_total", k8s_pod_uid=server.uid)
                 - before.value("podscope_tcp_listen_drops_total", k8s_pod_uid=server.uid))
    # independent evidence from BPF: the listener's own drop counter, read by iter/tcp
    listener_drops = m.value("podscope_tcp_listener_drops_total", **sv)
    print("limit", limit, "depth", seen_depth, "syn", seen_syn, "overflows", got, want,
          "drops", drops_got, drops_want, "listener", listener_drops)
    assert limit == 4
    assert seen_depth >= limit  # the kernel admits backlog + 1
    assert seen_syn == 6
    assert want > 0
    assert got == want
    assert drops_got == drops_want
    assert listener_drops == drops_want
    assert m.value("podscope_tcp_listen_overflows_total", k8s_pod_uid=client.uid) == 0


def test_live_connection_opened_before_the_agent(pods: PodNetwork, tmp_path: Path) -> None:
    """A long-lived connection that existed before podscope started: its bytes are counted
    from the agent's start on, at scrape time, without waiting for it to close."""
    import subprocess

    server = pods.pod("server")
    client = pods.pod("client")
    srv = server.popen(python_cmd("stream_pair.py", "server", 7000), stdout=subprocess.PIPE,
                       text=True)
    assert srv.stdout is not None and srv.stdout.readline().strip() == "listening"
    cl = client.popen(python_cmd("stream_pair.py", "client", server.ip, 7000),
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert cl.stdin is not None and cl.stdout is not None
    assert cl.stdout.readline().strip() == "connected"

    def send(n: int) -> None:
        assert cl.stdin is not None and cl.stdout is not None
        cl.stdin.write(f"{n}\n")
        cl.stdin.flush()
        assert cl.stdout.readline().strip() == f"sent {n}"

    send(30_000)  # before podscope: not counted
    agent = AgentProc([], tmp_path)
    try:
        first = agent.metrics()  # the iterator finds the connection and takes its baseline
        assert first.value("podscope_tcp_sent_bytes_total", k8s_pod_uid=client.uid) == 0
        send(123_456)
        time.sleep(0.7)  # past the iterator's refresh interval
        got = wait_for(lambda: agent.metrics().value("podscope_tcp_sent_bytes_total",
                                                     k8s_pod_uid=client.uid) == 123_456)
        m = agent.metrics()
        assert got, m.value("podscope_tcp_sent_bytes_total", k8s_pod_uid=client.uid)
        assert m.value("podscope_tcp_received_bytes_total", k8s_pod_uid=server.uid) == 123_456
        assert m.value("podscope_tcp_connections_opened_total", k8s_pod_uid=client.uid) == 0
        cl.stdin.close()
        cl.wait(10)
        assert wait_for(lambda: agent.metrics().value("podscope_tcp_connections_closed_total",
                                                      k8s_pod_uid=client.uid) == 1)
    finally:
        agent.stop()


def test_stale_socket_states_are_removed(pods: PodNetwork) -> None:
    """A socket state whose close the kernel never reported is removed after two complete
    iterator passes; live connections keep theirs."""
    import ctypes as ct
    import subprocess

    from podscope.collectors.tcp import TcpCollector
    from podscope.features import preflight
    from podscope.metadata.store import MetadataStore

    server = pods.pod("server")
    client = pods.pod("client")
    srv = server.popen(python_cmd("stream_pair.py", "server", 7000), stdout=subprocess.PIPE,
                       text=True)
    assert srv.stdout is not None and srv.stdout.readline().strip() == "listening"
    col = TcpCollector(MetadataStore(preflight()))
    col.start()
    try:
        cl = client.popen(python_cmd("stream_pair.py", "client", server.ip, 7000),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert cl.stdout is not None and cl.stdout.readline().strip() == "connected"
        socks = col.obj.map("tcp_socks")
        live = {k.value for k, _ in socks.items(ct.c_uint64, col.SkState)}
        assert len(live) >= 2  # both ends of the connection
        fake = ct.c_uint64(0xFFFF_FFFF_DEAD_0000)
        socks.update(fake, col.SkState())
        col.maintain()
        assert col.stale_removed == 0  # one complete pass is not proof
        col.maintain()
        keys = {k.value for k, _ in socks.items(ct.c_uint64, col.SkState)}
        assert fake.value not in keys and col.stale_removed == 1
        assert live <= keys
        assert cl.stdin is not None
        cl.stdin.close()
        cl.wait(10)
    finally:
        col.close()
