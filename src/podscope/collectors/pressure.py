"""Memory, I/O and pressure per container, from the files the kernel keeps per cgroup (read at
scrape time, like the CPU throttling counters): no BPF.

- Pressure stall information (PSI): `<resource>.pressure` of each container's cgroup v2
  directory (cpu, memory, io, and irq where the kernel has it): the time some or all of its
  non-idle tasks were stalled on that resource, `podscope_pressure_stalled_seconds_total
  {resource, kind}`. PSI exists per cgroup v2 only; a v1-only node, or a kernel booted with
  psi=0, has none (`podscope check` says which).
- Block I/O: io.stat (v2, where the io controller is enabled) or blkio.throttle.* (v1) per
  device: `podscope_io_bytes_total` and `podscope_io_operations_total` {device, direction}.
- Memory: memory.events `high` (times the cgroup went over memory.high and its tasks were made to
  reclaim) and `max`, and memory.stat's refaults (pages read back soon after reclaim took them:
  the working set does not fit), `podscope_memory_refaults_total{type}`.
- From BPF (pressure.bpf.c): reclaim stalls, the time each task spent in direct reclaim or
  memory-cgroup reclaim, from the vmscan tracepoints around it, as a histogram per container and
  kind, `podscope_memory_reclaim_stall_seconds{kind}`; block I/O requests from issue to
  completion per container, disk and direction, `podscope_io_request_duration_seconds` and
  `podscope_io_request_bytes_total` (who a request is for: see pressure.bpf.c). When the kernel
  refuses them, the file signals go on.
"""

from __future__ import annotations

import ctypes as ct
import errno
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

from .. import features, libbpf
from ..features import Signal
from ..metadata.cgroups import cgroup2_mount
from ..metadata.store import Labels, MetadataStore, identity
from .base import Histogram, Sums, add_hist, attach, label_names, log2_histogram, program_signals
from .cgroupfiles import (
    RESOURCES,
    CgroupFiles,
    _read_kv,
    device_name,
    read_blkio_v1,
    read_io_stat,
    read_pressure,
)

_IO_DIRECTIONS = {"r": "read", "w": "write", "d": "discard"}
_RECLAIM_PROGS = ["prs_direct_b", "prs_direct_e", "prs_memcg_b", "prs_memcg_e"]
_IO_PROGS = ["prs_bio_q", "prs_rq_issue", "prs_rq_done"]
RECLAIM_SIGNAL = "memory reclaim stalls per container"
IO_SIGNAL = "block I/O latency per container"
_DIRS = {0: "read", 1: "write", 2: "discard", 3: "other"}
STALE_BEGIN_NS = 60 * 10**9  # a reclaim begun this long ago whose end never came: dropped

log = logging.getLogger("podscope.pressure")


class PressureCollector:
    name = "pressure"

    def __init__(self, store: MetadataStore, proc: str = "/proc"):
        self.store = store
        self.proc = proc
        self.files = CgroupFiles(store.resolver.root if store.resolver else cgroup2_mount())
        self.obj = libbpf.BpfObject(libbpf.bpf_object_path("pressure"), "pressure")
        self.Key = self.obj.struct("reclaim_key")
        self.Hist = self.obj.struct("hist")
        self.IoKey = self.obj.struct("io_key")
        self.IoStats = self.obj.struct("io_stats")
        self.IoStart = self.obj.struct("io_start")
        self.obj.set_rodata(block_queue_arg=features.kernel().block_rq_issue_args == 2)
        self.kinds = {v: k.removeprefix("RECLAIM_").lower()
                      for k, v in self.obj.btf.enum("reclaim_kind").items()}
        self.bpf_error = ""  # why the reclaim programs do not run, when they do not

    def start(self) -> None:
        o = self.obj
        o.map("reclaim_stalls").check_types(self.Key, self.Hist)
        o.map("io_requests").check_types(self.IoKey, self.IoStats)
        try:  # the files do not need it: a refused object costs its own signals only
            o.load(optional=_RECLAIM_PROGS + _IO_PROGS)
            attach(o, optional=_RECLAIM_PROGS + _IO_PROGS)
        except libbpf.BpfError as e:
            self.bpf_error = e.short
            log.error("pressure: memory reclaim stalls unavailable: %s", e.short)

    def psi_state(self) -> tuple[str, str]:
        """("works" or "unavailable", why not)."""
        if not self.files.v2:
            return "unavailable", ("no cgroup v2 hierarchy is mounted: pressure stall "
                                   "information is kept per cgroup v2 only")
        try:
            with open(f"{self.proc}/pressure/cpu") as f:
                f.read()
        except FileNotFoundError:
            return "unavailable", ("the kernel has no pressure stall information "
                                   f"({self.proc}/pressure is missing: CONFIG_PSI, Linux 4.20)")
        except OSError as e:
            if e.errno == errno.EOPNOTSUPP:
                return "unavailable", ("pressure stall information is off (the kernel was "
                                       "booted with psi=0, or CONFIG_PSI_DEFAULT_DISABLED): add "
                                       "psi=1 to the kernel command line")
            return "unavailable", f"{self.proc}/pressure/cpu: {e.strerror}"
        return "works", ""

    def signals(self) -> list[Signal]:
        psi, why = self.psi_state()
        v2 = _controllers(self.files.v2) if self.files.v2 else set()
        io_v2 = "io" in v2
        io = "works" if io_v2 or "blkio" in self.files.v1 else "unavailable"
        mem_v2 = "memory" in v2
        mem = "works" if mem_v2 or "memory" in self.files.v1 else "unavailable"
        if self.bpf_error:
            bpf = [Signal(RECLAIM_SIGNAL, self.name, "unavailable",
                          "tp_btf/mm_vmscan_*_reclaim_*", self.bpf_error),
                   Signal(IO_SIGNAL, self.name, "unavailable", "tp_btf/block_*", self.bpf_error)]
        else:
            bpf = program_signals(self.name, self.obj, {RECLAIM_SIGNAL: _RECLAIM_PROGS,
                                                        IO_SIGNAL: _IO_PROGS}, partial=True)
        return [
            Signal("pressure stalls per container (PSI)", self.name, psi, "cgroup v2 *.pressure",
                   why),
            *bpf,
            Signal("block I/O per container", self.name, io,
                   "io.stat" if io_v2 else "blkio.throttle (cgroup v1)",
                   "" if io == "works" else "neither the v2 io controller nor v1 blkio"),
            Signal("memory.high events and refaults", self.name, mem,
                   "memory.events, memory.stat" + ("" if mem_v2 else " (cgroup v1)"),
                   "" if mem == "works" else "no memory controller"),
        ]

    def metrics(self) -> Iterable[Metric]:
        stall, io_bytes, io_ops, high, mx, refaults = (Sums() for _ in range(6))
        for rel, cgroup_id in self.files.containers():
            labels = self.store.labels(cgroup_id, 0)
            if labels.k8s_pod_uid and self.store.retired(labels.k8s_pod_uid):
                continue
            if self.files.v2:
                for res in RESOURCES:
                    for kind, secs in read_pressure(f"{self.files.v2}{rel}/{res}.pressure").items():
                        stall.add(labels, (res, kind), secs)
            for dev, vals in self._io(rel).items():
                name = device_name(dev)
                for d, direction in _IO_DIRECTIONS.items():
                    if f"{d}bytes" in vals:
                        io_bytes.add(labels, (name, direction), vals[f"{d}bytes"])
                    if f"{d}ios" in vals:
                        io_ops.add(labels, (name, direction), vals[f"{d}ios"])
            if p := self.files._file("memory", rel, "memory.events"):
                ev = _read_kv(p)
                high.add(labels, (), ev.get("high", 0))
                mx.add(labels, (), ev.get("max", 0))
            if p := self.files._file("memory", rel, "memory.stat"):
                st = _read_kv(p)
                for kind in ("anon", "file"):
                    if f"workingset_refault_{kind}" in st:
                        refaults.add(labels, (kind,), st[f"workingset_refault_{kind}"])
        yield stall.family(CounterMetricFamily, "podscope_pressure_stalled_seconds_total",
                           "Time some (kind=some) or all (kind=full) of the container's non-idle "
                           "tasks were stalled on a resource (cgroup v2 <resource>.pressure "
                           "total)", "resource", "kind")
        yield io_bytes.family(CounterMetricFamily, "podscope_io_bytes_total",
                              "Bytes the container's cgroup read, wrote or discarded on a block "
                              "device (io.stat; v1 blkio.throttle.io_service_bytes)",
                              "device", "direction")
        yield io_ops.family(CounterMetricFamily, "podscope_io_operations_total",
                            "Block I/O operations of the container's cgroup (io.stat rios, wios, "
                            "dios; v1 blkio.throttle.io_serviced)", "device", "direction")
        yield high.family(CounterMetricFamily, "podscope_memory_high_events_total",
                          "Times the cgroup went over memory.high and its tasks were throttled "
                          "into reclaim (memory.events high)")
        yield mx.family(CounterMetricFamily, "podscope_memory_max_events_total",
                        "Times the cgroup reached memory.max (memory.events max)")
        yield refaults.family(CounterMetricFamily, "podscope_memory_refaults_total",
                              "Pages read back soon after reclaim took them (memory.stat "
                              "workingset_refault_*): the working set does not fit", "type")
        yield from self._reclaim()

    def _reclaim(self) -> Iterable[Metric]:
        if not self.obj.loaded:
            return
        buckets: dict[tuple[Labels, tuple[str, ...]], list[int]] = {}
        sums: dict[tuple[Labels, tuple[str, ...]], float] = {}
        for k, h in self.obj.map("reclaim_stalls").items(self.Key, self.Hist):
            labels = self.store.labels(k.cgroup_id, 0)
            if labels.k8s_pod_uid and self.store.retired(labels.k8s_pod_uid):
                continue
            add_hist(buckets, sums, (labels, (self.kinds.get(k.kind, str(k.kind)),)), h)
        hist = Histogram("podscope_memory_reclaim_stall_seconds",
                         "Time a task of the container spent reclaiming memory before its "
                         "allocation could go on: direct (the node was short) or memcg (its cgroup "
                         "was at its limit or over memory.high)", labels=label_names("kind"))
        yield log2_histogram(hist, buckets, sums, 1e-9)
        io_b: dict[tuple[Labels, tuple[str, ...]], list[int]] = {}
        io_s: dict[tuple[Labels, tuple[str, ...]], float] = {}
        nbytes = Sums()
        for k, v in self.obj.map("io_requests").items(self.IoKey, self.IoStats):
            labels = self.store.labels(k.cgroup_id, 0)
            if labels.k8s_pod_uid and self.store.retired(labels.k8s_pod_uid):
                continue
            extra = (device_name(f"{k.dev >> 20}:{k.dev & 0xFFFFF}"),
                     _DIRS.get(k.dir, "other"))
            add_hist(io_b, io_s, (labels, extra), v.lat)
            nbytes.add(labels, extra, v.bytes)
        lat = Histogram("podscope_io_request_duration_seconds",
                        "Block I/O requests of the container, from their issue to the device to "
                        "their completion", labels=label_names("device", "direction"))
        yield log2_histogram(lat, io_b, io_s, 1e-9)
        yield nbytes.family(CounterMetricFamily, "podscope_io_request_bytes_total",
                            "Bytes of the container's completed block I/O requests",
                            "device", "direction")

    def pod_state(self, uid: str) -> dict[str, Any]:
        """The pod's totals now, for a trigger report (two of them make a window): PSI seconds
        {resource: {kind: s}}, reclaim stalls {kind: [log2 ns slots, ns]}, block I/O requests
        {"device read": [log2 ns slots, ns, bytes]}, memory.high events and refaults."""
        psi: dict[str, dict[str, float]] = {}
        high = refaults = 0
        for rel, cgroup_id in self.files.containers():
            if identity(self.store.labels(cgroup_id, 0)) != uid:
                continue
            if self.files.v2:
                for res in RESOURCES:
                    for kind, secs in read_pressure(f"{self.files.v2}{rel}/{res}.pressure").items():
                        psi.setdefault(res, {})[kind] = psi.get(res, {}).get(kind, 0.0) + secs
            if p := self.files._file("memory", rel, "memory.events"):
                high += _read_kv(p).get("high", 0)
            if p := self.files._file("memory", rel, "memory.stat"):
                st = _read_kv(p)
                refaults += sum(st.get(f"workingset_refault_{k}", 0) for k in ("anon", "file"))
        reclaim: dict[str, list[Any]] = {}
        io: dict[str, list[Any]] = {}
        if self.obj.loaded:
            for k, h in self.obj.map("reclaim_stalls").items(self.Key, self.Hist):
                if identity(self.store.labels(k.cgroup_id, 0)) == uid:
                    _fold(reclaim, self.kinds.get(k.kind, str(k.kind)), h, 0)
            for k, v in self.obj.map("io_requests").items(self.IoKey, self.IoStats):
                if identity(self.store.labels(k.cgroup_id, 0)) == uid:
                    dev = device_name(f"{k.dev >> 20}:{k.dev & 0xFFFFF}")
                    _fold(io, f"{dev} {_DIRS.get(k.dir, 'other')}", v.lat, v.bytes)
        return {"psi": psi, "reclaim": reclaim, "io": io, "memory_high_events": high,
                "refaults": refaults}

    def _io(self, rel: str) -> dict[str, dict[str, int]]:
        if self.files.v2 and "io" in _controllers(self.files.v2):
            return read_io_stat(f"{self.files.v2}{rel}/io.stat")
        root = self.files.v1.get("blkio")
        if root:
            return read_blkio_v1(f"{root}{rel}/blkio.throttle.io_service_bytes",
                                 f"{root}{rel}/blkio.throttle.io_serviced")
        return {}

    def poll(self, timeout_ms: int) -> int:
        return 0

    def maintain(self) -> None:
        """Reclaims that began and never ended (the thread died in between) go, and so do bios
        merged into a request (never looked up again) and requests that never completed."""
        if not self.obj.loaded:
            return
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        start = self.obj.map("reclaim_start")
        for tid, t0 in list(start.items(ct.c_uint32, ct.c_uint64)):
            if now - t0.value > STALE_BEGIN_NS:
                start.delete(tid)
        for name in ("bio_owner", "rq_start"):
            m = self.obj.map(name)
            for k, st in list(m.items(ct.c_uint64, self.IoStart)):
                if now - st.ts > STALE_BEGIN_NS:
                    m.delete(k)

    def forget_pods(self, uids: set[str]) -> None:
        """The stalls of containers gone (their cgroup ids are not reused: ids only grow)."""
        if not self.obj.loaded:
            return
        for m, key_type in ((self.obj.map("reclaim_stalls"), self.Key),
                            (self.obj.map("io_requests"), self.IoKey)):
            for k in list(m.keys(key_type)):
                if identity(self.store.labels(k.cgroup_id, 0)) in uids:
                    m.delete(k)

    def close(self) -> None:
        self.obj.close()


def _fold(into: dict[str, list[Any]], key: str, hist: Any, nbytes: int) -> None:
    """Add a kernel histogram (and bytes) to into[key] = [slots, sum, bytes]."""
    old = into.get(key)
    slots = list(hist.slots)
    if old is None:
        into[key] = [slots, int(hist.sum), int(nbytes)]
    else:
        into[key] = [[a + b for a, b in zip(old[0], slots, strict=True)], old[1] + int(hist.sum),
                     old[2] + int(nbytes)]


def _controllers(v2_root: str) -> set[str]:
    try:
        with open(os.path.join(v2_root, "cgroup.controllers")) as f:
            return set(f.read().split())
    except OSError:
        return set()
