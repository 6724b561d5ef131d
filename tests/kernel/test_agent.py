"""The agent as operators run it: attribution per cgroup driver and QoS, exports, check,
shutdown, and the clear errors of an unusable host."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from podscope import libbpf
from podscope.collectors.profile import perf_cpu_clock
from podscope.testing.pods import PodNetwork
from tests.conftest import PODSCOPE, AgentProc, python_cmd
from tests.kernel.test_tcp import start_server, wait_for


def test_both_cgroup_drivers_and_qos_classes(pods: PodNetwork, agent: AgentProc,
                                             tmp_path: Path) -> None:
    server = pods.pod("server", qos="guaranteed", driver="systemd")
    clients = [pods.pod("c1", qos="besteffort", driver="systemd"),
               pods.pod("c2", qos="guaranteed", driver="cgroupfs"),
               pods.pod("c3", qos="burstable", driver="cgroupfs")]
    start_server(server, 8080, 1000, tmp_path / "srv.jsonl")
    for i, c in enumerate(clients):
        out = json.loads(c.run(python_cmd("tcp_client.py", server.ip, 8080, i + 2, 100)).stdout)
        assert out["connections"] == i + 2
    m = agent.metrics()
    for i, c in enumerate(clients):
        series = m.series("podscope_tcp_connections_opened_total", direction="outbound",
                          k8s_pod_uid=c.uid)
        assert len(series) == 1, series
        assert series[0]["container_id"] == c.container_id
        assert series[0]["cgroup"] == "/" + c.cgroup_rel
        assert m.value("podscope_tcp_connections_opened_total", direction="outbound",
                       k8s_pod_uid=c.uid) == i + 2
    assert m.value("podscope_tcp_connections_opened_total", direction="inbound",
                   k8s_pod_uid=server.uid, container_id=server.container_id) == 2 + 3 + 4


def test_records_exported_one_per_connection(pods: PodNetwork, tmp_path: Path) -> None:
    server = pods.pod("server")
    client = pods.pod("client", driver="cgroupfs")
    jl, cs = tmp_path / "conn.jsonl", tmp_path / "conn.csv"
    a = AgentProc(["--export", f"jsonl:{jl}", "--export", f"csv:{cs}"], tmp_path)
    try:
        start_server(server, 8080, 5000, tmp_path / "srv.jsonl")
        truth = json.loads(client.run(python_cmd("tcp_client.py", server.ip, 8080, 7, 700)).stdout)
        time.sleep(1.5)
    finally:
        a.stop()
    recs = [r for x in jl.read_text().splitlines()
            if (r := json.loads(x))["type"] == "tcp_connection"]
    mine = [r for r in recs if r["k8s_pod_uid"] == client.uid]
    theirs = [r for r in recs if r["k8s_pod_uid"] == server.uid]
    assert len(mine) == 7 and len(theirs) == 7
    assert all(r["direction"] == "outbound" and r["dst_addr"] == server.ip and r["dst_port"] == 8080
               and r["src_addr"] == client.ip and r["src_port"] > 0 for r in mine)
    assert all(r["direction"] == "inbound" and r["src_port"] == 8080 for r in theirs)
    assert sum(r["sent_bytes"] for r in mine) == pytest.approx(truth["sent"], rel=0.01)
    assert sum(r["received_bytes"] for r in mine) == pytest.approx(truth["received"], rel=0.01)
    assert all(r["container_id"] == client.container_id and r["duration_seconds"] > 0
               and r["srtt_seconds"] > 0 and r["retransmits"] == 0 for r in mine)
    # the first record type seen takes PATH, the next PATH.<type>.csv (docs/records.md): which
    # one comes first depends on when each ring buffer is drained
    rows = [row for f in (cs, *tmp_path.glob("conn.*.csv"))
            for row in csv.DictReader(f.open()) if "srtt_seconds" in row]
    assert len(rows) == len(recs)
    assert {r["k8s_pod_uid"] for r in rows} >= {client.uid, server.uid}


def test_connect_failures_and_resets(pods: PodNetwork, agent: AgentProc) -> None:
    client = pods.pod("client")
    server = pods.pod("server")  # nothing listens: every SYN is answered with a reset
    script = ("import socket\nn=0\nfor _ in range(5):\n    try:\n"
              f"        socket.create_connection(('{server.ip}', 7777), timeout=5)\n"
              "    except ConnectionRefusedError:\n        n+=1\nprint(n)\n")
    assert client.run(["python3", "-c", script]).stdout.strip() == "5"
    m = agent.metrics()
    assert m.value("podscope_tcp_connect_failures_total", k8s_pod_uid=client.uid,
                   reason="ECONNREFUSED") == 5
    assert m.value("podscope_tcp_resets_received_total", k8s_pod_uid=client.uid) == 5
    assert m.value("podscope_tcp_resets_sent_total", k8s_pod_uid=server.uid) == 5


def _own_bpf_objects() -> tuple[int, int, int]:
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True,
                                      text=True, check=True).stdout or "[]")
    maps = json.loads(subprocess.run(["bpftool", "-j", "map", "show"], capture_output=True,
                                     text=True, check=True).stdout or "[]")
    links = json.loads(subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True,
                                      text=True, check=True).stdout or "[]")
    mine = {"tcp_state", "tcp_rst_send", "tcp_rst_recv", "tcp_drop", "tcp_iter"}
    return (sum(p.get("name") in mine for p in progs),
            sum(str(m.get("name", "")).startswith("tcp_") for m in maps), len(links))


def test_sigterm_exits_fast_and_leaves_nothing(tmp_path: Path) -> None:
    progs0, maps0, links0 = _own_bpf_objects()
    a = AgentProc([], tmp_path)
    assert a.metrics().series("podscope_events_lost_total")
    progs1, maps1, _ = _own_bpf_objects()
    assert progs1 == progs0 + 5 and maps1 > maps0
    took = a.stop()
    assert took < 2.0, f"agent took {took:.2f}s to exit"
    assert a.proc.returncode == 0
    assert wait_for(lambda: _own_bpf_objects() == (progs0, maps0, links0), timeout=3)
    assert not [p for p in os.listdir("/sys/fs/bpf") if "podscope" in p or p.startswith("tcp")]


def test_duration_stops_by_itself(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = subprocess.run([PODSCOPE, "run", "--duration", "1"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 10


def test_check_reports_this_kernel() -> None:
    r = subprocess.run([PODSCOPE, "check", "--json"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    probes = {p["name"]: p for p in rep["probes"]}
    # this host: no kprobes, no trampolines (KERNEL.md); everything podscope uses is there
    assert probes["kprobes"]["ok"] is False and "CONFIG_KPROBES" in probes["kprobes"]["detail"]
    assert probes["fentry"]["ok"] is False
    for name in ("socket tracepoints", "task storage", "bpf_task_pt_regs",
                 "kfree_skb drop reason"):
        assert probes[name]["ok"] is True, probes[name]
    sigs = rep["signals"]
    assert rep["default_ok"] and all(s["state"] == "works" for s in sigs), \
        [s for s in sigs if s["state"] != "works"]
    by = {(s["collector"], s["name"]): s for s in sigs}
    assert sum(c == "tcp" for c, _ in by) >= 5
    assert by[("tcp", "packet drops by reason")]["hooks"] == "tp_btf/kfree_skb"
    tls = ("HTTPS through TLS libraries (uprobes)",
           "new processes probed at exec and library load")
    reclaim = "request memory reclaim time"
    assert all(s["hooks"].startswith("socket tracepoints") for s in sigs
               if s["collector"] in ("http", "dns") and s["default"]
               and s["name"] not in (*tls, reclaim))
    assert by[("http", reclaim)]["hooks"].startswith("tp_btf/mm_vmscan_direct_reclaim_begin")
    assert by[("http", tls[0])]["hooks"].startswith("uprobes on the TLS libraries")
    assert "sched_process_exec" in by[("http", tls[1])]["hooks"]
    for coll in ("tcp", "http", "dns", "kernel", "sched", "netlat", "profile"):
        assert any(c == coll and s["load_ms"] > 0 for (c, _), s in by.items()), coll
    assert {"OOM kills by victim", "mount failures by errno",
            "CPU: switches, off-CPU time, run-queue delay"} <= {n for _, n in by}
    text = subprocess.run([PODSCOPE, "check"], capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and "default signals: all available" in text.stdout
    assert "Traceback" not in text.stdout + text.stderr


def _expect_clean_error(cmd: list[str], needle: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_not_root_is_a_clear_error() -> None:
    _expect_clean_error(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                         PODSCOPE, "run", "--duration", "1"], "must run as root")


def test_no_btf_is_a_clear_error() -> None:
    # a private mount namespace in which the kernel's BTF file is an empty file
    _expect_clean_error(["unshare", "-m", "sh", "-c",
                         f"mount --bind /dev/null /sys/kernel/btf/vmlinux && exec {PODSCOPE} run"],
                        "CONFIG_DEBUG_INFO_BTF")


def test_no_cgroup2_is_a_clear_error() -> None:
    from podscope.metadata.cgroups import cgroup2_mount

    mnt = cgroup2_mount()
    assert mnt
    _expect_clean_error(["unshare", "-m", "sh", "-c",
                         f"umount -l {mnt} && exec {PODSCOPE} check"], "no cgroup2")


LIBSSL = next(str(p) for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
                                "/usr/lib64", "/usr/lib")
              for p in sorted(Path(d).glob("libssl.so.*")) if p.is_file())


def test_every_object_loads_and_every_default_program_attaches() -> None:
    bpf_dir = Path(libbpf.bpf_object_path("tcp")).parent
    objs = sorted(bpf_dir.glob("*.bpf.o"))
    assert {o.name for o in objs} >= {"tcp.bpf.o", "features.bpf.o"}
    for path in objs:
        with libbpf.BpfObject(str(path)) as obj:
            if obj.name == "features":  # probes that must fail here are turned off
                for p in obj.programs():
                    p.autoload = p.name in ("probe_ringbuf", "probe_syscall_tp")
            obj.load()
            for p in obj.programs():
                if not p.autoload or p.section == "tracepoint":  # tail-call targets
                    continue
                if p.section.startswith("iter/"):
                    link = p.attach_iter()
                elif p.section == "perf_event":  # the profiler's sampler: on a CPU-clock event
                    link = p.attach_perf_event(perf_cpu_clock(0, 99))
                elif p.section in ("uprobe", "uretprobe"):  # attached per file: any one here
                    link = p.attach_uprobe(LIBSSL, "SSL_read", retprobe=p.section == "uretprobe")
                else:
                    link = p.attach()
                assert link.fd >= 0, p.name


def test_sigint_exits_cleanly_too(tmp_path: Path) -> None:
    import signal

    a = AgentProc([], tmp_path)
    t0 = time.monotonic()
    a.proc.send_signal(signal.SIGINT)
    assert a.proc.wait(10) == 0
    assert time.monotonic() - t0 < 2.0
    assert "Traceback" not in a.log.read_text()


def test_sigterm_under_scrapes_stops_every_time(tmp_path: Path) -> None:
    """SIGTERM while the agent is busy (scrapes in flight, its loop polling): it exits, every
    time, within 3 s (a handler that waits for a lock its own thread holds never returns)."""
    import signal
    import threading
    import urllib.request

    for i in range(8):
        run_dir = tmp_path / f"run{i}"
        run_dir.mkdir()
        a = AgentProc([], run_dir)
        stop = threading.Event()

        def scrape(agent: AgentProc = a, halt: threading.Event = stop) -> None:
            while not halt.is_set():
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/metrics",
                                                timeout=5) as r:
                        r.read()
                except OSError:
                    return

        threads = [threading.Thread(target=scrape) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.3 + 0.1 * i)  # the signal lands at a different point each round
        t0 = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        try:
            assert a.proc.wait(10) == 0
        finally:
            stop.set()
            for t in threads:
                t.join(10)
            a.stop()
        assert time.monotonic() - t0 < 3.0, f"round {i}: {time.monotonic() - t0:.1f}s"
        assert "Traceback" not in a.log.read_text(), a.log.read_text()
