"""cgroup path -> pod UID / container id, for real path shapes of every runtime and driver."""

import pytest

from podscope.metadata.cgroups import cgroup2_mount, parse_cgroup_path
from podscope.testing.pods import cgroup_path

UID = "1c0e0a1b-2d3e-4f50-8a6b-7c8d9e0f1a2b"
U_ = UID.replace("-", "_")
CID = "3f4e" * 16

CASES = [
    # systemd driver, containerd
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice/"
     f"cri-containerd-{CID}.scope", UID, CID, "containerd", "burstable"),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{U_}.slice/"
     f"cri-containerd-{CID}.scope", UID, CID, "containerd", "besteffort"),
    (f"/kubepods.slice/kubepods-pod{U_}.slice/cri-containerd-{CID}.scope", UID, CID,
     "containerd", "guaranteed"),
    # systemd driver, CRI-O and Docker
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice/"
     f"crio-{CID}.scope", UID, CID, "cri-o", "burstable"),
    (f"/kubepods.slice/kubepods-pod{U_}.slice/docker-{CID}.scope", UID, CID, "docker",
     "guaranteed"),
    # cgroupfs driver (containerd, Docker: the bare id; CRI-O: crio-<id>)
    (f"/kubepods/burstable/pod{UID}/{CID}", UID, CID, "", "burstable"),
    (f"/kubepods/burstable/pod{UID}/crio-{CID}", UID, CID, "cri-o", "burstable"),
    (f"/kubepods/besteffort/pod{UID}/{CID}", UID, CID, "", "besteffort"),
    (f"/kubepods/pod{UID}/{CID}", UID, CID, "", "guaranteed"),
    # cgroup v1 hierarchy paths look the same below the controller mount
    (f"/kubepods/burstable/pod{UID}", UID, "", "", "burstable"),
    # kind / nested: the pod path under a node container
    (f"/docker/{'ab' * 32}/kubepods/besteffort/pod{UID}/{CID}", UID, CID, "", "besteffort"),
    # outside Kubernetes
    (f"/system.slice/docker-{CID}.scope", "", CID, "docker", ""),
    (f"/machine.slice/libpod-{CID}.scope", "", CID, "podman", ""),
    ("/system.slice/nginx.service", "", "", "", ""),
    ("/user.slice/user-0.slice/session-1.scope", "", "", "", ""),
    ("/", "", "", "", ""),
]


@pytest.mark.parametrize(("path", "uid", "cid", "runtime", "qos"), CASES)
def test_parse(path: str, uid: str, cid: str, runtime: str, qos: str) -> None:
    ref = parse_cgroup_path(path)
    assert (ref.pod_uid, ref.container_id, ref.runtime, ref.qos) == (uid, cid, runtime, qos)


@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
@pytest.mark.parametrize("qos", ["guaranteed", "burstable", "besteffort"])
def test_test_pods_paths_parse_back(driver: str, qos: str) -> None:
    ref = parse_cgroup_path("/" + cgroup_path(UID, CID, qos, driver))
    assert (ref.pod_uid, ref.container_id, ref.qos) == (UID, CID, qos)


def test_cgroup2_mount_from_mountinfo(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mi = tmp_path / "mountinfo"
    mi.write_text(
        "30 25 0:26 / /sys/fs/cgroup rw,nosuid shared:9 - tmpfs tmpfs rw,mode=755\n"
        "35 30 0:31 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n")
    assert cgroup2_mount(str(mi)) == "/sys/fs/cgroup/unified"
    mi.write_text("30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n")
    assert cgroup2_mount(str(mi)) is None


V1_LINES = (f"12:pids:/kubepods/burstable/pod{UID}/{CID}\n"
            f"4:memory:/kubepods/burstable/pod{UID}/{CID}\n"
            f"1:name=systemd:/kubepods/burstable/pod{UID}/{CID}\n")


@pytest.mark.parametrize(("content", "uid", "cid"), [
    # cgroup v2 only
    (f"0::/kubepods.slice/kubepods-pod{U_}.slice/cri-containerd-{CID}.scope\n", UID, CID),
    # cgroup v1 only: no unified line
    (V1_LINES, UID, CID),
    # hybrid: the unified hierarchy has systemd's own tree, the pod is in the v1 ones
    (V1_LINES + "0::/system.slice/containerd.service\n", UID, CID),
    # a process in a private cgroup namespace sees paths relative to it
    (f"0::/../../kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice/"
     f"crio-{CID}.scope\n", UID, CID),
    # not in a pod
    ("0::/system.slice/sshd.service\n", "", ""),
])
def test_process_pod_on_v2_v1_and_hybrid_nodes(tmp_path, content: str, uid: str,  # type: ignore[no-untyped-def]
                                               cid: str) -> None:
    from podscope.metadata.store import proc_pod_ref

    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "cgroup").write_text(content)
    ref = proc_pod_ref(77, str(tmp_path))
    assert ref is not None and (ref.pod_uid, ref.container_id) == (uid, cid)
    assert proc_pod_ref(78, str(tmp_path)) is None  # no such process


def test_pid_namespace_names_its_container_or_pod(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Task-side evidence: a PID namespace whose processes are all in one container is that
    container's; shared by a pod's containers (shareProcessNamespace), the pod's."""
    import os

    from podscope.metadata.store import MetadataStore

    c2, c3 = "5a" * 32, "6b" * 32
    procs = {10: (1001, CID), 11: (1001, CID), 20: (1002, c2), 21: (1002, c3), 30: (1003, None)}
    for pid, (pidns, cid) in procs.items():
        (tmp_path / str(pid) / "ns").mkdir(parents=True)
        os.symlink(f"pid:[{pidns}]", tmp_path / str(pid) / "ns" / "pid")
        path = (f"/kubepods.slice/kubepods-pod{U_}.slice/cri-containerd-{cid}.scope" if cid
                else "/system.slice/cron.service")
        (tmp_path / str(pid) / "cgroup").write_text(f"0::{path}\n")
    store = MetadataStore(None, proc=str(tmp_path), node="n1")
    one = store.pidns_labels(1001)
    assert one is not None and (one.k8s_pod_uid, one.container_id) == (UID, CID)
    shared = store.pidns_labels(1002)
    assert shared is not None and (shared.k8s_pod_uid, shared.container_id) == (UID, "")
    assert store.pidns_labels(1003) is None and store.pidns_labels(999) is None


def test_podman_pods_and_their_containers() -> None:
    pod, ctr = "b" * 64, "c" * 64
    # cgroupfs manager: the pod's own directory is a pod, its children are its containers
    ref = parse_cgroup_path(f"/libpod_parent/{pod}")
    assert (ref.container_id, ref.runtime_pod, ref.pod_uid) == ("", pod, "")
    ref = parse_cgroup_path(f"/libpod_parent/{pod}/libpod-{ctr}")
    assert (ref.container_id, ref.runtime_pod, ref.runtime) == (ctr, pod, "podman")
    # systemd manager
    ref = parse_cgroup_path(f"/machine.slice/machine-libpod_pod_{pod}.slice/libpod-{ctr}.scope")
    assert (ref.container_id, ref.runtime_pod) == (ctr, pod)
    assert parse_cgroup_path(f"/machine.slice/machine-libpod_pod_{pod}.slice").container_id == ""
    # a container on its own, and no pod
    ref = parse_cgroup_path(f"/libpod_parent/libpod-{ctr}")
    assert (ref.container_id, ref.runtime_pod) == (ctr, "")
