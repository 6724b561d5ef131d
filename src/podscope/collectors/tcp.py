"""TCP golden signals per pod (user side of bpf/tcp.bpf.c)."""

from __future__ import annotations

import ctypes as ct
import errno
import ipaddress
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from .. import features, libbpf
from ..features import Signal
from ..metadata.namespaces import in_netns, read_netstat
from ..metadata.store import Labels, MetadataStore, identity
from .base import (
    Emit,
    Histogram,
    Sums,
    add_hist,
    attach,
    label_names,
    log2_histogram,
    loss_families,
    program_signals,
)

log = logging.getLogger("podscope.tcp")

# struct tcp_pod_stats field -> (metric, help, extra label values)
_COUNTERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "opened_outbound": ("podscope_tcp_connections_opened_total",
                        "TCP connections established, by direction", ("outbound",)),
    "opened_inbound": ("podscope_tcp_connections_opened_total",
                       "TCP connections established, by direction", ("inbound",)),
    "closed": ("podscope_tcp_connections_closed_total", "Established TCP connections closed", ()),
    "sent_bytes": ("podscope_tcp_sent_bytes_total", "TCP payload bytes sent and acknowledged", ()),
    "received_bytes": ("podscope_tcp_received_bytes_total", "TCP payload bytes received", ()),
    "retransmits": ("podscope_tcp_retransmits_total", "TCP segments retransmitted", ()),
    "resets_sent": ("podscope_tcp_resets_sent_total", "TCP resets sent", ()),
    "resets_received": ("podscope_tcp_resets_received_total", "TCP resets received", ()),
}
# Per pod network namespace, from the namespace's own MIB (exact; a SYN refused for a full accept
# queue is freed without a drop reason, so no tracepoint sees it).
INLINE_PASS_MAX_SECONDS = 0.1  # slower passes run in the background, not in a scrape

_NETSTAT = {
    "TcpExtListenOverflows": ("podscope_tcp_listen_overflows_total",
                              "Connections refused because a listener's accept queue was full"),
    "TcpExtListenDrops": ("podscope_tcp_listen_drops_total",
                          "Packets to listening sockets that were dropped (overflows included)"),
}
# struct tcp_pod histogram field -> metric
_HISTS = {
    "connect": ("podscope_tcp_connect_duration_seconds",
                         "Time from SYN sent to connection established"),
    "duration": ("podscope_tcp_connection_duration_seconds",
                          "Lifetime of TCP connections, established to closed"),
    "rtt": ("podscope_tcp_rtt_seconds", "Smoothed round-trip time of connections at close"),
}
DIRECTIONS = {0: "unknown", 1: "outbound", 2: "inbound"}


def errno_reason(code: int) -> str:
    return "ABORTED" if code == 0 else errno.errorcode.get(code, f"E{code}")


class TcpCollector:
    name = "tcp"

    def __init__(self, store: MetadataStore, emit: Emit | None = None, records: bool = False,
                 listener_refresh: float = 0.5):
        self.store = store
        self.emit = emit
        self.listener_refresh = listener_refresh
        self.obj = libbpf.BpfObject(libbpf.bpf_object_path("tcp"), "tcp")
        self.kernel = features.kernel()
        vmlinux = libbpf.Btf.vmlinux()
        try:
            self.drop_reasons = {v: k.removeprefix("SKB_DROP_REASON_")
                                 for k, v in vmlinux.enum("skb_drop_reason").items()}
        except KeyError:  # before v5.17 drops have no reason: all are "not specified"
            self.drop_reasons = {0: "NOT_SPECIFIED"}
        finally:
            vmlinux.close()
        self.obj.set_rodata(emit_close_events=bool(records and emit),
                            kfree_skb_has_reason=self.kernel.kfree_skb_args >= 3,
                            kfree_skb_has_rx_sk=self.kernel.kfree_skb_args >= 4)
        o = self.obj
        self.PodKey = o.struct("pod_key")
        self.Pod = o.struct("tcp_pod")
        self.LabelKey = o.struct("label_key")
        self.Event = o.struct("tcp_close_event")
        self.Listener = o.struct("tcp_listener")
        self.SkState = o.struct("sk_state")
        self.label_kinds = o.btf.enum("tcp_label_kind")
        self._iter_link: libbpf.Link | None = None
        self._ring: libbpf.RingBuffer | None = None
        self._lock = threading.Lock()
        self._listeners: list[Any] = []
        self._netstat: dict[int, dict[str, int]] = {}
        self._pass = 0
        self._complete_passes: list[int] = []
        self.stale_removed = 0
        self._listeners_at = 0.0
        self._pass_lock = threading.Lock()  # one iterator pass at a time
        self._pass_seconds = 0.0  # how long the last pass over every namespace took
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self._mono_to_wall = time.time() - time.monotonic()

    # --- life cycle ---
    # signal -> programs it needs (tcp_state and tcp_iter are needed by the collector at all)
    SIGNALS: dict[str, list[str]] = {
        "connections: opened, closed, connect latency, duration": ["tcp_state"],
        "bytes, retransmits, RTT (the sockets' own counters)": ["tcp_state", "tcp_iter"],
        "resets sent and received": ["tcp_rst_send", "tcp_rst_recv"],
        "packet drops by reason": ["tcp_drop"],
        "accept and SYN queues, listen overflows": ["tcp_iter"],
        "connection records": ["tcp_state"],
    }
    OPTIONAL = ("tcp_rst_send", "tcp_rst_recv", "tcp_drop")

    def start(self) -> None:
        o = self.obj
        o.map("tcp_pods").check_types(self.PodKey, self.Pod)
        o.map("tcp_socks").check_types(ct.c_uint64, self.SkState)
        o.map("tcp_labeled").check_types(self.LabelKey, ct.c_uint64)
        o.load(optional=self.OPTIONAL)
        self._iter_link = attach(o, optional=self.OPTIONAL)["tcp_iter"]
        if self.emit is not None:
            self._ring = libbpf.RingBuffer(o.map("tcp_events"), self._on_event)
        self._refresher = threading.Thread(target=self._refresh_loop, name="podscope-iter",
                                           daemon=True)
        self._refresher.start()

    def signals(self) -> list[Signal]:
        degraded = {}
        if self.kernel.tcp_send_reset_args < 3:
            # v6.10 (commits "tcp: make trace of reset logic complete") traced them
            degraded["resets sent and received"] = (
                "Linux before 6.10 does not trace a reset sent in reply to a segment that has no "
                "socket (a refused connect, a stray segment): resets sent count those sent on a "
                "socket; the refused side still counts its connect failure and the reset it "
                "received")
        if self.kernel.kfree_skb_args < 3:
            degraded["packet drops by reason"] = ("Linux before 5.17 gives no drop reason: every "
                                                  "drop counts as NOT_SPECIFIED")
        return program_signals(self.name, self.obj, self.SIGNALS, degraded=degraded)

    def close(self) -> None:
        self._stop.set()
        if self._refresher:
            with self._pass_lock:  # not while a pass uses the iterator link
                pass
            self._refresher.join(5)
            self._refresher = None
        if self._ring:
            self._ring.close()
            self._ring = None
        self.obj.close()

    def wait_fd(self) -> int | None:
        """Readable when poll() has events to take (None: nothing to wait on)."""
        return self._ring.epoll_fd if self._ring else None

    def poll(self, timeout_ms: int) -> int:
        if not self._ring:
            return 0
        return self._ring.poll(timeout_ms)

    # --- records ---
    def _on_event(self, data: bytes) -> None:
        e = self.Event.from_buffer_copy(data[: ct.sizeof(self.Event)])
        labels = self.store.labels(e.cgroup_id, e.netns)
        if e.family == 10:
            saddr = str(ipaddress.IPv6Address(bytes(e.saddr)))
            daddr = str(ipaddress.IPv6Address(bytes(e.daddr)))
        else:
            saddr = str(ipaddress.IPv4Address(bytes(e.saddr)[:4]))
            daddr = str(ipaddress.IPv4Address(bytes(e.daddr)[:4]))
        rec = {
            "time": round(e.ts_ns / 1e9 + self._mono_to_wall, 6),
            **labels._asdict(),
            "netns": e.netns,
            "direction": DIRECTIONS.get(e.direction, "unknown"),
            "src_addr": saddr, "src_port": e.sport, "dst_addr": daddr, "dst_port": e.dport,
            "duration_seconds": round(e.duration_ns / 1e9, 9) if e.duration_ns else None,
            "sent_bytes": e.sent_bytes, "received_bytes": e.received_bytes,
            "retransmits": e.retransmits,
            "srtt_seconds": round(e.srtt_us / 1e6, 6),
        }
        assert self.emit is not None
        self.emit("tcp_connection", rec)

    # --- iterator: live connections and listeners, per network namespace ---
    def refresh(self, force: bool = False) -> list[Any]:
        """Run iter/tcp in every network namespace; returns listener records. A scrape runs a
        pass itself when the last one is older than listener_refresh and passes are cheap (few
        namespaces). On a node with many namespaces a pass takes long (the iterator walks the
        whole socket table once per namespace): then a background thread runs them, at most
        a fifth of the time, and scrapes read its last results."""
        if not force and (time.monotonic() - self._listeners_at < self.listener_refresh
                          or self._pass_seconds > INLINE_PASS_MAX_SECONDS):
            return self._listeners
        with self._pass_lock:
            if not force and time.monotonic() - self._listeners_at < self.listener_refresh:
                return self._listeners  # another thread just did it
            link = self._iter_link
            if link is None or self._stop.is_set():
                return []
            t0 = time.monotonic()
            size = ct.sizeof(self.Listener)
            out = []
            netstat = {}
            self._pass += 1
            self.obj.map("tcp_pass").update(ct.c_uint32(0), ct.c_uint32(self._pass))
            complete = True
            for inode, info in self.store.namespaces().items():
                raw = None
                for pid in info.pids[:3]:
                    try:
                        raw = in_netns(pid, inode, lambda: libbpf.iter_read(link),
                                       self.store.proc)
                        netstat[inode] = read_netstat(pid, self.store.proc)
                        break
                    except OSError as e:
                        log.debug("iter/tcp in netns %s via pid %s: %s", inode, pid, e)
                        continue
                if raw is None:
                    complete = False
                    continue
                for off in range(0, len(raw) - size + 1, size):
                    out.append(self.Listener.from_buffer_copy(raw, off))
            with self._lock:
                if complete:
                    self._complete_passes = (self._complete_passes + [self._pass])[-2:]
                self._listeners = out
                self._netstat = netstat
                self._listeners_at = time.monotonic()
            self._pass_seconds = time.monotonic() - t0
            return out

    def _refresh_loop(self) -> None:
        while not self._stop.wait(max(self.listener_refresh, 4 * self._pass_seconds)):
            if self._pass_seconds > INLINE_PASS_MAX_SECONDS:
                try:
                    self.refresh(force=True)
                except Exception:  # noqa: BLE001 (keep refreshing; the next pass may work)
                    log.exception("iter/tcp pass")

    def maintain(self) -> None:
        """Periodic upkeep: an iterator pass, then removal of socket states whose close was
        never seen (the kernel can skip a program run; see KERNEL.md): an entry that two
        complete passes over every network namespace did not stamp has no socket any more."""
        if self._pass_seconds <= INLINE_PASS_MAX_SECONDS:  # else the background thread does
            self.refresh(force=True)
        with self._lock:
            if len(self._complete_passes) < 2:
                return
            threshold = self._complete_passes[0]
            m = self.obj.map("tcp_socks")
            for key, st in m.items(ct.c_uint64, self.SkState):
                if st.seen_pass < threshold and m.delete(key):
                    self.stale_removed += 1

    def forget_pods(self, uids: set[str]) -> None:
        """Deleted pods past their grace period: their kernel aggregates go."""
        for name, key_type, value_type in (("tcp_pods", self.PodKey, self.Pod),
                                           ("tcp_labeled", self.LabelKey, ct.c_uint64)):
            m = self.obj.map(name)
            for key, _ in list(m.items(key_type, value_type)):
                pk = key if name == "tcp_pods" else key.pod
                if identity(self.store.labels(pk.cgroup_id, pk.netns)) in uids:
                    m.delete(key)

    def _drop_recycled_netns(self) -> None:
        """A namespace inode now names another pod: aggregates keyed by that inode alone (no pod
        cgroup: packets without a socket, sockets of processes outside pods) were the old
        pod's, and must not become the new one's. The scan is fresh at every scrape: a pod
        made since the last one is then known by its namespace too."""
        self.store.namespaces(max_age=0.0)
        inodes = self.store.take_recycled_netns()
        if not inodes:
            return
        for name, key_type, value_type in (("tcp_pods", self.PodKey, self.Pod),
                                           ("tcp_labeled", self.LabelKey, ct.c_uint64)):
            m = self.obj.map(name)
            for key, _ in list(m.items(key_type, value_type)):
                pk = key if name == "tcp_pods" else key.pod
                ref = self.store.cgroup_ref(pk.cgroup_id)
                if pk.netns in inodes and not (ref and ref.in_pod):
                    m.delete(key)

    def _retired(self, lab: Labels) -> bool:
        """A pod gone for good whose sockets still reported something: not shown."""
        return bool(lab.k8s_pod_uid) and self.store.retired(lab.k8s_pod_uid)

    # --- metrics, read from the maps at scrape time ---
    def metrics(self) -> Iterable[Metric]:
        self._drop_recycled_netns()
        listeners = self.refresh()
        yield from self._pod_metrics()
        yield from self._labeled_metrics()
        yield from self._listener_metrics(listeners)
        yield from self._netstat_metrics()
        errs = self.obj.map("tcp_errors")
        yield from loss_families({"tcp_connection": errs.percpu_sum_u64(0)}, "tcp",
                                 errs.percpu_sum_u64(1))
        stale = CounterMetricFamily("podscope_tcp_stale_socket_states_removed_total",
                                    "Per-socket states removed because their close was not seen")
        stale.add_metric([], self.stale_removed)
        yield stale

    def _pod_metrics(self) -> Iterable[Metric]:
        counters: dict[str, Sums] = defaultdict(Sums)
        buckets: dict[str, dict[tuple[Labels, tuple[str, ...]], list[int]]] = defaultdict(dict)
        hsums: dict[str, dict[tuple[Labels, tuple[str, ...]], float]] = defaultdict(dict)
        for key, pod in self.obj.map("tcp_pods").items(self.PodKey, self.Pod):
            lab = self.store.labels(key.cgroup_id, key.netns)
            if self._retired(lab):
                continue
            for field, (metric, _help, extra) in _COUNTERS.items():
                counters[metric].add(lab, extra, getattr(pod.stats, field))
            k = (lab, ())
            for name in _HISTS:
                h = getattr(pod, name)
                add_hist(buckets[name], hsums[name], k, h)
        helps = {metric: (help_, ("direction",) if extra else ())
                 for metric, help_, extra in _COUNTERS.values()}
        for metric, (help_, extra_names) in helps.items():
            yield counters[metric].family(CounterMetricFamily, metric, help_, *extra_names)
        for name, (metric, help_) in _HISTS.items():
            hfam = Histogram(metric, help_, labels=label_names())
            yield log2_histogram(hfam, buckets[name], hsums[name], 1e-6)

    def _labeled_metrics(self) -> Iterable[Metric]:
        fails, drops = Sums(), Sums()
        k_fail = self.label_kinds["TCP_LABEL_CONNECT_FAILURE"]
        k_drop = self.label_kinds["TCP_LABEL_DROP_REASON"]
        for key, v in self.obj.map("tcp_labeled").items(self.LabelKey, ct.c_uint64):
            lab = self.store.labels(key.pod.cgroup_id, key.pod.netns)
            if self._retired(lab):
                continue
            if key.kind == k_fail:
                fails.add(lab, (errno_reason(key.value),), v.value)
            elif key.kind == k_drop:
                drops.add(lab, (self.drop_reasons.get(key.value, str(key.value)),), v.value)
        yield fails.family(CounterMetricFamily, "podscope_tcp_connect_failures_total",
                           "Outbound connections that failed before being established", "reason")
        yield drops.family(CounterMetricFamily, "podscope_packet_drops_total",
                           "Packets dropped by the kernel, by drop reason", "reason")

    def _listener_metrics(self, listeners: list[Any]) -> Iterable[Metric]:
        # several sockets on one port (IPv4 + IPv6, SO_REUSEPORT) add up
        fields = {
            "accept_depth": (GaugeMetricFamily, "podscope_tcp_accept_queue_depth",
                             "Connections waiting in a listener's accept queue"),
            "accept_limit": (GaugeMetricFamily, "podscope_tcp_accept_queue_limit",
                             "Accept queue limit of a listener (its backlog)"),
            "syn_depth": (GaugeMetricFamily, "podscope_tcp_syn_queue_depth",
                          "Half-open connections (SYN received) of a listener"),
            "drops": (CounterMetricFamily, "podscope_tcp_listener_drops_total",
                      "Packets a listening socket dropped (its sk_drops)"),
        }
        sums = {f: Sums() for f in fields}
        for li in listeners:
            key = (self.store.labels(li.cgroup_id, li.netns), (str(li.port),))
            for f in fields:
                sums[f].add(*key, getattr(li, f))
        for f, (kind, metric, help_) in fields.items():
            yield sums[f].family(kind, metric, help_, "port")

    def _netstat_metrics(self) -> Iterable[Metric]:
        with self._lock:
            netstat = dict(self._netstat)
        for field, (metric, help_) in _NETSTAT.items():
            ns_sums = Sums()
            for inode, vals in netstat.items():
                ns_sums.add(self.store.labels(0, inode), (), vals.get(field, 0))
            yield ns_sums.family(CounterMetricFamily, metric, help_)
