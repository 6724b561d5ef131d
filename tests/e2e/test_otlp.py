"""OTLP/HTTP export: one span per request (HTTP and gRPC, both sides) with semantic-convention
attributes and k8s resource attributes, and the metrics, decoded from the protobuf payloads
(root, real BPF, real pods)."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

from podscope.testing.kubeapi import KubeAPIServer, pod_object_for
from podscope.testing.otlpreceiver import OtlpReceiver, attrs
from podscope.testing.pods import PodNetwork
from tests.conftest import AgentProc, python_cmd
from tests.kernel.test_tcp import wait_for

NODE = "otlp-node-1"


def test_spans_and_metrics_over_otlp(pods: PodNetwork, tmp_path: Path) -> None:
    server, client = pods.pod("server"), pods.pod("client")
    p = server.popen(python_cmd("http_server.py", 8080), stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "listening"
    g = server.popen(python_cmd("grpc_server.py", 50051), stdout=subprocess.PIPE, text=True)
    assert g.stdout is not None and g.stdout.readline().strip() == "listening"
    api = KubeAPIServer().start()
    api.add_pod(pod_object_for(server, "shop", NODE, owner=("StatefulSet", "backend")))
    api.add_pod(pod_object_for(client, "shop", NODE, owner=("DaemonSet", "loadgen")))
    cfg = tmp_path / "podscope.toml"
    cfg.write_text("otlp_interval = 1.0\n")
    with OtlpReceiver() as rx:
        agent = AgentProc(["--otlp", rx.url, "--config", str(cfg), "--node-name", NODE,
                           "--kubeconfig", str(api.write_kubeconfig(tmp_path / "kubeconfig"))],
                          tmp_path)
        try:
            wait_for(lambda: agent.metrics().value("podscope_metadata_api_up") == 1)
            out = client.run(python_cmd("http_client.py", server.ip, 8080, json.dumps(
                [["GET", "/status/200", 6], ["GET", "/status/404", 2], ["GET", "/status/503", 3]])))
            assert json.loads(out.stdout)["GET 503"] == 3
            out = client.run(python_cmd("grpc_client.py", server.ip, 50051,
                                        json.dumps({"ok": 4, "internal": 2})))
            assert json.loads(out.stdout)["Unary INTERNAL"] == 2

            def spans_of(uid: str) -> list[tuple[dict, dict]]:  # type: ignore[type-arg]
                return [(r, s) for r, s in rx.spans() if r.get("k8s.pod.uid") == uid]

            # 11 HTTP + 6 unary + 1 streaming call, on each side
            assert wait_for(lambda: len(spans_of(server.uid)) == 18
                            and len(spans_of(client.uid)) == 18, timeout=20), (
                len(spans_of(server.uid)), len(spans_of(client.uid)))
        finally:
            agent.stop()
            api.stop()
        assert not rx.errors
        for uid, kind, name in ((server.uid, "SPAN_KIND_SERVER", "backend"),
                                (client.uid, "SPAN_KIND_CLIENT", "loadgen")):
            got = spans_of(uid)
            res = got[0][0]
            assert res["k8s.pod.uid"] == uid and res["k8s.namespace.name"] == "shop"
            assert res["k8s.node.name"] == NODE and res["service.name"] == name
            assert res["k8s.container.name"] == "main" and len(res["container.id"]) == 64
            assert {s["kind"] for _, s in got} == {kind}
            http = Counter()
            for _, s in got:
                a = attrs(s["attributes"])
                assert int(s["endTimeUnixNano"]) > int(s["startTimeUnixNano"])
                assert len(s["traceId"]) and len(s["spanId"])
                if "http.request.method" in a:
                    assert s["name"] == "GET /status/{id}" and a["http.route"] == "/status/{id}"
                    code = a["http.response.status_code"]
                    http[code] += 1
                    error = code >= 500 or (kind == "SPAN_KIND_CLIENT" and code >= 400)
                    assert (s.get("status", {}).get("code") == "STATUS_CODE_ERROR") == error, s
                else:
                    assert a["rpc.system"] == "grpc" and a["rpc.service"] == "demo.Echo"
                    assert s["name"] == f"demo.Echo/{a['rpc.method']}"
                    error = a["rpc.grpc.status_code"] == 13  # INTERNAL: an error both sides
                    assert (s.get("status", {}).get("code") == "STATUS_CODE_ERROR") == error, s
            assert http == Counter({200: 6, 404: 2, 503: 3})
        # metrics: the semantic-convention histogram per pod resource, with its attributes
        metrics = rx.last_metrics()
        durations = [(r, m) for r, m in metrics if m["name"] == "http.server.request.duration"
                     and r.get("k8s.pod.uid") == server.uid]
        assert durations
        points = durations[0][1]["histogram"]["dataPoints"]
        by_code = Counter()
        for pt in points:
            a = attrs(pt["attributes"])
            by_code[a["http.response.status_code"]] += int(pt["count"])
            assert a["http.route"] == "/status/{id}" and durations[0][1]["unit"] == "s"
            assert len(pt["explicitBounds"]) + 1 == len(pt["bucketCounts"])
            assert sum(int(c) for c in pt["bucketCounts"]) == int(pt["count"])
        assert by_code == Counter({"200": 6, "404": 2, "503": 3})
        opened = [m for r, m in metrics if m["name"] == "podscope_tcp_connections_opened"
                  and r.get("k8s.pod.uid") == server.uid]
        assert opened and opened[0]["sum"]["isMonotonic"]
        inbound = sum(float(pt.get("asDouble", 0)) for pt in opened[0]["sum"]["dataPoints"]
                      if attrs(pt["attributes"]).get("direction") == "inbound")
        assert inbound == 2  # the HTTP connection and the gRPC channel
