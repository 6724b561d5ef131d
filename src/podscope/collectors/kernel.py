"""Kernel and runtime failures per pod (kernel.bpf.c), and the cgroup files beside them.

From BPF: process creation and mount failures by errno, OOM kills by victim, processes ended by
a signal. From each container's cgroup files at scrape time (v2, or the v1 hierarchies on v1-only
and hybrid nodes): pids.current / pids.max / pids.events, cpu.stat throttling, memory.events
oom_kill, memory.stat page faults."""

from __future__ import annotations

import ctypes as ct
import errno
import logging
import signal
import threading
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .. import libbpf
from ..features import Signal
from ..metadata.store import Labels, MetadataStore, identity
from .base import Emit, Sums, attach, loss_families, program_signals
from .cgroupfiles import CgroupFiles

log = logging.getLogger("podscope.kernel")

def errno_name(code: int) -> str:
    return errno.errorcode.get(code, f"E{code}")


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"SIG{sig}"


_CGROUP_METRICS = {
    "pids_current": (GaugeMetricFamily, "podscope_pids_current",
                     "Tasks in the container's cgroup (pids.current)"),
    "pids_limit": (GaugeMetricFamily, "podscope_pids_limit",
                   "The container cgroup's pids.max (absent when unlimited)"),
    "pids_limit_hits": (CounterMetricFamily, "podscope_pids_limit_hits_total",
                        "Forks refused because pids.max was reached (pids.events max)"),
    "cpu_periods": (CounterMetricFamily, "podscope_cpu_periods_total",
                    "CFS enforcement periods of the container's cgroup (cpu.stat nr_periods)"),
    "cpu_throttled_periods": (CounterMetricFamily, "podscope_cpu_throttled_periods_total",
                              "Periods in which the cgroup was throttled (cpu.stat nr_throttled)"),
    "cpu_throttled_seconds": (CounterMetricFamily, "podscope_cpu_throttled_seconds_total",
                              "Time the cgroup spent throttled (cpu.stat)"),
    "oom_kill_events": (CounterMetricFamily, "podscope_memory_oom_kill_events_total",
                        "OOM kills the cgroup itself recorded (memory.events oom_kill)"),
    "page_faults": (CounterMetricFamily, "podscope_page_faults_total",
                    "Page faults of the cgroup's tasks (memory.stat pgfault)"),
    "page_faults_major": (CounterMetricFamily, "podscope_page_faults_major_total",
                          "Major page faults (memory.stat pgmajfault)"),
}


class KernelCollector:
    name = "kernel"

    def __init__(self, store: MetadataStore, emit: Emit | None = None, records: bool = False):
        self.store = store
        self.emit = emit
        self.obj = libbpf.BpfObject(libbpf.bpf_object_path("kernel"), "kernel")
        self.obj.set_rodata(emit_records=bool(records and emit))
        o = self.obj
        self.LabelKey = o.struct("label_key")
        self.Event = o.struct("kernel_event")
        kinds = o.btf.enum("kernel_kind")
        self.kinds = {v: k.removeprefix("KERNEL_").lower() for k, v in kinds.items()}
        self.files = CgroupFiles(store.resolver.root if store.resolver else None)
        self._ring: libbpf.RingBuffer | None = None
        self._lock = threading.Lock()
        self._mono_to_wall = time.time() - time.monotonic()

    SIGNALS: dict[str, list[str]] = {
        "process creation failures by errno": ["kern_clone", "kern_clone3", "kern_fork",
                                               "kern_vfork"],
        "mount failures by errno": ["kern_mount", "kern_fsmount", "kern_move_mount",
                                    "kern_open_tree"],
        "OOM kills by victim": ["kern_oom"],
        "processes ended by a signal": ["kern_exit"],
    }

    def start(self) -> None:
        o = self.obj
        o.map("kernel_counts").check_types(self.LabelKey, ct.c_uint64)
        every = [p for progs in self.SIGNALS.values() for p in progs]
        o.load(optional=every)  # each signal on its own: one missing syscall costs only itself
        attach(o, optional=every)
        if self.emit is not None:
            self._ring = libbpf.RingBuffer(o.map("kernel_events"), self._on_event)

    def signals(self) -> list[Signal]:
        return program_signals(self.name, self.obj, self.SIGNALS, partial=True)

    def close(self) -> None:
        if self._ring:
            self._ring.close()
            self._ring = None
        self.obj.close()

    def wait_fd(self) -> int | None:
        """Readable when poll() has events to take (None: nothing to wait on)."""
        return self._ring.epoll_fd if self._ring else None

    def poll(self, timeout_ms: int) -> int:
        return self._ring.poll(timeout_ms) if self._ring else 0

    def maintain(self) -> None:
        pass

    def forget_pods(self, uids: set[str]) -> None:
        m = self.obj.map("kernel_counts")
        for key, _ in list(m.items(self.LabelKey, ct.c_uint64)):
            if identity(self.store.labels(key.pod.cgroup_id, key.pod.netns)) in uids:
                m.delete(key)

    def _on_event(self, data: bytes) -> None:
        e = self.Event.from_buffer_copy(data[: ct.sizeof(self.Event)])
        labels = self.store.labels(e.cgroup_id, e.netns)
        kind = self.kinds.get(e.kind, str(e.kind))
        rec: dict[str, Any] = {
            "time": round(e.ts_ns / 1e9 + self._mono_to_wall, 6),
            **labels._asdict(),
            "event": kind, "pid": e.tgid, "tid": e.pid,
            "comm": bytes(e.comm).split(b"\0", 1)[0].decode(errors="replace"),
            "errno": errno_name(e.value) if kind in ("fork_failure", "mount_failure") else None,
            "signal": signal_name(e.value) if kind == "signal_exit" else None,
            "core_dumped": bool(e.core_dumped) if kind == "signal_exit" else None,
            "syscall": e.syscall or None,
        }
        assert self.emit is not None
        self.emit("kernel_event", rec)

    def metrics(self) -> Iterable[Metric]:
        forks, mounts, ooms, sigs = Sums(), Sums(), Sums(), Sums()
        for key, v in self.obj.map("kernel_counts").items(self.LabelKey, ct.c_uint64):
            lab = self.store.labels(key.pod.cgroup_id, key.pod.netns)
            if lab.k8s_pod_uid and self.store.retired(lab.k8s_pod_uid):
                continue
            kind = self.kinds.get(key.kind)
            if kind == "fork_failure":
                forks.add(lab, (errno_name(key.value),), v.value)
            elif kind == "mount_failure":
                mounts.add(lab, (errno_name(key.value),), v.value)
            elif kind == "oom_kill":
                ooms.add(lab, (), v.value)
            elif kind == "signal_exit":
                sigs.add(lab, (signal_name(key.value),), v.value)
        yield forks.family(CounterMetricFamily, "podscope_process_fork_failures_total",
                           "clone/clone3/fork/vfork calls that failed, by errno (EAGAIN: the "
                           "pids limit)", "errno")
        yield mounts.family(CounterMetricFamily, "podscope_mount_failures_total",
                            "mount/fsmount/move_mount/open_tree calls that failed, by errno",
                            "errno")
        yield ooms.family(CounterMetricFamily, "podscope_oom_kills_total",
                          "Tasks the OOM killer chose, by the victim's pod and container")
        yield sigs.family(CounterMetricFamily, "podscope_process_signal_exits_total",
                          "Processes that ended because of a signal", "signal")
        yield from self._cgroup_metrics()
        errs = self.obj.map("kernel_errors")
        yield from loss_families({"kernel_events": errs.percpu_sum_u64(0)}, "kernel",
                                 errs.percpu_sum_u64(1))

    def _cgroup_metrics(self) -> Iterable[Metric]:
        sums = {k: Sums() for k in _CGROUP_METRICS}
        for rel, cgroup_id in self.files.containers():
            lab: Labels = self.store.labels(cgroup_id, 0)
            if lab.k8s_pod_uid and self.store.retired(lab.k8s_pod_uid):
                continue
            for k, v in self.files.read(rel).items():
                sums[k].add(lab, (), v)
        for k, (kind, name, help_) in _CGROUP_METRICS.items():
            yield sums[k].family(kind, name, help_)
