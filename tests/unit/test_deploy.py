"""deploy/: the manifests and the Helm chart (rendered by Helm's template engine) validate
against the Kubernetes schema, hold to least privilege, and configure the agent correctly."""

from __future__ import annotations

import functools
import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from podscope.config import Config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "podscope"
K8S_VERSIONS = ["1.30.0", "1.37.0"]
GOCODE = Path("/usr/share/gocode/src")

# values an operator sets: lists and tables in the agent's configuration among them
CHART_VALUES: dict[str, Any] = {
    "port": 9500,
    "podAnnotations": {"example.com/team": "sre"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "config": {
        "pod_grace": "90s",
        "http_route_budget": 50,
        "exports": ["jsonl:/var/lib/podscope/records.jsonl"],
        "reports_dir": "/var/lib/podscope/reports",
        "triggers": [
            {"name": "slow-http", "signal": "http_p99_seconds", "above": 0.5,
             "for_seconds": 30, "window_seconds": 10, "off_cpu": True},
            {"name": "drops", "signal": "drops_per_second", "above": 100, "pod": "shop/web"},
        ],
    },
}


@functools.cache
def helmrender() -> Path:
    """tests/tools/helmrender, built from Debian's Go sources (sprig, yaml.v2; no downloads)."""
    build = ROOT / "build"
    gopath = build / "gopath"
    for mod in ("sprig", "semver"):  # their import paths end in /v3: GOPATH mode wants that dir
        link = gopath / "src" / "github.com" / "Masterminds" / mod / "v3"
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(GOCODE / "github.com" / "Masterminds" / mod)
    out = build / "helmrender"
    src = ROOT / "tests" / "tools" / "helmrender" / "main.go"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        env = dict(os.environ, GO111MODULE="off", GOPATH=f"{gopath}:{GOCODE.parent}",
                   GOCACHE=str(build / "gocache"), GOFLAGS="")
        subprocess.run(["go", "build", "-o", str(out), "."], cwd=src.parent, env=env,
                       check=True)
    return out


def helm_template(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    args = [str(helmrender()), "-name", "podscope", "-namespace", "podscope"]
    if values is not None:
        f = ROOT / "build" / "chart-values.yaml"
        f.write_text(yaml.safe_dump(values))
        args += ["-f", str(f)]
    out = subprocess.run([*args, str(CHART)], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@functools.cache
def _documents(source: str) -> str:
    if source == "manifests":
        docs = []
        for f in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
            docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    else:
        docs = helm_template(CHART_VALUES if source == "chart-values" else None)
    return yaml.safe_dump_all(docs)  # cached as text: every caller gets its own copy


def documents(source: str = "manifests") -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(_documents(source)) if d]


def by_kind(kind: str, source: str = "manifests") -> list[dict[str, Any]]:
    return [d for d in documents(source) if d["kind"] == kind]


SOURCES = ["manifests", "chart", "chart-values"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("source", SOURCES)
def test_manifests_validate_strictly(source: str, version: str) -> None:
    docs = documents(source)
    want = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "ConfigMap"}
    if source == "manifests":
        want.add("Namespace")  # a chart's namespace is helm install's --namespace
    assert {d["kind"] for d in docs} == want
    for d in docs:
        kubernetes_validate.validate(d, version, strict=True)


def test_validation_does_reject_a_broken_manifest() -> None:
    ds = by_kind("DaemonSet")[0]
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilitiez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("source", SOURCES)
def test_rbac_reads_pods_only(source: str) -> None:
    (role,) = by_kind("ClusterRole", source)
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"])
             for r in role["rules"]}
    assert rules == {(("",), ("pods",)): ["get", "list", "watch"]}  # the agent reads nothing else
    (binding,) = by_kind("ClusterRoleBinding", source)
    (sa,) = by_kind("ServiceAccount", source)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (ds,) = by_kind("DaemonSet", source)
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


@pytest.mark.parametrize("source", SOURCES)
def test_daemonset_least_privilege_probes_and_host_mounts(source: str) -> None:
    (ds,) = by_kind("DaemonSet", source)
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
    (cm,) = by_kind("ConfigMap", source)
    assert {"name": "config", "configMap": {"name": cm["metadata"]["name"]}} in pod["volumes"]
    cfg = tomllib.loads(cm["data"]["podscope.toml"])
    assert cfg["proc_root"] == mounts["host-proc"]["mountPath"]
    conf = Config.from_dict(cfg, "the ConfigMap")  # every key is a real setting, every value valid
    # trigger reports land on a writable volume (the root file system is read-only)
    assert any(conf.reports_dir.startswith(m["mountPath"]) for m in c["volumeMounts"]
               if not m.get("readOnly"))


def test_chart_values_reach_the_agent_as_typed_settings() -> None:
    """Lists and tables set through values become TOML the agent reads as the same settings."""
    (cm,) = by_kind("ConfigMap", "chart-values")
    conf = Config.from_dict(tomllib.loads(cm["data"]["podscope.toml"]), "the chart's ConfigMap")
    want = CHART_VALUES["config"]
    assert conf.exports == want["exports"] and conf.pod_grace == 90.0
    assert conf.http_route_budget == 50 and conf.proc_root == "/host/proc"  # a default kept
    assert [r.name for r in conf.rules] == ["slow-http", "drops"]
    assert conf.triggers == want["triggers"]
    (ds,) = by_kind("DaemonSet", "chart-values")
    tmpl = ds["spec"]["template"]
    (c,) = tmpl["spec"]["containers"]
    assert "0.0.0.0:9500" in c["args"] and c["ports"][0]["containerPort"] == 9500
    assert tmpl["metadata"]["annotations"]["example.com/team"] == "sre"
    assert tmpl["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    # a changed configuration rolls the pods
    (ds0,) = by_kind("DaemonSet", "chart")
    assert (tmpl["metadata"]["annotations"]["checksum/config"]
            != ds0["spec"]["template"]["metadata"]["annotations"]["checksum/config"])


def test_chart_renders_the_manifests_daemonset() -> None:
    """The chart with its default values is the plain manifests' DaemonSet (labels aside)."""
    (plain,) = by_kind("DaemonSet")
    (chart,) = by_kind("DaemonSet", "chart")
    p, c = plain["spec"]["template"]["spec"], chart["spec"]["template"]["spec"]
    assert p["containers"][0]["securityContext"] == c["containers"][0]["securityContext"]
    assert sorted(p["volumes"], key=str) == sorted(c["volumes"], key=str)
    assert p["containers"][0]["volumeMounts"] == c["containers"][0]["volumeMounts"]
    assert p["containers"][0]["args"] == c["containers"][0]["args"]
    (pcm,), (ccm,) = by_kind("ConfigMap"), by_kind("ConfigMap", "chart")
    assert (tomllib.loads(pcm["data"]["podscope.toml"])
            == tomllib.loads(ccm["data"]["podscope.toml"]))
