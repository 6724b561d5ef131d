"""`podscope profile`: sample the stacks of one pod's containers for a while, on-CPU and, if
asked, off-CPU (where its threads blocked), and write flame graphs and folded stacks.

The pod is named as `trace` names it: namespace/name (needs the Kubernetes API), its name, its
UID, or a container id prefix. Everything is detached when the window ends."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from . import features, flamegraph
from .collectors.profile import Profile, Profiler, as_dict
from .metadata.resolve import Target, cli_store, container_cgroups, resolve
from .metadata.store import MetadataStore

log = logging.getLogger("podscope.profile")


def pod_cgroups(store: MetadataStore, uid: str) -> dict[int, str]:
    """cgroup id -> path of the containers of the pod with this UID (triggers)."""
    return container_cgroups(store, Target(uid, "", "", frozenset()))


def write(p: Profile, out_dir: str, title: str) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    files: dict[str, str] = {}
    parts = [("cpu", p.on_cpu, "samples", "on-CPU")]
    if p.off_cpu:
        parts.append(("offcpu", p.off_cpu, "ns", "off-CPU (blocked)"))
    for name, folded, unit, what in parts:
        fp = os.path.join(out_dir, f"{name}.folded")
        with open(fp, "w") as f:
            f.write(flamegraph.folded_text(folded))
        sp = os.path.join(out_dir, f"{name}.svg")
        with open(sp, "w") as f:
            f.write(flamegraph.render(folded, f"{title}: {what}", unit))
        files[f"{name}_folded"], files[f"{name}_svg"] = fp, sp
    return files


def run(pod: str, duration: float, off_cpu: bool, frequency: int, out_dir: str,
        kubeconfig: str = "", as_json: bool = False, reports_dir: str = "",
        node: str = "") -> int:
    """With reports_dir (the agent's), the profile is written there as a report of its own, in
    the triggers' format: the agent lists it at /api/reports and on its page."""
    cg2 = features.preflight()
    store = cli_store(cg2, kubeconfig, node)
    target = resolve(store, pod)
    chosen = container_cgroups(store, target)
    if not chosen:
        raise ValueError(f"--pod {pod}: {target.title} has no container running on this node")
    started = time.time()
    if reports_dir:
        uid = next((store.labels(c, 0).k8s_pod_uid for c in chosen), "") or "pod"
        rid = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(started))}-on-demand-{uid[:8]}"
        out_dir = os.path.join(reports_dir, rid)
    prof = Profiler(list(chosen), frequency=frequency, off_cpu=off_cpu)
    prof.start()
    try:
        time.sleep(duration)
    except KeyboardInterrupt:  # Ctrl-C: what was collected is written, nothing is lost
        log.warning("interrupted: writing what was collected so far")
    finally:
        p = prof.stop()
    summary: dict[str, Any] = {"pod": pod, "containers": sorted(chosen.values()), **as_dict(p)}
    summary["files"] = write(p, out_dir, f"podscope profile {pod}")
    with open(os.path.join(out_dir, "profile.json"), "w") as f:
        json.dump(summary, f, indent=1)
    if reports_dir:
        lab = store.labels(next(iter(chosen)), 0)
        report = {
            "id": os.path.basename(out_dir), "rule": {"name": "on-demand"}, "signal": "manual",
            "value": None, "threshold": None, "started": started, "ended": time.time(),
            "status": "done",
            "probes": ["on_cpu_stacks"] + (["off_cpu_stacks"] if off_cpu else []),
            "pod": {"namespace": lab.k8s_namespace_name, "name": lab.k8s_pod_name,
                    "uid": lab.k8s_pod_uid},
            "profile": {k: v for k, v in summary.items() if k not in ("files", "pod")}}
        with open(os.path.join(out_dir, "report.json"), "w") as f:
            json.dump(report, f, indent=1)
    if as_json:
        print(json.dumps(summary))
    else:
        print(f"{summary['samples']} samples in {summary['seconds']} s at {frequency} Hz "
              f"({len(chosen)} containers)")
        for name, n in summary["top_on_cpu"]:
            print(f"  {n:8d}  {name}")
        if off_cpu:
            print(f"off-CPU: {summary['off_cpu_seconds']:.3f} s blocked")
            for name, s in summary["top_off_cpu"]:
                print(f"  {s:8.3f}s {name}")
        print("written:", ", ".join(summary["files"].values()))
    return 0
