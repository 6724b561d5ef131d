"""Attribution under churn: containers that live for a moment, network namespace inodes the kernel
hands to the next pod, cgroups gone before the agent looks (root, real BPF, real pods)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

from podscope.testing.pods import Pod, PodNetwork
from tests.conftest import AgentProc, python_cmd
from tests.kernel.test_tcp import wait_for


def start_tcp_server(pod: Pod, log: Path) -> None:
    p = pod.popen(python_cmd("tcp_server.py", 8080, 100, log), stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "listening"


def pod_in_freed_netns(pods: PodNetwork, inode: int, timeout: float = 60.0) -> Pod:
    """A new pod whose network namespace gets `inode`, freed by a namespace that is gone. The
    kernel frees an inode when the namespace is destroyed (asynchronously: after a burst of
    removed namespaces that can take seconds) and hands out the lowest free one: bare namespaces
    take the lower free ones first, then the pod is made."""
    fillers: list[str] = []  # holding the free inodes below `inode`
    deadline = time.monotonic() + timeout
    try:
        i = 0
        while time.monotonic() < deadline:
            name = f"psfill{pods.tag}-{i}"
            i += 1
            subprocess.run(["ip", "netns", "add", name], check=True)
            got = os.stat(f"/run/netns/{name}").st_ino
            if got < inode:
                fillers.append(name)
                continue
            subprocess.run(["ip", "netns", "del", name], check=True)
            if got > inode:  # not freed yet
                time.sleep(0.05)
                continue
            attempt = 0
            while time.monotonic() < deadline:  # the destruction of that filler frees it again
                time.sleep(0.05)
                pod = pods.pod(f"reuser{attempt}")
                attempt += 1
                if pod.netns_inode == inode:
                    return pod
                pods.remove(pod)
        raise AssertionError(f"no new namespace got inode {inode} within {timeout:.0f} s")
    finally:
        for name in fillers:
            subprocess.run(["ip", "netns", "del", name], check=False)


def test_churn_short_lived_pods_keep_their_own_counts(pods: PodNetwork, agent: AgentProc,
                                                      tmp_path: Path) -> None:
    """Pods made and removed several per second (each one's client runs for well under a second,
    and its cgroup and namespace are gone long before the next scrape); the kernel gives each new
    namespace the inode the last one freed. Every pod's counts are its own client's tally."""
    server = pods.pod("server")
    start_tcp_server(server, tmp_path / "server.jsonl")
    truth: dict[str, int] = {}
    inodes: list[int] = []
    t0 = time.monotonic()
    for i in range(24):
        pod = pods.pod(f"c{i}", driver="cgroupfs" if i % 2 else "systemd")
        inodes.append(pod.netns_inode)
        n = i % 4 + 1
        out = json.loads(pod.run(python_cmd("tcp_client.py", server.ip, 8080, n, 10)).stdout)
        assert out["connections"] == n
        truth[pod.uid] = n
        pods.remove(pod)  # processes, network namespace and cgroups: gone
    churn = time.monotonic() - t0
    assert len(set(inodes)) < len(inodes), "the kernel never reused a namespace inode"
    total = sum(truth.values())

    def outbound(m: object, uid: str) -> int:
        return int(m.value("podscope_tcp_connections_opened_total",  # type: ignore[attr-defined]
                           k8s_pod_uid=uid, direction="outbound"))

    wait_for(lambda: sum(outbound(agent.metrics(), u) for u in truth) >= total)
    m = agent.metrics()
    got = {uid: outbound(m, uid) for uid in truth}
    assert got == truth, f"churn of {churn:.1f}s: {got} != {truth}"
    closed = {uid: int(m.value("podscope_tcp_connections_closed_total", k8s_pod_uid=uid))
              for uid in truth}
    assert closed == truth
    # every dead pod's series carries its own container (its cgroup path, kept after removal)
    for s in m.samples:
        if s.name == "podscope_tcp_connections_opened_total" and s.labels["k8s_pod_uid"] in truth:
            assert s.labels["container_id"] and s.labels["cgroup"].endswith(
                s.labels["container_id"]) or s.labels["container_id"] in s.labels["cgroup"], \
                s.labels
    # and the server saw exactly what the clients made, nothing more
    assert int(m.value("podscope_tcp_connections_opened_total", k8s_pod_uid=server.uid,
                       direction="inbound")) == total


def test_a_dead_containers_counts_never_go_to_the_next_owner_of_its_netns_inode(
        pods: PodNetwork, agent: AgentProc, tmp_path: Path) -> None:
    """A container outside Kubernetes (a runtime's cgroup, its own namespace) that is gone before
    the agent looks; a pod then gets its namespace inode. The pod shows nothing it did not do."""
    server = pods.pod("server")
    start_tcp_server(server, tmp_path / "server.jsonl")
    gone = pods.pod("short", driver="podman")  # a podman container: no pod, no kubepods tree
    cid = gone.container_id
    gone_inode = gone.netns_inode
    out = json.loads(gone.run(python_cmd("tcp_client.py", server.ip, 8080, 7, 10)).stdout)
    assert out["connections"] == 7
    pods.remove(gone)
    new = pod_in_freed_netns(pods, gone_inode)
    wait_for(lambda: agent.metrics().value("podscope_tcp_connections_opened_total",
                                           container_id=cid, direction="outbound") >= 7)
    m = agent.metrics()
    assert m.value("podscope_tcp_connections_opened_total", container_id=cid,
                   direction="outbound") == 7
    assert m.value("podscope_tcp_connections_opened_total", k8s_pod_uid=new.uid) == 0
    assert m.value("podscope_tcp_connections_closed_total", k8s_pod_uid=new.uid) == 0


def test_a_container_named_late_keeps_one_series(tmp_path: Path) -> None:
    """Outside Kubernetes a container's name comes from the runtime's API, which may not know it
    yet when its first requests are counted: the series are renamed, never split."""
    import os
    import secrets
    import urllib.request

    from podscope.metadata.cgroups import cgroup2_mount
    from podscope.testing.dockerapi import DockerAPIServer
    from podscope.testing.pods import rmdir_when_empty
    from tests.conftest import free_port

    cg2 = cgroup2_mount()
    assert cg2
    cid = secrets.token_hex(32)
    cgdir = os.path.join(cg2, f"machine.slice/libpod-{cid}.scope")
    made = [d for d in (os.path.join(cg2, "machine.slice"), cgdir) if not os.path.isdir(d)]
    for d in made:
        os.mkdir(d)

    def enter() -> None:
        with open(os.path.join(cgdir, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    port = free_port()
    server = subprocess.Popen(python_cmd("http_server.py", port), preexec_fn=enter,
                              stdout=subprocess.PIPE, text=True)
    cfg = tmp_path / "podscope.toml"
    cfg.write_text(f'kubernetes = "off"\ndocker_socket = "{tmp_path}/docker.sock"\n')
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        with DockerAPIServer(str(tmp_path / "docker.sock")) as engine:
            agent = AgentProc(["--config", str(cfg)], tmp_path)
            try:
                def get(n: int) -> None:
                    for _ in range(n):
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status/200") as r:
                            assert r.status == 200

                get(4)
                wait_for(lambda: agent.metrics().value(
                    "http_server_request_duration_seconds_count", container_id=cid) == 4)
                engine.containers[cid] = "late-name"  # the runtime names it now
                time.sleep(5.5)  # the agent asks the engine at most every 5 s
                get(3)
                wait_for(lambda: agent.metrics().value(
                    "http_server_request_duration_seconds_count", container_id=cid) == 7)
                m = agent.metrics()
            finally:
                agent.stop()
        for name, lab in (("http_server_request_duration_seconds_count", {}),
                          ("podscope_tcp_connections_opened_total", {"direction": "inbound"})):
            series = [s for s in m.samples if s.name == name and s.labels["container_id"] == cid
                      and all(s.labels[k] == v for k, v in lab.items())]
            assert len(series) == 1 and series[0].labels["container_name"] == "late-name", series
        assert m.value("http_server_request_duration_seconds_count", container_id=cid,
                       container_name="late-name") == 7
    finally:
        server.terminate()
        server.wait(10)
        for d in reversed(made):
            rmdir_when_empty(d)


def test_namespace_counters_of_containers_outside_pods_stay_apart(
        pods: PodNetwork, agent: AgentProc, tmp_path: Path) -> None:
    """A network namespace's own counters (listen overflows) where no pod owns the namespace: a
    plain container's go to that container, never into one series with the node's own."""
    from tests.kernel.test_tcp import start_server

    server = pods.pod("web", driver="podman")  # a container outside Kubernetes, its own netns
    client = pods.pod("flooder", driver="podman")
    start_server(server, 9090, 10, tmp_path / "unused", 4, "noaccept")  # overflows
    before = agent.metrics()
    host_before = before.value("podscope_tcp_listen_overflows_total", k8s_pod_uid="",
                               container_id="", cgroup="")
    flood = client.popen(python_cmd("syn_flood_client.py", server.ip, 9090, 20, 4.0),
                         stdout=subprocess.PIPE, text=True)
    flood.communicate(timeout=60)
    want = server.nstat().get("TcpExtListenOverflows", 0)
    assert want > 0

    def got() -> float:
        return agent.metrics().value("podscope_tcp_listen_overflows_total",
                                     container_id=server.container_id)

    wait_for(lambda: got() >= want)
    m = agent.metrics()
    assert got() == want
    # the node's own series is the host namespace's own counter, nothing of the containers'
    host = m.value("podscope_tcp_listen_overflows_total", k8s_pod_uid="", container_id="",
                   cgroup="")
    assert host - host_before < want
    assert m.value("podscope_tcp_listen_overflows_total", container_id=client.container_id) == 0


def test_series_of_gone_pods_and_containers_go_without_an_api(pods: PodNetwork,
                                                              tmp_path: Path) -> None:
    """No Kubernetes API: a pod and a plain container whose cgroups and namespaces are gone
    keep their series for pod_grace, then their series go; the living keep theirs."""
    server = pods.pod("server")
    start_tcp_server(server, tmp_path / "server.jsonl")
    cfg = tmp_path / "podscope.toml"
    cfg.write_text('kubernetes = "off"\npod_grace = "3s"\n')
    agent = AgentProc(["--config", str(cfg)], tmp_path)
    try:
        gone = [pods.pod("gone-pod"), pods.pod("gone-ctr", driver="podman")]
        stays = pods.pod("stays")
        for p in (*gone, stays):
            out = json.loads(p.run(python_cmd("tcp_client.py", server.ip, 8080, 2, 10)).stdout)
            assert out["connections"] == 2

        def has(m: object, p: Pod) -> bool:
            key = ({"container_id": p.container_id} if p.driver == "podman"
                   else {"k8s_pod_uid": p.uid})
            return bool(m.series("podscope_tcp_connections_opened_total", **key))  # type: ignore[attr-defined]

        wait_for(lambda: all(has(agent.metrics(), p) for p in (*gone, stays)))
        for p in gone:
            pods.remove(p)
        time.sleep(1.0)
        m = agent.metrics()
        assert all(has(m, p) for p in gone)  # within the grace period: still there
        wait_for(lambda: not any(has(agent.metrics(), p) for p in gone), timeout=30)
        m = agent.metrics()
        assert not any(has(m, p) for p in gone)
        assert has(m, stays) and has(m, server)
        assert m.value("podscope_tcp_connections_opened_total", k8s_pod_uid=stays.uid,
                       direction="outbound") == 2
    finally:
        agent.stop()


def test_the_agent_inside_a_pods_namespace_does_not_hide_its_owner(pods: PodNetwork) -> None:
    """The agent's threads enter pods' namespaces to read their sockets; /proc/<agent>/ns/net
    shows where its main thread is at that moment. A scan then must not count the agent as a
    process of the pod (a namespace with a non-pod process has no single owner)."""
    from podscope.metadata.namespaces import in_netns
    from podscope.metadata.store import MetadataStore

    pod = pods.pod("stepped-into")
    holder = pod.procs[0].pid
    wait_for(lambda: os.stat(f"/proc/{holder}/ns/net").st_ino == pod.netns_inode, timeout=10)
    store = MetadataStore(pods.cg2)
    assert threading.current_thread() is threading.main_thread()
    lab = in_netns(holder, pod.netns_inode, lambda: store.labels(0, pod.netns_inode))
    assert lab.k8s_pod_uid == pod.uid
    assert os.getpid() not in store.namespaces()[pod.netns_inode].pids


def test_a_namespace_the_last_scan_missed_is_looked_up_again(pods: PodNetwork) -> None:
    """A pod made just after a scan of /proc: asked about at once, its namespace is unknown
    (rescans are rate-limited); asked again a moment later, it is the pod's — not remembered
    as nobody's until the next full rescan."""
    from podscope.metadata.store import MetadataStore

    store = MetadataStore(pods.cg2)
    store.namespaces()
    pod = pods.pod("late-to-the-scan")
    holder = pod.procs[0].pid
    wait_for(lambda: os.stat(f"/proc/{holder}/ns/net").st_ino == pod.netns_inode, timeout=10)
    store._netns_at = time.monotonic()  # as if that scan (which missed the pod) were just made
    assert store.labels(0, pod.netns_inode).k8s_pod_uid == ""  # rescans are rate-limited
    time.sleep(0.25)
    assert store.labels(0, pod.netns_inode).k8s_pod_uid == pod.uid
