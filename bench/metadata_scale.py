"""A node with many pods: /metrics scrape time and agent memory against the pod count.

Each "pod" is what the agent sees of one: a network namespace, a cgroup v2 directory named as
kubelet + containerd name it, a pause-like process in both, and an entry in a test Kubernetes
API server (so every series carries names). One helper process opens, in every pod's network
namespace, a listener and one connection to it over loopback, so each pod has TCP series
(connections, durations, listener queues) and an iter/tcp pass has sockets to walk.

For each pod count (the first is the baseline, usually 0): start the agent, wait until it knows
every pod, scrape /metrics 10 times; report the median scrape time, the number of samples, and
the agent's peak RSS. The ratio columns are against the baseline count in the same run.
Usage: python bench/metadata_scale.py [--pods 0,100,500] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tcp_overhead import PODSCOPE, free_port, proc_hwm_mb, write_results  # noqa: E402

from podscope.metadata.cgroups import cgroup2_mount  # noqa: E402
from podscope.testing.kubeapi import KubeAPIServer, pod_object  # noqa: E402
from podscope.testing.pods import cgroup_path, rmdir_when_empty  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NODE = "bench-node"

HELPER = r"""
import ctypes, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
keep = []
for name in sys.argv[1:]:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    assert libc.setns(fd, 0x40000000) == 0
    os.close(fd)
    os.system(f"ip link set lo up")
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 8080)); ls.listen(16)
    c = socket.create_connection(("127.0.0.1", 8080)); s, _ = ls.accept()
    c.sendall(b"x" * 100); s.recv(100)
    keep += [ls, c, s]
    assert libc.setns(own, 0x40000000) == 0
print("ready", flush=True)
sys.stdin.read()
"""


class Node:
    """Many light pods; everything made is removed on close."""

    def __init__(self) -> None:
        cg2 = cgroup2_mount()
        assert cg2, "no cgroup2 mount"
        self.cg2 = cg2
        self.tag = secrets.token_hex(2)
        self.netns: list[str] = []
        self.dirs: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self.helper: subprocess.Popen[str] | None = None

    def add(self, n: int, api: KubeAPIServer) -> None:
        for i in range(n):
            uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
            ns = f"psb{self.tag}-{i}"
            subprocess.run(["ip", "netns", "add", ns], check=True)
            self.netns.append(ns)
            rel = cgroup_path(uid, cid, "burstable", "systemd")
            parts = rel.split("/")
            for j in range(1, len(parts) + 1):
                d = os.path.join(self.cg2, *parts[:j])
                if not os.path.isdir(d):
                    os.mkdir(d)
                    self.dirs.append(d)
            procs_file = os.path.join(self.cg2, rel, "cgroup.procs")

            def enter(path: str = procs_file) -> None:
                with open(path, "w") as f:
                    f.write(str(os.getpid()))

            self.procs.append(subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "infinity"],
                                               preexec_fn=enter))
            api.add_pod(pod_object(f"app-{i}", f"team-{i % 20}", NODE, uid=uid,
                                   containers=[("app", cid)], owner=("StatefulSet", f"app{i}")))
        if self.netns:
            self.helper = subprocess.Popen([sys.executable, "-c", HELPER, *self.netns],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           text=True)
            assert self.helper.stdout is not None
            assert self.helper.stdout.readline().strip() == "ready"

    def close(self) -> None:
        if self.helper:
            self.helper.kill()
            self.helper.wait()
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()
        for ns in self.netns:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        for d in sorted(self.dirs, key=len, reverse=True):
            rmdir_when_empty(d)


def scrape(port: int) -> tuple[float, str]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as r:
        text = r.read().decode()
    return time.perf_counter() - t0, text


def samples(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def measure(pods: int, tmp: Path) -> dict[str, Any]:
    node = Node()
    api = KubeAPIServer().start()
    agent = None
    try:
        t0 = time.monotonic()
        node.add(pods, api)
        setup = time.monotonic() - t0
        port = free_port()
        agent = subprocess.Popen([PODSCOPE, "run", "--listen", f"127.0.0.1:{port}", "--log-level",
                                  "warning", "--node-name", NODE, "--kubeconfig",
                                  str(api.write_kubeconfig(tmp / "kubeconfig"))])
        deadline = time.monotonic() + 120
        while True:
            try:
                if f'podscope_metadata_pods{{state="live"}} {float(pods)}' in scrape(port)[1]:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or agent.poll() is not None:
                raise RuntimeError("agent did not come up with every pod")
            time.sleep(0.5)
        times, n = [], 0
        for _ in range(10):
            dt, text = scrape(port)
            times.append(dt)
            n = samples(text)
            time.sleep(0.6)  # past the listener refresh interval: every scrape walks every netns
        rss = proc_hwm_mb(agent.pid)
        print(f"  {pods} pods: scrape median {statistics.median(times) * 1000:.1f} ms, "
              f"{n} samples, agent peak RSS {rss:.1f} MB (set-up {setup:.1f} s)", flush=True)
        return {"pods": pods, "scrape_seconds": times,
                "median_scrape_seconds": statistics.median(times), "samples": n,
                "agent_peak_rss_mb": rss}
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
        api.stop()
        node.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", default="0,100,500")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "metadata_scale.json"))
    a = ap.parse_args()
    counts = [int(x) for x in a.pods.split(",")]
    with tempfile.TemporaryDirectory(prefix="podscope-scale-") as tmp:
        results = [measure(n, Path(tmp)) for n in counts]
    base = results[0]
    for r in results:
        r["scrape_ratio_to_baseline"] = r["median_scrape_seconds"] / base["median_scrape_seconds"]
        r["rss_ratio_to_baseline"] = r["agent_peak_rss_mb"] / base["agent_peak_rss_mb"]
    write_results(a.out, [{"scenario": "metadata-scale", "results": results}])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
