"""The files the kernel keeps per container cgroup, found and read at scrape time: v2 where the
controller is enabled there, else the v1 hierarchy of that controller (hybrid nodes)."""

from __future__ import annotations

import os
import time

from ..metadata.cgroups import parse_cgroup_path, v1_mounts


def _read_kv(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                    out[parts[0]] = int(parts[1])
    except OSError:
        pass
    return out


def _read_value(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


class CgroupFiles:
    """The limits and counters the kernel keeps per container cgroup."""

    def __init__(self, v2_root: str | None, rescan: float = 2.0):
        self.v2 = v2_root
        self.v1 = v1_mounts()
        self.rescan = rescan
        self._containers: list[tuple[str, int]] = []  # (path below the roots, v2 cgroup id)
        self._at = -1e9

    def containers(self) -> list[tuple[str, int]]:
        if time.monotonic() - self._at < self.rescan:
            return self._containers
        found: list[tuple[str, int]] = []
        if self.v2:
            for dirpath, _dirs, _files in os.walk(self.v2):
                rel = "/" + os.path.relpath(dirpath, self.v2)
                ref = parse_cgroup_path(rel)
                if ref.container_id:
                    try:
                        found.append((rel, os.stat(dirpath).st_ino))
                    except OSError:
                        continue
        self._containers, self._at = found, time.monotonic()
        return found

    def _file(self, controller: str, rel: str, name: str) -> str | None:
        """The v2 file when the v2 hierarchy has the controller, else the v1 hierarchy's."""
        if self.v2:
            p = f"{self.v2}{rel}/{name}"
            if os.path.exists(p):
                return p
        root = self.v1.get(controller)
        if root:
            p = f"{root}{rel}/{name}"
            if os.path.exists(p):
                return p
        return None

    def read(self, rel: str) -> dict[str, float]:
        out: dict[str, float] = {}
        if p := self._file("pids", rel, "pids.current"):
            v = _read_value(p)
            if v and v.isdigit():
                out["pids_current"] = int(v)
        if p := self._file("pids", rel, "pids.max"):
            v = _read_value(p)
            if v and v.isdigit():
                out["pids_limit"] = int(v)
        if p := self._file("pids", rel, "pids.events"):
            out["pids_limit_hits"] = _read_kv(p).get("max", 0)
        st = {}
        if self.v2:  # every v2 cgroup has a cpu.stat; the throttling lines need the controller
            st = _read_kv(f"{self.v2}{rel}/cpu.stat")
        if "nr_periods" not in st and (root := self.v1.get("cpu")):
            st = _read_kv(f"{root}{rel}/cpu.stat")
        if st:
            if "nr_periods" in st:
                out["cpu_periods"] = st["nr_periods"]
                out["cpu_throttled_periods"] = st.get("nr_throttled", 0)
                if "throttled_usec" in st:  # v2
                    out["cpu_throttled_seconds"] = st["throttled_usec"] / 1e6
                elif "throttled_time" in st:  # v1, nanoseconds
                    out["cpu_throttled_seconds"] = st["throttled_time"] / 1e9
        if p := self._file("memory", rel, "memory.events"):
            out["oom_kill_events"] = _read_kv(p).get("oom_kill", 0)
        elif p := self._file("memory", rel, "memory.oom_control"):
            out["oom_kill_events"] = _read_kv(p).get("oom_kill", 0)
        if p := self._file("memory", rel, "memory.stat"):
            st = _read_kv(p)
            if "pgfault" in st:
                out["page_faults"] = st["pgfault"]
                out["page_faults_major"] = st.get("pgmajfault", 0)
        return out




RESOURCES = ("cpu", "memory", "io", "irq")  # the pressure files a v2 cgroup can have


def read_pressure(path: str) -> dict[str, float]:
    """A PSI file ("some avg10=.. avg60=.. avg300=.. total=<us>", and "full ..."): the totals in
    seconds by kind."""
    out: dict[str, float] = {}
    try:
        with open(path) as f:
            for line in f:
                kind, _, rest = line.partition(" ")
                for field in rest.split():
                    if field.startswith("total=") and field[6:].isdigit():
                        out[kind] = int(field[6:]) / 1e6
    except OSError:
        pass
    return out


def read_io_stat(path: str) -> dict[str, dict[str, int]]:
    """cgroup v2 io.stat: "MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=.." per
    device."""
    out: dict[str, dict[str, int]] = {}
    try:
        with open(path) as f:
            for line in f:
                dev, *fields = line.split()
                vals = {}
                for fv in fields:
                    k, _, v = fv.partition("=")
                    if v.isdigit():
                        vals[k] = int(v)
                out[dev] = vals
    except OSError:
        pass
    return out


_V1_OPS = {"Read": "r", "Write": "w", "Discard": "d"}


def read_blkio_v1(bytes_path: str, ops_path: str) -> dict[str, dict[str, int]]:
    """cgroup v1 blkio.throttle.io_service_bytes and io_serviced ("MAJ:MIN Read 4096" lines) in
    io.stat's names (rbytes, rios, ...)."""
    out: dict[str, dict[str, int]] = {}
    for path, unit in ((bytes_path, "bytes"), (ops_path, "ios")):
        try:
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 3 and parts[1] in _V1_OPS and parts[2].isdigit():
                        out.setdefault(parts[0], {})[_V1_OPS[parts[1]] + unit] = int(parts[2])
        except OSError:
            pass
    return out


_DEVICES: dict[str, str] = {}


def device_name(majmin: str, sysfs: str = "/sys") -> str:
    """vda for 254:0 (from /sys/dev/block/254:0/uevent), the numbers when the kernel names none."""
    name = _DEVICES.get(majmin)
    if name is None:
        name = majmin
        try:
            with open(f"{sysfs}/dev/block/{majmin}/uevent") as f:
                for line in f:
                    if line.startswith("DEVNAME="):
                        name = line[8:].strip() or majmin
        except OSError:
            pass
        if len(_DEVICES) < 4096:
            _DEVICES[majmin] = name
    return name
