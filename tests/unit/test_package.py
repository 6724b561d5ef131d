"""The built package carries its compiled BPF objects: no compiler needed where it runs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_ships_bpf_objects(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                        "-q", "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("podscope-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for obj in sorted((ROOT / "src/podscope/bpf").glob("*.bpf.o")):
        assert f"podscope/bpf/{obj.name}" in names
    assert "podscope/bpf/tcp.h" in names and "podscope/py.typed" in names
