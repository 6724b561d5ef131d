"""`podscope top`: from a running agent's JSON API, and with its own probes when there is no
agent (root, real BPF, real pods)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from podscope.testing.pods import PodNetwork
from tests.conftest import PODSCOPE, AgentProc, python_cmd


def requests(client, server, n: int, path: str = "/status/200") -> None:  # type: ignore[no-untyped-def]
    out = client.run(python_cmd("http_client.py", server.ip, 8080,
                                json.dumps([["GET", path, n]])))
    assert sum(v for k, v in json.loads(out.stdout).items() if k.startswith("GET")) == n


def test_top_from_an_agent_and_alone(pods: PodNetwork, tmp_path: Path) -> None:
    server, client = pods.pod("server"), pods.pod("client")
    p = server.popen(python_cmd("http_server.py", 8080), stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "listening"
    agent = AgentProc([], tmp_path)
    try:
        requests(client, server, 9)
        requests(client, server, 3, "/status/503")
        url = f"http://127.0.0.1:{agent.port}"
        out = subprocess.run([PODSCOPE, "top", "--agent", url, "--once", "--interval", "0.5",
                              "--json"], capture_output=True, text=True, timeout=60, check=True)
        view = json.loads(out.stdout)
        row = next(x for x in view["pods"] if x["uid"] == server.uid)
        assert row["requests_total"] == 12 and row["errors_total"] == 3
        text = subprocess.run([PODSCOPE, "top", "--agent", url, "--once", "--interval", "0.5",
                               "--sort", "errors"], capture_output=True, text=True, timeout=60,
                              check=True, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}).stdout
        line = next(ln for ln in text.splitlines() if server.uid[:8] in ln)
        assert " 12 " in line and "25.0" in line, text  # 12 requests, 3 of them 5xx
        bad = subprocess.run([PODSCOPE, "top", "--agent", url, "--once", "--sort", "nonsense"],
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and "--sort" in bad.stderr
    finally:
        agent.stop()
    # no agent: top loads the probes itself
    top = subprocess.Popen([PODSCOPE, "top", "--local", "--once", "--interval", "8",
                            "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert top.stderr is not None
        deadline = time.monotonic() + 300
        while "probes run in this process" not in top.stderr.readline():  # loaded and attached
            assert top.poll() is None and time.monotonic() < deadline, top.stderr.read()
        requests(client, server, 7)
        out, err = top.communicate(timeout=60)
        assert top.returncode == 0, err
        row = next(x for x in json.loads(out)["pods"] if x["uid"] == server.uid)
        assert row["requests_total"] == 7
    finally:
        if top.poll() is None:
            top.kill()
            top.wait()
