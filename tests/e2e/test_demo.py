"""`podscope demo`: the first thing a newcomer runs. Its pods talk, the agent sees the chain,
and everything is gone when it stops (root, real BPF, real pods)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.conftest import PODSCOPE, free_port
from tests.kernel.test_tcp import wait_for


def assert_no_demo_left() -> None:
    """No demo namespace and no demo process (a moment for the kernel to finish removing)."""
    time.sleep(0.5)
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "-loadgen" not in left and "-backend" not in left, left
    procs = subprocess.run(["pgrep", "-f", "podscope.testing.demo_apps"], capture_output=True,
                           text=True).stdout
    assert not procs.strip(), procs
    workdirs = list(Path(tempfile.gettempdir()).glob("podscope-demo-*"))  # its kubeconfig
    assert not workdirs, workdirs


def test_demo_shows_the_chain_and_cleans_up() -> None:
    port = free_port()
    demo = subprocess.Popen([PODSCOPE, "demo", "--duration", "15", "--listen",
                             f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        def edges() -> dict[tuple[str, str], float]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/overview",
                                            timeout=5) as r:
                    view = json.loads(r.read())
            except OSError:
                return {}
            return {(e["from"], e["to"]): e["requests_total"] for e in view["edges"]}

        want = {("shop/loadgen-4tz8p", "shop/frontend-7d9f8-x2kq5"),
                ("shop/frontend-7d9f8-x2kq5", "shop/backend-0")}
        assert wait_for(lambda: want <= {k for k, v in edges().items() if v >= 10},
                        timeout=40, step=1.0), edges()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'rpc_server_duration_seconds_count{' in text and 'k8s_pod_name="backend-0"' in text
        out, _ = demo.communicate(timeout=60)
        assert demo.returncode == 0, out
        assert f"http://127.0.0.1:{port}/" in out and "podscope top" in out
        assert "pods removed" in out
    finally:
        if demo.poll() is None:
            demo.terminate()
            demo.wait(60)
    assert_no_demo_left()


def test_a_killed_demo_is_cleaned_up_by_the_next_and_its_suggestions_work() -> None:
    """SIGKILL leaves the demo's pods behind; the next demo removes them before it starts. The
    commands it prints work as printed."""
    import re
    import signal

    port = free_port()
    first = subprocess.Popen([PODSCOPE, "demo", "--listen", f"127.0.0.1:{port}"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert first.stdout is not None
        lines = []
        for line in first.stdout:
            lines.append(line)
            if "Ctrl-C stops the demo" in line:
                break
        # the suggestions, as printed
        cmds = [ln.strip() for ln in lines if ln.strip().startswith("podscope trace http")]
        assert cmds, "".join(lines)
        argv = cmds[0].split()[1:] + ["--duration", "4"]
        out = subprocess.run([PODSCOPE, *argv], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert re.search(r"server +shop/backend-0 ", out.stdout), out.stdout[:500]
        printed = {c.split()[1]: c.split()[1:] for c in
                   (ln.strip() for ln in lines) if c.startswith("podscope ")
                   and not c.startswith("podscope demo")}
        assert set(printed) == {"top", "trace", "profile"}, printed
        top = subprocess.run([PODSCOPE, *printed["top"], "--once"], capture_output=True,
                             text=True, timeout=60)
        assert top.returncode == 0 and "backend-0" in top.stdout, top.stdout + top.stderr
        with tempfile.TemporaryDirectory() as tmp:
            prof = subprocess.run([PODSCOPE, *printed["profile"], "--duration", "2s", "--out",
                                   tmp], capture_output=True, text=True, timeout=120)
            assert prof.returncode == 0, prof.stderr
            assert any(f.endswith(".svg") for f in os.listdir(tmp)), os.listdir(tmp)
        # a name that matches nothing: one line with the closest candidates, exit 2
        wrong = [a.replace("shop/backend-0", "shop/backend-9") for a in argv]
        miss = subprocess.run([PODSCOPE, *wrong], capture_output=True, text=True, timeout=60)
        assert miss.returncode == 2, miss.stdout + miss.stderr
        assert miss.stderr.strip().count("\n") == 0 and "closest: shop/backend-0" in miss.stderr, \
            miss.stderr
        first.send_signal(signal.SIGKILL)  # no clean-up by itself
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "-backend" in left  # what SIGKILL left
    port2 = free_port()
    second = subprocess.run([PODSCOPE, "demo", "--duration", "3", "--listen",
                             f"127.0.0.1:{port2}"], capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "removed what an earlier demo left behind" in second.stderr
    assert_no_demo_left()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "psbrde30" not in links
