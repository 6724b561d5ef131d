"""Shared fixtures: real test pods, a real agent process, its /metrics parsed."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from podscope.testing.pods import PodNetwork

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
PODSCOPE = shutil.which("podscope", path=str(Path(sys.executable).parent)) or "podscope"


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # pytest then tears the fixtures down: pods, cgroups, agents


# A test run stopped with SIGTERM (a CI timeout, a killed make) cleans up as Ctrl-C does.
signal.signal(signal.SIGTERM, _terminated)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Metrics:
    def __init__(self, text: str):
        self.samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]

    def value(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def series(self, name: str, **labels: str) -> list[dict[str, str]]:
        return [s.labels for s in self.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


# Waits scale with this factor: the kernel matrix runs the same tests under software emulation.
SLOW = float(os.environ.get("PODSCOPE_TEST_SLOW", "1"))


class AgentProc:
    def __init__(self, args: list[str], tmp: Path, port: int | None = None):
        self.port = port or free_port()
        self.log = tmp / f"agent-{self.port}.log"
        self._logf = open(self.log, "w")  # noqa: SIM115
        t0 = time.monotonic()
        self.proc = subprocess.Popen([PODSCOPE, "run", "--listen", f"127.0.0.1:{self.port}", *args],
                                     stdout=self._logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30 * SLOW
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                self.get("/healthz")
                self.started_in = time.monotonic() - t0  # start to healthy, seconds
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"agent did not come up: {self.log.read_text()}")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=20) as r:
            return str(r.read().decode())

    def metrics(self) -> Metrics:
        return Metrics(self.get("/metrics"))

    def stop(self) -> float:
        """SIGTERM; returns seconds until exit."""
        if self.proc.poll() is not None:
            return 0.0
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._logf.close()
        return time.monotonic() - t0


@pytest.fixture
def pods() -> Iterator[PodNetwork]:
    if os.geteuid() != 0:
        pytest.fail("kernel tests run as root (make test runs them as root)")
    with PodNetwork() as net:
        yield net


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProc]:
    a = AgentProc([], tmp_path)
    yield a
    a.stop()


def python_cmd(script: str, *args: object) -> list[str]:
    return [sys.executable, str(FIXTURES / script), *map(str, args)]
