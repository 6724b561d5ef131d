"""Overhead of podscope with the HTTP collector (TCP + HTTP, the default agent) on real servers.

Workloads, each in two test pods, alternating rounds with the agent off and on:
  nginx-tiny    nginx returning a 40-byte body, wrk keep-alive (-t2 -c32): the worst case
  handler-1ms   Python http.server doing ~1 ms of CPU work per request, wrk keep-alive (-c1)
  nginx-records nginx-tiny again with one record per request exported (--export jsonl): agent CPU
                and ring-buffer losses at the highest request rate
  nginx-syscalls nginx-tiny with http_hooks = "syscalls" (HTTP and DNS on the syscall
                tracepoints: what kernels without the socket tracepoints, 6.1 among them, run)
  nginx-h2      nginx over HTTP/2 cleartext, h2load -c8 -m10 as fast as it goes: HTTP/2 is
                decoded in user space (frames, HPACK), so this is the agent's capacity
  nginx-h2-8k   the same at a fixed 8000 requests/s (h2load --rps 1000 per connection): agent
                CPU per request when it keeps up
  grpc-unary    grpc-go's health server (tests/fixtures/go/gogrpc.go, h2c) and its load mode: unary
                calls from 16 goroutines on one connection, as fast as they go (the Go program is
                probed by the default agent's uprobes too: gRPC header hints)
  grpc-unary-no-uprobes  the same with tls = "off": no uprobes, the HTTP/2 decoding alone
  nginx-tls     nginx over TLS (OpenSSL), wrk keep-alive over https (-t2 -c32): the plaintext
                from uprobes on libssl (SSL_read/SSL_write entry and return) into the kernel path
  go-h2-tls     a Go net/http server over TLS with HTTP/2 (crypto/tls uprobes at the entry and
                every RET of Read, the entry of Write), h2load -c8 -m10 as fast as it goes: HTTP/2
                decoded in user space, agent CPU per request
  redis         redis-server, redis-benchmark -t get,set -c 32 (one command per round trip):
                Redis decoded in user space (native/dbengine.c), agent CPU per command
  redis-p16     the same pipelined 16 deep (-P 16): the most commands per byte and per syscall
  pgbench       PostgreSQL 15, pgbench -S -M prepared -c 8 -j 2 (one SELECT per transaction):
                the agent CPU per operation of the extended protocol

Reports per workload: median throughput ratio on/off, p99 latency ratio, BPF run time per
request (kernel.bpf_stats_enabled), agent CPU per 10k requests, events lost, agent peak RSS.
Usage: python bench/http_overhead.py [--rounds N] [--seconds S] [--out FILE] [--baseline REF]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tcp_overhead import (  # noqa: E402
    Agent,
    baseline_tree,
    bpf_prog_stats,
    proc_cpu_seconds,
    proc_hwm_mb,
    write_results,
)

from podscope.testing.gobuild import build_go  # noqa: E402
from podscope.testing.pods import Pod, PodNetwork  # noqa: E402
from podscope.testing.servers import make_certificate, start_nginx  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test suite's server helpers (tests/kernel/test_db.py)
SYSCALLS = ("read", "readv", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg")
MY_PROGS = ({"tcp_state", "tcp_rst_send", "tcp_rst_recv", "tcp_drop", "tcp_iter", "http_recv",
             "http_send", "http_close", "http_x_work", "dns_recv", "dns_send"}
            | {f"http_{d}_{n}" for n in SYSCALLS for d in "ex"}
            | {f"dns_{d}_{n}" for n in SYSCALLS + ("recvmmsg", "sendmmsg") for d in "ex"}
            | {"tls_rd_e", "tls_rdx_e", "tls_wr_e", "tls_wrx_e", "tls_hs_e", "tls_setfd",
               "tls_free", "tls_ret", "go_tls_rd_e", "go_tls_wr_e", "go_tls_ret"})
COLLECTORS = ("tcp_", "http_", "dns_", "tls_", "go_tls_")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    path = "/proc/sys/kernel/bpf_stats_enabled"
    with open(path) as f:
        before = f.read().strip()
    with open(path, "w") as f:
        f.write("1")
    try:
        yield
    finally:
        with open(path, "w") as f:
            f.write(before)


def wrk(client: Pod, url: str, seconds: float, conns: int, threads: int) -> dict[str, float]:
    out = client.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{int(seconds)}s", "--latency", url],
                     timeout=seconds + 60).stdout
    n = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    if not n or not rps or not p99:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests": int(n.group(1)), "rps": float(rps.group(1)),
            "p99_s": float(p99.group(1)) * _UNITS[p99.group(2)],
            "non2xx": int(errs.group(1)) if errs else 0}


def h2load(client: Pod, url: str, seconds: float, conns: int, streams: int,
           rps_per_conn: int = 0) -> dict[str, float]:
    rate = ["--rps", str(rps_per_conn)] if rps_per_conn else []
    out = client.run(["h2load", "-c", str(conns), "-m", str(streams), "-D", str(int(seconds)),
                      *rate, url], timeout=seconds + 60).stdout
    rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    if not rps or not done or not mean:
        raise RuntimeError(f"cannot parse h2load output:\n{out}")
    # h2load reports no percentiles: the mean request time stands in for the p99 column
    return {"requests": int(done.group(2)), "rps": float(rps.group(1)),
            "p99_s": float(mean.group(1)) * _UNITS[mean.group(2)], "non2xx": 0}


def lost_events(text: str) -> int:
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("podscope_events_lost_total{"))


def scenario(net: PodNetwork, name: str, rounds: int, seconds: float,
             baseline: Path | None = None) -> list[dict[str, Any]]:
    # nginx-tiny -> nt, nginx-tls -> nts (pod names must differ between scenarios)
    tag = "".join(w[0] for w in name.split("-")) + ("s" if name.endswith("tls") else "")
    server = net.pod(f"s{tag}")
    client = net.pod(f"c{tag}", driver="cgroupfs")
    try:
        return measure(name, server, client, rounds, seconds, baseline)
    finally:
        # the scenario's servers go with it: a Go server left running would be inspected
        # (its DWARF) by every later scenario's agent, in their CPU and RSS
        net.remove(client)
        net.remove(server)


def measure(name: str, server: Pod, client: Pod, rounds: int, seconds: float,
            baseline: Path | None) -> list[dict[str, Any]]:
    tmp = tempfile.mkdtemp(prefix="podscope-bench-")
    agent_args: list[str] = []
    server.cleanups.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    if name.startswith("redis"):
        from tests.kernel.test_db import start_redis

        start_redis(server, Path(tmp))
        pipeline = 16 if name == "redis-p16" else 1
        per_second = [20_000.0]

        def load(secs: float) -> dict[str, float]:
            n = max(1000, int(per_second[0] * secs / 2))  # two tests (get, set)
            out = client.run(["redis-benchmark", "-h", server.ip, "-t", "get,set", "-c", "32",
                              "-P", str(pipeline), "-n", str(n), "--csv"],
                             timeout=secs * 10 + 60).stdout
            rows = [r.replace('"', "").split(",") for r in out.splitlines()[1:] if r]
            if len(rows) != 2:
                raise RuntimeError(f"cannot parse redis-benchmark output:\n{out}")
            rps = 2 / sum(1 / float(r[1]) for r in rows)  # both tests' commands over their time
            per_second[0] = rps
            return {"requests": 2 * n, "rps": rps,
                    "p99_s": max(float(r[6]) for r in rows) / 1e3, "non2xx": 0}
    elif name == "pgbench":
        from tests.kernel.test_db import PG_BIN, start_postgres

        pgdata = Path(tempfile.mkdtemp(prefix="podscope-bench-pg-", dir="/var/tmp"))
        server.cleanups.append(lambda: shutil.rmtree(pgdata, ignore_errors=True))
        start_postgres(server, client, pgdata)
        client.run([str(PG_BIN / "pgbench"), "-i", "-s", "2", "-q", "-h", server.ip, "-U",
                    "postgres", "postgres"])

        def load(secs: float) -> dict[str, float]:
            out = client.run([str(PG_BIN / "pgbench"), "-S", "-n", "-M", "prepared", "-c", "8",
                              "-j", "2", "-T", str(int(secs)), "-h", server.ip, "-U", "postgres",
                              "postgres"], timeout=secs + 60).stdout
            n = re.search(r"number of transactions actually processed: (\d+)", out)
            tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
            lat = re.search(r"latency average = ([\d.]+) ms", out)
            if not n or not tps or not lat:
                raise RuntimeError(f"cannot parse pgbench output:\n{out}")
            # pgbench prints no percentiles: the mean latency stands in for the p99 column
            return {"requests": int(n.group(1)), "rps": float(tps.group(1)),
                    "p99_s": float(lat.group(1)) / 1e3, "non2xx": 0}
    elif name.startswith("grpc-unary"):
        binary = build_go(ROOT / "tests" / "fixtures" / "go" / "gogrpc.go", Path(tmp) / "gogrpc")
        p = server.popen([str(binary), "server", "50051"], stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None and p.stdout.readline().strip() == "listening"

        def load(secs: float) -> dict[str, float]:
            out = json.loads(client.run([str(binary), "load", f"{server.ip}:50051", "h2c",
                                         str(secs), "16"]).stdout)
            # mean call time in the p99 column, as for h2load
            return {"requests": out["requests"], "rps": out["requests"] / out["seconds"],
                    "p99_s": out["mean_s"], "non2xx": 0}
    elif name == "go-h2-tls":
        cert, key = make_certificate(Path(tmp))
        binary = build_go(ROOT / "tests" / "fixtures" / "go" / "gohttps.go", Path(tmp) / "gohttps")
        p = server.popen([str(binary), "server", "8443", str(cert), str(key)],
                         stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None and p.stdout.readline().strip() == "listening"
        url = f"https://{server.ip}:8443/ok"

        def load(secs: float) -> dict[str, float]:
            return h2load(client, url, secs, 8, 10, 0)
    elif name == "nginx-tls":
        start_nginx(server, port="443 ssl", tls=make_certificate(Path(tmp)))
        url, conns, threads = f"https://{server.ip}/ok", 32, 2
    elif name.startswith("nginx-h2"):
        start_nginx(server, port="8080 http2")
        url = f"http://{server.ip}:8080/ok"
        rate = 1000 if name == "nginx-h2-8k" else 0

        def load(secs: float) -> dict[str, float]:
            return h2load(client, url, secs, 8, 10, rate)
    elif name.startswith("nginx"):
        start_nginx(server)
        url, conns, threads = f"http://{server.ip}/ok", 32, 2
    else:
        p = server.popen([sys.executable, str(ROOT / "tests" / "fixtures" / "http_server.py"),
                          "8080"], stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None and p.stdout.readline().strip() == "listening"
        # one connection: a Python server's threads would queue on the GIL, not on the work
        url, conns, threads = f"http://{server.ip}:8080/work/1000", 1, 1
    if not name.startswith(("nginx-h2", "grpc-unary", "redis", "pgbench")) and \
            name != "go-h2-tls":
        def load(secs: float) -> dict[str, float]:
            return wrk(client, url, secs, conns, threads)
    if name.endswith("records"):
        agent_args = ["--export", f"jsonl:{tmp}/records.jsonl"]
    if name.endswith("no-uprobes"):
        Path(f"{tmp}/podscope.toml").write_text('tls = "off"\n')
        agent_args = ["--config", f"{tmp}/podscope.toml"]
    if name.endswith("syscalls"):
        Path(f"{tmp}/podscope.toml").write_text('http_hooks = "syscalls"\n')
        agent_args = ["--config", f"{tmp}/podscope.toml"]
    load(2)  # warm-up
    # the agent's start: 1 s; with a Go server already running, the agent first reads the
    # binary's DWARF for the HTTP/2 header probes (seconds of CPU, once per binary): let it
    # finish, so that the runs measure the steady state (the one-time cost is reported apart)
    settle = 8.0 if name == "grpc-unary" else 1.0
    variants: dict[str, Path | None] = {"on": None}
    if baseline is not None:
        variants["base"] = baseline
    modes = ["off", *variants]
    ratios: dict[str, list[float]] = {v: [] for v in variants}
    p99_ratios: dict[str, list[float]] = {v: [] for v in variants}
    rps: dict[str, list[float]] = {m: [] for m in modes}
    on_requests = dict.fromkeys(variants, 0)
    lost = dict.fromkeys(variants, 0)
    agent_cpu = dict.fromkeys(variants, 0.0)
    hwm = dict.fromkeys(variants, 0.0)
    for i in range(rounds):
        got: dict[str, dict[str, float]] = {}
        for mode in modes[i % len(modes):] + modes[:i % len(modes)]:  # each first in turn
            if mode == "off":
                time.sleep(1.0)
                got[mode] = load(seconds)
                continue
            agent = Agent(agent_args, tree=variants[mode])
            try:
                time.sleep(settle)
                cpu0 = proc_cpu_seconds(agent.proc.pid)
                got[mode] = load(seconds)
                time.sleep(0.5)  # let the agent drain what is in flight
                lost[mode] += lost_events(agent.scrape())
                agent_cpu[mode] += proc_cpu_seconds(agent.proc.pid) - cpu0
                hwm[mode] = max(hwm[mode], proc_hwm_mb(agent.proc.pid))
            finally:
                agent.stop()
            on_requests[mode] += int(got[mode]["requests"])
            if os.path.exists(f"{tmp}/records.jsonl"):
                os.unlink(f"{tmp}/records.jsonl")
        for m in modes:
            rps[m].append(got[m]["rps"])
        for v in variants:
            ratios[v].append(got[v]["rps"] / got["off"]["rps"])
            p99_ratios[v].append(got[v]["p99_s"] / got["off"]["p99_s"])
        print(f"  {name} round {i + 1}: " + ", ".join(f"{m} {got[m]['rps']:.0f} rps" for m in modes)
              + ", ratio " + " ".join(f"{v} {ratios[v][-1]:.4f}" for v in variants), flush=True)
    out = []
    for v, tree in variants.items():
        # BPF run time in a separate run: kernel.bpf_stats_enabled itself costs two clock reads
        # per program run, so the throughput rounds above run without it
        with bpf_stats():
            agent = Agent(agent_args, tree=tree)
            try:
                time.sleep(settle)
                ns0, cnt0 = bpf_prog_stats(MY_PROGS)
                by0 = {c: bpf_prog_stats({p for p in MY_PROGS if p.startswith(c)})
                       for c in COLLECTORS}
                prof = load(seconds)
                ns1, cnt1 = bpf_prog_stats(MY_PROGS)
                by1 = {c: bpf_prog_stats({p for p in MY_PROGS if p.startswith(c)})
                       for c in COLLECTORS}
            finally:
                agent.stop()
        bpf_ns, bpf_cnt = ns1 - ns0, cnt1 - cnt0
        out.append({
            "scenario": name if tree is None else f"{name} @{tree.name.removeprefix('baseline-')}",
            "rounds": rounds, "seconds_per_run": seconds,
            "median_ratio_on_off": statistics.median(ratios[v]), "ratios": ratios[v],
            "median_p99_latency_ratio_on_off": statistics.median(p99_ratios[v]),
            "off_rps": rps["off"], "on_rps": rps[v],
            "bpf_ns_per_request": bpf_ns / prof["requests"],
            "bpf_program_runs_per_request": bpf_cnt / prof["requests"],
            "bpf_ns_per_request_by_collector": {
                c: (by1[c][0] - by0[c][0]) / prof["requests"] for c in COLLECTORS},
            "agent_cpu_seconds_per_10k_requests": agent_cpu[v] / on_requests[v] * 10_000
            if on_requests[v] else None,
            "requests_per_agent_cpu_second": on_requests[v] / agent_cpu[v]
            if agent_cpu[v] else None,
            "events_lost": lost[v],
            "agent_peak_rss_mb": hwm[v],
        })
    return out


def _loaded_progs() -> set[str]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {p.get("name", "") for p in json.loads(out or "[]")} & MY_PROGS


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--only", action="append", default=[],
                    choices=["nginx-tiny", "handler-1ms", "nginx-records", "nginx-syscalls",
                             "nginx-h2", "nginx-h2-8k", "nginx-h2-records", "nginx-tls", "go-h2-tls",
                             "grpc-unary", "grpc-unary-no-uprobes", "redis", "redis-p16",
                             "pgbench"])
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "http_overhead.json"))
    ap.add_argument("--baseline", metavar="REF",
                    help="also run the agent of this git revision (built in bench/out), in the "
                         "same rounds: the before and after of a change side by side")
    a = ap.parse_args()
    if running := _loaded_progs():
        print(f"podscope's programs are loaded ({', '.join(sorted(running))}): another "
              "agent runs, and the rounds without an agent would not be; stop it first",
              file=sys.stderr)
        return 2
    # stopped with SIGTERM: the pods and any agent started go too (finally blocks run)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = baseline_tree(a.baseline) if a.baseline else None
    with PodNetwork() as net:
        results = [r for name in (a.only or ["nginx-tiny", "handler-1ms", "nginx-records"])
                   for r in scenario(net, name, a.rounds, a.seconds, base)]
    write_results(a.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
