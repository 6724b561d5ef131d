"""Attribution with real container runtimes from Debian's packages: podman (containers and a pod)
and containerd + runc with a kubelet-style cgroup path (root, real BPF, a locally built image).
Counts are the containers' own tallies; names come from the runtime's API or the Kubernetes
API test server."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podscope.testing.kubeapi import KubeAPIServer, pod_object_for
from podscope.testing.pods import PodNetwork
from podscope.testing.runtimes import IMAGE, Containerd, Podman
from tests.conftest import AgentProc, Metrics, python_cmd
from tests.kernel.test_tcp import wait_for

CLIENT = ("ok=0; miss=0; for i in $(seq 1 {n}); do wget -q -O /dev/null http://{ip}:8080/ok"
          " && ok=$((ok+1)); done; for i in $(seq 1 {m}); do wget -q -O /dev/null "
          "http://{ip}:8080/missing || miss=$((miss+1)); done; echo $ok $miss")


@pytest.fixture
def podman() -> Iterator[Podman]:
    p = Podman()
    try:
        yield p
    finally:
        p.close()


def series(m: Metrics, name: str, **labels: str) -> list[dict[str, str]]:
    return m.series(name, **labels)


def agent_with_podman_api(podman: Podman, tmp_path: Path) -> AgentProc:
    """podman's Docker-compatible API on a socket, and an agent outside Kubernetes using it."""
    sock = tmp_path / "podman.sock"
    podman.service(sock)
    cfg = tmp_path / "podscope.toml"
    cfg.write_text(f'kubernetes = "off"\ndocker_socket = "{sock}"\n')
    return AgentProc(["--config", str(cfg)], tmp_path)


def test_podman_containers_and_a_podman_pod(pods: PodNetwork, podman: Podman,
                                            tmp_path: Path) -> None:
    web_ns, web_ip = pods.netns("pm-web")
    cli_ns, _ = pods.netns("pm-cli")
    agent = agent_with_podman_api(podman, tmp_path)
    try:
        podman.container("pm-web", "httpd", "-f", "-p", "8080", "-h", "/www",
                         network=f"ns:/run/netns/{web_ns}", detach=True)
        web = podman.container_id("pm-web")
        time.sleep(0.5)
        # a client container that lives for a moment (--rm): its tally is the truth
        out = podman.container("pm-client", "sh", "-c", CLIENT.format(n=9, m=4, ip=web_ip),
                               network=f"ns:/run/netns/{cli_ns}")
        ok, miss = map(int, out.split()[-2:])
        assert (ok, miss) == (9, 4), out
        # a container of a moment in pm-web's own namespace (--network container:, as Docker
        # Compose's network_mode: service:), talking to it over the shared loopback
        out = podman.container("pm-side", "sh", "-c", CLIENT.format(n=3, m=1, ip="127.0.0.1"),
                               network="container:pm-web")
        assert out.split()[-2:] == ["3", "1"], out
        # a pod: two containers that talk over the pod's own loopback
        podman.pod("pm-shop")
        podman.container("shop-api", "httpd", "-f", "-p", "8080", "-h", "/www", pod="pm-shop",
                         detach=True)
        api = podman.container_id("shop-api")
        time.sleep(0.5)
        out = podman.container("shop-worker", "sh", "-c",
                               CLIENT.format(n=5, m=2, ip="127.0.0.1"), pod="pm-shop",
                               detach=True)
        worker = out.strip()
        wait_for(lambda: podman.run("inspect", "-f", "{{.State.Status}}", worker)
                 .stdout.strip() == "exited", timeout=30)
        logs = podman.run("logs", worker).stdout.split()
        assert logs[-2:] == ["5", "2"], logs

        def served(cid: str) -> float:
            return agent.metrics().value("http_server_request_duration_seconds_count",
                                         container_id=cid)

        def named() -> bool:  # podman's pod names come from its API, refreshed every 5 s
            want = {api: "pm-shop", web: "pm-web"}
            return all(s.labels["pod_name"] == want.get(s.labels.get("container_id", ""),
                                                        "pm-shop")
                       for s in agent.metrics().samples
                       if s.labels.get("container_id") in want
                       or s.labels.get("container_name") == "shop-worker")

        wait_for(lambda: served(web) >= 17 and served(api) >= 7 and named(), timeout=20)
        m = agent.metrics()
    finally:
        agent.stop()
    # exact counts, by status, each on its own container
    for cid, want in ((web, {"200": 12, "404": 5}), (api, {"200": 5, "404": 2})):
        got = {code: int(m.value("http_server_request_duration_seconds_count", container_id=cid,
                                 http_response_status_code=code)) for code in want}
        assert got == want, (cid, got)
    clients = {s["container_name"]: s for s in series(
        m, "http_client_request_duration_seconds_count") if s.get("container_name")}
    assert set(clients) >= {"pm-client", "shop-worker", "pm-side"}, clients
    assert m.value("http_client_request_duration_seconds_count", container_name="pm-client") == 13
    assert m.value("http_client_request_duration_seconds_count", container_name="pm-side") == 4
    assert m.value("http_client_request_duration_seconds_count", container_name="shop-worker") == 7
    assert m.value("podscope_tcp_connections_opened_total", container_name="pm-client",
                   direction="outbound") == 13
    # names: every series of these containers carries the runtime's names, the pod's too
    # (pm-web and the container that joined its namespace are one unit, named after pm-web)
    names = {web: ("pm-web", "pm-web"), api: ("shop-api", "pm-shop")}
    for s in m.samples:
        cid = s.labels.get("container_id", "")
        if cid in names:
            assert (s.labels["container_name"], s.labels["pod_name"]) == names[cid], s.labels
        if s.labels.get("container_name") == "shop-worker":
            assert s.labels["pod_name"] == "pm-shop", s.labels
        if s.labels.get("container_name") in ("pm-side", "pm-client"):
            assert s.labels["pod_name"] == ("pm-web" if s.labels["container_name"] == "pm-side"
                                            else ""), s
        assert not (s.labels.get("cgroup", "").startswith("/libpod_parent/")
                    and re.fullmatch(r"/libpod_parent/[0-9a-f]{64}", s.labels["cgroup"])
                    and s.labels.get("container_id")), s  # the pod's directory is no container


def test_containerd_with_a_kubelet_style_cgroup(pods: PodNetwork, tmp_path: Path) -> None:
    pod = pods.pod("cd-web", qos="besteffort", driver="cgroupfs")
    client = pods.pod("cd-client")
    archive = tmp_path / "image.tar"
    # an OCI archive of the local image, made by podman, imported by ctr
    p = Podman()
    try:
        p.run("save", "--format", "oci-archive", "-o", str(archive), IMAGE)
    finally:
        p.close()
    cd = Containerd(tmp_path / "containerd", archive)
    try:
        cid = secrets.token_hex(32)
        pod.containers["web"] = cid  # the API lists it as the pod's container "web"
        cd.run(cid, f"/kubepods/besteffort/pod{pod.uid}/{cid}", pod.netns,
               "httpd", "-f", "-p", "8080", "-h", "/www")
        with KubeAPIServer() as api:
            api.add_pod(pod_object_for(pod, "shop", "test-node-cd"))
            api.add_pod(pod_object_for(client, "shop", "test-node-cd"))
            kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
            agent = AgentProc(["--node-name", "test-node-cd", "--kubeconfig", str(kubeconfig)],
                              tmp_path)
            try:
                time.sleep(0.5)
                plan = [["GET", "/ok", 11], ["GET", "/missing", 3]]
                truth = json.loads(client.run(python_cmd("http_client.py", pod.ip, 8080,
                                                         json.dumps(plan))).stdout)
                wait_for(lambda: agent.metrics().value(
                    "http_server_request_duration_seconds_count", container_id=cid) >= 14)
                m = agent.metrics()
            finally:
                agent.stop()
    finally:
        cd.close()
    assert truth["GET 200"] == 11 and truth["GET 404"] == 3
    for code, n in (("200", 11), ("404", 3)):
        assert m.value("http_server_request_duration_seconds_count", container_id=cid,
                       http_response_status_code=code) == n
    for s in m.samples:
        if s.labels.get("container_id") == cid:
            assert (s.labels["k8s_pod_uid"], s.labels["k8s_namespace_name"],
                    s.labels["k8s_pod_name"], s.labels["k8s_container_name"]) == \
                (pod.uid, "shop", "cd-web", "web"), s
            assert s.labels["cgroup"] == f"/kubepods/besteffort/pod{pod.uid}/{cid}"


def test_podman_churn_every_container_keeps_its_own_counts(pods: PodNetwork, podman: Podman,
                                                           tmp_path: Path) -> None:
    """Client containers made and removed one after another (`run --rm`, several a second, the
    shortest alive for well under a second), each in a network namespace made for it and
    deleted after it, so the next one gets the same inode: each container's counts are its own
    tally, under its own id and name."""
    web_ns, web_ip = pods.netns("pm-web")
    agent = agent_with_podman_api(podman, tmp_path)
    truth: dict[str, tuple[str, int]] = {}  # id -> (name, requests)
    inodes = []
    try:
        podman.container("pm-web", "httpd", "-f", "-p", "8080", "-h", "/www",
                         network=f"ns:/run/netns/{web_ns}", detach=True)
        time.sleep(0.5)
        t0 = time.monotonic()
        for i in range(12):
            ns, _ = pods.netns(f"churn{i}")  # on the bridge, deleted after its container
            try:
                inodes.append(Path(f"/run/netns/{ns}").stat().st_ino)
                n = i % 3  # 0, 1 or 2 requests: some containers barely live
                cidfile = tmp_path / f"c{i}.cid"
                out = podman.container(f"churn-{i}", "sh", "-c",
                                       CLIENT.format(n=n, m=0, ip=web_ip) if n else "true",
                                       network=f"ns:/run/netns/{ns}", cidfile=cidfile)
                if n:
                    assert out.split()[-2:] == [str(n), "0"], out
                truth[cidfile.read_text().strip()] = (f"churn-{i}", n)
            finally:
                pods.drop_netns(ns)
        rate = 12 / (time.monotonic() - t0)
        assert len(set(inodes)) < len(inodes), "no namespace inode was reused"
        want = sum(n for _, n in truth.values())
        def settled() -> bool:
            """All requests counted, and every series named (a name learned from the runtime's
            event stream may come a moment after the container is gone: the series is renamed)."""
            m = agent.metrics()
            counted = sum(m.value("http_client_request_duration_seconds_count", container_id=c)
                          for c in truth)
            return counted >= want and all(
                s.labels["container_name"] == truth[s.labels["container_id"]][0]
                for s in m.samples if s.labels.get("container_id") in truth)

        wait_for(settled, timeout=20)
        m = agent.metrics()
    finally:
        agent.stop()
    got = {cid: int(m.value("http_client_request_duration_seconds_count", container_id=cid))
           for cid in truth}
    others = [(s.labels, s.value) for s in m.samples
              if s.name == "http_client_request_duration_seconds_count"
              and s.labels["container_id"] not in truth]
    assert got == {cid: n for cid, (_, n) in truth.items()}, (f"{rate:.1f}/s", others)
    for s in m.samples:
        cid = s.labels.get("container_id", "")
        if cid in truth:
            assert s.labels["container_name"] == truth[cid][0], s
    # nothing of theirs went anywhere else: the server saw exactly their requests
    served = int(m.value("http_server_request_duration_seconds_count", container_name="pm-web"))
    assert served == want


def test_tls_client_inside_a_container_is_probed_through_its_own_root(
        pods: PodNetwork, tmp_path: Path) -> None:
    """A podman container whose image carries its own TLS client (OpenSSL linked in, a file
    that exists only inside the container): found in the container's maps, opened through
    /proc/PID/root, probed; its requests are its own container's, exact."""
    from podscope.testing.servers import make_certificate, start_nginx
    from tests.kernel.test_http import CLIENT_HIST, SERVER_HIST, by_method_status
    from tests.kernel.test_tls import build_static_client

    client_bin = build_static_client(tmp_path / "tls_client", fully_static=True)
    pm = Podman(extra={"/bin/tls_client": client_bin})
    try:
        server = pods.pod("server")
        start_nginx(server, "443 ssl", tls=make_certificate(tmp_path))
        cli_ns, _ = pods.netns("pm-tls")
        agent = agent_with_podman_api(pm, tmp_path)
        try:
            out = pm.container("pm-tls", "/bin/tls_client", server.ip, "443", "17", "1500",
                               network=f"ns:/run/netns/{cli_ns}", cidfile=tmp_path / "cid")
            truth = json.loads(out.splitlines()[-1])
            assert truth == {"GET 200": 17}
            cid = (tmp_path / "cid").read_text().strip()

            def counted() -> bool:
                m = agent.metrics()
                return sum(by_method_status(m, CLIENT_HIST, container_id=cid).values()) >= 17

            wait_for(counted, timeout=10)
            m = agent.metrics()
            assert by_method_status(m, CLIENT_HIST, container_id=cid,
                                    url_scheme="https") == truth
            assert by_method_status(m, SERVER_HIST, k8s_pod_uid=server.uid,
                                    url_scheme="https") == truth
            files = m.series("podscope_uprobe_file_processes", kind="openssl")
            assert any(f["path"] == "/bin/tls_client" for f in files), files
        finally:
            agent.stop()
    finally:
        pm.close()
