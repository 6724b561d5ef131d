"""CPU per pod and container (sched.bpf.c): context switches and off-CPU time by reason, and the
run-queue delay histogram, from the scheduler's own per-task counters read by a task iterator
(no hook on the context switch path). Only the containers of pods are watched: user space lists
the pod container cgroups (below the kubepods trees, about once a second), gives each a slot,
and runs the iterator then and at every scrape."""

from __future__ import annotations

import ctypes as ct
import logging
import threading
import time
from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .. import features, libbpf
from ..features import Signal
from ..metadata.cgroups import pod_containers
from ..metadata.store import Labels, MetadataStore
from .base import (
    Histogram,
    Sums,
    add_hist,
    attach,
    label_names,
    log2_histogram,
    program_signals,
)

log = logging.getLogger("podscope.sched")


class SchedCollector:
    name = "sched"

    def __init__(self, store: MetadataStore, refresh: float = 1.0):
        self.store = store
        self.refresh_interval = refresh
        self.obj = libbpf.BpfObject(libbpf.bpf_object_path("sched"), "sched")
        features.use_task_store(self.obj, "sched_tasks")
        self.Stats = self.obj.struct("sched_stats")
        self.slots: dict[int, int] = {}  # cgroup id -> slot
        self._free: list[int] = []
        self._max = 0
        self._at = -1e9
        self._lock = threading.Lock()
        self._iter: libbpf.Link | None = None

    def start(self) -> None:
        o = self.obj
        o.map("sched_stats").check_types(ct.c_uint32, self.Stats)
        o.load()
        self._max = o.map("sched_watch").max_entries
        self._free = list(range(self._max - 1, -1, -1))
        self._iter = attach(o)["sched_iter"]
        self.refresh(force=True)

    def signals(self) -> list[Signal]:
        return program_signals(self.name, self.obj, {
            "CPU: switches, off-CPU time, run-queue delay": ["sched_iter", "sched_exit"]})

    def refresh(self, force: bool = False) -> None:
        """Watch the pod containers that exist now; forget the ones gone."""
        if not force and time.monotonic() - self._at < self.refresh_interval:
            return
        if not self.store.resolver:
            return
        with self._lock:
            self._at = time.monotonic()
            now = pod_containers(self.store.resolver.root)
            watch, stats = self.obj.map("sched_watch"), self.obj.map("sched_stats")
            for cid in [c for c in self.slots if c not in now]:
                slot = self.slots.pop(cid)
                watch.delete(ct.c_uint64(cid))
                self._free.append(slot)
            for cid in now:
                if cid in self.slots or not self._free:
                    continue
                slot = self._free.pop()
                stats.update(ct.c_uint32(slot), self.Stats())  # a reused slot starts at zero
                watch.update(ct.c_uint64(cid), ct.c_uint32(slot))
                self.slots[cid] = slot
            self._collect()

    def _collect(self) -> None:
        """One pass of the task iterator: every task of a watched container adds what it did
        since the last pass. Called with the lock held."""
        if self._iter is not None:
            libbpf.iter_read(self._iter)

    def poll(self, timeout_ms: int) -> int:
        self.refresh()
        return 0

    def maintain(self) -> None:
        pass

    def forget_pods(self, uids: set[str]) -> None:
        self.refresh(force=True)  # their cgroups are gone: their slots are freed

    def close(self) -> None:
        self.obj.close()

    def metrics(self) -> Iterable[Metric]:
        self.refresh()
        switches, off = Sums(), Sums()
        runq: dict[tuple[Labels, tuple[str, ...]], list[int]] = {}
        runq_sum: dict[tuple[Labels, tuple[str, ...]], float] = {}
        stats = self.obj.map("sched_stats")
        with self._lock:
            self._collect()
            slots = dict(self.slots)
        for cid, slot in slots.items():
            v = self.Stats()
            if not stats.lookup(ct.c_uint32(slot), v):
                continue
            lab = self.store.labels(cid, 0)
            switches.add(lab, ("voluntary",), v.switches_voluntary)
            switches.add(lab, ("involuntary",), v.switches_involuntary)
            off.add(lab, ("voluntary",), v.off_voluntary_ns / 1e9)
            off.add(lab, ("involuntary",), v.off_involuntary_ns / 1e9)
            add_hist(runq, runq_sum, (lab, ()), v.runq)
        yield switches.family(CounterMetricFamily, "podscope_cpu_context_switches_total",
                              "Context switches of the container's tasks: voluntary (it blocked) "
                              "or involuntary (it was preempted)", "reason")
        yield off.family(CounterMetricFamily, "podscope_cpu_off_seconds_total",
                         "Time the container's tasks spent off a CPU: voluntary (blocked: "
                         "neither running nor runnable) or involuntary (runnable, waiting in a "
                         "run queue)",
                         "reason")
        hist = Histogram("podscope_cpu_runqueue_delay_seconds",
                         "Time from runnable (woken, or preempted) to running. _count and "
                         "_sum are exact; each thread's waits within one refresh interval "
                         "(1 s) share the bucket of their mean",
                         labels=label_names())
        yield log2_histogram(hist, runq, runq_sum, 1e-6)
        watched = GaugeMetricFamily("podscope_cpu_watched_containers",
                                      "Pod containers the CPU collector watches")
        watched.add_metric([], len(slots))
        yield watched
