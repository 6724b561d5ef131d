"""The pressure collector's file readers on fixture files: PSI totals, io.stat, v1 blkio in
io.stat's names, device names, and what `check` says when PSI is missing or off."""

from __future__ import annotations

from pathlib import Path

from podscope.collectors.cgroupfiles import (
    device_name,
    read_blkio_v1,
    read_io_stat,
    read_pressure,
)
from podscope.collectors.pressure import PressureCollector
from podscope.metadata.store import MetadataStore


def test_readers(tmp_path: Path) -> None:
    (tmp_path / "memory.pressure").write_text(
        "some avg10=1.50 avg60=0.20 avg300=0.05 total=2500000\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=125\n")
    assert read_pressure(str(tmp_path / "memory.pressure")) == {"some": 2.5, "full": 0.000125}
    assert read_pressure(str(tmp_path / "missing")) == {}
    (tmp_path / "io.stat").write_text(
        "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n7:0 rbytes=1 junk\n")
    assert read_io_stat(str(tmp_path / "io.stat")) == {
        "254:0": {"rbytes": 4096, "wbytes": 8192, "rios": 1, "wios": 2, "dbytes": 0, "dios": 0},
        "7:0": {"rbytes": 1}}
    (tmp_path / "b").write_text("254:0 Read 4096\n254:0 Write 0\n254:0 Sync 4096\n"
                                "254:0 Total 4096\nTotal 4096\n")
    (tmp_path / "o").write_text("254:0 Read 1\n254:0 Discard 3\n")
    assert read_blkio_v1(str(tmp_path / "b"), str(tmp_path / "o")) == {
        "254:0": {"rbytes": 4096, "wbytes": 0, "rios": 1, "dios": 3}}
    sysfs = tmp_path / "sys"
    (sysfs / "dev" / "block" / "259:1").mkdir(parents=True)
    (sysfs / "dev" / "block" / "259:1" / "uevent").write_text("MAJOR=259\nDEVNAME=nvme0n1p1\n")
    assert device_name("259:1", str(sysfs)) == "nvme0n1p1"
    assert device_name("259:9", str(sysfs)) == "259:9"  # no such device: its numbers


def test_check_says_why_pressure_is_missing(tmp_path: Path) -> None:
    col = PressureCollector(MetadataStore(None, proc="/nonexistent"), proc=str(tmp_path))
    col.files.v2 = str(tmp_path)
    state, why = col.psi_state()
    assert state == "unavailable" and "CONFIG_PSI" in why  # no <proc>/pressure
    (tmp_path / "pressure").mkdir()
    (tmp_path / "pressure" / "cpu").write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert col.psi_state() == ("works", "")
    col.files.v2 = None
    state, why = col.psi_state()
    assert state == "unavailable" and "cgroup v2" in why


def test_pressure_summary_of_a_window() -> None:
    """A trigger report's pressure over its window: PSI shares from the totals' differences,
    histogram counts, means and log2-bucket quantiles from the slot differences; series with
    nothing in the window are left out."""
    from podscope.triggers import pressure_summary

    slots = [0] * 8
    before = {"psi": {"memory": {"some": 1.0, "full": 0.5}},
              "reclaim": {"memcg": [slots, 0, 0]},
              "io": {"vda read": [[0, 0, 0, 0, 0, 0, 2, 0], 100, 8192],
                     "vda write": [[0, 0, 0, 0, 0, 0, 1, 0], 40, 4096]},
              "memory_high_events": 3, "refaults": 10}
    after = {"psi": {"memory": {"some": 2.0, "full": 0.75}, "io": {"some": 0.5}},
             "reclaim": {"memcg": [[0, 0, 0, 0, 9, 0, 0, 1], 1000, 0]},
             "io": {"vda read": [[0, 0, 0, 0, 0, 0, 6, 0], 300, 24576],
                    "vda write": [[0, 0, 0, 0, 0, 0, 1, 0], 40, 4096]},
             "memory_high_events": 5, "refaults": 12}
    got = pressure_summary(before, after, 2.0)
    assert got["stalled_ratio"] == {"memory": {"some": 0.5, "full": 0.125}, "io": {"some": 0.25}}
    (rcl,) = got["reclaim"]
    assert rcl["kind"] == "memcg" and rcl["count"] == 10 and rcl["seconds"] == 1e-6
    assert rcl["p50_seconds"] == 16e-9 and rcl["p99_seconds"] == 128e-9
    (io,) = got["io_requests"]  # the writes did nothing in the window
    assert (io["device"], io["direction"], io["count"], io["bytes"]) == ("vda", "read", 4, 16384)
    assert io["mean_seconds"] == 50e-9
    assert got["memory_high_events"] == 2 and got["refaults"] == 2
