"""`podscope profile`: a native workload in a pod shows up by function name in its flame graph,
on-CPU and off-CPU; a neighbour pod does not; nothing stays attached afterwards (root, real BPF,
real pods, real perf events)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from podscope.flamegraph import parse_folded
from podscope.testing.pods import PodNetwork
from tests.conftest import FIXTURES, PODSCOPE


def build_burner(dst: Path) -> Path:
    cc = shutil.which("clang-16") or shutil.which("clang") or shutil.which("cc")
    assert cc, "no C compiler (make installs clang-16)"
    subprocess.run([cc, "-O1", "-fno-omit-frame-pointer", "-o", str(dst),
                    str(FIXTURES / "burner.c")], check=True)
    return dst


def attached_profile_programs() -> list[str]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                         check=True).stdout
    return [p["name"] for p in json.loads(out or "[]") if p.get("name", "").startswith("profile_")]


def test_hot_and_sleepy_functions_by_name(pods: PodNetwork, tmp_path: Path) -> None:
    burner = build_burner(tmp_path / "burner")
    neighbour_bin = shutil.copy(burner, tmp_path / "neighbour")
    pod, neighbour = pods.pod("profiled"), pods.pod("neighbour")
    procs = [pod.popen([str(burner), "6", "burn"]), pod.popen([str(burner), "6", "sleep"]),
             neighbour.popen([str(neighbour_bin), "6", "burn"])]
    out = tmp_path / "prof"
    try:
        r = subprocess.run([PODSCOPE, "profile", "--pod", pod.uid, "--duration", "3s",
                            "--off-cpu", "--out", str(out), "--json"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout)
    finally:
        for p in procs:
            p.wait(30)
    print(summary)
    # nothing stays attached
    assert attached_profile_programs() == []
    on = parse_folded((out / "cpu.folded").read_text())
    total = sum(on.values())
    assert total == summary["samples"]
    # one busy thread for 3 s at 99 Hz: about 297 samples (the VM's timer may lose a few)
    assert 200 <= total <= 320, total
    hot = sum(v for s, v in on.items() if "main;hot_function" in s)
    assert hot / total > 0.8, summary["top_on_cpu"]
    assert summary["top_on_cpu"][0][0] == "hot_function"
    assert all(s.startswith("burner;") for s in on), "only the profiled pod's processes"
    assert "hot_function" in (out / "cpu.svg").read_text()
    # off-CPU: the sleeping thread blocked in nanosleep about all the time, below sleepy_function
    off = parse_folded((out / "offcpu.folded").read_text())
    sleepy = sum(v for s, v in off.items() if "main;sleepy_function;" in s and "nanosleep" in s)
    assert 2.5e9 <= sleepy <= 3.3e9, off
    assert not any("bpf_prog_" in s or "__traceiter_" in s for s in off)
    assert "sleepy_function" in (out / "offcpu.svg").read_text()


def test_unknown_pod_is_a_clear_error(tmp_path: Path) -> None:
    r = subprocess.run([PODSCOPE, "profile", "--pod", "no-such-pod-uid", "--duration", "1s",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--pod no-such-pod-uid: no pod or container on this node matches" in r.stderr
    assert "Traceback" not in r.stderr


def test_pod_by_namespace_and_name_through_the_api(pods: PodNetwork, tmp_path: Path) -> None:
    from podscope.testing.kubeapi import KubeAPIServer, pod_object_for

    burner = build_burner(tmp_path / "burner")
    pod = pods.pod("named")
    proc = pod.popen([str(burner), "10", "burn"])  # alive until its symbols are read
    api = KubeAPIServer().start()
    try:
        api.add_pod(pod_object_for(pod, "shop", "profile-node"))
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        r = subprocess.run([PODSCOPE, "profile", "--pod", "shop/named", "--kubeconfig",
                            str(kubeconfig), "--duration", "2s", "--out", str(tmp_path / "p"),
                            "--json"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "NODE_NAME": "profile-node"})
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout)
        assert summary["top_on_cpu"][0][0] == "hot_function"
        r = subprocess.run([PODSCOPE, "profile", "--pod", "shop/missing", "--kubeconfig",
                            str(kubeconfig), "--duration", "1s", "--out", str(tmp_path / "q")],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "NODE_NAME": "profile-node"})
        assert r.returncode == 2
        assert ("--pod shop/missing: no pod or container on this node matches; "
                "closest: shop/named") in r.stderr
    finally:
        api.stop()
        proc.wait(30)
