"""`podscope demo`: a small shop in three test pods (loadgen -> frontend -> backend over HTTP
and gRPC, some errors on purpose), registered in a local test Kubernetes API so everything has
names, and the agent watching it. Prints where to look; removes everything on exit (Ctrl-C, or
after --duration)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .agent import Agent
from .config import Config
from .testing.kubeapi import KubeAPIServer, pod_object_for
from .testing.pods import Pod, PodNetwork

NODE = "demo-node"
TAG = "de30"  # the demo's network: bridge psbrde30, namespaces psde30-* (hex: its subnet)
STATE = Path("/run/podscope-demo.json")  # what a running demo made (gone when it ends)


def _clean_previous() -> None:
    """A demo that was killed (SIGKILL, a crash) left its pods: remove them first."""
    from .testing.pods import clean_up_after

    if not STATE.exists():
        return
    try:
        state = json.loads(STATE.read_text())
    except (OSError, ValueError):
        state = {}
    left = clean_up_after(state)
    workdir = state.get("workdir", "")
    if os.path.basename(workdir).startswith("podscope-demo-"):  # its kubeconfig
        shutil.rmtree(workdir, ignore_errors=True)
    if left:
        print(f"podscope demo: could not remove {', '.join(left)}", file=sys.stderr)
    else:
        print("podscope demo: removed what an earlier demo left behind", file=sys.stderr)
    STATE.unlink(missing_ok=True)


def _app(pod: Pod, *args: object) -> subprocess.Popen[str]:
    p = pod.popen([sys.executable, "-m", "podscope.testing.demo_apps", *map(str, args)],
                  stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    if line not in ("listening", "running"):
        raise RuntimeError(f"demo app {args[0]} did not start (exit {p.poll()})")
    return p


def run(listen: str, duration: float | None) -> int:
    try:
        import grpc  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        print("podscope demo needs grpcio (pip install grpcio; `make run` installs it)",
              file=sys.stderr)
        return 2
    _clean_previous()
    with tempfile.TemporaryDirectory(prefix="podscope-demo-") as tmp, PodNetwork(TAG) as net, \
            KubeAPIServer() as api:
        backend = net.pod("backend")
        frontend = net.pod("frontend")
        loadgen = net.pod("loadgen", driver="cgroupfs")
        STATE.write_text(json.dumps({**net.state(), "workdir": tmp}))
        objs: list[tuple[Pod, str, tuple[str, str], dict[str, Any]]] = [
            (backend, "backend-0", ("StatefulSet", "backend"), {}),
            (frontend, "frontend-7d9f8-x2kq5", ("ReplicaSet", "frontend-7d9f8"),
             {"pod-template-hash": "7d9f8"}),
            (loadgen, "loadgen-4tz8p", ("DaemonSet", "loadgen"), {}),
        ]
        for pod, name, owner, labels in objs:
            obj = pod_object_for(pod, "shop", NODE, owner=owner, labels=labels)
            obj["metadata"]["name"] = name
            api.add_pod(obj)
        _app(backend, "backend", 8080, 50051)
        kubeconfig = api.write_kubeconfig(Path(tmp) / "kubeconfig")
        cfg = Config(listen=listen, node_name=NODE, duration=duration,
                     kubeconfig=str(kubeconfig))
        agent = Agent(cfg)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, agent.request_stop)
        try:
            agent.start()  # before the apps connect: every connection is seen from its start
        except BaseException:
            agent.close()
            raise
        _app(frontend, "frontend", 8080, backend.ip, 8080, 50051)
        _app(loadgen, "loadgen", frontend.ip, 8080, 20)
        host, _, port = listen.rpartition(":")
        base = f"http://{host or '127.0.0.1'}:{port}"
        print(f"""
podscope demo: three pods in namespace "shop" on node {NODE}
  loadgen-4tz8p  --HTTP-->  frontend-7d9f8-x2kq5  --HTTP and gRPC-->  backend-0
  (about 5 % of the backend's answers fail on purpose)

Look at:
  {base}/                  the page: pods, service map, latency
  {base}/metrics           Prometheus metrics
  podscope top --agent {base}
  podscope trace http --pod shop/backend-0 --kubeconfig {kubeconfig} --node-name {NODE}
  podscope profile --pod shop/backend-0 --kubeconfig {kubeconfig} --node-name {NODE}

Ctrl-C stops the demo and removes its pods.""", flush=True)
        agent.serve()
    STATE.unlink(missing_ok=True)
    print("podscope demo: stopped, pods removed", flush=True)
    return 0
