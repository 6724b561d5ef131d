"""deploy/: the manifests validate against the Kubernetes schema, and hold to least privilege."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from podscope.config import Config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSIONS = ["1.30.0", "1.37.0"]


def documents() -> list[dict[str, Any]]:
    docs = []
    for f in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == kind]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_strictly(version: str) -> None:
    docs = documents()
    assert {d["kind"] for d in docs} == {"Namespace", "ServiceAccount", "ClusterRole",
                                         "ClusterRoleBinding", "DaemonSet", "ConfigMap"}
    for d in docs:
        kubernetes_validate.validate(d, version, strict=True)


def test_validation_does_reject_a_broken_manifest() -> None:
    ds = by_kind("DaemonSet")[0]
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilitiez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSIONS[-1], strict=True)


def test_rbac_reads_pods_only() -> None:
    (role,) = by_kind("ClusterRole")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"])
             for r in role["rules"]}
    assert rules == {(("",), ("pods",)): ["get", "list", "watch"]}  # the agent reads nothing else
    (binding,) = by_kind("ClusterRoleBinding")
    (sa,) = by_kind("ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
    (ds,) = by_kind("DaemonSet")
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_daemonset_least_privilege_probes_and_host_mounts() -> None:
    (ds,) = by_kind("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["privileged"] is False
    # SYSLOG: kernel symbol addresses in /proc/kallsyms (profiles' kernel frames by name)
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "PERFMON", "SYS_ADMIN",
                                                          "NET_ADMIN", "SYS_PTRACE", "SYSLOG"]}
    assert pod["hostPID"] is True and not pod.get("hostNetwork")
    assert c["resources"]["requests"] and c["resources"]["limits"]
    port = c["ports"][0]["containerPort"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    ann = ds["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == str(port)
    assert f"0.0.0.0:{port}" in c["args"]
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in c[
        "env"]
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert set(host.values()) == {"/sys/kernel/btf", "/sys/fs/cgroup", "/sys/kernel/tracing",
                                  "/sys/fs/bpf", "/proc"}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    for name, path in host.items():
        assert name in mounts
        if path != "/sys/fs/bpf":
            assert mounts[name]["readOnly"] is True, name
    # the agent reads the host's /proc where it is mounted
    (cm,) = by_kind("ConfigMap")
    cfg = tomllib.loads(cm["data"]["podscope.toml"])
    assert cfg["proc_root"] == mounts["host-proc"]["mountPath"]
    conf = Config.from_dict(cfg, "the ConfigMap")  # every key is a real setting, every value valid
    # trigger reports land on a writable volume (the root file system is read-only)
    assert any(conf.reports_dir.startswith(m["mountPath"]) for m in c["volumeMounts"]
               if not m.get("readOnly"))


def test_chart_mirrors_the_manifests() -> None:
    """helm is not installable here (no Debian 12 package, no PyPI build): the chart cannot be
    rendered in the test suite. What can be checked without a renderer is checked."""
    chart = DEPLOY / "helm" / "podscope"
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    values = yaml.safe_load((chart / "values.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == "podscope"
    Config.from_dict(values["config"], "values.yaml")
    tpl = (chart / "templates" / "daemonset.yaml").read_text()
    for needle in ("hostPID: true", "privileged: false", '"BPF", "PERFMON", "SYS_ADMIN"',
                   "path: /healthz", "/sys/kernel/btf", "/sys/fs/bpf", "path: /proc"):
        assert needle in tpl, needle
    rbac = (chart / "templates" / "rbac.yaml").read_text()
    assert 'verbs: ["get", "list", "watch"]' in rbac and 'resources: ["nodes"]' not in rbac
    # reports have a writable place on the read-only root file system
    assert "mountPath: /var/lib/podscope" in tpl
