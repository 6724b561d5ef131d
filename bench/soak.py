"""A long run of pod churn plus steady traffic: does anything of the agent only grow?

What runs (root, real BPF, real pods as in the tests):
- the demo's shop, steadily: loadgen --HTTP--> frontend --HTTP and gRPC--> backend;
- churn: a new pod every CHURN seconds, living 1 to 20 s (some under a second), each serving
  a few HTTP requests to a client pod; two of three are in the test Kubernetes API, the rest
  are known only by their cgroups (as pods are while the API is away);
- API outages: the API server stops for 3 minutes at a third and at two thirds of the run;
- the agent with pod_grace 30 s and a JSON lines export rotating at 2 MB.
Every SAMPLE seconds the agent's RSS, open fds, threads, the /metrics scrape time and sample
count, and the sum of its own tables (podscope_state_entries) are written down. The table goes
to stdout and, with the machine, to bench/results/<date>/soak.json. "Flat" means the last
third of the run is no higher than the middle third (RSS within 10 %, series within 10 %).
Usage: python bench/soak.py [--minutes 30] [--sample 60] [--churn 1.0] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tcp_overhead import PODSCOPE, free_port, write_results  # noqa: E402

from podscope.testing.kubeapi import KubeAPIServer, pod_object_for  # noqa: E402
from podscope.testing.pods import Pod, PodNetwork  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
NODE = "soak-node"


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM removes what the run made (pods, the agent), as Ctrl-C


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, val = line.partition(":")
            if key in ("VmRSS", "Threads"):
                out[key] = int(val.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def app(pod: Pod, *args: object) -> subprocess.Popen[str]:
    p = pod.popen([sys.executable, "-m", "podscope.testing.demo_apps", *map(str, args)],
                  stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() in ("listening", "running")
    return p


class Churn:
    """Pods that come and go while the run lasts, each answering a few requests."""

    def __init__(self, net: PodNetwork, api: KubeAPIServer, client: Pod, every: float):
        self.net, self.api, self.client, self.every = net, api, client, every
        self.made = self.requests = self.failed = 0
        self.stop = threading.Event()
        self._alive: list[tuple[float, Pod]] = []
        self._in_api: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="churn", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self.stop.set()
        self._thread.join()
        for _at, pod in self._alive:
            self.net.remove(pod)

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            now = time.monotonic()
            for item in [a for a in self._alive if a[0] <= now]:
                self._alive.remove(item)
                self.net.remove(item[1])
                if item[1].uid in self._in_api:
                    self._in_api.discard(item[1].uid)
                    self.api.delete_pod(item[1].uid)
            try:
                self._one()
            except Exception as e:  # noqa: BLE001 - counted and shown; the run goes on
                self.failed += 1
                print(f"churn: {e}", file=sys.stderr)

    def _one(self) -> None:
        pod = self.net.pod(f"c{self.made}")
        self.made += 1
        if self.made % 3:
            self.api.add_pod(pod_object_for(pod, "churn", NODE, owner=("ReplicaSet", "churn-5c")))
            self._in_api.add(pod.uid)
        life = random.choice([0.3, 1.0, 2.0, 5.0, 10.0, 20.0])
        self._alive.append((time.monotonic() + life, pod))
        srv = pod.popen([sys.executable, str(FIXTURES / "http_server.py"), "8080"],
                        stdout=subprocess.PIPE, text=True)
        assert srv.stdout is not None and srv.stdout.readline().strip() == "listening"
        n = random.randint(1, 20)
        # addresses are reused: the client must not send to the previous owner's MAC address
        subprocess.run(["ip", "-n", self.client.netns, "neigh", "flush", "to", pod.ip],
                       check=False, capture_output=True)
        out = self.client.run([sys.executable, str(FIXTURES / "http_client.py"), pod.ip, "8080",
                               json.dumps([["GET", "/status/200", n]])], check=False)
        if out.returncode == 0:
            self.requests += n


def scrape(port: int) -> tuple[float, int, float]:
    """(seconds, samples, podscope_state_entries summed) of one /metrics scrape."""
    t0 = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    took = time.monotonic() - t0
    samples = state = 0.0
    for line in text.splitlines():
        if line and not line.startswith("#"):
            samples += 1
            if line.startswith("podscope_state_entries{"):
                state += float(line.rsplit(" ", 1)[1])
    return took, int(samples), state


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--sample", type=float, default=60.0, help="seconds between samples")
    ap.add_argument("--churn", type=float, default=1.0, help="seconds between new pods")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / time.strftime("%Y-%m-%d")
                                         / "soak.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/soak.py runs as root (pods, BPF)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminated)
    total = args.minutes * 60
    outages = [(total / 3, total / 3 + 180), (2 * total / 3, 2 * total / 3 + 180)]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="podscope-soak-") as tmp, \
            PodNetwork("50a4", reuse_addresses=True) as net, KubeAPIServer() as api:
        backend, frontend, loadgen = net.pod("backend"), net.pod("frontend"), net.pod("loadgen")
        client = net.pod("client")
        for pod in (backend, frontend, loadgen, client):
            api.add_pod(pod_object_for(pod, "shop", NODE, owner=("StatefulSet", pod.name)))
        app(backend, "backend", 8080, 50051)
        cfg = Path(tmp) / "podscope.toml"
        cfg.write_text(f'pod_grace = "30s"\nexports = ["jsonl:{tmp}/records.jsonl"]\n'
                       "export_max_bytes = 2000000\nexport_keep = 2\n")
        port = free_port()
        log = open(Path(tmp) / "agent.log", "w")  # noqa: SIM115
        agent = subprocess.Popen([PODSCOPE, "run", "--listen", f"127.0.0.1:{port}",
                                  "--node-name", NODE, "--config", str(cfg), "--kubeconfig",
                                  str(api.write_kubeconfig(Path(tmp) / "kubeconfig"))],
                                 stdout=log, stderr=subprocess.STDOUT)
        churn = Churn(net, api, client, args.churn)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    scrape(port)
                    break
                except OSError:
                    if agent.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("agent did not come up") from None
                    time.sleep(0.5)
            app(frontend, "frontend", 8080, backend.ip, 8080, 50051)
            app(loadgen, "loadgen", frontend.ip, 8080, 50)
            churn.start()
            t0 = time.monotonic()
            api_port, api_down = api.port, False
            next_sample = t0
            while (now := time.monotonic()) - t0 < total:
                elapsed = now - t0
                in_outage = any(a <= elapsed < b for a, b in outages)
                if in_outage and not api_down:
                    api.stop()
                    api_down = True
                elif not in_outage and api_down:
                    api.port = api_port
                    api.start()
                    api_down = False
                if now >= next_sample:
                    took, samples, state = scrape(port)
                    st = proc_status(agent.pid)
                    rows.append({"minute": round(elapsed / 60, 1), "rss_mib":
                                 round(st["VmRSS"] / 1024, 1), "threads": st["Threads"],
                                 "fds": st["fds"], "scrape_s": round(took, 3),
                                 "samples": samples, "state_entries": int(state),
                                 "pods_made": churn.made, "api": "down" if api_down else "up"})
                    print(json.dumps(rows[-1]), flush=True)
                    next_sample += args.sample
                if agent.poll() is not None:
                    raise RuntimeError(f"agent exited {agent.returncode}")
                time.sleep(0.5)
            if api_down:
                api.port = api_port
                api.start()
        finally:
            churn.join()
            agent.terminate()
            agent.wait(timeout=60)
            log.close()
            lost = sum(1 for line in open(Path(tmp) / "agent.log") if "Traceback" in line)
    n = len(rows)
    mid, last = rows[n // 3: 2 * n // 3], rows[2 * n // 3:]

    def flat(key: str) -> dict[str, float]:
        a = statistics.median(r[key] for r in mid)
        b = statistics.median(r[key] for r in last)
        return {"middle_third": a, "last_third": b, "ratio": round(b / a, 3) if a else 0.0}

    summary = {"minutes": args.minutes, "pods_churned": churn.made,
               "churn_requests": churn.requests, "churn_failures": churn.failed,
               "agent_tracebacks": lost, "rss": flat("rss_mib"), "samples": flat("samples"),
               "scrape_s": flat("scrape_s"), "fds": flat("fds"), "threads": flat("threads"),
               "state_entries": flat("state_entries")}
    write_results(args.out, [{"samples": rows, "summary": summary}])
    print("| minute | RSS MiB | threads | fds | scrape s | samples | state entries | pods made "
          "| API |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['minute']} | {r['rss_mib']} | {r['threads']} | {r['fds']} | {r['scrape_s']} "
              f"| {r['samples']} | {r['state_entries']} | {r['pods_made']} | {r['api']} |")
    ok = (summary["rss"]["ratio"] <= 1.10 and summary["samples"]["ratio"] <= 1.10
          and churn.made > 0 and churn.failed <= churn.made // 100 and lost == 0)
    print("flat" if ok else "NOT flat", json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
