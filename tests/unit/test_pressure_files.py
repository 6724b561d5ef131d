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
