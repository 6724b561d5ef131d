"""HTTP/1.x requests per pod against real servers and clients, counted by the clients themselves
(root, real BPF)."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from podscope.testing.pods import Pod, PodNetwork
from podscope.testing.servers import start_nginx
from podscope.trace import format_line as trace_format
from tests.conftest import PODSCOPE, AgentProc, Metrics, python_cmd
from tests.kernel.test_tcp import wait_for

SERVER_HIST = "http_server_request_duration_seconds_count"
CLIENT_HIST = "http_client_request_duration_seconds_count"


def start_py_server(pod: Pod, port: int = 8080) -> None:
    p = pod.popen(python_cmd("http_server.py", port), stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "listening"


def by_method_status(m: Metrics, name: str, **labels: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for s in m.samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            out[f"{s.labels['http_request_method']} {s.labels['http_response_status_code']}"] += \
                int(s.value)
    return out


def records(path: Path, **match: Any) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    # the agent may be writing: a last line without its newline is not there yet
    for line in path.read_text().split("\n")[:-1]:
        r = json.loads(line)
        if r.get("type") == "http_request" and all(r.get(k) == v for k, v in match.items()):
            out.append(r)
    return out


def wait_records(path: Path, n: int, timeout: float = 10.0, **match: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = records(path, **match)
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_nginx_with_ab_and_http_client_exact_counts(pods: PodNetwork, tmp_path: Path) -> None:
    server = pods.pod("server", driver="systemd")
    client = pods.pod("client", qos="besteffort", driver="cgroupfs")
    start_nginx(server)
    agent = AgentProc([], tmp_path)
    try:
        out = client.run(["ab", "-n", "231", "-c", "3", "-k", f"http://{server.ip}/ok"]).stdout
        assert re.search(r"Complete requests:\s+231\b", out), out
        assert re.search(r"Failed requests:\s+0\b", out), out
        assert "Non-2xx" not in out
        keepalive = int(re.search(r"Keep-Alive requests:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
        assert keepalive >= 200  # the connections were reused
        plan = [["GET", "/ok", 17], ["GET", "/missing", 11], ["GET", "/error", 7],
                ["HEAD", "/ok", 5], ["POST", "/ok", 3, 1000]]
        truth = Counter(json.loads(client.run(
            python_cmd("http_client.py", server.ip, 80, json.dumps(plan))).stdout))
        assert truth.pop("_connections") >= 1  # nginx closes after a 500
        truth["GET 200"] += 231  # ab
        time.sleep(0.5)
        m = agent.metrics()
        assert by_method_status(m, SERVER_HIST, k8s_pod_uid=server.uid) == truth
        assert by_method_status(m, CLIENT_HIST, k8s_pod_uid=client.uid,
                                server_address=server.ip, server_port="80") == truth
        # nothing attributed the other way round
        assert not by_method_status(m, SERVER_HIST, k8s_pod_uid=client.uid)
        assert m.value("podscope_http_requests_unanswered_total", k8s_pod_uid=server.uid) == 0
        for src in ("http_records", "http_stream"):
            assert m.value("podscope_events_lost_total", source=src) == 0
    finally:
        agent.stop()


@pytest.mark.parametrize("capture", ["kernel", "stream", "syscalls"])
def test_python_server_status_mix_and_latency(pods: PodNetwork, tmp_path: Path,
                                               capture: str) -> None:
    """The same exact counts whether the kernel pairs (default) or user space parses every byte
    (header capture streams the connection), and with the syscall-tracepoint hooks that kernels
    without the socket tracepoints use."""
    server = pods.pod("server")
    client = pods.pod("client")
    start_py_server(server)
    exp = tmp_path / "http.jsonl"
    args = ["--export", f"jsonl:{exp}"] + (["--http-headers"] if capture == "stream" else [])
    if capture == "syscalls":
        cfg = tmp_path / "podscope.toml"
        cfg.write_text('http_hooks = "syscalls"\n')
        args += ["--config", str(cfg)]
    agent = AgentProc(args, tmp_path)
    try:
        plan = [["GET", "/status/200", 13], ["GET", "/status/404", 7], ["GET", "/status/500", 5],
                ["DELETE", "/users/42", 3], ["GET", "/sleep/50", 21],
                ["PUT", "/upload", 2, 70000], ["GET", "/status/204", 2],
                ["GET", "/status/304", 2], ["HEAD", "/chunked/3", 2], ["GET", "/chunked/4", 2],
                ["GET", "/split", 3], ["GET", "/status/201", 1], ["GET", "/slow/100/150", 3]]
        truth = Counter(json.loads(client.run(
            python_cmd("http_client.py", server.ip, 8080, json.dumps(plan))).stdout))
        assert truth.pop("_connections") == 1
        total = sum(truth.values())
        recs = wait_records(exp, total, role="server", k8s_pod_uid=server.uid)
        assert len(recs) == total
        assert {r["capture"] for r in recs} == {"stream" if capture == "stream" else "kernel"}
        m = agent.metrics()
        assert by_method_status(m, SERVER_HIST, k8s_pod_uid=server.uid) == truth
        assert by_method_status(m, CLIENT_HIST, k8s_pod_uid=client.uid) == truth
        assert m.value(SERVER_HIST, k8s_pod_uid=server.uid, http_route="/status/{id}",
                       http_response_status_code="500") == 5
        assert m.value(SERVER_HIST, k8s_pod_uid=server.uid, http_route="/users/{id}",
                       http_request_method="DELETE") == 3
        slow = [r["duration_seconds"] for r in recs if r["path"] == "/sleep/50"]
        assert len(slow) == 21
        p50 = statistics.median(slow)
        assert 0.050 <= p50 <= 0.055, slow
        client_recs = records(exp, role="client", k8s_pod_uid=client.uid)
        assert Counter(f"{r['method']} {r['status']}" for r in client_recs) == truth
        # time to first byte apart from the download: /slow/100/150 sends its head after 0.1 s
        # and the last half of its body 0.15 s later
        for side, rs in (("server", recs), ("client", client_recs)):
            slow_fb = [(r["first_byte_seconds"], r["duration_seconds"]) for r in rs
                       if r["path"] == "/slow/100/150"]
            assert len(slow_fb) == 3 and all(0.1 <= fb < 0.13 and 0.25 <= d < 0.3
                                             for fb, d in slow_fb), (side, slow_fb)
            assert all(0 < r["first_byte_seconds"] <= r["duration_seconds"] for r in rs), side
            uid = server.uid if side == "server" else client.uid
            fb = f"podscope_http_{side}_time_to_first_byte_seconds"
            dur = f"http_{side}_request_duration_seconds"
            assert m.value(fb + "_count", k8s_pod_uid=uid) == total
            assert 0.3 <= m.value(fb + "_sum", k8s_pod_uid=uid, http_route="/slow/{id}/{id}") \
                < 0.39
            assert m.value(fb + "_sum", k8s_pod_uid=uid) < m.value(dur + "_sum", k8s_pod_uid=uid)
        assert all(r["peer_addr"] == server.ip and r["peer_port"] == 8080 for r in client_recs)
        if capture == "stream":
            assert m.value("podscope_http_connections_streamed_total") >= 2
        # one connection: one id on each side, made the same way in every hook set
        assert len({r["connection_id"] for r in recs}) == 1
        assert len({r["connection_id"] for r in client_recs}) == 1
    finally:
        agent.stop()


@pytest.mark.parametrize("capture", ["kernel", "stream"])
def test_chunked_responses_of_100kb_written_at_once(pods: PodNetwork, tmp_path: Path,
                                                   capture: str) -> None:
    """A server that writes each 100 KB chunked body in one syscall (the kernel captures 8 KB of
    it): every request counted, with the kernel pairing and with headers captured (streamed)."""
    server = pods.pod("server")
    client = pods.pod("client")
    start_py_server(server)
    args = ["--http-headers"] if capture == "stream" else []
    agent = AgentProc(args, tmp_path)
    try:
        plan = [["GET", "/bigchunked/100000", 15], ["GET", "/status/404", 4],
                ["GET", "/bigchunked/100000", 5], ["HEAD", "/bigchunked/100000", 2]]
        truth = Counter(json.loads(client.run(
            python_cmd("http_client.py", server.ip, 8080, json.dumps(plan))).stdout))
        assert truth.pop("_connections") == 1
        assert truth == {"GET 200": 20, "GET 404": 4, "HEAD 200": 2}
        wait_for(lambda: by_method_status(agent.metrics(), SERVER_HIST,
                                          k8s_pod_uid=server.uid) == truth, timeout=10)
        m = agent.metrics()
        assert by_method_status(m, CLIENT_HIST, k8s_pod_uid=client.uid) == truth
        assert m.value("podscope_http_parse_errors_total") == 0
        if capture == "stream":
            assert m.value("podscope_http_connections_streamed_total") >= 2
    finally:
        agent.stop()


def test_pipelining_framing_and_fd_reuse(pods: PodNetwork, tmp_path: Path) -> None:
    server = pods.pod("server")
    client = pods.pod("client")
    start_py_server(server)
    exp = tmp_path / "http.jsonl"
    agent = AgentProc(["--export", f"jsonl:{exp}"], tmp_path)
    try:
        srv = {"role": "server", "k8s_pod_uid": server.uid}
        # three requests in one write
        out = json.loads(client.run(python_cmd("http_raw.py", "pipeline", server.ip, 8080)).stdout)
        assert [s for s, _ in out["responses"]] == [200, 404, 500]
        recs = wait_records(exp, 3, **srv)
        assert [(r["path"], r["status"]) for r in recs] == [
            ("/status/200", 200), ("/status/404", 404), ("/status/500", 500)]
        assert len({r["connection_id"] for r in recs}) == 1
        crecs = wait_records(exp, 3, role="client", k8s_pod_uid=client.uid)
        assert [(r["path"], r["status"]) for r in crecs] == [
            ("/status/200", 200), ("/status/404", 404), ("/status/500", 500)]
        assert [r["response_bytes"] for r in crecs] == [b for _, b in out["responses"]]

        # a chunked response: one record, its exact size
        exp.write_text("")
        out = json.loads(client.run(python_cmd("http_raw.py", "chunked", server.ip, 8080, 40)).stdout)
        recs = wait_records(exp, 1, **srv)
        crecs = wait_records(exp, 1, role="client", k8s_pod_uid=client.uid)
        assert len(recs) == 1 and len(crecs) == 1
        for r in recs + crecs:
            assert (r["status"], r["response_bytes"], r["request_bytes"]) == (
                200, out["response_bytes"], out["request_bytes"])

        # a 5 MB request body over many reads: one record, its exact size
        exp.write_text("")
        size = 5 * 1024 * 1024
        out = json.loads(client.run(python_cmd("http_raw.py", "upload", server.ip, 8080, size)).stdout)
        assert out["status"] == 200
        recs = wait_records(exp, 1, **srv)
        crecs = wait_records(exp, 1, role="client", k8s_pod_uid=client.uid)
        assert len(recs) == 1 and len(crecs) == 1
        for r in recs + crecs:
            assert (r["method"], r["request_bytes"], r["response_bytes"]) == (
                "POST", out["request_bytes"], out["response_bytes"])

        # 100 Continue is not the answer: one record with the final status and every byte
        exp.write_text("")
        out = json.loads(client.run(python_cmd("http_raw.py", "continue", server.ip, 8080,
                                               30000)).stdout)
        assert (out["interim"], out["status"]) == (100, 200)
        recs = wait_records(exp, 1, **srv) + wait_records(exp, 1, role="client",
                                                          k8s_pod_uid=client.uid)
        assert [(r["status"], r["request_bytes"], r["response_bytes"]) for r in recs] == [
            (200, out["request_bytes"], out["response_bytes"])] * 2

        # a response without a length, ended by the connection's close
        exp.write_text("")
        out = json.loads(client.run(python_cmd("http_raw.py", "close", server.ip, 8080,
                                               70000)).stdout)
        recs = wait_records(exp, 1, **srv) + wait_records(exp, 1, role="client",
                                                          k8s_pod_uid=client.uid)
        assert [(r["status"], r["response_bytes"]) for r in recs] == [
            (200, out["response_bytes"])] * 2

        # a closed fd reused for a new connection: nothing pairs across the two
        exp.write_text("")
        out = json.loads(client.run(python_cmd("http_raw.py", "fdreuse", server.ip, 8080)).stdout)
        assert out["same_fd"] and out["status_b"] == 202
        time.sleep(1.0)
        crecs = wait_records(exp, 2, role="client", k8s_pod_uid=client.uid)
        by_path = {r["path"]: r for r in crecs}
        assert by_path["/status/202"]["status"] == 202
        assert by_path["/sleep/300"]["status"] is None  # closed unanswered
        assert by_path["/sleep/300"]["connection_id"] != by_path["/status/202"]["connection_id"]
        m = agent.metrics()
        assert m.value("podscope_http_requests_unanswered_total", k8s_pod_uid=client.uid,
                       role="client", reason="no_response") == 1
        assert m.value("podscope_http_connections_streamed_total") == 2  # the pipelined pair
    finally:
        agent.stop()


def raw_client_halfway(pods: PodNetwork, mode: str, *args: object) -> tuple[
        Pod, Pod, subprocess.Popen[str]]:
    """A server pod, and a client pod whose http_raw.py (mode) has said "ready": it goes on
    when go() is called."""
    server = pods.pod("server")
    client = pods.pod("client")
    start_py_server(server)
    p = client.popen(python_cmd("http_raw.py", mode, server.ip, 8080, *args),
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline().strip() == "ready"
    return server, client, p


def go(p: subprocess.Popen[str]) -> list[int]:
    """The raw client goes on; its statuses when it is done."""
    assert p.stdout is not None and p.stdin is not None
    p.stdin.write("go\n")
    p.stdin.flush()
    return list(json.loads(p.stdout.readline())["statuses"])


def test_connection_opened_before_the_agent(pods: PodNetwork, tmp_path: Path) -> None:
    server, client, p = raw_client_halfway(pods, "preexisting", 9)
    agent = AgentProc([], tmp_path)
    try:
        statuses = go(p)
        truth = Counter(f"GET {s}" for s in statuses)
        m = agent.metrics()
        assert by_method_status(m, SERVER_HIST, k8s_pod_uid=server.uid) == truth
        assert by_method_status(m, CLIENT_HIST, k8s_pod_uid=client.uid) == truth
    finally:
        agent.stop()


def test_agent_started_in_the_middle_of_a_long_body_finds_the_next_requests(
        pods: PodNetwork, tmp_path: Path) -> None:
    """The agent starts while a 200 kB upload is halfway: the connection shows no HTTP head for
    far more syscalls than the kernel tries before giving up on it. It still looks again (every
    64th syscall), so the keep-alive requests that follow are found: from one on, every one."""
    server, client, p = raw_client_halfway(pods, "midbody", 150)
    exp = tmp_path / "records.jsonl"
    agent = AgentProc(["--export", f"jsonl:{exp}"], tmp_path)
    try:
        assert go(p) == [200] * 151
        for pod, role in ((server, "server"), (client, "client")):
            first = wait_records(exp, 1, k8s_pod_uid=pod.uid, role=role)
            assert first, role
            want = 150 - int(first[0]["path"].rsplit("/", 1)[1])
            got = [int(r["path"].rsplit("/", 1)[1])
                   for r in wait_records(exp, want, k8s_pod_uid=pod.uid, role=role)]
            assert got and got == list(range(got[0], 150)) and got[0] <= 100, (role, got)
            assert all(r["status"] == 200
                       for r in records(exp, k8s_pod_uid=pod.uid, role=role))
    finally:
        agent.stop()


def test_request_timeout_counts_unanswered(pods: PodNetwork, tmp_path: Path) -> None:
    server = pods.pod("server")
    client = pods.pod("client")
    start_py_server(server)
    cfg = tmp_path / "podscope.toml"
    cfg.write_text("http_request_timeout = 1.0\nmaintain_interval = 0.5\n")
    agent = AgentProc(["--config", str(cfg)], tmp_path)
    try:
        plan = [["GET", "/sleep/3000", 1], ["GET", "/status/200", 1]]
        client.run(python_cmd("http_client.py", server.ip, 8080, json.dumps(plan)))
        m = agent.metrics()
        for pod, role in ((server, "server"), (client, "client")):
            assert m.value("podscope_http_requests_unanswered_total", k8s_pod_uid=pod.uid,
                           role=role, reason="timeout") == 1
        # the late response is not counted again; the next request is
        assert by_method_status(m, SERVER_HIST, k8s_pod_uid=server.uid) == {"GET 200": 1}
    finally:
        agent.stop()


def test_no_credentials_in_any_export(pods: PodNetwork, tmp_path: Path) -> None:
    server = pods.pod("server")
    client = pods.pod("client")
    start_py_server(server)
    jl, csv = tmp_path / "r.jsonl", tmp_path / "r.csv"
    agent = AgentProc(["--export", f"jsonl:{jl}", "--export", f"csv:{csv}", "--http-headers"],
                      tmp_path)
    try:
        plan = [["GET", "/status/200?token=query-secret-value&page=2", 3], ["POST", "/upload", 2, 10]]
        client.run(python_cmd("http_client.py", server.ip, 8080, json.dumps(plan)))
        recs = wait_records(jl, 5, role="server", k8s_pod_uid=server.uid)
        assert len(recs) == 5
        names = {k.lower() for r in recs for k, _ in r["request_headers"]}
        assert {"authorization", "cookie", "host"} <= names
        assert any(k.lower() == "set-cookie" for r in recs for k, _ in r["response_headers"])
        assert recs[0]["path"] == "/status/200?token=<redacted>&page=<redacted>"
    finally:
        agent.stop()
    for f in (jl, csv, *tmp_path.glob("r.*.csv")):
        text = f.read_text()
        for secret in ("client-secret-token", "client-secret-cookie", "server-secret-cookie",
                       "query-secret-value"):
            assert secret not in text, (f, secret)
    # the first record type seen takes PATH, the next PATH.<type>.csv (docs/records.md): which
    # one comes first depends on when each ring buffer is drained
    assert any("<redacted>" in f.read_text() for f in (csv, *tmp_path.glob("r.*.csv")))


def test_trace_cli_filters(pods: PodNetwork, tmp_path: Path) -> None:
    server = pods.pod("server")
    client = pods.pod("client")
    start_py_server(server)
    trace = subprocess.Popen([PODSCOPE, "trace", "http", "--pod", server.uid, "--status", "404",
                              "--json", "--duration", "60"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert trace.stderr is not None and "tracing" in trace.stderr.readline()
        plan = [["GET", "/status/200", 4], ["GET", "/status/404", 3], ["GET", "/sleep/60", 2]]
        client.run(python_cmd("http_client.py", server.ip, 8080, json.dumps(plan)))
        time.sleep(1.0)
    finally:
        trace.send_signal(subprocess.signal.SIGINT)  # type: ignore[attr-defined]
        out, _ = trace.communicate(timeout=10)
    recs = [json.loads(x) for x in out.splitlines()]
    assert [(r["role"], r["status"], r["path"]) for r in recs] == [("server", 404, "/status/404")] * 3
    slow = subprocess.run([PODSCOPE, "trace", "http", "--min-duration", "bogus"],
                          capture_output=True, text=True)
    assert slow.returncode == 2 and "--min-duration" in slow.stderr


def server_records_of(exp: Path, target: str, n: int) -> list[dict[str, Any]]:
    """The server records of one path, once there are n of them (or after 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        got = [r for r in records(exp, role="server") if r["path"] == target]
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_where_server_time_went(pods: PodNetwork, tmp_path: Path) -> None:
    """A handler that sleeps 50 ms is blocked, by sleep, for 50 ms; a handler that computes for
    30 ms on a CPU it shares with two busy neighbours mostly waits in the run queue."""
    server, client, busy = pods.pod("server"), pods.pod("client"), pods.pod("neighbour")
    p = server.popen(["taskset", "-c", "0", *python_cmd("http_server.py", 8080)],
                     stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "listening"
    exp = tmp_path / "http.jsonl"
    cfg = tmp_path / "podscope.toml"
    cfg.write_text("http_breakdown_reasons = true\n")
    agent = AgentProc(["--export", f"jsonl:{exp}", "--config", str(cfg)], tmp_path)
    try:
        plan = [["GET", "/sleep/50", 10]]
        client.run(python_cmd("http_client.py", server.ip, 8080, json.dumps(plan)))
        recs = server_records_of(exp, "/sleep/50", 10)
        assert len(recs) == 10
        reasons = [k for k in recs[0] if k.startswith("blocked_") and k != "blocked_seconds"]
        # a sched_switch the probe did not see (one way: on these VMs BPF does not run while PID 1's
        # threads are current: KERNEL.md) leaves a request's reasons all zero: one in ten at most
        missed = [r for r in recs if not any(r[k] for k in reasons)]
        assert len(missed) <= 1, missed
        for r in recs:
            print({k: v for k, v in r.items() if "seconds" in k})
            assert 0.045 <= r["blocked_seconds"] < 0.07, r
            assert r["on_cpu_seconds"] < 0.01 and r["runqueue_seconds"] < 0.01, r
            assert r in missed or r["blocked_sleep_seconds"] >= 0.8 * r["blocked_seconds"], r
            parts = r["on_cpu_seconds"] + r["runqueue_seconds"] + r["blocked_seconds"]
            assert parts == pytest.approx(r["first_byte_seconds"], abs=1e-6)
        burners = [busy.popen(["taskset", "-c", "0", *python_cmd("kernel_workload.py", "burn", 8)],
                              stdout=subprocess.DEVNULL) for _ in range(2)]
        try:
            time.sleep(0.5)
            plan = [["GET", "/work/30000", 6]]
            client.run(python_cmd("http_client.py", server.ip, 8080, json.dumps(plan)))
        finally:
            for b in burners:
                b.kill()
                b.wait()
        recs = server_records_of(exp, "/work/30000", 6)
        assert len(recs) == 6
        for r in recs:
            print({k: v for k, v in r.items() if "seconds" in k})
            assert r["runqueue_seconds"] > r["on_cpu_seconds"], r
            assert r["runqueue_seconds"] > r["blocked_seconds"], r
            assert r["runqueue_seconds"] >= 0.4 * r["first_byte_seconds"], r
        # `trace http` shows the same breakdown
        line = trace_format(recs[0])
        assert "rq " in line and "cpu " in line
    finally:
        agent.stop()
