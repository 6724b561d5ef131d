"""Network stack latency per pod and device (netlat.bpf.c), a deep probe: loaded at start,
attached only while asked for (`netlat = true`, or a trigger's window), as it costs a hash
update per packet.

`podscope_net_tx_latency_seconds{device}`: transmit to the skb's release;
`podscope_net_rx_socket_latency_seconds{device}`: arrival on the device to the application's
read (the stack and the socket's receive queue)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from .. import libbpf
from ..features import Signal
from ..metadata.namespaces import host_netns
from ..metadata.store import Labels, MetadataStore, identity
from .base import Histogram, label_names, log2_histogram, loss_families, program_signals


def host_devices() -> dict[int, str]:
    out: dict[int, str] = {}
    try:
        for name in os.listdir("/sys/class/net"):
            try:
                with open(f"/sys/class/net/{name}/ifindex") as f:
                    out[int(f.read())] = name
            except (OSError, ValueError):
                continue
    except OSError:
        pass
    return out


class NetlatCollector:
    name = "netlat"

    def __init__(self, store: MetadataStore):
        self.store = store
        self.obj = libbpf.BpfObject(libbpf.bpf_object_path("netlat"), "netlat")
        self.Key = self.obj.struct("label_key")
        self.Hist = self.obj.struct("hist")
        self.kinds = {v: k for k, v in self.obj.btf.enum("netlat_kind").items()}
        self._lock = threading.Lock()
        self._host_netns = host_netns()

    @property
    def active(self) -> bool:
        return bool(self.obj.links)

    def start(self) -> None:
        self.obj.map("netlat_hists").check_types(self.Key, self.Hist)
        self.obj.load()

    def signals(self) -> list[Signal]:
        return program_signals(self.name, self.obj, {
            "network stack latency (deep probe)": [p.name for p in self.obj.programs()]},
            default=False)

    def set_active(self, on: bool) -> bool:
        with self._lock:
            if on and not self.obj.links:
                try:
                    for prog in self.obj.programs():
                        prog.attach()
                except libbpf.BpfError:
                    self._detach()
                    raise
            elif not on:
                self._detach()
        return True

    def _detach(self) -> None:
        for link in self.obj.links:
            link.destroy()
        self.obj.links.clear()

    def poll(self, timeout_ms: int) -> int:
        return 0

    def maintain(self) -> None:
        pass

    def forget_pods(self, uids: set[str]) -> None:
        m = self.obj.map("netlat_hists")
        for key, _ in list(m.items(self.Key, self.Hist)):
            if identity(self.store.labels(key.pod.cgroup_id, key.pod.netns)) in uids:
                m.delete(key)

    def close(self) -> None:
        with self._lock:
            self._detach()
        self.obj.close()

    def histograms(self) -> dict[tuple[str, Labels, str], tuple[list[int], int]]:
        """(kind, labels, device) -> (log2 slots in microseconds, sum in microseconds)."""
        devices = host_devices()
        out: dict[tuple[str, Labels, str], tuple[list[int], int]] = {}
        for k, h in self.obj.map("netlat_hists").items(self.Key, self.Hist):
            labels = self.store.labels(k.pod.cgroup_id, k.pod.netns)
            host = k.pod.netns == self._host_netns
            dev = devices.get(k.value, f"ifindex{k.value}") if host else f"ifindex{k.value}"
            key = (self.kinds.get(k.kind, "?"), labels, dev)
            slots, total = out.get(key, ([0] * len(h.slots), 0))
            out[key] = ([a + b for a, b in zip(slots, h.slots, strict=True)], total + h.sum)
        return out

    def metrics(self) -> Iterable[Metric]:
        families = {
            "NETLAT_TX": Histogram("podscope_net_tx_latency_seconds",
                                   "Transmit on a device to the packet's release (on a veth, "
                                   "until the receiving side is done with it); deep probe",
                                   labels=label_names("device")),
            "NETLAT_RX_SOCK": Histogram("podscope_net_rx_socket_latency_seconds",
                                        "Arrival on a device to the application's read: the "
                                        "stack and the socket's receive queue; deep probe",
                                        labels=label_names("device")),
        }
        per: dict[str, tuple[dict[Any, list[int]], dict[Any, float]]] = {
            k: ({}, {}) for k in families}
        for (kind, labels, dev), (slots, total) in self.histograms().items():
            if kind in per:
                per[kind][0][(labels, (dev,))] = slots
                per[kind][1][(labels, (dev,))] = total
        for kind, fam in families.items():
            yield log2_histogram(fam, per[kind][0], per[kind][1], 1e-6)
        active = GaugeMetricFamily("podscope_netlat_active",
                                   "1 while the network-latency deep probe is attached")
        active.add_metric([], 1.0 if self.active else 0.0)
        yield active
        errs = self.obj.map("netlat_errors")
        yield from loss_families({}, "netlat", errs.percpu_sum_u64(1))
