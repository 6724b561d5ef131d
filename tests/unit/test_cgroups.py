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
    # cgroupfs driver (any runtime)
    (f"/kubepods/burstable/pod{UID}/{CID}", UID, CID, "", "burstable"),
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
