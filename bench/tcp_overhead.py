"""Overhead of the TCP collector on a real server: nginx in one test pod, wrk in another.

Alternating rounds with the agent off and on (the agent scraped every 5 s, three times as
often as Prometheus' default); reports the median of per-round throughput ratios (on / off), the kernel
time of podscope's BPF programs per request and per connection (kernel.bpf_stats_enabled),
agent CPU seconds per 10k requests and the agent's peak RSS. Two workloads: keep-alive
(many requests per connection) and one connection per request.

    .venv/bin/python bench/tcp_overhead.py [--rounds 5] [--seconds 5] [--out bench/out/x.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from podscope.testing.pods import PodNetwork
from podscope.testing.servers import start_nginx

ROOT = Path(__file__).resolve().parent.parent
PODSCOPE = str(Path(sys.executable).parent / "podscope")
SCRAPE_INTERVAL = 5.0  # seconds; Prometheus' default is 15 s
MY_PROGS = {"tcp_state", "tcp_rst_send", "tcp_rst_recv", "tcp_drop", "tcp_iter"}

def bpf_prog_stats(progs: set[str] = MY_PROGS) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over the named programs (podscope's)."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                         check=True).stdout
    ns = cnt = 0
    for p in json.loads(out or "[]"):
        if p.get("name") in progs:
            ns += p.get("run_time_ns", 0)
            cnt += p.get("run_cnt", 0)
    return ns, cnt


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def baseline_tree(ref: str) -> Path:
    """A built copy of the podscope of git revision `ref` (bench/out/baseline-REF): the
    "before" column of a change, measured in the same invocation as the "after"."""
    root = Path(__file__).resolve().parent.parent
    rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", ref], check=True,
                         capture_output=True, text=True).stdout.strip()
    tree = root / "bench" / "out" / f"baseline-{rev}"
    if not tree.exists():
        tree.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(tree), rev],
                       check=True)
    subprocess.run(["make", "-C", str(tree), "bpf", f"BUILD={root / 'build'}"], check=True)
    if (tree / "setup.py").exists():
        subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree,
                       check=True)
    return tree


class Agent:
    def __init__(self, args: list[str] | None = None, tree: Path | None = None) -> None:
        """tree: run the podscope of another source tree (a baseline, see baseline_tree)."""
        self.port = free_port()
        cmd, env = [PODSCOPE], None
        if tree is not None:
            cmd = [sys.executable, "-m", "podscope"]
            env = {**os.environ, "PYTHONPATH": str(tree / "src")}
        self.proc = subprocess.Popen([*cmd, "run", "--listen", f"127.0.0.1:{self.port}",
                                      "--log-level", "warning", *(args or [])], env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.scrape()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("agent did not start") from None
                time.sleep(0.1)
        self._stop = threading.Event()
        self.scrapes = 0
        self.thread = threading.Thread(target=self._scraper, daemon=True)
        self.thread.start()

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            return str(r.read().decode())

    def _scraper(self) -> None:
        while not self._stop.wait(SCRAPE_INTERVAL):
            try:
                self.scrape()
                self.scrapes += 1
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def run_wrk(client, url: str, seconds: float, close: bool) -> dict[str, float]:  # type: ignore[no-untyped-def]
    cmd = ["wrk", "-t2", "-c32", f"-d{int(seconds)}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = client.run(cmd + [url], timeout=seconds + 60).stdout
    m = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if not m or not rps:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    return {"requests": int(m.group(1)), "rps": float(rps.group(1)),
            "non2xx": int(errs.group(1)) if errs else 0}


def scenario(net: PodNetwork, name: str, close: bool, rounds: int, seconds: float,  # type: ignore[type-arg]
             aa: bool = False) -> dict:
    """aa=True: an A/A control; the "on" runs start no agent, so the ratios show the noise."""
    server = net.pod(f"ng{name[:2]}")
    client = net.pod(f"wk{name[:2]}", driver="cgroupfs")
    runs = 0

    def fresh_client():  # type: ignore[no-untyped-def]
        # one connection per request uses up the 4-tuple space between two addresses (the
        # server keeps TIME_WAIT): every run gets a client pod of its own
        nonlocal client, runs
        runs += 1
        if close:
            client = net.pod(f"wk{name[:2]}{runs}", driver="cgroupfs")
        return client

    start_nginx(server)
    url = f"http://{server.ip}/"
    run_wrk(client, url, 2, close)  # warm-up
    ratios, off_rps, on_rps = [], [], []
    bpf_ns = bpf_cnt = 0
    on_requests = 0
    agent_cpu = 0.0
    hwm = 0.0
    for i in range(rounds):
        order = ("off", "on") if i % 2 == 0 else ("on", "off")
        got = {}
        for mode in order:
            c = fresh_client()
            if mode == "off" or aa:
                time.sleep(1.0)  # the same pause the agent gets to settle
                got[mode] = run_wrk(c, url, seconds, close)
                continue
            agent = Agent()
            time.sleep(1.0)
            ns0, cnt0 = bpf_prog_stats()
            cpu0 = proc_cpu_seconds(agent.proc.pid)
            got[mode] = run_wrk(c, url, seconds, close)
            ns1, cnt1 = bpf_prog_stats()
            agent.scrape()
            agent_cpu += proc_cpu_seconds(agent.proc.pid) - cpu0
            hwm = max(hwm, proc_hwm_mb(agent.proc.pid))
            agent.stop()
            bpf_ns += ns1 - ns0
            bpf_cnt += cnt1 - cnt0
            on_requests += got[mode]["requests"]
        off_rps.append(got["off"]["rps"])
        on_rps.append(got["on"]["rps"])
        ratios.append(got["on"]["rps"] / got["off"]["rps"])
        print(f"  {name} round {i + 1}: off {got['off']['rps']:.0f} rps, on {got['on']['rps']:.0f}"
              f" rps, ratio {ratios[-1]:.4f}", flush=True)
    conns = on_requests if close else rounds * 32
    return {
        "scenario": name, "rounds": rounds, "seconds_per_run": seconds,
        "median_ratio_on_off": statistics.median(ratios), "ratios": ratios,
        "off_rps": off_rps, "on_rps": on_rps,
        "bpf_ns_per_request": bpf_ns / on_requests if on_requests else None,
        "bpf_ns_per_connection": bpf_ns / conns if conns else None,
        "bpf_program_runs_per_request": bpf_cnt / on_requests if on_requests else None,
        "agent_cpu_seconds_per_10k_requests": agent_cpu / on_requests * 10_000 if on_requests
        else None,
        "agent_peak_rss_mb": hwm,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--aa", action="store_true",
                    help="A/A control: keep-alive rounds where 'on' starts no agent (noise floor)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "tcp_overhead.json"))
    a = ap.parse_args()
    with open("/proc/sys/kernel/bpf_stats_enabled") as f:
        stats_before = f.read().strip()
    with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
        f.write("1")
    try:
        with PodNetwork() as net:
            if a.aa:
                results = [scenario(net, "keepalive-A/A", False, a.rounds, a.seconds, aa=True)]
            else:
                results = [scenario(net, "keepalive", False, a.rounds, a.seconds),
                           scenario(net, "conn-per-request", True, a.rounds, a.seconds)]
    finally:
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write(stats_before)
    write_results(a.out, results)
    return 0


def write_results(path: str, results: list[dict]) -> None:  # type: ignore[type-arg]
    """The results with the machine they ran on: to `path` (JSON) and to stdout."""
    machine = {"kernel": platform.release(), "cpus": os.cpu_count(),
               "cpu": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                            if ln.startswith("model name")), "?")}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"machine": machine, "results": results}, f, indent=1)
    print(json.dumps({"machine": machine, "results": results}, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
