"""HTTP/1.x requests per pod (user side of bpf/http.bpf.c).

The kernel pairs and times requests and adds them to double-buffered aggregate maps; this side
drains those maps about once a second into cumulative histograms (route templates and the
per-pod route budget are applied here), turns records into dicts for the sinks, and parses the
connections the kernel streams (pipelining, header capture) with protocols.http1."""

from __future__ import annotations

import ctypes as ct
import ipaddress
import logging
import os
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client.core import CounterMetricFamily, Metric

from .. import _fast, features, libbpf
from ..features import Signal
from ..metadata.store import Labels, MetadataStore, identity
from ..protocols import http1, http2
from ..protocols.routes import RouteBudget, redact_headers, redact_target, template_path
from ..uprobes.manager import UprobeManager
from .base import HIST_SLOTS_DEFAULT as SLOTS
from .base import (
    Emit,
    EmitLines,
    Histogram,
    attach,
    label_names,
    log2_buckets,
    loss_families,
    program_signals,
    top_slot,
)
from .db import DbSeries

log = logging.getLogger("podscope.http")

ROLE_SERVER, ROLE_CLIENT = 1, 2
ROLES = {ROLE_SERVER: "server", ROLE_CLIENT: "client"}
METHODS = {0: "_OTHER", 1: "GET", 2: "HEAD", 3: "POST", 4: "PUT", 5: "DELETE", 6: "OPTIONS",
           7: "PATCH", 8: "CONNECT", 9: "TRACE"}
METHOD_IDS = {v: k for k, v in METHODS.items()}
FRAMINGS = {0: "unknown", 1: "length", 2: "chunked", 3: "empty"}
# kernel counters (enum http_counter) that are parse errors, by reason
_KERNEL_PARSE_ERRORS = {"HTTP_C_BAD_STATUS_LINE": "bad_status_line",
                        "HTTP_C_HEAD_INCOMPLETE": "response_head_incomplete",
                        "HTTP_C_UNREADABLE": "unreadable_buffer"}
HIST_UNIT = 1e-9  # kernel histograms are in nanoseconds
UNKNOWN_ROUTE = "__unknown__"  # the path of a hash was evicted before it was read
# an aggregate cell of the HTTP/2 engine (native/h2engine.c struct cell)
_H2_CELL = struct.Struct(f"<6Q{SLOTS}Q{SLOTS}Q")
SERVING_THREADS = 16384  # threads whose current server request links its client requests
RECORDS_RING = 8 << 20  # bytes of the records ring buffer, when records are wanted (~23k records)
MAX_STREAMED_CONNS = 20_000  # connections parsed in user space at once (bounded memory)


def _slot(dur_ns: int) -> int:
    """The log2 slot of a duration (as the kernel's log2_slot)."""
    return 0 if dur_ns <= 0 else min(dur_ns.bit_length(), SLOTS - 1)


def _scheme(tls: bool | int) -> str:
    """OpenTelemetry's url.scheme: what the connection carried the request in."""
    return "https" if tls else "http"


def _identity(labels: Labels) -> Labels:
    """Who a series is without the names from the API (which can come later): the key of
    per-pod budgets."""
    return labels._replace(k8s_namespace_name="", k8s_pod_name="", k8s_container_name="",
                           k8s_workload_kind="", k8s_workload_name="")


def _addr(family: int, raw: bytes) -> str:
    if family == 10:
        a6 = ipaddress.IPv6Address(raw)
        return str(a6.ipv4_mapped or a6)
    return str(ipaddress.IPv4Address(raw[:4]))


# (labels, role, method, status, route, server_address, server_port, protocol version,
#  url scheme: https when seen through a TLS library)
AggKey = tuple[Labels, int, str, int, str, str, int, str, str]
# (labels, role, service, method, grpc status code, server_address, server_port)
RpcKey = tuple[Labels, int, str, str, str, str, int]
PROTO_H1, PROTO_H2, PROTO_H2_MIDWAY = 1, 2, 3
PROTO_DB = 4  # this and above: database and cache protocols (bpf/http.h enum http_proto)
BLOCK_REASONS = ("sleep", "lock", "disk", "network", "other", "memory")  # enum http_block_reason
BREAKDOWN_FIELDS = ["on_cpu_seconds", "runqueue_seconds", "blocked_seconds",
                    *(f"blocked_{r}_seconds" for r in BLOCK_REASONS),
                    "reclaim_seconds", "major_faults"]
EMPTY_BREAKDOWN: dict[str, float | None] = dict.fromkeys(BREAKDOWN_FIELDS)


@dataclass
class Agg:
    slots: list[int]
    sum_ns: int = 0
    req_bytes: int = 0
    resp_bytes: int = 0
    fb_slots: list[int] = field(default_factory=lambda: [0] * SLOTS)  # time to first byte
    fb_sum_ns: int = 0

    def copy(self) -> Agg:
        return Agg(list(self.slots), self.sum_ns, self.req_bytes, self.resp_bytes,
                   list(self.fb_slots), self.fb_sum_ns)

    def merge(self, o: Agg) -> None:
        self.slots = [x + y for x, y in zip(self.slots, o.slots, strict=True)]
        self.fb_slots = [x + y for x, y in zip(self.fb_slots, o.fb_slots, strict=True)]
        self.sum_ns += o.sum_ns
        self.fb_sum_ns += o.fb_sum_ns
        self.req_bytes += o.req_bytes
        self.resp_bytes += o.resp_bytes


@dataclass
class _Direction:
    """Offsets of one direction's stream -> the time the bytes moved (and, with records, the
    TCP sequence number of the chunk's first byte and its writer's server request)."""
    pos: int = 0
    # (end offset, ts_ns, sequence number of the first byte or -1, bytes, parent link)
    chunks: deque[tuple[int, int, int, int, bytes]] = field(default_factory=deque)

    def add(self, n: int, ts: int, seq: int = -1, parent: bytes = b"") -> None:
        self.pos += n
        self.chunks.append((self.pos, ts, seq, n, parent))
        if len(self.chunks) > 4096:
            self.chunks.popleft()

    def time_of(self, offset: int) -> int:
        """Time of the chunk that carried the byte at `offset`."""
        for end, ts, *_ in self.chunks:
            if end > offset:
                return ts
        return self.chunks[-1][1] if self.chunks else 0

    def link_of(self, offset: int) -> tuple[int | None, bytes]:
        """The TCP sequence number of the byte at `offset` (None if not known) and the parent
        link of the chunk that carried it."""
        for end, _ts, seq, n, parent in self.chunks:
            if end > offset:
                return (None if seq < 0 else (seq + offset - (end - n)) & 0xFFFFFFFF), parent
        return None, b""

    def forget_before(self, offset: int) -> None:
        while len(self.chunks) > 1 and self.chunks[0][0] <= offset:
            self.chunks.popleft()


@dataclass
class _Stream:
    """A connection the kernel streams to user space."""
    conn_id: int
    role: int
    cgroup_id: int
    netns: int
    family: int
    local_port: int
    peer_addr: str
    peer_port: int
    pid: int
    ex: http1.Exchange = field(default_factory=http1.Exchange)
    req: _Direction = field(default_factory=_Direction)
    resp: _Direction = field(default_factory=_Direction)
    broken: bool = False  # after a parse error: wait for the next request head
    last_ts: int = 0
    # id(msg) -> (start, bytes, link, parent): requests the kernel saw begin
    seeds: dict[int, tuple[int, int, bytes, bytes]] = field(default_factory=dict)
    h2: http2.H2Connection | None = None
    midway_sk: int = 0  # an HTTP/2 connection seen mid-way: its kernel key, to turn it off
    tls: bool = False  # its plaintext comes from a TLS library's uprobes
    local: bytes = b""  # records: a struct http_link with the socket's local address and port
    peer_raw: bytes = b""  # the peer's address as the kernel has it (16 bytes)


_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def traceparent(headers: list[tuple[str, str]]) -> tuple[bytes, bytes, int] | None:
    """(trace-id, parent-id, sampled) of a valid W3C traceparent header (Trace Context level 1,
    section 3.2: the kernel's rules in http.bpf.c), else None."""
    for name, value in headers:
        if name.lower() != "traceparent":
            continue
        m = _TRACEPARENT.fullmatch(value.strip(" \t"))
        if (m is None or m[1] == "ff" or (m[1] == "00" and m[5]) or not int(m[2], 16)
                or not int(m[3], 16)):
            return None
        return bytes.fromhex(m[2]), bytes.fromhex(m[3]), int(m[4], 16) & 1
    return None


class HttpCollector:
    name = "http"

    def __init__(self, store: MetadataStore, emit: Emit | None = None, records: bool = False,
                 capture_headers: bool = False, route_budget: int = 100,
                 request_timeout: float = 60.0, hooks: str = "auto",
                 breakdown_reasons: bool = False, breakdown_reclaim: bool = True,
                 peer_series_ttl: float = 600.0,
                 tls: str = "pods", max_uprobe_files: int = 256,
                 uprobe_detach_after: float = 60.0, emit_lines: EmitLines | None = None):
        self.store = store
        self.emit = emit
        self.records = bool(records and emit)
        self.emit_lines = emit_lines if self.records else None
        self._jsonl: _fast.HttpJsonl | None = None  # the kernel's records as JSON lines, compiled
        # HTTP/2 connections seen from their start, decoded and aggregated in compiled code
        # (with records: each finished request handed over as a tuple, after each batch)
        self._h2: _fast.H2Engine | None = None
        self._h2_flushed = 0.0
        self.capture_headers = capture_headers
        self.request_timeout = request_timeout
        self.peer_series_ttl = peer_series_ttl
        self._peer_seen: dict[Any, float] = {}  # client series key -> last request (monotonic)
        self._peers_checked = 0.0
        self.budget = RouteBudget(route_budget)
        self.obj = libbpf.BpfObject(libbpf.bpf_object_path("http"), "http")
        self.kernel = features.kernel()
        self.obj.set_rodata(emit_records=self.records, stream_all=capture_headers,
                            has_task_pt_regs=self.kernel.has_task_pt_regs,
                            self_tgid=os.getpid())
        features.use_task_store(self.obj, "http_threads")
        features.set_prev_state(self.obj)
        self.hooks = features.socket_hooks(hooks)
        wanted = set(self.HOOK_SETS[self.hooks]) | {"http_close", "http_offcpu"}
        if breakdown_reclaim:
            wanted |= set(self.RECLAIM_PROGS)
        self.tls_scope = tls
        if tls != "off":
            wanted |= set(self.TLS_PROGS)
        self.uprobes: UprobeManager | None = None
        self.db: DbSeries | None = None  # databases and caches (native/dbengine.c)
        self._uprobe_args = (tls, max_uprobe_files, uprobe_detach_after)
        for prog in self.obj.programs():
            prog.autoload = prog.name in wanted
        self._reasons_wanted = breakdown_reasons
        self._offcpu: libbpf.Link | None = None
        reasons = self.obj.btf.enum("http_block_reason")
        self.block_reasons = [k.removeprefix("HTTP_BLOCKED_").lower()
                              for k, v in sorted(reasons.items(), key=lambda kv: kv[1])
                              if k.startswith("HTTP_BLOCKED_")]
        if tuple(self.block_reasons) != BLOCK_REASONS:
            raise RuntimeError(f"http.bpf.o has block reasons {self.block_reasons}, this code "
                               f"{list(BLOCK_REASONS)}: rebuild (make)")
        o = self.obj
        self.AggKey = o.struct("http_agg_key")
        self.Agg = o.struct("http_agg")
        self.Path = o.struct("http_path")
        self.ncpus = libbpf.num_possible_cpus()
        self.AggPerCpu = self.Agg * self.ncpus
        self.Conn = o.struct("http_conn")
        self.Record = o.struct("http_record")
        self.StreamEv = o.struct("http_stream_event")
        self.ProcEv = o.struct("http_proc_event")
        self.Hint = o.struct("http_h2_hint")
        self.h2_hints = 0
        self.counters = o.btf.enum("http_counter")
        self.stream_kinds = o.btf.enum("http_stream_kind")
        self.phases = o.btf.enum("http_phase")
        self.modes = o.btf.enum("http_mode")
        self.Link = o.struct("http_link")  # records: what joins a request's two ends
        flags = o.btf.enum("http_link_flags")
        self.link_seq, self.link_tp = flags["HTTP_LINK_SEQ"], flags["HTTP_LINK_TP"]
        self._lock = threading.Lock()
        self._aggs: dict[AggKey, Agg] = {}
        self._rpcs: dict[RpcKey, Agg] = {}
        self.h2_outcomes: dict[tuple[Labels, str], int] = {}
        self._routes: dict[int, str] = {}
        self._slot = 0
        self._drained_at = 0.0
        self._streams: dict[int, _Stream] = {}
        self._templates: dict[str, str] = {}  # target -> route template, for streamed requests
        self.parse_errors: dict[str, int] = {}
        self.resyncs = 0  # streamed connections that found a request again after an error
        self.unanswered: dict[tuple[Labels, str, str], int] = {}
        self._ring: libbpf.RingBuffer | None = None
        self._mono_to_wall = time.time() - time.monotonic()
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._rec_size = ct.sizeof(self.Record)
        self._rec_path_off = self.Record.path.offset
        self._rec_peer_off = self.Record.peer_addr.offset
        self._rec_link_off = self.Record.link.offset
        self._rec_parent_off = self.Record.parent.offset
        self._label_cache: dict[tuple[int, int], Labels] = {}
        self._addr_cache: dict[tuple[int, bytes], str] = {}
        self._target_cache: dict[str, tuple[str, str]] = {}

    # The programs of each hook set (besides http_close and the on-demand http_offcpu).
    SYSCALLS = ("read", "readv", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg")
    HOOK_SETS: dict[str, list[str]] = {
        "socket": ["http_recv", "http_send"],
        "syscalls": [f"http_{d}_{n}" for n in SYSCALLS for d in "ex"] + ["http_x_work"],
    }
    # the reclaim probe: each handling thread's time in memory reclaim (rare events: always on)
    RECLAIM_PROGS = ("http_rcl_db", "http_rcl_de", "http_rcl_mb", "http_rcl_me")
    # TLS libraries (attached per file by the uprobe manager) and what finds their processes
    TLS_PROGS = ("tls_rd_e", "tls_rdx_e", "tls_wr_e", "tls_wrx_e", "tls_hs_e", "tls_setfd",
                 "tls_free", "tls_ret", "go_tls_rd_e", "go_tls_wr_e", "go_tls_ret",
                 "go_grpc_srv_rh", "go_grpc_cli_rh", "go_grpc_wh", "go_nh_srv_rh", "go_nh_srv_wh",
                 "go_nh_cli_rh", "go_nh_cli_enc", "go_nh_cli_wh", "http_dlmap", "http_exec")
    HOOK_NAMES = {
        "socket": "socket tracepoints (sock_recv_length, sock_send_length)",
        "syscalls": "syscall tracepoints (" + ", ".join(SYSCALLS) + ")",
    }

    # --- life cycle ---
    def start(self) -> None:
        o = self.obj
        for name in ("http_agg0", "http_agg1"):
            o.map(name).check_types(self.AggKey, self.Agg)
        o.map("http_paths").check_types(ct.c_uint64, self.Path)
        o.map("http_conns").check_types(ct.c_uint64, self.Conn)
        # a record per request and side (360 bytes with its trace links): 8 MB holds ~230 ms
        # of them at 100k records/s, for the agent's pauses (it takes them 5 ms after the
        # first one lands); none wanted, the smallest ring
        o.map("http_records").set_max_entries(RECORDS_RING if self.records else 4096)
        o.map("http_serving").set_max_entries(SERVING_THREADS if self.records else 64)
        o.load(optional=["http_offcpu", *self.TLS_PROGS, *self.RECLAIM_PROGS])
        if self.hooks == "syscalls":  # the sys_exit programs hand each call to the worker
            o.map("http_work").update(ct.c_uint32(0), ct.c_uint32(o.program("http_x_work").fd))
        uprobe_progs = [p for p in self.TLS_PROGS if p != "http_exec"]
        attach(o, skip=("http_offcpu", "http_x_work", *uprobe_progs),
               optional=("http_exec", *self.RECLAIM_PROGS))
        rcl = [p for p in self.RECLAIM_PROGS if o.program(p).autoload]
        if rcl and not any(p in o.refused for p in rcl):
            o.map("http_cfg").update(ct.c_uint32(2), ct.c_uint32(1))
        if self._reasons_wanted:
            self.set_blocked_reasons(True)
        self.db = DbSeries(self._labels, self._peer, peer_ttl=self.peer_series_ttl,
                           publish=self.emit if self.records else None,
                           mono_to_wall=self._mono_to_wall)
        if _fast.H2_CELL_SIZE != _H2_CELL.size:
            raise RuntimeError("podscope._fast is not the build of this source: run make")
        self._h2 = _fast.H2Engine(self._streams, self._adopt, records=self.records)
        self._ring = libbpf.RingBuffer(o.map("http_stream"), self._on_streams, batch=True)
        if self.records and self.emit_lines is not None:
            self._jsonl = self._jsonl_encoder()
            self._ring.add(o.map("http_records"), self._on_records, batch=True)
        elif self.records:
            self._ring.add(o.map("http_records"), self._on_record)
        scope, max_files, detach_after = self._uprobe_args
        tls_progs = [p for p in uprobe_progs if p != "http_dlmap"]
        if scope != "off" and not any(p in o.refused for p in tls_progs):
            self.uprobes = UprobeManager(o, scope, max_files=max_files,
                                         detach_after=detach_after, proc=self.store.proc)
            self.uprobes.watch_loads = "http_dlmap" not in o.refused
            self.uprobes.midway = self._midway_pids
            if "http_exec" not in o.refused:
                self._ring.add(o.map("http_procs"), self._on_proc)
            if "http_exec" in o.refused or "http_dlmap" in o.refused:
                self.uprobes.rescan = 1.0  # without the events, the full pass finds processes
            self.uprobes.tick()

    def signals(self) -> list[Signal]:
        hooks = self.HOOK_NAMES[self.hooks]
        progs = self.HOOK_SETS[self.hooks] + ["http_close"]
        table = {"HTTP/1.x requests (paired in the kernel)": progs,
                 "HTTP/2 and gRPC requests (decoded in user space)": progs,
                 "Databases, caches and NATS messages (decoded in user space)": progs}
        out = program_signals(self.name, self.obj, table, hooks)
        degraded = {} if self.kernel.has_task_pt_regs else {
            "request blocked time by reason (deep probe)":
                "Linux before 5.15 has no bpf_task_pt_regs: the syscall a thread blocked in is "
                "unknown, so only disk (D state) and other are told apart"}
        if self.tls_scope != "off":
            tls_progs = [p for p in self.TLS_PROGS if not p.startswith("http_")]
            found_by = {"new processes probed at exec and library load": [
                "http_exec", "http_dlmap"]}
            out += program_signals(
                self.name, self.obj,
                {"HTTPS through TLS libraries (uprobes)": tls_progs},
                f"uprobes on the TLS libraries and Go binaries of {self.tls_scope} "
                "(podscope check --tls: what is found)")
            out += program_signals(
                self.name, self.obj, found_by,
                "tracepoint/sched/sched_process_exec, a uprobe on the dynamic linker's "
                "_dl_debug_state",
                degraded={} if self.uprobes is None or self.uprobes.rescan > 1.0 else {
                    "new processes probed at exec and library load":
                        "no exec tracepoint or dynamic linker uprobe: a full /proc pass every "
                        "second instead"}, partial=True)
        out += program_signals(self.name, self.obj,
                               {"request blocked time by reason (deep probe)": ["http_offcpu"]},
                               degraded=degraded, default=False)
        if all(self.obj.program(p).autoload for p in self.RECLAIM_PROGS):
            out += program_signals(self.name, self.obj, {
                "request memory reclaim time": list(self.RECLAIM_PROGS)})
        return out

    def set_blocked_reasons(self, on: bool) -> bool:
        """Attach (or detach) the off-CPU probe: blocked time of server requests by reason.
        False when this kernel cannot (it refused the probe: obj.refused says why)."""
        prog = self.obj.program("http_offcpu")
        if not prog.autoload or prog.name in self.obj.refused:
            return False
        cfg = self.obj.map("http_cfg")
        if on and self._offcpu is None:
            self._offcpu = prog.attach()
            cfg.update(ct.c_uint32(1), ct.c_uint32(1))
        elif not on and self._offcpu is not None:
            cfg.update(ct.c_uint32(1), ct.c_uint32(0))
            self._offcpu.destroy()
            self.obj.links.remove(self._offcpu)
            self._offcpu = None
        return True

    def _on_proc(self, data: bytes) -> None:
        if self.uprobes is not None and len(data) >= ct.sizeof(self.ProcEv):
            ev = self.ProcEv.from_buffer_copy(data)
            self.uprobes.event(ev.pid, ev.cgroup_id)

    def close(self) -> None:
        if self.uprobes is not None:
            self.uprobes.close()
        if self._ring:
            self._ring.close()
            self._ring = None
        self.obj.close()

    def wait_fd(self) -> int | None:
        """Readable when poll() has events to take (None: nothing to wait on)."""
        return self._ring.epoll_fd if self._ring else None

    def poll(self, timeout_ms: int) -> int:
        n = self._ring.poll(timeout_ms) if self._ring else 0
        if self._h2 is not None and time.monotonic() - self._h2_flushed >= 1.0:
            self._h2_flushed = time.monotonic()
            self._on_streams(memoryview(b""))  # events that waited too long go to Python
        if self.uprobes is not None:
            self.uprobes.tick()
        if time.monotonic() - self._drained_at >= 1.0:
            self.drain()
        return n

    def maintain(self) -> None:
        self.drain()
        self.expire()
        self._forget_threads()

    def _forget_threads(self) -> None:
        """Before task storage (v5.11) the per-thread state is a hash by thread id that the
        kernel does not empty when a thread exits: the threads gone are dropped here."""
        if self.kernel.has_task_storage or not self.obj.loaded:
            return
        m = self.obj.map("http_threads")
        for tid in list(m.keys(ct.c_uint32)):
            if not os.path.exists(f"{self.store.proc}/{tid.value}"):
                m.delete(tid)

    # --- aggregates ---
    def drain(self) -> None:
        """Flip the kernel to the other aggregate map and fold the idle one into the totals."""
        with self._lock:
            old = self._slot
            self._slot ^= 1
            self.obj.map("http_cfg").update(ct.c_uint32(0), ct.c_uint32(self._slot))
            time.sleep(0.002)  # programs that picked the old map before the flip finish
            m = self.obj.map(f"http_agg{old}")
            for k, per_cpu in m.items(self.AggKey, self.AggPerCpu, delete=True):
                self._fold(k, per_cpu)
            self._fold_h2()
            if self.db is not None:
                self.db.fold()
            self._drained_at = time.monotonic()
            self._label_cache.clear()
            if self._jsonl is not None:
                self._jsonl.clear_labels()
            if self._drained_at - self._peers_checked >= min(10.0, self.peer_series_ttl / 4):
                self._expire_peer_series(self._drained_at)

    def _touch(self, key: AggKey | RpcKey) -> None:
        """A series with a server address got a request (key[5]: the address)."""
        if key[5]:
            self._peer_seen[key] = time.monotonic()

    def _expire_peer_series(self, now: float) -> None:
        """Client series of a server address without requests for peer_series_ttl go: servers
        come and go with pods, and a client that talked to every pod it ever saw would keep a
        series for each. Under the lock."""
        self._peers_checked = now
        if self.db is not None:
            self.db.expire(now)
        for key, at in list(self._peer_seen.items()):
            if now - at >= self.peer_series_ttl:
                del self._peer_seen[key]
                self._aggs.pop(key, None)
                self._rpcs.pop(key, None)

    def _route(self, labels: Labels, path_hash: int) -> str:
        """The route of a path hash: the path from http_paths, templated (cached)."""
        route = self._routes.get(path_hash)
        if route is None:
            p = self.Path()
            if self.obj.map("http_paths").lookup(ct.c_uint64(path_hash), p):
                route = template_path(bytes(p.path[: min(p.len, len(p.path))]).decode("latin-1"))
            else:
                return self.budget.route(_identity(labels), UNKNOWN_ROUTE)  # evicted: not cached
            if len(self._routes) > 100_000:
                self._routes.clear()
            self._routes[path_hash] = route
        return self.budget.route(_identity(labels), route)

    def _fold(self, k: Any, per_cpu: Any) -> None:
        labels = self.store.labels(k.pod.cgroup_id, k.pod.netns)
        method = METHODS.get(k.method, "_OTHER")
        slots = [0] * len(per_cpu[0].duration.slots)
        fb = [0] * len(slots)
        sum_ns = req = resp = fb_sum = 0
        for v in per_cpu:
            slots = [a + b for a, b in zip(slots, v.duration.slots, strict=True)]
            fb = [a + b for a, b in zip(fb, v.first_byte.slots, strict=True)]
            sum_ns += v.duration.sum
            fb_sum += v.first_byte.sum
            req += v.req_bytes
            resp += v.resp_bytes
        if k.status == 0:
            key_u = (labels, ROLES.get(k.role, "?"), "no_response")
            self.unanswered[key_u] = self.unanswered.get(key_u, 0) + sum(slots)
            return
        route = self._route(labels, k.path_hash)
        addr, port = ("", 0)
        if k.role == ROLE_CLIENT:
            addr, port = _addr(k.family, bytes(k.peer_addr)), k.peer_port
        self._add((labels, k.role, method, k.status, route, addr, port, "1.1", _scheme(k.tls)),
                  Agg(slots, sum_ns, req, resp, fb, fb_sum))

    def _add(self, key: AggKey, add: Agg) -> None:
        self._merge(key, add, self._aggs)

    def _add_sample(self, key: AggKey | RpcKey, dur_ns: int, req: int, resp: int,
                    into: dict[Any, Agg] | None = None, first_byte_ns: int | None = None) -> None:
        """One request (the per-request path of streamed connections)."""
        aggs: dict[Any, Agg] = self._aggs if into is None else into
        self._touch(key)
        a = aggs.get(key)
        if a is None:
            a = aggs[key] = Agg([0] * SLOTS)
        a.slots[_slot(dur_ns)] += 1
        a.sum_ns += dur_ns
        a.req_bytes += req
        a.resp_bytes += resp
        if first_byte_ns is not None:
            a.fb_slots[_slot(first_byte_ns)] += 1
            a.fb_sum_ns += first_byte_ns

    def _add_one(self, labels: Labels, role: int, method: str, status: int, target: str,
                 addr: str, port: int, dur_ns: int, req: int, resp: int,
                 version: str = "1.1", first_byte_ns: int | None = None,
                 tls: bool = False) -> None:
        if status == 0:
            self._unanswered(labels, role, "no_response")
            return
        self._add_sample((labels, role, method, status, self._route_of(labels, target), addr,
                          port, version, _scheme(tls)),
                         dur_ns, req, resp, first_byte_ns=first_byte_ns)

    def _route_of(self, labels: Labels, target: str) -> str:
        """The route template of a streamed request's target, within the pod's budget."""
        route = self._templates.get(target)
        if route is None:
            route = http2.UNKNOWN if target == http2.UNKNOWN else template_path(target)
            if len(self._templates) >= 4096:
                self._templates.clear()
            self._templates[target] = route
        return self.budget.route(_identity(labels), route)

    def expire(self) -> None:
        """Requests waiting longer than request_timeout: counted as unanswered (reason timeout)
        and forgotten, in the kernel's connection table and in streamed connections."""
        limit = int(self.request_timeout * 1e9)
        now = time.monotonic_ns()
        m = self.obj.map("http_conns")
        req_phase = self.phases["HTTP_PHASE_REQUEST"]
        for key, c in m.items(ct.c_uint64, self.Conn):
            if c.phase == req_phase and c.req_start and now - c.req_start > limit and m.delete(key):
                with self._lock:
                    self._timeout(self.store.labels(c.pod.cgroup_id, c.pod.netns), c.role)
        with self._lock:
            for cid, st in list(self._streams.items()):
                if st.ex.pending and now - st.req.time_of(st.ex.pending[0].start) > limit:
                    for _ in st.ex.pending:
                        self._timeout(self.store.labels(st.cgroup_id, st.netns), st.role)
                    del self._streams[cid]

    def _timeout(self, labels: Labels, role: int) -> None:
        key = (labels, ROLES.get(role, "?"), "timeout")
        self.unanswered[key] = self.unanswered.get(key, 0) + 1

    # --- records from the kernel ---
    def _jsonl_encoder(self) -> _fast.HttpJsonl:
        """The compiled encoder of the kernel's records into the jsonl export's lines. It asks
        this side once per distinct value for what takes policy (labels, redaction, routes)."""
        if _fast.HTTP_RECORD_SIZE != self._rec_size:
            raise RuntimeError(f"podscope._fast was built for a {_fast.HTTP_RECORD_SIZE}-byte "
                               f"struct http_record, http.bpf.o has {self._rec_size}: "
                               "rebuild both (make)")

        def labels_of(cgroup_id: int, netns: int) -> bytes:
            return orjson.dumps(self._labels(cgroup_id, netns)._asdict())[1:-1]

        def target_of(raw: bytes) -> bytes:
            path, route = self._target(raw.decode("latin-1"))
            return orjson.dumps({"path": path, "route": route})[1:-1]

        def peer_of(family: int, raw: bytes) -> bytes:
            return orjson.dumps(_addr(family, raw))

        methods = tuple(orjson.dumps(METHODS[i]) for i in range(len(METHODS)))
        reasons = tuple(orjson.dumps(f"blocked_{r}_seconds") for r in self.block_reasons)
        return _fast.HttpJsonl(labels_of, target_of, peer_of, methods, reasons,
                               self._mono_to_wall, text_of=orjson.dumps)

    def _on_records(self, batch: bytes | memoryview) -> None:
        """A batch of kernel records: JSON lines from compiled code, unless someone in this
        process wants them as dicts."""
        if self.listeners or self._jsonl is None or self.emit_lines is None:
            for data in _fast.split(batch):
                self._on_record(data)
            return
        short = self._jsonl.short_records
        emit = self.emit_lines
        self._jsonl.encode(batch, lambda lines, n: emit("http_request", lines, n))
        if self._jsonl.short_records != short:
            self.parse_errors["short_event"] = (self.parse_errors.get("short_event", 0)
                                                + self._jsonl.short_records - short)

    def _on_record(self, data: bytes) -> None:
        if len(data) < self._rec_size:
            self._error("short_event")
            return
        r = self.Record.from_buffer_copy(data[: self._rec_size])
        po, ao = self._rec_path_off, self._rec_peer_off
        target = data[po: po + min(r.path_len, 64)].decode("latin-1")
        lo, qo, n = self._rec_link_off, self._rec_parent_off, _fast.HTTP_LINK_SIZE
        ids = _fast.span_ids(r.role, data[lo: lo + n], 0, data[qo: qo + n], 0)
        self._publish(
            labels=self._labels(r.cgroup_id, r.netns), role=r.role,
            method=METHODS.get(r.method, "_OTHER"), target=target, status=r.status,
            start=r.req_start, end=r.end_ns, req_bytes=r.req_bytes, resp_bytes=r.resp_bytes,
            family=r.family, peer=data[ao: ao + 16], peer_port=r.peer_port,
            local_port=r.local_port, conn_id=r.conn_id, pid=r.pid, mode="kernel",
            first_byte=r.resp_start, breakdown=self._breakdown(r), tls=bool(r.tls), ids=ids)

    def _breakdown(self, r: Any) -> dict[str, float | None] | None:
        """Where the handling thread's time went (server requests of the kernel path): seconds
        on a CPU, in a run queue, blocked; blocked by reason when the off-CPU probe runs (its raw
        off-CPU times also hold the run-queue wait after each wake-up, so they are scaled to
        the blocked total); of all that, the time in memory reclaim (when the reclaim probe ran)
        and the major page faults."""
        if not r.breakdown:
            return None
        bd = r.bd
        out: dict[str, float | None] = {
            "on_cpu_seconds": bd.on_cpu_ns / 1e9, "runqueue_seconds": bd.runqueue_ns / 1e9,
            "blocked_seconds": bd.blocked_ns / 1e9}
        raw = list(bd.by_reason_ns)
        total = sum(raw)
        for i, name in enumerate(self.block_reasons):
            out[f"blocked_{name}_seconds"] = (
                round(raw[i] * bd.blocked_ns / total / 1e9, 9) if total else 0.0
            ) if r.breakdown == 2 else None
        out["reclaim_seconds"] = bd.reclaim_ns / 1e9 if r.bd_reclaim else None
        out["major_faults"] = bd.major_faults
        return out

    def _labels(self, cgroup_id: int, netns: int) -> Labels:
        """store.labels, memoized until the next drain (about a second)."""
        key = (cgroup_id, netns)
        lab = self._label_cache.get(key)
        if lab is None:
            lab = self._label_cache[key] = self.store.labels(cgroup_id, netns)
        return lab

    def _peer(self, family: int, raw: bytes) -> str:
        key = (family, raw)
        s = self._addr_cache.get(key)
        if s is None:
            if len(self._addr_cache) > 10_000:
                self._addr_cache.clear()
            s = self._addr_cache[key] = _addr(family, raw)
        return s

    def _target(self, target: str) -> tuple[str, str]:
        """(redacted target, route template) of a request target, memoized."""
        got = self._target_cache.get(target)
        if got is None:
            if len(self._target_cache) > 10_000:
                self._target_cache.clear()
            got = self._target_cache[target] = (redact_target(target), template_path(target))
        return got

    def _publish(self, *, labels: Labels, role: int, method: str, target: str, status: int,
                 start: int, end: int, req_bytes: int, resp_bytes: int, family: int,
                 peer: bytes | str, peer_port: int, local_port: int, conn_id: int, pid: int,
                 mode: str, headers: dict[str, list[tuple[str, str]]] | None = None,
                 protocol: str = "1.1", grpc_status: int | None = None,
                 decode: str = "full", first_byte: int = 0,
                 breakdown: dict[str, float | None] | None = None,
                 method_original: str | None = None, tls: bool = False,
                 ids: tuple[str, str, str | None] | None = None) -> None:
        peer_addr = peer if isinstance(peer, str) else self._peer(family, peer)
        path, route = self._target(target)
        rec: dict[str, Any] = {
            "time": round(start / 1e9 + self._mono_to_wall, 6),
            **labels._asdict(),
            "role": ROLES.get(role, "?"),
            "peer_addr": peer_addr, "peer_port": peer_port, "local_port": local_port,
            "method": method, "method_original": method_original,
            "path": path, "route": route, "status": status or None,
            "duration_seconds": round(max(end - start, 0) / 1e9, 9),
            "first_byte_seconds": (round(max(first_byte - start, 0) / 1e9, 9)
                                   if first_byte and status else None),
            "request_bytes": req_bytes, "response_bytes": resp_bytes,
            "connection_id": conn_id, "pid": pid, "capture": mode,
            "protocol": protocol, "grpc_status": grpc_status, "decode": decode,
            "url_scheme": _scheme(tls), "tls": tls,
            "trace_id": ids[0] if ids else None, "span_id": ids[1] if ids else None,
            "parent_span_id": ids[2] if ids else None,
        }
        rec.update(breakdown or EMPTY_BREAKDOWN)
        if headers is not None:
            rec["request_headers"] = redact_headers(headers.get("request", []))
            rec["response_headers"] = redact_headers(headers.get("response", []))
        if self.emit is not None:
            self.emit("http_request", rec)
        for fn in self.listeners:
            fn(rec)

    # --- streamed connections ---
    def _error(self, reason: str) -> None:
        self.parse_errors[reason] = self.parse_errors.get(reason, 0) + 1

    def _on_streams(self, batch: memoryview) -> None:
        """A batch of stream events: HTTP/2 connections seen from their start go through the
        compiled engine; the rest (HTTP/1, mid-way, hinted, broken) one by one, in order."""
        assert self._h2 is not None
        with self._lock:
            left = self._h2.process(batch)
            finished = self._h2.take_records() if self.records else ()
            if self.db is not None:
                self.db.engine.process(batch)
        if finished and self._jsonl is not None and self.emit_lines is not None \
                and not self.listeners:  # JSON lines only: written by compiled code
            emit = self.emit_lines
            self._jsonl.encode_h2(finished, lambda lines, n: emit("http_request", lines, n))
        else:
            for rec in finished:
                self._h2_record(rec)
        for data in left:
            self._on_stream(data)

    def _h2_record(self, rec: tuple[Any, ...]) -> None:
        """The record of a request the HTTP/2 engine finished (its series are in the engine's
        cells): the one _h2_request publishes for a request of the Python path."""
        (conn_id, ident, pid, local_port, sid, method, path, status, grpc_status, reset,
         outcome, start, end, first_byte, req_bytes, resp_bytes, seq, parent, tparent, local,
         peer_raw) = rec
        cgroup_id, netns, role, tls, family, peer, peer_port = ident
        ids = (_fast.span_ids(role, self._link_of(local, role, peer_raw, peer_port, seq,
                                                  [("traceparent", tparent)] if tparent else None),
                              sid, parent, 0)
               if seq is not None and local else None)
        self._publish(labels=self._labels(cgroup_id, netns), role=role,
                      method=http2.UNKNOWN if method is None else method,
                      target=http2.UNKNOWN if path is None else path,
                      status=0 if reset else status, start=start, end=end, req_bytes=req_bytes,
                      resp_bytes=resp_bytes, family=family, peer=peer, peer_port=peer_port,
                      local_port=local_port, conn_id=conn_id, pid=pid, mode="stream",
                      protocol="2", grpc_status=None if grpc_status < 0 else grpc_status,
                      decode=outcome, first_byte=first_byte, tls=bool(tls), ids=ids)

    def _midway_pids(self) -> set[int]:
        """Processes with an HTTP/2 connection open whose start was not seen."""
        with self._lock:
            return {st.pid for st in self._streams.values()
                    if st.h2 is not None and not st.h2.seen_start}

    def _adopt(self, record: bytes) -> None:
        """A connection the engine met malformed bytes on (under the lock): counted there, and
        started over mid-way here, as _h2_error does."""
        ev = self.StreamEv.from_buffer_copy(record[: ct.sizeof(self.StreamEv)])
        st = self._new_stream(ev)
        st.role, st.midway_sk = ev.role, 0
        st.h2 = http2.H2Connection(ROLES.get(st.role, "server"), seen_start=False)

    def _fold_h2(self) -> None:
        """What the HTTP/2 engine finished since the last drain, into the series (under the
        lock): one cell per connection and request kind, as _h2_request does per request."""
        if self._h2 is None:
            return
        cells, errors = self._h2.take()
        self.h2_hints = self._h2.hints
        for reason, n in errors.items():
            self.parse_errors[reason] = self.parse_errors.get(reason, 0) + n
        for (ident, method, path, status, grpc_status, is_grpc, reset, outcome), cell in cells:
            cgroup_id, netns, role, tls, family, peer, peer_port = ident
            v = _H2_CELL.unpack(cell)
            count = v[0]
            agg = Agg(list(v[6:6 + SLOTS]), v[1], v[2], v[3], list(v[6 + SLOTS:]), v[5])
            labels = self._labels(cgroup_id, netns)
            key_o = (labels, outcome)
            self.h2_outcomes[key_o] = self.h2_outcomes.get(key_o, 0) + count
            addr, port = (self._peer(family, peer), peer_port) if role == ROLE_CLIENT else ("", 0)
            path = http2.UNKNOWN if path is None else path
            grpc = None if grpc_status < 0 else grpc_status
            if is_grpc or grpc is not None:
                service, rpc = http2.grpc_service_method(path)
                code = str(grpc) if grpc is not None else (
                    "CANCELLED_OR_RESET" if reset else http2.UNKNOWN)
                if reset and grpc is None:
                    self._unanswered(labels, role, "reset", count)
                else:
                    agg.fb_slots, agg.fb_sum_ns = [0] * SLOTS, 0  # as _add_sample for RPCs
                    self._merge((labels, role, service, rpc, code, addr, port), agg, self._rpcs)
                continue
            answered = 0 if reset else int(status)
            if answered == 0:
                self._unanswered(labels, role, "no_response", count)
                continue
            m = method if method in METHOD_IDS else "_OTHER"
            self._merge((labels, role, m, answered, self._route_of(labels, path), addr, port,
                         "2", _scheme(tls)), agg, self._aggs)

    def _unanswered(self, labels: Labels, role: int, reason: str, n: int = 1) -> None:
        key = (labels, ROLES.get(role, "?"), reason)
        self.unanswered[key] = self.unanswered.get(key, 0) + n

    def _merge(self, key: AggKey | RpcKey, add: Agg, into: dict[Any, Agg]) -> None:
        self._touch(key)
        a = into.get(key)
        if a is None:
            into[key] = add
        else:
            a.merge(add)

    def _on_stream(self, data: bytes) -> None:
        hdr = ct.sizeof(self.StreamEv)
        if len(data) < hdr:
            self._error("short_event")
            return
        ev = self.StreamEv.from_buffer_copy(data[:hdr])
        if ev.proto >= PROTO_DB and self.db is not None:  # a database's: the engine's
            with self._lock:
                self.db.engine.process_one(data)
            return
        payload = data[hdr: hdr + ev.captured]
        with self._lock:
            st = self._streams.get(ev.conn_id)
            if st is None and ev.kind == self.stream_kinds["HTTP_S_HINT"] and ev.proto in (
                    PROTO_H2, PROTO_H2_MIDWAY):
                st = self._new_stream(ev)
            if ev.kind == self.stream_kinds["HTTP_S_HINT"]:
                if st is not None and st.h2 is not None:
                    self._h2_hint(st, payload, ev.ts_ns)
                return
            if st is None:
                if ev.kind == self.stream_kinds["HTTP_S_CLOSE"]:
                    return
                st = self._new_stream(ev)
            if st.h2 is not None and self.uprobes is not None and not st.h2.seen_start:
                self.uprobes.want_hints(ev.pid)  # a Go program names its header blocks
            if ev.gap:  # events of this connection were lost: its parse state is void
                self._error("stream_events_lost")
                if st.h2 is not None:
                    st.h2 = http2.H2Connection(ROLES.get(st.role, "server"), seen_start=False)
                else:
                    self._restart(st)
            try:
                if st.h2 is not None:
                    self._h2_event(st, ev, payload)
                else:
                    self._stream_event(st, ev, payload)
            except http1.HttpParseError as e:
                self._error(e.reason)
                self._restart(st)
            except http2.H2Error as e:
                self._h2_error(st, e, ev, payload)

    def _new_stream(self, ev: Any) -> _Stream:
        if len(self._streams) >= MAX_STREAMED_CONNS:
            # closes were lost (or too many at once): drop the longest idle one
            idle = min(self._streams.values(), key=lambda x: x.last_ts)
            del self._streams[idle.conn_id]
            self._error("streamed_connections_evicted")
        st = self._streams[ev.conn_id] = _Stream(
            ev.conn_id, ev.role, ev.cgroup_id, ev.netns, ev.family, ev.local_port,
            _addr(ev.family, bytes(ev.peer_addr)), ev.peer_port, ev.pid, tls=bool(ev.tls))
        if ev.proto == PROTO_H2:
            st.h2 = http2.H2Connection(ROLES.get(ev.role, "server"))
        elif ev.proto == PROTO_H2_MIDWAY:
            # which side is the client is not known from a frame: guess from the ports
            # (servers listen on the lower one), the first header block settles it
            st.role = ROLE_SERVER if ev.local_port < ev.peer_port else ROLE_CLIENT
            st.midway_sk = ev.sk
            st.h2 = http2.H2Connection(ROLES[st.role], seen_start=False, role_known=False)
        return st

    def _restart(self, st: _Stream) -> None:
        """Forget what was in flight (counted as unparsed); resume at the next request head."""
        st.ex = http1.Exchange()
        st.req, st.resp = _Direction(), _Direction()
        st.seeds.clear()
        st.broken = True

    def _stream_event(self, st: _Stream, ev: Any, payload: bytes) -> None:
        kinds = self.stream_kinds
        st.last_ts = ev.ts_ns
        if ev.kind == kinds["HTTP_S_SEED"]:
            target = payload.decode("latin-1")
            method = METHODS.get(ev.method, "_OTHER")
            msg = http1.Message(http1.Head(True, "1.1", method=method, target=target))
            st.ex.add_request(msg)
            st.seeds[id(msg)] = (ev.ts_ns, ev.len, bytes(ev.link) if ev.link.flags else b"",
                                 bytes(ev.parent) if ev.parent.flags else b"")
            return
        if ev.kind == kinds["HTTP_S_CLOSE"]:
            for pair in st.ex.close():
                self._pair(st, pair)
            del self._streams[st.conn_id]
            return
        is_request = (st.role == ROLE_SERVER) == bool(ev.inbound)
        # the kernel handed the connection over in the middle of these bytes: the first `skip`
        # end the body of the request it had been following (already counted in its seed)
        payload, length = payload[ev.skip:], ev.len - ev.skip
        if st.broken:
            # resynchronise at the next request line, also one that starts inside these bytes
            # (the end of a body the stream lost, then the next request)
            at = http1.find_request(payload) if is_request else -1
            if at < 0:
                return
            st.broken = False
            self.resyncs += 1
            payload, length = payload[at:], length - at
        skipped = length - len(payload)
        if is_request:
            seq, parent = -1, b""
            if self.records and ev.link.flags & self.link_seq:
                seq = (ev.link.seq + ev.len - length) & 0xFFFFFFFF  # of payload[0]
                if not st.local:
                    st.local, st.peer_raw = bytes(ev.link), bytes(ev.peer_addr)
                if ev.parent.flags & self.link_seq:
                    parent = bytes(ev.parent)
            st.req.add(length, ev.ts_ns, seq, parent)
            st.ex.client_bytes(payload, skipped)
        else:
            st.resp.add(length, ev.ts_ns)
            try:
                pairs = st.ex.server_bytes(payload, skipped)
            except http1.HttpParseError as e:
                for pair in e.pairs:  # what the bytes completed before the error still counts
                    self._pair(st, pair)
                raise
            for pair in pairs:
                self._pair(st, pair)

    def _h2_error(self, st: _Stream, e: http2.H2Error, ev: Any, payload: bytes) -> None:
        assert st.h2 is not None
        if e.reason == "role_swapped":  # the guess about a mid-way connection was wrong
            st.role = ROLE_CLIENT if st.role == ROLE_SERVER else ROLE_SERVER
            st.h2 = http2.H2Connection(ROLES[st.role], seen_start=False)
            try:  # the same bytes again, read the right way round
                self._h2_event(st, ev, payload)
            except http2.H2Error as e2:
                self._h2_error(st, e2 if e2.reason != "role_swapped" else http2.H2Error("role"),
                               ev, b"")
            return
        if st.midway_sk and not st.h2.decoded:
            # frames that only looked like HTTP/2: tell the kernel to stop streaming them
            self._error("http2_not_http2")
            self._turn_off(st.midway_sk)
            self._streams.pop(st.conn_id, None)
            return
        self._error("http2_" + e.reason)
        # start over without the dynamic tables: decode what can be decoded
        st.h2 = http2.H2Connection(ROLES.get(st.role, "server"), seen_start=False)

    def _h2_hint(self, st: _Stream, payload: bytes, ts: int) -> None:
        """A header block as the Go program had it before HPACK (uprobes): names the stream."""
        assert st.h2 is not None
        if len(payload) < ct.sizeof(self.Hint):
            self._error("short_event")
            return
        h = self.Hint.from_buffer_copy(payload)
        fields: dict[str, Any] = {}
        if h.method_len:
            fields["method"] = bytes(h.method[: h.method_len]).decode("latin-1")
        if h.path_len:
            fields["path"] = bytes(h.path[: h.path_len]).decode("latin-1")
        if h.authority_len:
            fields["authority"] = bytes(h.authority[: h.authority_len]).decode("latin-1")
        if h.status:
            fields["status"] = h.status
        if h.grpc_status >= 0:
            fields["grpc_status"] = h.grpc_status
        if h.grpc:
            fields["content_type"] = "application/grpc"
        if not st.h2.role_known and fields.keys() & {"method", "path", "status", "grpc_status"}:
            # a connection met mid-way: the program says which side it is
            request = bool(fields.keys() & {"method", "path"})
            role = ROLE_CLIENT if bool(h.sent) == request else ROLE_SERVER
            if role != st.role:
                st.role = role
                st.h2 = http2.H2Connection(ROLES[role], seen_start=False)
            st.h2.role_known = True
        # the side that wrote this block: this program (sent) or its peer
        from_client = bool(h.sent) == (st.role == ROLE_CLIENT)
        self.h2_hints += 1
        for req in st.h2.hint(h.stream_id, from_client, fields, ts):
            self._h2_request(st, req)

    def _turn_off(self, sk: int) -> None:
        m = self.obj.map("http_conns")
        c = self.Conn()
        key = ct.c_uint64(sk)
        if m.lookup(key, c):
            c.mode = self.modes["HTTP_MODE_OFF"]
            m.update(key, c)

    def _h2_event(self, st: _Stream, ev: Any, payload: bytes) -> None:
        assert st.h2 is not None
        kinds = self.stream_kinds
        if ev.kind == kinds["HTTP_S_CLOSE"]:
            done = st.h2.close(ev.ts_ns)
            del self._streams[st.conn_id]
        elif ev.kind == kinds["HTTP_S_DATA"]:
            from_client = (st.role == ROLE_SERVER) == bool(ev.inbound)
            uncaptured = ev.len - len(payload)
            seq, parent = None, b""
            if self.records and ev.link.flags & self.link_seq:
                seq = (ev.link.seq + ev.skip) & 0xFFFFFFFF
                if not st.local:
                    st.local, st.peer_raw = bytes(ev.link), bytes(ev.peer_addr)
                if ev.parent.flags & self.link_seq:
                    parent = bytes(ev.parent)
            done = st.h2.feed(from_client, payload[ev.skip:], ev.ts_ns, uncaptured, seq, parent)
        else:
            return
        for req in done:
            self._h2_request(st, req)

    def _link_at(self, st: _Stream, seq: int,
                 headers: list[tuple[str, str]] | None = None) -> bytes:
        """The struct http_link of a streamed connection's request whose first byte has TCP
        sequence number seq: the client's address and port are the local ones on the client
        side, the peer's on the server side (the role as user space settled it); with the
        traceparent among the request's headers, when valid."""
        return self._link_of(st.local, st.role, st.peer_raw, st.peer_port, seq, headers)

    def _link_of(self, local: bytes, role: int, peer_raw: bytes, peer_port: int, seq: int,
                 headers: list[tuple[str, str]] | None = None) -> bytes:
        """_link_at of a connection given by its parts."""
        link = self.Link.from_buffer_copy(local)
        if role == ROLE_SERVER:
            ct.memmove(link.client_addr, peer_raw, len(peer_raw))
            link.client_port = peer_port
        link.seq = seq
        link.flags = self.link_seq
        ct.memset(link.tp_trace, 0, 16)
        ct.memset(link.tp_span, 0, 8)
        link.tp_sampled = 0
        tp = traceparent(headers) if headers else None
        if tp is not None:
            ct.memmove(link.tp_trace, tp[0], 16)
            ct.memmove(link.tp_span, tp[1], 8)
            link.tp_sampled = tp[2]
            link.flags |= self.link_tp
        return bytes(link)

    def _h2_request(self, st: _Stream, r: http2.H2Request) -> None:
        labels = self._labels(st.cgroup_id, st.netns)
        key_o = (labels, r.outcome)
        self.h2_outcomes[key_o] = self.h2_outcomes.get(key_o, 0) + 1
        addr, port = (st.peer_addr, st.peer_port) if st.role == ROLE_CLIENT else ("", 0)
        dur = max(r.end_ns - r.start_ns, 0)
        if r.is_grpc or (r.grpc_status is not None):
            service, method = http2.grpc_service_method(r.path)
            if r.grpc_status is not None:
                code = str(r.grpc_status)
            elif r.reset:
                code = "CANCELLED_OR_RESET"
            else:
                code = http2.UNKNOWN
            if r.reset and r.grpc_status is None:
                key_u = (labels, ROLES.get(st.role, "?"), "reset")
                self.unanswered[key_u] = self.unanswered.get(key_u, 0) + 1
            else:
                self._add_sample((labels, st.role, service, method, code, addr, port), dur,
                                 r.req_bytes, r.resp_bytes, into=self._rpcs)
        else:
            method = r.method if r.method in METHOD_IDS else "_OTHER"
            self._add_one(labels, st.role, method, 0 if r.reset else r.status, r.path, addr,
                          port, dur, r.req_bytes, r.resp_bytes, version="2",
                          first_byte_ns=(max(r.first_byte_ns - r.start_ns, 0)
                                         if r.first_byte_ns else None), tls=st.tls)
        if self.records or self.listeners:
            ids = (_fast.span_ids(st.role, self._link_at(st, r.seq, [("traceparent", r.traceparent)]
                                                    if r.traceparent else None),
                                  r.stream_id, r.parent, 0)
                   if r.seq is not None and st.local else None)
            self._publish(labels=labels, role=st.role, method=r.method, target=r.path,
                          status=0 if r.reset else r.status, start=r.start_ns, end=r.end_ns,
                          req_bytes=r.req_bytes, resp_bytes=r.resp_bytes, family=st.family,
                          peer=st.peer_addr, peer_port=st.peer_port, local_port=st.local_port,
                          conn_id=st.conn_id, pid=st.pid, mode="stream", protocol="2",
                          grpc_status=r.grpc_status, decode=r.outcome,
                          first_byte=r.first_byte_ns, tls=st.tls, ids=ids)

    def _pair(self, st: _Stream, pair: http1.Pair) -> None:
        req, resp = pair.request, pair.response
        seed = st.seeds.pop(id(req), None)
        ids = None
        if seed is not None:
            start, req_bytes, link, parent = seed
            if link:
                ids = _fast.span_ids(st.role, link, 0, parent, 0)
        else:
            start, req_bytes = st.req.time_of(req.start), req.end - req.start
            if self.records and st.local:
                seq, parent = st.req.link_of(req.start)
                if seq is not None:
                    ids = _fast.span_ids(st.role, self._link_at(st, seq, req.head.headers), 0,
                                         parent, 0)
        first_byte = 0
        if resp is not None:
            end = st.resp.time_of(max(resp.end - 1, resp.start))
            first_byte = st.resp.time_of(resp.start)
            status, resp_bytes = resp.head.status, resp.end - resp.start
            st.resp.forget_before(resp.start)
        else:
            end, status, resp_bytes = st.last_ts, 0, 0
        st.req.forget_before(req.start)
        labels = self._labels(st.cgroup_id, st.netns)
        addr, port = (st.peer_addr, st.peer_port) if st.role == ROLE_CLIENT else ("", 0)
        method = req.head.method if req.head.method in METHOD_IDS else "_OTHER"
        self._add_one(labels, st.role, method, status, req.head.target, addr, port,
                      end - start, req_bytes, resp_bytes,
                      first_byte_ns=max(first_byte - start, 0) if first_byte else None,
                      tls=st.tls)
        if self.records or self.listeners:
            headers = None
            if self.capture_headers:
                headers = {"request": req.head.headers,
                           "response": resp.head.headers if resp else []}
            self._publish(labels=labels, role=st.role, method=method, target=req.head.target,
                          status=status, start=start, end=end, req_bytes=req_bytes,
                          resp_bytes=resp_bytes, family=st.family, peer=st.peer_addr,
                          peer_port=st.peer_port, local_port=st.local_port, conn_id=st.conn_id,
                          pid=st.pid, mode="stream", headers=headers, first_byte=first_byte,
                          method_original=req.head.method if method == "_OTHER" else None,
                          tls=st.tls, ids=ids)

    def state_sizes(self) -> dict[str, int]:
        up = self.uprobes.state_sizes() if self.uprobes is not None else {}
        if self.db is not None:
            up.update(self.db.state_sizes())
        return {**up, "http_aggregates": len(self._aggs) + len(self._rpcs),
                "http_streamed_connections": len(self._streams),
                "http2_engine_connections": self._h2.connections if self._h2 is not None else 0,
                "http_unanswered_series": len(self.unanswered) + len(self.h2_outcomes),
                "http_routes": len(self._routes) + len(self._templates),
                "http_label_cache": len(self._label_cache),
                "http_peer_series": len(self._peer_seen)}

    def forget_pods(self, uids: set[str]) -> None:
        with self._lock:
            tables: list[dict[Any, Any]] = [self._aggs, self._rpcs, self.h2_outcomes,
                                            self.unanswered]
            for d in (*tables, self._peer_seen):
                for k in [k for k in d if identity(k[0]) in uids]:
                    del d[k]
            self._label_cache.clear()
            self.budget.forget(lambda owner: isinstance(owner, Labels)
                               and identity(owner) in uids)
            if self.db is not None:
                self.db.forget_pods(uids)

    def _live(self, labels: Labels) -> Labels | None:
        """Labels with today's names; None for a pod gone for good."""
        ident = identity(labels)
        if ident and self.store.retired(ident):
            return None
        return self.store.renamed(labels)

    def _renamed_aggs(self, items: list[tuple[Any, Agg]]) -> list[tuple[Any, Agg]]:
        out: dict[Any, Agg] = {}
        for k, a in items:
            lab = self._live(k[0])
            if lab is None:
                continue
            k2 = (lab,) + tuple(k[1:])
            b = out.get(k2)
            if b is None:
                out[k2] = a
            else:
                b.merge(a)
        return list(out.items())

    def _renamed_counts(self, counts: dict[Any, int]) -> dict[Any, int]:
        out: dict[Any, int] = {}
        for k, n in counts.items():
            lab = self._live(k[0])
            if lab is not None:
                k2 = (lab,) + tuple(k[1:])
                out[k2] = out.get(k2, 0) + n
        return out

    # --- metrics ---
    def metrics(self) -> Iterable[Metric]:
        self.drain()
        server = Histogram(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests: request head read to last response byte written",
            labels=label_names("http_request_method", "http_response_status_code", "http_route",
                               "network_protocol_version", "url_scheme"))
        client = Histogram(
            "http_client_request_duration_seconds",
            "Duration of HTTP client requests: request head written to last response byte read",
            labels=label_names("http_request_method", "http_response_status_code", "http_route",
                               "network_protocol_version", "url_scheme", "server_address",
                               "server_port"))
        with self._lock:
            aggs = [(k, a.copy()) for k, a in self._aggs.items()]
            unanswered = dict(self.unanswered)
            rpcs = [(k, a.copy()) for k, a in self._rpcs.items()]
            outcomes = dict(self.h2_outcomes)
            errors = dict(self.parse_errors)
            db = self.db.snapshot() if self.db is not None else None
            resyncs = self.resyncs
            overflow = dict(self.budget.overflow)
        # names as the metadata store knows them now (a pod first seen while the API was away
        # was labelled by UID): series of the same pod merge
        aggs, rpcs = self._renamed_aggs(aggs), self._renamed_aggs(rpcs)
        outcomes, unanswered = self._renamed_counts(outcomes), self._renamed_counts(unanswered)
        fb_server = Histogram(
            "podscope_http_server_time_to_first_byte_seconds",
            "HTTP server requests: request head read to the first response byte written (the "
            "handler's wait), beside http_server_request_duration_seconds",
            labels=label_names("http_request_method", "http_response_status_code", "http_route",
                               "network_protocol_version", "url_scheme"))
        fb_client = Histogram(
            "podscope_http_client_time_to_first_byte_seconds",
            "HTTP client requests: request head written to the first response byte read (the "
            "network and the server); the rest of http_client_request_duration_seconds is the "
            "download",
            labels=label_names("http_request_method", "http_response_status_code", "http_route",
                               "network_protocol_version", "url_scheme", "server_address",
                               "server_port"))
        top = top_slot(a.slots for _k, a in aggs)
        fb_top = top_slot(a.fb_slots for _k, a in aggs)
        for (labels, role, method, status, route, addr, port, version, scheme), a in aggs:
            buckets = log2_buckets(a.slots, HIST_UNIT, top)
            fb = log2_buckets(a.fb_slots, HIST_UNIT, fb_top)
            values = list(labels) + [method, str(status), route, version, scheme]
            if role == ROLE_CLIENT:
                values += [addr, str(port)]
                client.add_metric(values, buckets, a.sum_ns * HIST_UNIT)
                fb_client.add_metric(values, fb, a.fb_sum_ns * HIST_UNIT)
            else:
                server.add_metric(values, buckets, a.sum_ns * HIST_UNIT)
                fb_server.add_metric(values, fb, a.fb_sum_ns * HIST_UNIT)
        yield server
        yield client
        yield fb_server
        yield fb_client
        for role_name, fam_role in (("server", "server"), ("client", "client")):
            size = CounterMetricFamily(
                f"podscope_http_{fam_role}_response_bytes_total",
                f"Bytes of HTTP responses ({role_name} side), head included",
                labels=label_names("http_request_method", "http_response_status_code",
                                   "http_route"))
            rq = CounterMetricFamily(
                f"podscope_http_{fam_role}_request_bytes_total",
                f"Bytes of HTTP requests ({role_name} side), head included",
                labels=label_names("http_request_method", "http_response_status_code",
                                   "http_route"))
            sums: dict[tuple[str, ...], list[int]] = {}
            for (labels, role, method, status, route, _a, _p, _v, _s), a in aggs:
                if ROLES.get(role) != role_name:
                    continue
                k = tuple(labels) + (method, str(status), route)
                s = sums.setdefault(k, [0, 0])
                s[0] += a.req_bytes
                s[1] += a.resp_bytes
            for k, (rqb, rsb) in sums.items():
                rq.add_metric(list(k), rqb)
                size.add_metric(list(k), rsb)
            yield rq
            yield size
        rpc_names = ("rpc_system", "rpc_service", "rpc_method", "rpc_grpc_status_code")
        rpc_server = Histogram(
            "rpc_server_duration_seconds",
            "Duration of RPCs served (gRPC): request headers read to the end of the response",
            labels=label_names(*rpc_names))
        rpc_client = Histogram(
            "rpc_client_duration_seconds",
            "Duration of RPCs made (gRPC): request headers written to the end of the response",
            labels=label_names(*rpc_names, "server_address", "server_port"))
        top = top_slot(a.slots for _k, a in rpcs)
        for (labels, role, service, rmethod, code, addr, port), a in rpcs:
            values = list(labels) + ["grpc", service, rmethod, code]
            if role == ROLE_CLIENT:
                rpc_client.add_metric(values + [addr, str(port)],
                                      log2_buckets(a.slots, HIST_UNIT, top), a.sum_ns * HIST_UNIT)
            else:
                rpc_server.add_metric(values, log2_buckets(a.slots, HIST_UNIT, top),
                                      a.sum_ns * HIST_UNIT)
        yield rpc_server
        yield rpc_client
        if db is not None:
            yield from DbSeries.families(db, self._renamed_aggs, self._renamed_counts)
        dec = CounterMetricFamily("podscope_http2_decode_total",
                                  "HTTP/2 requests by how much of their headers could be decoded "
                                  "(partial, none: the connection's start was not seen)",
                                  labels=label_names("outcome"))
        for (labels, outcome), n in outcomes.items():
            dec.add_metric(list(labels) + [outcome], n)
        yield dec
        un = CounterMetricFamily("podscope_http_requests_unanswered_total",
                                 "HTTP requests that got no response: the connection closed first, "
                                 "or none came within the request timeout",
                                 labels=label_names("role", "reason"))
        for (labels, role_name, reason), n in unanswered.items():
            un.add_metric(list(labels) + [role_name, reason], n)
        yield un
        over = CounterMetricFamily("podscope_http_routes_over_budget_total",
                                   "Requests counted as http_route=\"__other__\" because the pod "
                                   "had used its route budget", labels=label_names())
        for owner, n in self._renamed_counts({(o,): n for o, n in overflow.items()
                                              if isinstance(o, Labels)}).items():
            over.add_metric(list(owner[0]), n)
        yield over
        cnt = self.obj.map("http_counters")
        kernel = {name: cnt.percpu_sum_u64(v) for name, v in self.counters.items()
                  if name != "HTTP_C_MAX"}
        pe = CounterMetricFamily("podscope_http_parse_errors_total",
                                 "HTTP data that could not be parsed (counted, never fatal)",
                                 labels=["reason"])
        for cname, reason in _KERNEL_PARSE_ERRORS.items():
            errors[reason] = errors.get(reason, 0) + kernel.get(cname, 0)
        for reason, n in sorted(errors.items()):
            pe.add_metric([reason], n)
        yield pe
        yield from loss_families({"http_records": kernel.get("HTTP_C_RECORDS_LOST", 0),
                                  "http_stream": kernel.get("HTTP_C_STREAM_LOST", 0),
                                  "http_procs": kernel.get("HTTP_C_PROC_LOST", 0),
                                  "db_records": self.db.records_dropped if self.db else 0},
                                 "http",
                                 kernel.get("HTTP_C_MAP_FULL", 0))
        streamed = CounterMetricFamily("podscope_http_connections_streamed_total",
                                       "HTTP connections handed to user space for parsing "
                                       "(pipelining, header capture)")
        streamed.add_metric([], kernel.get("HTTP_C_STREAMED", 0))
        yield streamed
        tls = CounterMetricFamily("podscope_tls_calls_total",
                                  "Read and write calls of TLS libraries (uprobes) by outcome: "
                                  "plaintext (followed as HTTP on its socket) or unbound (the "
                                  "socket underneath was not known: not counted)",
                                  labels=["outcome"])
        tls.add_metric(["plaintext"], kernel.get("HTTP_C_TLS_PLAINTEXT", 0))
        tls.add_metric(["unbound"], kernel.get("HTTP_C_TLS_UNBOUND", 0))
        yield tls
        if self.uprobes is not None:
            yield from self.uprobes.metrics()
        rs = CounterMetricFamily("podscope_http_resyncs_total",
                                 "Streamed HTTP/1.x connections that found the next request line "
                                 "after unparsable or lost bytes")
        rs.add_metric([], resyncs)
        yield rs
