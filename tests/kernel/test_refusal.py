"""One program the kernel refuses costs its own signal, never the rest of the object, nor the
agent (a real verifier refusal: tests/fixtures/refused.bpf.c, built here with clang)."""

from __future__ import annotations

import ctypes as ct
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from podscope import libbpf
from podscope.agent import Agent
from podscope.collectors import registry
from podscope.config import Config
from podscope.features import Signal
from tests.conftest import FIXTURES, ROOT


@pytest.fixture(scope="module")
def refused_obj(tmp_path_factory: pytest.TempPathFactory) -> str:
    clang = shutil.which("clang-16") or shutil.which("clang-19") or shutil.which("clang")
    assert clang, "clang (make installs clang-16)"
    out = tmp_path_factory.mktemp("bpf") / "refused.bpf.o"
    bpf = ROOT / "src" / "podscope" / "bpf"
    subprocess.run([clang, "-target", "bpf", "-D__TARGET_ARCH_x86", "-g", "-O2", "-Wall",
                    "-Werror", f"-I{ROOT / 'build'}", f"-I{bpf}", f"-I{bpf / 'include'}", "-c",
                    str(FIXTURES / "refused.bpf.c"), "-o", str(out)], check=True)
    return str(out)


def test_an_optional_refused_program_is_dropped_and_the_rest_loads(refused_obj: str) -> None:
    with libbpf.BpfObject(refused_obj, "refusal") as o:
        o.load(optional=["refused"])
        assert set(o.refused) == {"refused"}
        assert "map_value_or_null" in o.refused["refused"]  # the verifier's own words
        o.program("fine").attach()
        os.getppid()
        v = ct.c_uint64()
        assert o.map("counts").lookup(ct.c_uint32(0), v) and v.value >= 1


def test_a_required_refused_program_fails_with_the_verifiers_reason(refused_obj: str) -> None:
    with libbpf.BpfObject(refused_obj, "refusal") as o, pytest.raises(libbpf.BpfError) as e:
        o.load()
    assert e.value.short.startswith("loading BPF object refusal")
    assert "program refused: " in e.value.short and "map_value_or_null" in e.value.short
    assert len(e.value.short.splitlines()) == 1


class _Refused:
    """A collector whose object the kernel refuses."""
    name = "refusal"

    def __init__(self, path: str):
        self.obj = libbpf.BpfObject(path, "refusal")

    def start(self) -> None:
        self.obj.load()

    def signals(self) -> list[Signal]:
        return []

    def close(self) -> None:
        self.obj.close()


def test_the_agent_goes_on_without_a_refused_collector(refused_obj: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def make(ctx: registry.Context) -> Any:
        return _Refused(refused_obj)

    spec = registry.Spec("refusal", lambda cfg: True, make, "nothing a kernel gives",
                         ("a signal no kernel runs",))
    monkeypatch.setattr(registry, "SPECS", (spec,) + registry.SPECS)
    agent = Agent(Config(listen=None, kernel=False, cpu=False, dns=False,
                         reports_dir=str(tmp_path)))
    try:
        agent.start()
        names = [c.name for c in agent.collectors]
        assert "tcp" in names and "http" in names and "refusal" not in names
        bad = [s for s in agent.signals if s.collector == "refusal"]
        assert len(bad) == 1 and bad[0].state == "unavailable"
        assert "map_value_or_null" in bad[0].detail and "nothing a kernel gives" in bad[0].detail
        fams = {f.name: f for f in agent.metrics()}
        states = {(s.labels["collector"], s.labels["state"])
                  for s in fams["podscope_signal_info"].samples}
        assert ("refusal", "unavailable") in states and ("tcp", "works") in states
    finally:
        agent.close()
