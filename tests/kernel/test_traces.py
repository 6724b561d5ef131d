"""Distributed traces with nothing added to the traffic: a request's client and server spans get
their ids from its TCP position on both ends, a call made by the thread serving a request is that
request's child, and a traceparent the application sent wins (real BPF, real pods, an OTLP
receiver)."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from podscope.testing.otlpreceiver import OtlpReceiver
from podscope.testing.pods import Pod, PodNetwork
from tests.conftest import AgentProc, free_port, python_cmd
from tests.kernel.test_tcp import wait_for

N = 40  # requests of the client


def _hex(b64: str) -> str:
    return base64.b64decode(b64).hex() if b64 else ""


@dataclass
class Span:
    pod: str  # the pod's name
    kind: str  # SERVER or CLIENT
    trace: str
    id: str
    parent: str
    port: int  # server.port (both kinds)
    children: list[Span] = field(default_factory=list)


def spans_of(rx: OtlpReceiver, names: dict[str, str]) -> list[Span]:
    """The HTTP spans of the pods in `names` (uid -> name)."""
    out = []
    for res, sp in rx.spans():
        pod = names.get(res.get("k8s.pod.uid", ""))
        if pod is None:
            continue
        a = {kv["key"]: kv["value"] for kv in sp.get("attributes", [])}
        port = int(a.get("server.port", {}).get("intValue", 0))
        out.append(Span(pod, sp["kind"].removeprefix("SPAN_KIND_"), _hex(sp["traceId"]),
                        _hex(sp["spanId"]), _hex(sp.get("parentSpanId", "")), port))
    return out


def trees(spans: list[Span]) -> dict[str, list[Span]]:
    """Roots by trace id (a span whose parent is not among the spans is a root), children
    linked; a root's trace must be its whole tree's."""
    by_id = {s.id: s for s in spans}
    assert len(by_id) == len(spans), "span ids are unique"
    roots: dict[str, list[Span]] = defaultdict(list)
    for s in spans:
        p = by_id.get(s.parent)
        if p is None:
            roots[s.trace].append(s)
        else:
            assert p.trace == s.trace, (p, s)
            p.children.append(s)
    return roots


def shape(s: Span) -> Any:
    """A tree as nested (pod, kind, port) tuples, children sorted."""
    return (s.pod, s.kind, s.port, tuple(sorted(shape(c) for c in s.children)))


WANT = ("client", "CLIENT", 8000, (
    ("front", "SERVER", 8000, (
        ("front", "CLIENT", 8080, (("back1", "SERVER", 8080, ()),)),
        ("front", "CLIENT", 50051, (("back2", "SERVER", 50051, ()),)),
    )),
))


def serve(pod: Pod, *cmd: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    p = pod.popen(python_cmd(*cmd), stdout=subprocess.PIPE, text=True,
                  env={**os.environ, **(env or {})})
    assert p.stdout is not None and p.stdout.readline().strip() == "listening"
    return p


@contextmanager
def three_tiers(pods: PodNetwork, propagate: bool = False) -> Iterator[dict[str, Pod]]:
    """client -> front -> back1 (HTTP/1.1, /chunked/2) and back2 (gRPC unary over HTTP/2, from
    the handling thread: the h2 library; grpcio writes from threads of its own, see
    docs/traces.md)."""
    p = {n: pods.pod(n) for n in ("client", "front", "back1", "back2")}
    procs = [serve(p["back1"], "http_server.py", 8080), serve(p["back2"], "grpc_server.py", 50051),
             serve(p["front"], "http_front.py", 8000, f"{p['back1'].ip}:8080:/chunked/2",
                   f"h2grpc:{p['back2'].ip}:50051:/demo.Echo/Unary",
                   env={"FRONT_PROPAGATE": "1"} if propagate else None)]
    try:
        yield p
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


SERVICE_IP, SERVICE_PORT = "10.96.0.10", 80  # a Service's address, as kube-proxy NATs it


def dnat_to_front(p: dict[str, Pod]) -> None:
    """kube-proxy's part in the client pod's namespace: the Service address to the front pod
    (the rule goes with the namespace; deleted first anyway)."""
    rule = ["-p", "tcp", "-d", f"{SERVICE_IP}/32", "--dport", str(SERVICE_PORT), "-j", "DNAT",
            "--to-destination", f"{p['front'].ip}:8000"]
    p["client"].run(["iptables", "-t", "nat", "-A", "OUTPUT", *rule])
    p["client"].cleanups.append(lambda: p["client"].run(
        ["iptables", "-t", "nat", "-D", "OUTPUT", *rule], check=False))


def run_client(p: dict[str, Pod], traceparent: bool = False,
               service: bool = False) -> dict[str, Any]:
    host, port = (SERVICE_IP, SERVICE_PORT) if service else (p["front"].ip, 8000)
    out = p["client"].run(python_cmd("http_client.py", host, port,
                                     json.dumps([["GET", "/order", N]])),
                          env={**os.environ, "HTTP_CLIENT_TRACEPARENT": "1"} if traceparent
                          else None)
    got: dict[str, Any] = json.loads(out.stdout)
    assert got["GET 200"] == N, got
    return got


def collect(rx: OtlpReceiver, p: dict[str, Pod]) -> list[Span]:
    names = {pod.uid: n for n, pod in p.items()}

    def complete() -> bool:
        return len(spans_of(rx, names)) >= 6 * N

    assert wait_for(complete, timeout=30), len(spans_of(rx, names))
    return spans_of(rx, names)


def agent_for(rx: OtlpReceiver, tmp_path: Path, *args: str) -> AgentProc:
    cfg = tmp_path / "podscope.toml"
    cfg.write_text('otlp_interval = 1.0\ntrace_join_hold = "2s"\n')
    return AgentProc(["--otlp", rx.url, "--config", str(cfg), *args], tmp_path)


@pytest.mark.parametrize(("service", "streamed"), [(False, False), (True, False), (False, True)],
                         ids=["direct", "dnat", "streamed"])
def test_three_tiers_make_one_tree_per_request(pods: PodNetwork, tmp_path: Path,
                                               service: bool, streamed: bool) -> None:
    """N requests through client -> front -> two back ends: exactly N trees of six spans, every
    parent present, each tree under one trace id. With dnat, the client dials a Service address
    that a DNAT rule in its namespace sends to the front: its span names the Service, and the
    tree is the same. Streamed: with header capture every HTTP/1 byte is parsed in user space
    (not paired in the kernel): the same trees."""
    with three_tiers(pods) as p, OtlpReceiver() as rx:
        if service:
            dnat_to_front(p)
        agent = agent_for(rx, tmp_path, *(["--http-headers"] if streamed else []))
        try:
            run_client(p, service=service)
            spans = collect(rx, p)
        finally:
            agent.stop()
    roots = trees(spans)
    got = [shape(r) for rs in roots.values() for r in rs]
    assert len(spans) == 6 * N
    want = (WANT[0], WANT[1], SERVICE_PORT, WANT[3]) if service else WANT
    assert len(roots) == N and got == [want] * N, got[:3]


@pytest.mark.parametrize("streamed", [False, True], ids=["kernel", "streamed"])
def test_a_traceparent_the_client_sent_is_the_trees_trace(pods: PodNetwork, tmp_path: Path,
                                                          streamed: bool) -> None:
    """The client sends a traceparent per request (its own trace and span): each tree carries
    that trace id, and podscope's client span is a child of the application's span. Read by
    the kernel, or (streamed) by the HTTP/1 parser in user space."""
    with three_tiers(pods) as p, OtlpReceiver() as rx:
        agent = agent_for(rx, tmp_path, *(["--http-headers"] if streamed else []))
        try:
            sent = run_client(p, traceparent=True)["_traces"]
            spans = collect(rx, p)
        finally:
            agent.stop()
    roots = trees(spans)
    assert sorted(roots) == sorted(t for t, _ in sent)
    parents = {t: s for t, s in sent}
    for trace, rs in roots.items():
        assert [shape(r) for r in rs] == [WANT]
        assert rs[0].parent == parents[trace]


class NodeView:
    """What an agent on another node would send: this host's agent sees every pod (one kernel),
    so its spans go through here and only those of `uids` (the "node's" pods) go on to
    `upstream`. Metrics are dropped."""

    def __init__(self, uids: set[str], upstream: str):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        view = self
        self.passed = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (the http.server interface)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path == "/v1/traces":
                    req = trace_service_pb2.ExportTraceServiceRequest()
                    req.ParseFromString(body)
                    keep = [rs for rs in req.resource_spans if any(
                        a.key == "k8s.pod.uid" and a.value.string_value in uids
                        for a in rs.resource.attributes)]
                    del req.resource_spans[:]
                    req.resource_spans.extend(keep)
                    view.passed += sum(len(ss.spans) for rs in keep for ss in rs.scope_spans)
                    if keep:
                        urllib.request.urlopen(urllib.request.Request(
                            upstream + "/v1/traces", data=req.SerializeToString(),
                            headers={"Content-Type": "application/x-protobuf"}), timeout=10)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_instrumented_front_passes_its_traceparent_on(pods: PodNetwork,
                                                         tmp_path: Path) -> None:
    """The front passes the client's traceparent on to its calls, HTTP/1.1 and gRPC over HTTP/2
    (as an SDK would, but naming the client's span: the front exports none of its own): every
    span carries the client's trace id, the front's calls name the header's parent-id (the
    application's context wins over the thread's), and the back ends' server spans are their
    children."""
    with three_tiers(pods, propagate=True) as p, OtlpReceiver() as rx:
        agent = agent_for(rx, tmp_path)
        try:
            sent = run_client(p, traceparent=True)["_traces"]
            spans = collect(rx, p)
        finally:
            agent.stop()
    by_trace: dict[str, list[Span]] = defaultdict(list)
    for sp in spans:
        by_trace[sp.trace].append(sp)
    assert sorted(by_trace) == sorted(t for t, _ in sent)
    app_span = dict(sent)
    for trace, group in by_trace.items():
        ids = {sp.id: sp for sp in group}
        calls = [sp for sp in group if sp.pod == "front" and sp.kind == "CLIENT"]
        assert sorted(sp.port for sp in calls) == [8080, 50051]
        assert all(sp.parent == app_span[trace] for sp in calls)
        backs = [sp for sp in group if sp.pod.startswith("back")]
        assert sorted((sp.pod, ids[sp.parent].port) for sp in backs) == [
            ("back1", 8080), ("back2", 50051)]


def test_two_agents_join_across_nodes_through_the_relay(pods: PodNetwork,
                                                        tmp_path: Path) -> None:
    """Node A runs the client and the back ends, node B the front; each agent exports only its
    node's spans, with no wait of its own (it knows nothing of the other node's), to `podscope
    join`, which sends the joined trees to the collector: N whole trees, one trace id each,
    though no agent saw a whole tree."""
    with three_tiers(pods) as p, OtlpReceiver() as rx:
        port = free_port()
        relay = subprocess.Popen(python_cmd_module("join", "--listen", f"127.0.0.1:{port}",
                                                   "--otlp", rx.url, "--hold", "3s"),
                                 stderr=subprocess.PIPE, text=True)
        views = [NodeView({p[n].uid for n in ("client", "back1", "back2")},
                          f"http://127.0.0.1:{port}"),
                 NodeView({p["front"].uid}, f"http://127.0.0.1:{port}")]
        agents = []
        try:
            assert wait_for(lambda: _listening(port), timeout=20)
            for i, v in enumerate(views):
                d = tmp_path / f"node{i}"
                d.mkdir()
                (d / "podscope.toml").write_text('otlp_interval = 1.0\ntrace_join_hold = "0s"\n')
                agents.append(AgentProc(["--otlp", v.url, "--config", str(d / "podscope.toml")],
                                        d))
            run_client(p)
            spans = collect(rx, p)
            assert views[0].passed == 3 * N and views[1].passed == 3 * N
        finally:
            for a in agents:
                a.stop()
            for v in views:
                v.close()
            relay.terminate()
            relay.wait(10)
    roots = trees(spans)
    got = [shape(r) for rs in roots.values() for r in rs]
    assert len(spans) == 6 * N
    assert len(roots) == N and got == [WANT] * N, got[:3]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def python_cmd_module(*args: str) -> list[str]:
    """`podscope ARGS` with the test's interpreter."""
    return [sys.executable, "-m", "podscope", *args]


def test_trace_http_tree_prints_each_request_whole(pods: PodNetwork) -> None:
    """`podscope trace http --tree --json`: one object per request of the client, its six spans
    under one trace id, in tree order."""
    with three_tiers(pods) as p:
        tr = subprocess.Popen(python_cmd_module("trace", "http", "--tree", "--json",
                                                "--duration", "60s"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert tr.stderr is not None and tr.stderr.readline().startswith("tracing")
            run_client(p)
        finally:
            tr.send_signal(2)  # SIGINT: the trees gathered so far go out
            out, _ = tr.communicate(timeout=60)
    names = {pod.uid: n for n, pod in p.items()}
    trees = [json.loads(line) for line in out.splitlines()]
    ours = [t for t in trees if any(s.get("k8s_pod_uid") == p["client"].uid for s in t["spans"])]
    assert len(ours) == N, [len(t["spans"]) for t in ours]
    for t in ours:
        got = sorted((names.get(s["k8s_pod_uid"], "?"), s["role"]) for s in t["spans"])
        assert got == [("back1", "server"), ("back2", "server"), ("client", "client"),
                       ("front", "client"), ("front", "client"), ("front", "server")], got
        assert {s["trace_id"] for s in t["spans"]} == {t["trace_id"]}
