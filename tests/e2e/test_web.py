"""The agent's web page in headless Chromium (Debian's `chromium`), and the JSON API behind it:
pods, service-map edges (pod -> pod, and external peers grouped), latency histograms
(root, real BPF, real pods)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from podscope.testing.kubeapi import KubeAPIServer, pod_object_for
from podscope.testing.pods import PodNetwork
from tests.conftest import ROOT, AgentProc, free_port, python_cmd
from tests.kernel.test_tcp import wait_for

NODE = "web-node-1"
ARTIFACTS = ROOT / "build" / "test-artifacts"


def overview(agent: AgentProc) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/api/v1/overview") as r:
        assert r.headers["Content-Type"] == "application/json"
        return dict(json.loads(r.read()))


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
                           "--disable-dev-shm-usage", "--no-first-run",
                           "--user-data-dir=" + str(ARTIFACTS / "chromium-profile"), *args],
                          capture_output=True, text=True, timeout=120)


def test_web_page_in_chromium(pods: PodNetwork, tmp_path: Path) -> None:
    front, back = pods.pod("frontend"), pods.pod("backend")
    p = back.popen(python_cmd("http_server.py", 8080), stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "listening"
    g = back.popen(python_cmd("grpc_server.py", 50051), stdout=subprocess.PIPE, text=True)
    assert g.stdout is not None and g.stdout.readline().strip() == "listening"
    # a server outside the cluster's pods: on the node, reached through the pods' gateway
    ext_port = free_port()
    ext = subprocess.Popen(python_cmd("http_server.py", ext_port), stdout=subprocess.PIPE,
                           text=True)
    api = KubeAPIServer().start()
    try:
        assert ext.stdout is not None and ext.stdout.readline().strip() == "listening"
        f_obj = pod_object_for(front, "shop", NODE, owner=("ReplicaSet", "frontend-5c7d"),
                               labels={"pod-template-hash": "5c7d"})
        f_obj["metadata"]["name"] = "frontend-5c7d-q8x2w"
        b_obj = pod_object_for(back, "shop", NODE, owner=("StatefulSet", "backend"))
        b_obj["metadata"]["name"] = "backend-0"
        api.add_pod(f_obj)
        api.add_pod(b_obj)
        agent = AgentProc(["--node-name", NODE, "--kubeconfig",
                           str(api.write_kubeconfig(tmp_path / "kubeconfig"))], tmp_path)
        try:
            wait_for(lambda: agent.metrics().value("podscope_metadata_api_up") == 1)
            out = front.run(python_cmd("http_client.py", back.ip, 8080, json.dumps(
                [["GET", "/status/200", 8], ["GET", "/status/500", 2]])))
            assert json.loads(out.stdout)["GET 500"] == 2
            out = front.run(python_cmd("grpc_client.py", back.ip, 50051, json.dumps({"ok": 5})))
            assert json.loads(out.stdout)["Unary OK"] == 5
            out = front.run(python_cmd("http_client.py", pods.gateway, ext_port, json.dumps(
                [["GET", "/status/200", 3]])))
            assert json.loads(out.stdout)["GET 200"] == 3

            f_id, b_id = "shop/frontend-5c7d-q8x2w", "shop/backend-0"

            def edges() -> dict[tuple[str, str], dict[str, Any]]:
                return {(e["from"], e["to"]): e for e in overview(agent)["edges"]}

            assert wait_for(lambda: edges().get((f_id, b_id), {}).get("requests_total") == 16
                            and edges().get((f_id, "external"), {}).get("requests_total") == 3,
                            timeout=15), edges()
            ov = overview(agent)
            e = edges()
            # 10 HTTP (2 of them 500s) + 5 unary gRPC + the streaming call, from the client side
            assert e[(f_id, b_id)]["errors_total"] == 2
            assert e[(f_id, b_id)]["protocols"] == ["grpc", "http"]
            assert e[(f_id, "external")]["peers"] == [f"{pods.gateway}:{ext_port}"]
            pods_by_id = {x["id"]: x for x in ov["pods"]}
            assert pods_by_id[b_id]["requests_total"] == 16
            assert pods_by_id[b_id]["errors_total"] == 2
            assert pods_by_id[b_id]["workload"] == "StatefulSet/backend"
            assert pods_by_id[f_id]["workload"] == "Deployment/frontend"
            assert 0 < pods_by_id[b_id]["p99_seconds"] < 1

            # the page, as a browser runs it
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            url = f"http://127.0.0.1:{agent.port}/"
            dom = chromium("--virtual-time-budget=6000", "--dump-dom", url)
            assert dom.returncode == 0, dom.stderr[-2000:]
            html = dom.stdout
            assert 'data-ready="1"' in html, html[:3000]
            for pod_id in (f_id, b_id):
                assert f'data-pod="{pod_id}"' in html
                assert f'data-node="{pod_id}"' in html  # on the service map
            assert f'data-edge="{f_id} -&gt; {b_id}"' in html
            assert f'data-edge="{f_id} -&gt; external"' in html
            assert f'data-hist="{b_id}"' in html
            shot = ARTIFACTS / "web-page.png"
            if shot.exists():
                shot.unlink()
            r = chromium("--virtual-time-budget=6000", "--window-size=1400,1600",
                         f"--screenshot={shot}", url)
            assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
            print(f"screenshot: {shot}")
        finally:
            agent.stop()
    finally:
        api.stop()
        ext.terminate()
        ext.wait(10)
        subprocess.run(["rm", "-rf", str(ARTIFACTS / "chromium-profile")], check=False)


def test_the_page_shows_the_slowest_requests_whole(pods: PodNetwork, tmp_path: Path) -> None:
    """With records on (--otlp here), /api/v1/traces holds the slowest whole requests of the
    window, every tree complete across the pods; the page draws them as waterfalls."""
    from podscope.testing.otlpreceiver import OtlpReceiver
    from tests.kernel.test_traces import N, run_client, three_tiers

    with three_tiers(pods) as p, OtlpReceiver() as rx:
        agent = AgentProc(["--otlp", rx.url], tmp_path)
        try:
            run_client(p)
            url = f"http://127.0.0.1:{agent.port}/"

            mine = {f"pod:{pod.uid}" for pod in p.values()}  # no Kubernetes API: pods by UID

            def trees() -> list[dict[str, Any]]:
                """The client's (the node's own, such as the OTLP export, are there too)."""
                with urllib.request.urlopen(url + "api/v1/traces") as r:
                    return [t for t in json.loads(r.read())["trees"] if mine & set(t["pods"])]

            def settled() -> bool:
                """Trees come out of the join's hold (2 s) one by one: the list as the page
                will read it is the one that no longer changes."""
                before = [t["trace_id"] for t in trees()]
                time.sleep(2.5)
                return len(before) >= 5 and before == [t["trace_id"] for t in trees()]

            assert wait_for(settled, timeout=30)
            got = trees()
            # five slowest per pod, of the N requests: each a whole tree of six spans
            assert 5 <= len(got) <= 4 * 5 and len(got) <= N
            for t in got:
                assert len(t["spans"]) == 6 and t["spans"][0]["depth"] == 0, t
                assert [s["depth"] for s in t["spans"]].count(3) == 2
                assert t["spans"][0]["role"] == "client"
                assert set(t["pods"]) == {s["pod"] for s in t["spans"]} and len(t["pods"]) == 4
            slowest = max(t["duration_seconds"] for t in got)
            assert got[0]["duration_seconds"] == slowest
            client = f"pod:{p['client'].uid}"
            dom = chromium("--virtual-time-budget=6000", "--dump-dom", url + "#traces=" + client)
            assert dom.returncode == 0, dom.stderr[-2000:]
            drawn = dom.stdout.count('class="tree"')
            assert drawn == min(len(got), 10), dom.stdout[:2000]  # the page shows ten
            for t in got[:3]:  # the slowest are drawn, each with its six bars
                i = dom.stdout.index(f'data-trace="{t["trace_id"]}"')
                assert dom.stdout[i:].split('class="tree"')[0].count('class="bar ') == 6
        finally:
            agent.stop()
