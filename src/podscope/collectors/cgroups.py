"""cgroup directories as the kernel makes and removes them (cgroups.bpf.c), handed to the metadata
store's resolver: a container that lived for a moment keeps its name after its directory is gone
(for the store's grace period), so what it did is attributed to it and to nobody else."""

from __future__ import annotations

import ctypes as ct
import logging
import time
from collections.abc import Iterable

from prometheus_client.core import Metric

from .. import libbpf
from ..features import Signal
from ..metadata.store import MetadataStore
from .base import attach, loss_families, program_signals

log = logging.getLogger("podscope.cgroups")


class CgroupEventsCollector:
    name = "cgroups"

    def __init__(self, store: MetadataStore):
        self.store = store
        self.obj = libbpf.BpfObject(libbpf.bpf_object_path("cgroups"), "cgroups")
        self.Event = self.obj.struct("cgroup_event")
        kinds = self.obj.btf.enum("cgroup_event_kind")
        self._made, self._removed = kinds["CGROUP_MADE"], kinds["CGROUP_REMOVED"]
        self._path_off = self.Event.path.offset
        self._ring: libbpf.RingBuffer | None = None
        self._expired_at = 0.0
        self.seen = {"made": 0, "removed": 0}

    def start(self) -> None:
        self.obj.load()
        attach(self.obj)
        self._ring = libbpf.RingBuffer(self.obj.map("cgroup_events"), self._on_event)

    def signals(self) -> list[Signal]:
        return program_signals(self.name, self.obj, {
            "cgroup names kept after removal (short-lived containers)":
                ["cgroup_made", "cgroup_removed"]})

    def _on_event(self, data: bytes) -> None:
        e = self.Event.from_buffer_copy(data[: ct.sizeof(self.Event)])
        n = max(0, min(int(e.len), len(data) - self._path_off) - 1)  # without the final zero
        path = data[self._path_off:self._path_off + n].decode(errors="replace") or "/"
        resolver = self.store.resolver
        if resolver is None:
            return
        if e.kind == self._made:
            resolver.learn(e.id, path)
            self.seen["made"] += 1
        elif e.kind == self._removed:
            resolver.removed(e.id, path)
            self.seen["removed"] += 1

    def wait_fd(self) -> int | None:
        """Readable when poll() has events to take (None: nothing to wait on)."""
        return self._ring.epoll_fd if self._ring else None

    def poll(self, timeout_ms: int) -> int:
        n = self._ring.poll(timeout_ms) if self._ring else 0
        now = time.monotonic()
        if now - self._expired_at > 1.0 and self.store.resolver is not None:
            self._expired_at = now
            self.store.resolver.expire(now)
        return n

    def maintain(self) -> None:
        pass

    def forget_pods(self, uids: set[str]) -> None:
        pass

    def metrics(self) -> Iterable[Metric]:
        err = self.obj.map("cgroup_errors")
        yield from loss_families({"cgroup_events": err.percpu_sum_u64(0)}, self.name,
                                 err.percpu_sum_u64(1))

    def close(self) -> None:
        if self._ring:
            self._ring.close()
            self._ring = None
        self.obj.close()
