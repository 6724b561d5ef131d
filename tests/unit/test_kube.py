"""Pods from the Kubernetes API: the test API server speaks list/watch to the official client,
and KubeWatcher follows it through changes, expiry (410) and outages."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from podscope.metadata.cgroups import CgroupRef
from podscope.metadata.kube import KubeWatcher, PodMeta, pod_meta, workload
from podscope.metadata.store import MetadataStore
from podscope.testing.kubeapi import KubeAPIServer, pod_object

CID = "a" * 64


@pytest.mark.parametrize("owner,labels,expected", [
    (("ReplicaSet", "web-7d4b9c8f5"), {"pod-template-hash": "7d4b9c8f5"}, ("Deployment", "web")),
    (("ReplicaSet", "bare-rs"), {}, ("ReplicaSet", "bare-rs")),
    (("ReplicaSet", "web-7d4b9c8f5"), {"pod-template-hash": "other"}, ("ReplicaSet",
                                                                       "web-7d4b9c8f5")),
    (("StatefulSet", "db"), {}, ("StatefulSet", "db")),
    (("DaemonSet", "podscope"), {}, ("DaemonSet", "podscope")),
    (("Job", "backup-28912345"), {}, ("CronJob", "backup")),
    (("Job", "migrate"), {}, ("Job", "migrate")),
    (None, {}, ("", "")),
])
def test_workload_from_owner(owner: tuple[str, str] | None, labels: dict[str, str],
                             expected: tuple[str, str]) -> None:
    obj = pod_object("p", "ns", "n1", owner=owner, labels=labels)
    assert workload(obj["metadata"]) == expected


def test_pod_meta_containers_of_every_runtime_and_restarts() -> None:
    obj = pod_object("web-1", "shop", "node-1", uid="u1",
                     containers=[("app", CID), ("sidecar", "b" * 64)])
    obj["status"]["containerStatuses"][1]["containerID"] = "cri-o://" + "b" * 64
    obj["status"]["containerStatuses"][0]["lastState"] = {
        "terminated": {"containerID": "docker://" + "c" * 64, "exitCode": 1}}
    obj["status"]["initContainerStatuses"] = [{"name": "init", "containerID":
                                               "containerd://" + "d" * 64}]
    m = pod_meta(obj)
    assert (m.uid, m.namespace, m.name, m.node) == ("u1", "shop", "web-1", "node-1")
    assert dict(m.containers) == {CID: "app", "b" * 64: "sidecar", "c" * 64: "app",
                                  "d" * 64: "init"}
    # a pod not started yet has no container ids: still a pod
    bare = pod_meta({"metadata": {"uid": "u2", "name": "x", "namespace": "y"}})
    assert bare.containers == {} and bare.workload_kind == ""


def _client(api: KubeAPIServer, tmp: Path) -> Any:
    from kubernetes import client, config

    c = client.Configuration()
    config.load_kube_config(config_file=str(api.write_kubeconfig(tmp / "kubeconfig")),
                            client_configuration=c)
    return client.CoreV1Api(client.ApiClient(c))


def test_api_server_list_watch_and_gone(tmp_path: Path) -> None:
    """The official client against the test server: field selectors, a watch stream, and a
    410 for a compacted resourceVersion."""
    from kubernetes import watch
    from kubernetes.client.rest import ApiException

    with KubeAPIServer() as api:
        v1 = _client(api, tmp_path)
        api.add_pod(pod_object("a", "ns1", "node-1", uid="ua", containers=[("c", CID)]))
        api.add_pod(pod_object("b", "ns1", "node-2", uid="ub"))
        pods = v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-1")
        assert [p.metadata.name for p in pods.items] == ["a"]
        assert pods.items[0].status.container_statuses[0].container_id == "containerd://" + CID
        rv = pods.metadata.resource_version
        assert v1.read_namespaced_pod("a", "ns1").metadata.uid == "ua"
        got: list[tuple[str, str]] = []

        def changes() -> None:
            api.add_pod(pod_object("c", "ns2", "node-1", uid="uc"))
            api.update_pod("ua", lambda p: p["metadata"]["labels"].update({"x": "1"}))
            api.add_pod(pod_object("d", "ns2", "node-2", uid="ud"))  # another node
            api.delete_pod("uc")

        threading.Timer(0.2, changes).start()
        w = watch.Watch()
        for ev in w.stream(v1.list_pod_for_all_namespaces, field_selector="spec.nodeName=node-1",
                           resource_version=rv, timeout_seconds=3):
            got.append((ev["type"], ev["object"].metadata.name))
            if len(got) == 3:
                w.stop()
        assert got == [("ADDED", "c"), ("MODIFIED", "a"), ("DELETED", "c")]
        api.compact()
        with pytest.raises(ApiException) as e:
            for _ in watch.Watch().stream(v1.list_pod_for_all_namespaces, resource_version=rv,
                                          timeout_seconds=2):
                pass
        assert e.value.status == 410


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_watcher_follows_changes_expiry_and_an_outage(tmp_path: Path) -> None:
    api = KubeAPIServer().start()
    store = MetadataStore(None, node="node-1", grace=0.5)
    w = KubeWatcher("node-1", store.set_pods, store.pod_event,
                    kubeconfig=str(api.write_kubeconfig(tmp_path / "kubeconfig")),
                    watch_timeout=2, max_backoff=0.5)
    try:
        api.add_pod(pod_object("web-1", "shop", "node-1", uid="u1", containers=[("app", CID)],
                               owner=("ReplicaSet", "web-5f6d"), labels={"pod-template-hash":
                                                                         "5f6d"}))
        api.add_pod(pod_object("other", "shop", "node-2", uid="u9"))
        w.start()
        wait_for(lambda: store.pod("u1") is not None and w.up)
        assert store.pod("u9") is None  # another node's pod
        lab = store._pod_labels("u1", CID, "/kubepods/x")
        assert (lab.k8s_namespace_name, lab.k8s_pod_name, lab.k8s_container_name,
                lab.k8s_workload_kind, lab.k8s_workload_name, lab.k8s_node_name) == (
            "shop", "web-1", "app", "Deployment", "web", "node-1")
        # changes by watch, across watch timeouts (resumed from the last resourceVersion)
        time.sleep(2.5)
        api.add_pod(pod_object("db-0", "shop", "node-1", uid="u2", owner=("StatefulSet", "db")))
        wait_for(lambda: store.pod("u2") is not None)
        assert w.lists == 1
        # a change the watch filters out, then compaction: the watcher's version is too old
        # when its watch reconnects (410 Gone), so it lists again
        api.add_pod(pod_object("elsewhere", "shop", "node-2", uid="u8"))
        api.compact()
        wait_for(lambda: w.lists == 2)
        assert w.up and w.errors == 0
        assert any("watch=true" in r and "resourceVersion" in r for r in api.requests)
        api.delete_pod("u2")
        wait_for(lambda: (p := store.pod("u2")) is not None and p.deleted_at is not None)
        assert store.retire() == set()  # within the grace period: still there
        time.sleep(0.6)
        assert store.retire() == {"u2"} and store.retired("u2") and store.pod("u2") is None
        # an outage: the API goes away, its history is compacted, a pod comes and one goes
        port = api.port
        api.stop()
        wait_for(lambda: not w.up)
        api.compact()
        api.add_pod(pod_object("late", "ops", "node-1", uid="u3"))
        api.delete_pod("u1")
        assert store.pod("u1") is not None and store.pod("u3") is None  # still the old view
        api.port = port
        api.start()
        wait_for(lambda: w.up and store.pod("u3") is not None)
        assert w.lists >= 2 and w.errors >= 1
        p1 = store.pod("u1")
        assert p1 is not None and p1.deleted_at is not None  # missing from the new list
    finally:
        w.stop()
        api.stop()


def test_labels_before_and_after_the_api_knows_the_pod() -> None:
    store = MetadataStore(None, node="n1")
    assert store._pod_labels("u1", CID, "/p").k8s_pod_name == ""
    store.pod_event("ADDED", PodMeta("u1", "ns", "name", "n1", containers={CID: "app"}))
    lab = store._pod_labels("u1", CID, "/p")
    assert (lab.k8s_pod_name, lab.k8s_container_name) == ("name", "app")
    bare = lab._replace(k8s_pod_name="", k8s_namespace_name="", k8s_container_name="")
    assert store.renamed(bare) == lab


def test_docker_names_from_the_engine_socket(tmp_path: Path) -> None:
    from podscope.metadata.docker import DockerNames
    from podscope.testing.dockerapi import DockerAPIServer

    assert DockerNames(str(tmp_path / "missing.sock")).name(CID) == ""  # no engine: no names
    with DockerAPIServer(str(tmp_path / "docker.sock")) as engine:
        engine.containers[CID] = "web-frontend"
        names = DockerNames(str(tmp_path / "docker.sock"), min_interval=0.2)
        assert names.name(CID) == "web-frontend"
        assert names.name("b" * 64) == ""  # unknown: asked again, at most every 0.2 s
        asked = engine.requests
        assert names.name("b" * 64) == "" and engine.requests == asked
        engine.containers["b" * 64] = "late"
        time.sleep(0.25)
        assert names.name("b" * 64) == "late"


def test_containers_sharing_a_network_namespace_are_one_unit(tmp_path: Path) -> None:
    """`--network container:<x>` outside any runtime pod: both carry x's name as pod_name."""
    from podscope.metadata.docker import DockerNames
    from podscope.testing.dockerapi import DockerAPIServer

    owner, joiner, alone = "a" * 64, "b" * 64, "c" * 64
    with DockerAPIServer(str(tmp_path / "docker.sock")) as engine:
        engine.containers.update({owner: "db", joiner: "db-exporter", alone: "web"})
        engine.network_modes[joiner] = f"container:{owner}"
        names = DockerNames(str(tmp_path / "docker.sock"), min_interval=0.0)
        assert names.network_pod(joiner) == "db" and names.network_pod(owner) == "db"
        assert names.network_owner(joiner) == owner and names.network_owner(owner) == owner
        assert names.network_pod(alone) == "" and names.network_owner(alone) == ""
        # the store labels each container as itself, grouped under the owner's name
        store = MetadataStore(None, node="n")
        store.docker = names
        lab = store._container_labels(CgroupRef(path=f"/system.slice/docker-{joiner}.scope",
                                                container_id=joiner))
        assert (lab.container_name, lab.pod_name) == ("db-exporter", "db")
        bare = lab._replace(pod_name="")
        assert store.renamed(bare) == lab


def test_malformed_items_are_skipped_and_counted(tmp_path: Path) -> None:
    api = KubeAPIServer().start()
    store = MetadataStore(None, node="node-1")
    w = KubeWatcher("node-1", store.set_pods, store.pod_event,
                    kubeconfig=str(api.write_kubeconfig(tmp_path / "kubeconfig")), watch_timeout=2)
    try:
        api.add_pod(pod_object("web-1", "shop", "node-1", uid="u1"))
        api.extra_items = [None, {"metadata": None}, "text", {"metadata": {"name": "no-uid"}}]
        w.start()
        wait_for(lambda: store.pod("u1") is not None)
        assert w.malformed == 4 and w.up and store.pod("u1") is not None
    finally:
        w.stop()
        api.stop()


def test_a_watch_that_fails_after_each_list_backs_off(tmp_path: Path) -> None:
    """Lists succeed, every watch fails at once: the watcher waits 0.8 s, 1.6 s, 3.2 s, ...
    between lists (client-go's reflector), never a list per second forever."""
    api = KubeAPIServer().start()
    store = MetadataStore(None, node="node-1")
    api.fail_watches = True
    w = KubeWatcher("node-1", store.set_pods, store.pod_event,
                    kubeconfig=str(api.write_kubeconfig(tmp_path / "kubeconfig")),
                    watch_timeout=2)
    try:
        w.start()
        time.sleep(6.5)
        lists = w.lists
        # at 0, ~1, ~2.8, ~6.2 s: four at most (a reset backoff would list ~9 times)
        assert 2 <= lists <= 4, lists
        assert w.errors >= lists - 1
    finally:
        w.stop()
        api.stop()


def test_a_cgroup_id_learned_late_names_its_series(tmp_path: Path) -> None:
    """A container made and gone before the agent read the kernel's word of its directory: its
    series made meanwhile say only `id:N`, and take the container's labels once it is known."""
    from podscope.metadata.cgroups import CgroupResolver

    store = MetadataStore(None, node="n")
    store.resolver = CgroupResolver(str(tmp_path))
    early = store.labels(4242, 0)
    assert early.cgroup == "id:4242" and store.renamed(early) == early
    store.resolver.learn(4242, f"/libpod_parent/libpod-{CID}")
    store.resolver.removed(4242, f"/libpod_parent/libpod-{CID}")
    late = store.renamed(early)
    assert late.container_id == CID and late.cgroup == f"/libpod_parent/libpod-{CID}"


def test_a_removed_cgroup_leaves_the_ref_cache(tmp_path: Path) -> None:
    """Refs are cached only for cgroups that exist: one removed later leaves the cache at the
    next sweep, and a late event of a removed cgroup is named without coming back into it."""
    from podscope.metadata.cgroups import CgroupResolver

    store = MetadataStore(None, node="n")
    store.resolver = CgroupResolver(str(tmp_path))
    path = f"/libpod_parent/libpod-{CID}"
    store.resolver.learn(4242, path)
    store.resolver.learn(4343, "/system.slice/cron.service")
    assert store.cgroup_ref(4242) is not None and store.cgroup_ref(4343) is not None
    assert store.state_sizes()["metadata_cgroup_refs"] == 2
    store.resolver.removed(4242, path)
    store.resolver.removed(4343, "/system.slice/cron.service")
    store.retire()
    assert store.state_sizes()["metadata_cgroup_refs"] == 0
    ref = store.cgroup_ref(4242)  # the removed directory's path is still known for its grace
    assert ref is not None and ref.container_id == CID
    assert store.state_sizes()["metadata_cgroup_refs"] == 0
