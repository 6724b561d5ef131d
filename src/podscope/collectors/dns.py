"""DNS per pod (dns.bpf.c): every query a pod sends to port 53 over UDP or TCP, paired with its
response by socket and transaction id, timed from the query's send to the response's receive.

Metrics: `podscope_dns_request_duration_seconds{rcode, qtype, server_address, network_transport}`
(answered queries), `podscope_dns_timeouts_total{qtype, server_address, network_transport}`
(queries without an answer within `timeout` seconds, a query sent again with the same id
included), `podscope_dns_unparsed_total{reason}` and `podscope_dns_responses_unmatched_total`.
Records (`dns_query`): one per query, with the queried name."""

from __future__ import annotations

import ctypes as ct
import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

from .. import features, libbpf
from ..features import Signal
from ..metadata.store import Labels, MetadataStore, identity
from ..protocols import dns
from .base import (
    Emit,
    Histogram,
    Sums,
    attach,
    label_names,
    log2_buckets,
    loss_families,
    program_signals,
    top_slot,
)

log = logging.getLogger("podscope.dns")

SLOTS = 40
HIST_UNIT = 1e-9  # durations are kept in nanoseconds
DIR_SENT, DIR_RECEIVED = 0, 1
IPPROTO_TCP = 6
AF_INET, AF_INET6 = 2, 10
MAX_PENDING = 65536  # queries waiting for an answer, per node
MAX_TCP_STREAMS = 4096


@dataclass
class _Query:
    ts_ns: int
    labels: Labels
    name: str
    qtype: str
    server: str
    server_port: int
    transport: str
    pid: int
    comm: str


# (labels, rcode, qtype, server_address, transport)
DnsKey = tuple[Labels, str, str, str, str]


def _address(family: int, raw: bytes) -> str:
    if family == AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    if family == AF_INET6:
        a6 = ipaddress.IPv6Address(raw)
        return str(a6.ipv4_mapped or a6)
    return ""


class DnsCollector:
    name = "dns"

    SYSCALLS = ("read", "readv", "recvfrom", "recvmsg", "recvmmsg", "write", "writev", "sendto",
                "sendmsg", "sendmmsg")
    HOOK_SETS: dict[str, list[str]] = {
        "socket": ["dns_recv", "dns_send"],
        "syscalls": [f"dns_{d}_{n}" for n in SYSCALLS for d in "ex"],
    }
    HOOK_NAMES = {
        "socket": "socket tracepoints (sock_recv_length, sock_send_length)",
        "syscalls": "syscall tracepoints (" + ", ".join(SYSCALLS) + ")",
    }

    def __init__(self, store: MetadataStore, emit: Emit | None = None, timeout: float = 5.0,
                 hooks: str = "auto"):
        self.store = store
        self.emit = emit
        self.timeout_ns = int(timeout * 1e9)
        self.obj = libbpf.BpfObject(libbpf.bpf_object_path("dns"), "dns")
        self.hooks = features.socket_hooks(hooks)
        for prog in self.obj.programs():
            prog.autoload = prog.name in self.HOOK_SETS[self.hooks]
        self.Event = self.obj.struct("dns_event")
        self._size = ct.sizeof(self.Event)
        self._ring: libbpf.RingBuffer | None = None
        self._lock = threading.Lock()
        self._pending: OrderedDict[tuple[int, int], _Query] = OrderedDict()  # (sock, id)
        self._tcp: OrderedDict[tuple[int, int], dns.TcpFramer] = OrderedDict()  # (sock, dir)
        self._hist: dict[DnsKey, list[int]] = {}
        self._sum_ns: dict[DnsKey, int] = {}
        self.timeouts = Sums()
        self.unparsed: dict[tuple[Labels, str], int] = {}
        self.unmatched: dict[Labels, int] = {}
        self._expired_at = 0.0
        self._mono_to_wall = time.time() - time.monotonic()

    def start(self) -> None:
        o = self.obj
        o.load()
        attach(o)
        self._ring = libbpf.RingBuffer(o.map("dns_events"), self._on_event)

    def state_sizes(self) -> dict[str, int]:
        return {"dns_pending_queries": len(self._pending), "dns_tcp_streams": len(self._tcp),
                "dns_series": len(self._hist) + len(self.unparsed) + len(self.unmatched)}

    def signals(self) -> list[Signal]:
        return program_signals(
            self.name, self.obj,
            {"DNS queries: latency, rcode, timeouts (port 53)": self.HOOK_SETS[self.hooks]},
            self.HOOK_NAMES[self.hooks])

    def close(self) -> None:
        if self._ring:
            self._ring.close()
            self._ring = None
        self.obj.close()

    def wait_fd(self) -> int | None:
        """Readable when poll() has events to take (None: nothing to wait on)."""
        return self._ring.epoll_fd if self._ring else None

    def poll(self, timeout_ms: int) -> int:
        n = self._ring.poll(timeout_ms) if self._ring else 0
        now = time.monotonic()
        if now - self._expired_at >= 0.25:
            self._expired_at = now
            self.expire(int(now * 1e9))
        return n

    def maintain(self) -> None:
        pass

    def forget_pods(self, uids: set[str]) -> None:
        with self._lock:
            for k in [k for k in self._hist if identity(k[0]) in uids]:
                del self._hist[k]
                del self._sum_ns[k]
            for tk in [tk for tk in self.timeouts.values if identity(tk[0]) in uids]:
                del self.timeouts.values[tk]

    # ---- events ----

    def _on_event(self, data: bytes) -> None:
        e = self.Event.from_buffer_copy(data[: self._size])
        labels = self.store.labels(e.cgroup_id, e.netns)
        payload = bytes(e.data[: e.captured])
        with self._lock:
            if e.proto == IPPROTO_TCP:
                key = (e.sock, e.dir)
                framer = self._tcp.get(key)
                if framer is None:
                    framer = self._tcp[key] = dns.TcpFramer()
                    if len(self._tcp) > MAX_TCP_STREAMS:
                        self._tcp.popitem(last=False)
                try:
                    messages = framer.feed(payload, e.len)
                except dns.DnsError as err:
                    del self._tcp[key]
                    self._unparsed(labels, str(err))
                    return
                transport = "tcp"
            else:
                messages, transport = [payload], "udp"
            for raw in messages:
                try:
                    m = dns.parse(raw)
                except dns.DnsError as err:
                    self._unparsed(labels, str(err))
                    continue
                self._on_message(e, labels, m, transport)

    def _unparsed(self, labels: Labels, reason: str) -> None:
        k = (labels, reason)
        self.unparsed[k] = self.unparsed.get(k, 0) + 1

    def _on_message(self, e: Any, labels: Labels, m: dns.Message, transport: str) -> None:
        key = (e.sock, m.id)
        if e.dir == DIR_SENT:
            if m.response:  # this pod answers DNS itself: not a query it made
                return
            old = self._pending.pop(key, None)
            if old is not None:  # sent again with the same id: the first one went unanswered
                self._timed_out(old)
            self._pending[key] = _Query(
                e.ts_ns, labels, m.name, m.qtype_name, _address(e.family, bytes(e.server)),
                e.server_port, transport, e.tgid,
                bytes(e.comm).split(b"\0", 1)[0].decode(errors="replace"))
            if len(self._pending) > MAX_PENDING:
                self._timed_out(self._pending.popitem(last=False)[1])
            return
        if not m.response:
            return
        q = self._pending.pop(key, None)
        if q is None:  # an answer after the query timed out, or to a query sent before we started
            self.unmatched[labels] = self.unmatched.get(labels, 0) + 1
            return
        dur = max(e.ts_ns - q.ts_ns, 0)
        hk: DnsKey = (q.labels, m.rcode_name, q.qtype, q.server, q.transport)
        slots = self._hist.get(hk)
        if slots is None:
            slots = self._hist[hk] = [0] * SLOTS
            self._sum_ns[hk] = 0
        slots[min(dur.bit_length(), SLOTS - 1)] += 1
        self._sum_ns[hk] += dur
        if self.emit is not None:
            self.emit("dns_query", self._record(q, m.rcode_name, dur / 1e9, m.answers))

    def _timed_out(self, q: _Query) -> None:
        self.timeouts.add(q.labels, (q.qtype, q.server, q.transport), 1)
        if self.emit is not None:
            self.emit("dns_query", self._record(q, "TIMEOUT", None, None))

    def _record(self, q: _Query, rcode: str, duration: float | None,
                answers: int | None) -> dict[str, Any]:
        return {
            "time": round(q.ts_ns / 1e9 + self._mono_to_wall, 6), **q.labels._asdict(),
            "pid": q.pid, "comm": q.comm, "query_name": q.name, "query_type": q.qtype,
            "rcode": rcode, "duration_seconds": duration, "answers": answers,
            "server_address": q.server, "server_port": q.server_port,
            "transport": q.transport,
        }

    def expire(self, now_ns: int) -> None:
        """Queries older than the timeout are timeouts."""
        with self._lock:
            while self._pending:
                key, q = next(iter(self._pending.items()))
                if now_ns - q.ts_ns < self.timeout_ns:
                    break
                del self._pending[key]
                self._timed_out(q)

    # ---- metrics ----

    def metrics(self) -> Iterable[Metric]:
        if self._ring:
            self._ring.consume()
        self.expire(time.monotonic_ns())
        with self._lock:
            hist = {k: list(v) for k, v in self._hist.items()}
            sums = dict(self._sum_ns)
            timeouts = dict(self.timeouts.values)
            unparsed = dict(self.unparsed)
            unmatched = dict(self.unmatched)
        fam = Histogram("podscope_dns_request_duration_seconds",
                        "DNS queries the pod sent and got an answer to: query sent to answer "
                        "received, by response code and query type",
                        labels=label_names("rcode", "qtype", "server_address",
                                           "network_transport"))
        top = top_slot(hist.values())
        for (labels, rcode, qtype, server, transport), slots in hist.items():
            fam.add_metric(list(labels) + [rcode, qtype, server, transport],
                           log2_buckets(slots, HIST_UNIT, top),
                           sums[(labels, rcode, qtype, server, transport)] * HIST_UNIT)
        yield fam
        t = Sums()
        t.values.update(timeouts)
        yield t.family(CounterMetricFamily, "podscope_dns_timeouts_total",
                       "DNS queries without an answer within the timeout (a query sent again "
                       "with the same id counts the first one here)",
                       "qtype", "server_address", "network_transport")
        u = Sums()
        for (labels, reason), n in unparsed.items():
            u.add(labels, (reason,), n)
        yield u.family(CounterMetricFamily, "podscope_dns_unparsed_total",
                       "Port-53 data that was not a DNS message podscope could read", "reason")
        um = Sums()
        for labels, n in unmatched.items():
            um.add(labels, (), n)
        yield um.family(CounterMetricFamily, "podscope_dns_responses_unmatched_total",
                        "DNS responses without a pending query (late, after the timeout, or "
                        "duplicated)")
        errs = self.obj.map("dns_errors")
        yield from loss_families({"dns_events": errs.percpu_sum_u64(0)}, "dns",
                                 errs.percpu_sum_u64(1))
