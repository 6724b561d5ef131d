"""Kubernetes identity on every per-pod series: real pods (netns + kubelet-named cgroups), a test
API server speaking list/watch to the agent's official client (root, real BPF)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from podscope.testing.kubeapi import KubeAPIServer, pod_object_for
from podscope.testing.pods import Pod, PodNetwork, rmdir_when_empty
from tests.conftest import AgentProc, Metrics, python_cmd

NODE = "test-node-1"
NAMES = ("k8s_namespace_name", "k8s_pod_name", "k8s_container_name", "k8s_workload_kind",
         "k8s_workload_name", "k8s_node_name")


def start_http_server(pod: Pod, container: str | None = None, port: int = 8080) -> None:
    p = pod.popen(python_cmd("http_server.py", port), container=container,
                  stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "listening"


def http_requests(pod: Pod, server: Pod, n: int, container: str | None = None,
                  path: str = "/status/200") -> None:
    out = pod.run(python_cmd("http_client.py", server.ip, 8080, json.dumps([["GET", path, n]])),
                  container=container)
    assert json.loads(out.stdout)["GET 200"] == n


def wait_metrics(agent: AgentProc, cond: Callable[[Metrics], bool], timeout: float = 15) -> Metrics:
    deadline = time.monotonic() + timeout
    while True:
        m = agent.metrics()
        if cond(m) or time.monotonic() > deadline:
            return m
        time.sleep(0.3)


def per_pod_samples(m: Metrics, uid: str) -> list[tuple[str, dict[str, str]]]:
    return [(s.name, s.labels) for s in m.samples if s.labels.get("k8s_pod_uid") == uid]


def test_every_per_pod_series_carries_kubernetes_names(pods: PodNetwork, tmp_path: Path) -> None:
    web = pods.pod("web", container="app")  # a Deployment's pod with two containers
    web.add_container("sidecar")
    db = pods.pod("db", qos="guaranteed", driver="cgroupfs")
    ds = pods.pod("ds", qos="besteffort")
    job = pods.pod("job", driver="cgroupfs")
    bare = pods.pod("bare")
    want = {
        web.uid: ("shop", "web-6b9f7c-x2x9z", ("ReplicaSet", "web-6b9f7c"), "Deployment", "web"),
        db.uid: ("shop", "db-0", ("StatefulSet", "db"), "StatefulSet", "db"),
        ds.uid: ("kube-system", "node-agent-4kq2p", ("DaemonSet", "node-agent"), "DaemonSet",
                 "node-agent"),
        job.uid: ("ops", "backup-28912345-zt7f2", ("Job", "backup-28912345"), "CronJob",
                  "backup"),
        bare.uid: ("default", "debug", None, "", ""),
    }
    api = KubeAPIServer().start()
    try:
        for pod in (web, db, ds, job, bare):
            ns, name, owner, _k, _n = want[pod.uid]
            obj = pod_object_for(pod, ns, NODE, owner=owner,
                                 labels={"pod-template-hash": "6b9f7c"} if pod is web else None)
            obj["metadata"]["name"] = name
            api.add_pod(obj)
        # a pod of another node with the same UID shape must not matter
        api.add_pod(pod_object_for(pods.pod("elsewhere"), "shop", "other-node"))
        start_http_server(web, container="app")
        start_http_server(db)
        agent = AgentProc(["--node-name", NODE, "--kubeconfig",
                           str(api.write_kubeconfig(tmp_path / "kubeconfig"))], tmp_path)
        try:
            m = wait_metrics(agent, lambda m: m.value("podscope_metadata_api_up") == 1)
            assert m.value("podscope_metadata_pods", state="live") == 5
            http_requests(web, db, 7, container="sidecar")  # the sidecar calls db
            http_requests(job, web, 5)
            http_requests(bare, web, 3)
            http_requests(ds, db, 2)
            m = wait_metrics(agent, lambda m: m.value(
                "http_server_request_duration_seconds_count", k8s_pod_uid=web.uid) == 8)
        finally:
            agent.stop()
    finally:
        api.stop()
    checked = 0
    for uid, (ns, name, _owner, kind, wname) in want.items():
        samples = per_pod_samples(m, uid)
        assert samples, f"no series for pod {name}"
        for metric, labels in samples:
            got = tuple(labels[k] for k in NAMES)
            assert got[:2] == (ns, name) and got[3:] == (kind, wname, NODE), (metric, labels)
            checked += 1
    assert checked > 50
    # the two containers of one pod: told apart where the signal is per cgroup
    def web_value(name: str, **kw: str) -> float:
        return m.value(name, k8s_pod_uid=web.uid, **kw)

    assert web_value("http_server_request_duration_seconds_count", k8s_container_name="app") == 8
    assert web_value("http_client_request_duration_seconds_count",
                     k8s_container_name="sidecar") == 7
    assert web_value("podscope_tcp_connections_opened_total", direction="outbound",
                     k8s_container_name="sidecar") == 1
    assert web_value("podscope_tcp_connections_opened_total", direction="inbound",
                     k8s_container_name="app") == 2
    assert web_value("podscope_tcp_connections_opened_total", k8s_container_name="sidecar",
                     direction="inbound") == 0
    # and one series for the pod where the signal is per network namespace
    ns_series = [lab for name, lab in per_pod_samples(m, web.uid)
                 if name == "podscope_tcp_listen_overflows_total"]
    assert len(ns_series) == 1 and ns_series[0]["k8s_container_name"] == ""
    assert ns_series[0]["k8s_pod_name"] == "web-6b9f7c-x2x9z"


def test_deleted_pod_leaves_after_grace_and_its_ids_never_name_a_new_pod(
        pods: PodNetwork, tmp_path: Path) -> None:
    client = pods.pod("client")
    old = pods.pod("old")
    api = KubeAPIServer().start()
    cfg = tmp_path / "podscope.toml"
    cfg.write_text("pod_grace = 6.0\n")
    try:
        api.add_pod(pod_object_for(client, "shop", NODE, owner=("StatefulSet", "client")))
        old_obj = pod_object_for(old, "shop", NODE, owner=("StatefulSet", "old"))
        old_obj["metadata"]["name"] = "old-0"
        api.add_pod(old_obj)
        start_http_server(old)
        # packets the old pod drops before any socket sees them: keyed by its netns alone
        old.run(["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "9999", "-j", "DROP"])
        agent = AgentProc(["--node-name", NODE, "--config", str(cfg), "--kubeconfig",
                           str(api.write_kubeconfig(tmp_path / "kubeconfig"))], tmp_path)
        try:
            wait_metrics(agent, lambda m: m.value("podscope_metadata_api_up") == 1)
            http_requests(client, old, 9)
            client.run([sys.executable, "-c", f"import socket; socket.create_connection(('{old.ip}',"
                        " 9999), timeout=1.5)"], check=False)
            m = wait_metrics(agent, lambda m: m.value(
                "http_server_request_duration_seconds_count", k8s_pod_uid=old.uid) == 9)
            assert m.value("podscope_tcp_connections_opened_total", k8s_pod_uid=old.uid,
                           k8s_pod_name="old-0", direction="inbound") == 1
            assert m.value("podscope_packet_drops_total", k8s_pod_uid=old.uid,
                           reason="NETFILTER_DROP") >= 2
            old_netns, old_uid = old.netns_inode, old.uid
            # the kubelet tears the pod down, the API says it is gone, and a new pod comes up
            # at once: the kernel hands it the freed netns inode
            pods.remove(old)
            api.delete_pod(old_uid)
            t_deleted = time.monotonic()
            time.sleep(1.0)  # the kernel frees a namespace in the background
            new = pods.pod("new")
            api.add_pod(pod_object_for(new, "shop", NODE, owner=("StatefulSet", "new")))
            start_http_server(new)
            http_requests(client, new, 4)
            m = wait_metrics(agent, lambda m: m.value(
                "http_server_request_duration_seconds_count", k8s_pod_uid=new.uid) == 4)
            # within the grace period the old pod's last numbers are still there, named
            assert time.monotonic() - t_deleted < 5.0
            assert m.value("podscope_metadata_pods", state="deleted") == 1
            assert m.value("http_server_request_duration_seconds_count", k8s_pod_uid=old_uid,
                           k8s_pod_name="old-0") == 9
            reused = new.netns_inode == old_netns
            # and never as the new pod's
            for _ in range(3):
                for _name, labels in per_pod_samples(m, new.uid):
                    assert labels["k8s_pod_name"] == "new" and labels["k8s_workload_name"] == "new"
                assert m.value("podscope_packet_drops_total", k8s_pod_uid=new.uid,
                               reason="NETFILTER_DROP") == 0
                assert m.value("http_server_request_duration_seconds_count",
                               k8s_pod_uid=new.uid) == 4
                assert m.value("podscope_tcp_connections_opened_total", k8s_pod_uid=new.uid,
                               direction="inbound") == 1
                m = agent.metrics()
            # after the grace period the old pod's series are gone
            m = wait_metrics(agent, lambda m: not per_pod_samples(m, old_uid), timeout=10)
            assert not per_pod_samples(m, old_uid)
            assert time.monotonic() - t_deleted >= 6.0
            assert not [s for s in m.samples if s.labels.get("k8s_pod_name") == "old-0"]
            assert m.value("podscope_metadata_pods", state="deleted") == 0
            assert m.value("http_server_request_duration_seconds_count", k8s_pod_uid=new.uid) == 4
            print(f"netns inode reused by the new pod: {reused}")
        finally:
            agent.stop()
    finally:
        api.stop()


def test_api_outage_of_30s_with_an_expired_version(pods: PodNetwork, tmp_path: Path) -> None:
    """The API server stops for 30 s during traffic; meanwhile a pod starts, and the history
    is compacted, so the agent's resourceVersion has expired when the API is back. Counting goes
    on throughout; the new pod is labelled by UID until its names come back."""
    client = pods.pod("client")
    server = pods.pod("server")
    api = KubeAPIServer().start()
    try:
        for pod in (client, server):
            api.add_pod(pod_object_for(pod, "shop", NODE, owner=("StatefulSet", pod.name)))
        start_http_server(server)
        agent = AgentProc(["--node-name", NODE, "--kubeconfig",
                           str(api.write_kubeconfig(tmp_path / "kubeconfig"))], tmp_path)
        try:
            wait_metrics(agent, lambda m: m.value("podscope_metadata_api_up") == 1)
            http_requests(client, server, 5)
            port = api.port
            api.stop()
            t_stop = time.monotonic()
            m = wait_metrics(agent, lambda m: m.value("podscope_metadata_api_up") == 0)
            assert m.value("podscope_metadata_api_up") == 0
            # during the outage: traffic goes on, and a pod the agent has not heard of starts
            late = pods.pod("late")
            start_http_server(late)
            api.add_pod(pod_object_for(late, "ops", NODE, owner=("StatefulSet", "late")))
            api.compact()  # the version the agent holds is gone from the history
            http_requests(client, server, 6)
            http_requests(client, late, 3)
            m = wait_metrics(agent, lambda m: m.value(
                "http_server_request_duration_seconds_count", k8s_pod_uid=late.uid) == 3)
            assert m.value("http_server_request_duration_seconds_count", k8s_pod_uid=server.uid,
                           k8s_pod_name="server") == 11  # names kept from before
            late_series = per_pod_samples(m, late.uid)
            assert late_series and all(lab["k8s_pod_name"] == "" for _n, lab in late_series)
            assert agent.proc.poll() is None
            time.sleep(max(0.0, 30 - (time.monotonic() - t_stop)))
            api.port = port
            api.start()
            m = wait_metrics(agent, lambda m: m.value("podscope_metadata_api_up") == 1 and m.value(
                "http_server_request_duration_seconds_count", k8s_pod_uid=late.uid,
                k8s_pod_name="late") == 3, timeout=40)
            # one series per pod and route again: the UID-only ones became the named ones
            assert m.value("http_server_request_duration_seconds_count", k8s_pod_uid=late.uid,
                           k8s_pod_name="late", k8s_namespace_name="ops") == 3
            assert not [lab for _n, lab in per_pod_samples(m, late.uid) if not lab["k8s_pod_name"]]
            assert m.value("http_server_request_duration_seconds_count", k8s_pod_uid=server.uid,
                           k8s_pod_name="server") == 11
            assert m.value("http_client_request_duration_seconds_count", k8s_pod_uid=client.uid,
                           k8s_pod_name="client") == 14
            assert m.value("podscope_metadata_api_lists_total") >= 2
            assert m.value("podscope_metadata_api_errors_total") >= 1
        finally:
            agent.stop()
    finally:
        api.stop()


def test_without_a_cluster_series_carry_container_and_process(tmp_path: Path) -> None:
    """A Docker-style container on a plain host (its cgroup named as the Docker engine names
    it under systemd, the host's network): series carry the container id, the engine's name for
    it, the process and the cgroup; no Kubernetes names."""
    import os
    import secrets
    import urllib.request

    from podscope.metadata.cgroups import cgroup2_mount
    from podscope.testing.dockerapi import DockerAPIServer
    from tests.conftest import free_port

    cg2 = cgroup2_mount()
    assert cg2
    cid = secrets.token_hex(32)
    made = []
    for part in ("system.slice", f"system.slice/docker-{cid}.scope"):
        d = os.path.join(cg2, part)
        if not os.path.isdir(d):
            os.mkdir(d)
            made.append(d)
    cgdir = os.path.join(cg2, f"system.slice/docker-{cid}.scope")

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
        with open(f"/proc/{server.pid}/comm") as f:
            comm = f.read().strip()
        with DockerAPIServer(str(tmp_path / "docker.sock")) as engine:
            engine.containers[cid] = "shop-frontend"
            agent = AgentProc(["--config", str(cfg), "--node-name", NODE], tmp_path)
            try:
                for _ in range(6):
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status/200") as r:
                        assert r.status == 200
                m = wait_metrics(agent, lambda m: m.value(
                    "http_server_request_duration_seconds_count", container_id=cid) == 6)
            finally:
                agent.stop()
        series = [s for s in m.samples if s.labels.get("container_id") == cid]
        assert {s.name for s in series} >= {"http_server_request_duration_seconds_count",
                                             "podscope_tcp_connections_opened_total"}
        for s in series:
            assert s.labels["container_name"] == "shop-frontend", s
            assert s.labels["process_name"] == comm, s
            assert s.labels["cgroup"] == f"/system.slice/docker-{cid}.scope"
            assert s.labels["k8s_pod_uid"] == s.labels["k8s_pod_name"] == ""
            assert s.labels["k8s_node_name"] == NODE
        assert m.value("http_server_request_duration_seconds_count", container_id=cid) == 6
        assert "podscope_metadata_api_up" not in {s.name for s in m.samples}
    finally:
        server.terminate()
        server.wait(10)
        for d in reversed(made):
            rmdir_when_empty(d)


def test_pod_named_by_its_hostname_where_cgroups_say_nothing(tmp_path: Path) -> None:
    """A pod's processes in cgroups that name no pod (as on a node whose pods live in cgroup v1
    hierarchies podscope cannot read): the UTS nodename kubelet gives the pod's containers,
    matched against the API's pods of this node, attributes the pod's network namespace."""
    import os
    import secrets

    from podscope.metadata.cgroups import cgroup2_mount
    from podscope.testing.kubeapi import pod_object

    cg2 = cgroup2_mount()
    assert cg2
    tag = secrets.token_hex(3)
    ns, cgdir = f"psuts{tag}", os.path.join(cg2, f"podscope-test-{tag}")
    os.mkdir(cgdir)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)

    def enter() -> None:
        with open(os.path.join(cgdir, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    script = ("import socket, sys, time\n"
              "ls = socket.create_server(('127.0.0.1', 8080))\n"
              "c = socket.create_connection(('127.0.0.1', 8080)); s, _ = ls.accept()\n"
              "c.sendall(b'x'); s.recv(1); print('ready', flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "unshare", "--uts", "sh", "-c",
                             f'hostname api-7f9c-abcde && exec "{sys.executable}" -c "$0"', script],
                            preexec_fn=enter, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    api = KubeAPIServer().start()
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        uid = api.add_pod(pod_object("api-7f9c-abcde", "shop", NODE, owner=(
            "ReplicaSet", "api-7f9c"), labels={"pod-template-hash": "7f9c"}))["metadata"]["uid"]
        api.add_pod(pod_object("other", "shop", NODE))
        agent = AgentProc(["--node-name", NODE, "--kubeconfig",
                           str(api.write_kubeconfig(tmp_path / "kubeconfig"))], tmp_path)
        try:
            m = wait_metrics(agent, lambda m: m.value(
                "podscope_tcp_listener_drops_total", k8s_pod_uid=uid) == 0 and any(
                s.labels.get("k8s_pod_uid") == uid for s in m.samples))
        finally:
            agent.stop()
        series = per_pod_samples(m, uid)
        assert series, "the namespace was not attributed"
        for _name, labels in series:
            assert (labels["k8s_pod_name"], labels["k8s_workload_kind"],
                    labels["k8s_workload_name"]) == ("api-7f9c-abcde", "Deployment", "api")
        assert m.value("podscope_tcp_accept_queue_limit", k8s_pod_uid=uid, port="8080") > 0
    finally:
        api.stop()
        if proc.stdin:
            proc.stdin.close()
        proc.kill()
        proc.wait(10)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        rmdir_when_empty(cgdir)


def state_entries(m: Metrics) -> dict[str, float]:
    return {s.labels["table"]: s.value for s in m.samples if s.name == "podscope_state_entries"}


def series_count(m: Metrics) -> int:
    """Series (a histogram's buckets fill in over time: its series are its _count)."""
    return sum(1 for s in m.samples if not s.name.endswith(("_bucket", "_sum")))


def pod_series(m: Metrics) -> set[str]:
    """The names and labels of the series of a pod or container."""
    return {f"{s.name}{sorted(s.labels.items())}" for s in m.samples
            if not s.name.endswith(("_bucket", "_sum"))
            and (s.labels.get("k8s_pod_uid") or s.labels.get("container_id"))}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_pod_churn_with_the_api_and_through_an_outage_leaves_nothing_behind(
        pods: PodNetwork, tmp_path: Path) -> None:
    """Pods come and go in three rounds: with the API watching, during an API outage (the agent
    never hears of those pods), and after the API is back. Each pod's requests count on its own
    UID while it lives; pod_grace after its cgroup and namespace are gone its series are gone,
    API or not; the agent's own tables and its series come back to where they were."""
    srv = "http_server_request_duration_seconds_count"
    client = pods.pod("client")
    api = KubeAPIServer().start()
    cfg = tmp_path / "podscope.toml"
    cfg.write_text('pod_grace = "4s"\nhttp_peer_series_ttl = "3s"\n')
    churned: list[str] = []
    addresses: set[str] = set()
    names = {"churn"}
    try:
        api.add_pod(pod_object_for(client, "shop", NODE, owner=("StatefulSet", "client")))
        agent = AgentProc(["--node-name", NODE, "--config", str(cfg), "--kubeconfig",
                           str(api.write_kubeconfig(tmp_path / "kubeconfig"))], tmp_path)

        def churn(tag: str, n: int) -> None:
            for i in range(n):
                p = pods.pod(f"{tag}{i}")
                api.add_pod(pod_object_for(p, "churn", NODE, owner=("ReplicaSet", f"{tag}-7d9f")))
                start_http_server(p)
                want = 1 + i % 3
                http_requests(client, p, want)
                m = wait_metrics(agent, lambda m, p=p, want=want: m.value(  # type: ignore[misc]
                    srv, k8s_pod_uid=p.uid) == want)
                assert m.value(srv, k8s_pod_uid=p.uid) == want, p.name
                assert m.value("http_client_request_duration_seconds_count",
                               k8s_pod_uid=client.uid, server_address=p.ip) == want, p.name
                churned.append(p.uid)
                addresses.add(p.ip)
                names.update((p.name, f"{tag}-7d9f"))
                pods.remove(p)
                api.delete_pod(p.uid)

        def gone(m: Metrics) -> bool:
            """No series of a churned pod, nor of the client's requests to one."""
            return not any(per_pod_samples(m, u) for u in churned) and not any(
                s.labels.get("server_address") in addresses for s in m.samples)

        def settled() -> Metrics:
            m = wait_metrics(agent, gone, timeout=40)
            assert gone(m)
            return m

        try:
            wait_metrics(agent, lambda m: m.value("podscope_metadata_api_up") == 1)
            churn("up", 5)
            m1 = settled()
            state1, rss1 = state_entries(m1), rss_kib(agent.proc.pid)
            port = api.port
            api.stop()
            m = wait_metrics(agent, lambda m: m.value("podscope_metadata_api_up") == 0)
            assert m.value("podscope_metadata_api_up") == 0
            churn("out", 5)  # pods the agent only knows by UID
            api.port = port
            api.start()
            wait_metrics(agent, lambda m: m.value("podscope_metadata_api_up") == 1, timeout=40)
            churn("back", 5)
            m3 = settled()
            state3, rss3 = state_entries(m3), rss_kib(agent.proc.pid)
            uids = {s.labels.get("k8s_pod_uid") for s in m3.samples} - {None, ""}
            assert uids == {client.uid}
            assert m3.value("podscope_metadata_pods", state="deleted") == 0
            # the client's series as before the churn, but for kinds of its own events that
            # happened for the first time in between (a disk read, a drop reason, a stall):
            # none names a churned peer; the node's own gained a few kinds (the API outage's
            # refused connects, the relist's route)
            new = pod_series(m3) - pod_series(m1)
            assert not [s for s in new if any(repr(n) in s for n in names)], (new, names)
            assert len(new) <= 8, new
            assert series_count(m3) <= series_count(m1) + 40, (series_count(m1), series_count(m3))
            for table in ("metadata_pods", "metadata_identities_seen",
                          "metadata_identities_dying", "metadata_netns_owners", "http_peer_series",
                          "http_label_cache", "http_streamed_connections",
                          "metadata_cgroup_refs"):
                assert state3[table] <= state1[table], (table, state1, state3)
            # the node's own requests gained a route or two (the relist after the outage)
            assert state3["http_aggregates"] <= state1["http_aggregates"] + 2, (state1, state3)
            print(f"series {series_count(m1)} -> {series_count(m3)}, RSS {rss1} -> {rss3} KiB, "
                  f"state {state3}")
            assert rss3 < rss1 * 1.25
        finally:
            agent.stop()
    finally:
        api.stop()
