"""Uprobes on the TLS libraries of the processes podscope watches.

Which processes: those of pods and containers ("pods", the default) or every process ("all").
When: every process at start, then each one the kernel says exec'd (sched_process_exec) or
loaded libraries (a uprobe on the dynamic linker's _dl_debug_state, which it calls after each
change to the loaded libraries), looked at a few milliseconds later; a full pass every `rescan`
seconds catches anything missed.
How: once per file (device, inode), however many processes map it, through the process's own
root (containers have their own files); the probes go when no process has mapped it for
`detach_after` seconds. At most `max_files` files are probed at once; the rest are counted.

The Go HTTP/2 header probes (hints) are per process, and only where they name something: a
connection whose start the agent did not see (its HPACK state is not known). They go on the
Go processes that hold established connections when the agent starts, until those connections
are gone, and on a process in which a connection is met mid-way later (events lost), while
such a connection is open (`midway`: the HTTP collector's word). Elsewhere the frames say it
all, and a probe would cost a trap per header block (~10 us on a VM)."""

from __future__ import annotations

import ctypes as ct
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .. import libbpf
from ..metadata.store import proc_pod_ref
from . import elf, procs

log = logging.getLogger("podscope.uprobes")

# (function, program, return probe) per kind of file
OPENSSL_PROBES = (
    ("SSL_read", "tls_rd_e", False), ("SSL_read", "tls_ret", True),
    ("SSL_read_ex", "tls_rdx_e", False), ("SSL_read_ex", "tls_ret", True),
    ("SSL_write", "tls_wr_e", False), ("SSL_write", "tls_ret", True),
    ("SSL_write_ex", "tls_wrx_e", False), ("SSL_write_ex", "tls_ret", True),
    ("SSL_do_handshake", "tls_hs_e", False), ("SSL_do_handshake", "tls_ret", True),
    ("SSL_set_fd", "tls_setfd", False), ("SSL_free", "tls_free", False),
)
GO_ENTRIES = {"crypto/tls.(*Conn).Read": "go_tls_rd_e", "crypto/tls.(*Conn).Write": "go_tls_wr_e"}
SCOPES = ("pods", "all", "off")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, float("inf"))
EVENT_DELAY = 0.03  # seconds between an exec/mmap event and reading the process's maps


@dataclass
class Hints:
    """The HTTP/2 header probes of one Go process."""
    file: tuple[int, int]  # the binary
    links: list[libbpf.Link] = field(default_factory=list)
    old: set[int] = field(default_factory=set)  # its connections from before the agent


@dataclass
class Target:
    """One probed file."""
    key: tuple[int, int]  # (device, inode)
    path: str  # where it was opened from
    kind: str
    links: list[libbpf.Link] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)
    unused_since: float = 0.0  # monotonic time the last process went (0: in use)


class UprobeManager:
    def __init__(self, obj: libbpf.BpfObject, scope: str = "pods", max_files: int = 256,
                 detach_after: float = 60.0, rescan: float = 30.0, proc: str = "/proc",
                 inspect: Callable[[str], elf.ElfInfo] = elf.inspect):
        if scope not in SCOPES:
            raise ValueError(f"uprobe scope {scope!r}: expected one of {', '.join(SCOPES)}")
        self.obj = obj
        self.scope = scope
        self.watch_loads = True  # probe dynamic linkers (False: the full pass finds libraries)
        self.max_files = max_files
        self.detach_after = detach_after
        self.rescan = rescan
        self.proc = proc
        self._inspect = inspect
        self.self_pid = os.getpid()
        self._kinds: dict[tuple[int, int], elf.ElfInfo] = {}  # files looked at (bounded)
        self.targets: dict[tuple[int, int], Target] = {}
        self._refused: set[tuple[int, int]] = set()  # files said once not to be probed
        self._go_pids: set[int] = set()  # processes with an entry in go_offsets
        self._Offsets: Any = None
        self._pids: dict[int, tuple[int, set[tuple[int, int]]]] = {}  # pid -> (start, files)
        self._wanted: dict[str, bool] = {}  # cgroup path -> in scope (bounded)
        self._due: dict[int, float] = {}  # pid -> when to look at it
        self._event_cg: dict[int, int] = {}  # pid -> the cgroup its event came from
        self._cg_scope: dict[int, bool] = {}  # cgroup id -> its processes are in scope
        self._event_at: dict[int, float] = {}  # pid -> when its event came
        self._last_scan = 0.0
        # exited processes and unused files are looked for at most this often: tick() runs at
        # every wake of the agent (hundreds a second under load), a /proc read per process each
        self.expire_every = 1.0
        self._expired_at = 0.0
        self.hints: dict[int, Hints] = {}  # pid -> its header probes
        self.hints_attached = {"connections_before_start": 0, "met_midway": 0}
        # the processes with a connection met mid-way open (set by the HTTP collector)
        self.midway: Callable[[], set[int]] = set
        self.hint_check_every = 5.0  # connections from before the agent looked for this often
        self._hints_checked = 0.0
        self._started = False  # the first full pass is the agent's start
        self.errors: dict[str, int] = {}
        self.skipped_files = 0  # files not probed: max_files reached
        # seconds from a process's exec/mmap event to its files being probed (cumulative
        # histogram counts per bucket, and the sum)
        self.latency_counts = [0] * len(LATENCY_BUCKETS)
        self.latency_sum = 0.0

    # --- what to look at ---
    def event(self, pid: int, cgroup_id: int = 0) -> None:
        """The kernel saw pid exec or load libraries. Processes of a cgroup already found out of
        scope cost a dict lookup (an exec storm on the host is not read from /proc)."""
        if pid == self.self_pid or len(self._due) > 65536:
            return
        if cgroup_id and self._cg_scope.get(cgroup_id) is False:
            return
        if cgroup_id and self.scope == "pods" and len(self._event_cg) < 65536:
            self._event_cg[pid] = cgroup_id
        now = time.monotonic()
        self._due.setdefault(pid, now + EVENT_DELAY)
        self._event_at.setdefault(pid, now)

    def tick(self) -> None:
        """Look at the processes whose time has come; a full pass when one is due."""
        now = time.monotonic()
        if now - self._last_scan >= self.rescan:
            self._last_scan = now
            self.scan_all()
        elif self._due:
            for pid in [p for p, t in self._due.items() if t <= now]:
                del self._due[pid]
                self._look(pid, self._event_at.pop(pid, None))
        if self.targets and now - self._expired_at >= self.expire_every:
            self._expired_at = now
            self._expire(now)
        if self.hints and now - self._hints_checked >= self.hint_check_every:
            self._hints_checked = now
            self._check_hints()

    def scan_all(self) -> None:
        seen = set()
        try:
            names = os.listdir(self.proc)
        except OSError as e:
            self._error("proc_unreadable")
            log.debug("uprobes: %s: %s", self.proc, e)
            names = []
        for name in names:
            if name.isdigit():
                pid = int(name)
                seen.add(pid)
                self._look(pid, None)
        for pid in [p for p in self._pids if p not in seen]:
            self._gone(pid)
        self._started = True
        self._due.clear()
        self._event_at.clear()
        self._event_cg.clear()

    def _in_scope(self, pid: int) -> bool:
        if pid == self.self_pid or self.scope == "off":
            return False
        if self.scope == "all":
            return True
        ref = proc_pod_ref(pid, self.proc)
        ok = ref is not None and bool(ref.pod_uid or ref.container_id)
        cg = self._event_cg.pop(pid, 0)
        if cg and ref is not None:
            if len(self._cg_scope) >= 65536:
                self._cg_scope.clear()
            self._cg_scope[cg] = ok
        return ok

    def _look(self, pid: int, event_at: float | None) -> None:
        start = procs.start_time(pid, self.proc)
        if not start:
            self._gone(pid)
            return
        if not self._in_scope(pid):
            if pid in self._pids:
                self._gone(pid)
            return
        files: set[tuple[int, int]] = set()
        for m in procs.exec_mappings(pid, self.proc):
            key = (m.dev, m.inode)
            info = self._kinds.get(key)
            if info is None:
                path = procs.openable(pid, m, self.proc)
                if path is None:
                    continue
                try:
                    info = self._inspect(path)
                except OSError as e:
                    self._error("file_unreadable")
                    log.debug("uprobes: cannot read %s of pid %d: %s", m.path, pid, e)
                    continue
                if len(self._kinds) >= 65536:
                    self._kinds.clear()
                self._kinds[key] = info
            if not info.kind or (info.kind == "ld" and not self.watch_loads):
                continue
            if key not in self.targets and not self._attach(pid, m, info):
                continue
            files.add(key)
            if info.h2_probes and not info.pie:
                self._go_offsets(pid, info)
                if pid not in self._go_pids and not self._started:
                    old_conns = procs.established_sockets(pid, self.proc)
                    if old_conns:
                        self._hint(pid, key, info, old=old_conns)
                self._go_pids.add(pid)
            t = self.targets[key]
            t.pids.add(pid)
            t.unused_since = 0.0
        old = self._pids.get(pid)
        if old:
            for key in old[1] - files:
                self._release(key, pid)
        if files:
            self._pids[pid] = (start, files)
            if event_at is not None and (not old or files - old[1]):
                took = time.monotonic() - event_at
                self.latency_sum += took
                for i, le in enumerate(LATENCY_BUCKETS):
                    if took <= le:
                        self.latency_counts[i] += 1
        else:
            self._pids.pop(pid, None)

    # --- probes ---
    def _probes(self, info: elf.ElfInfo) -> list[tuple[str | None, int, str, bool]]:
        """(function, offset, program, return probe) for a file; function None: the offset is
        the file offset (a stripped Go binary, its functions from .gopclntab)."""
        if info.kind == "openssl":
            return [(f, 0, prog, ret) for f, prog, ret in OPENSSL_PROBES if f in info.funcs]
        if info.kind == "ld":
            return [("_dl_debug_state", 0, "http_dlmap", False)] if self.watch_loads else []
        base = dict(info.file_offsets)

        def at(func: str, off: int) -> tuple[str | None, int]:
            return (None, base[func] + off) if func in base else (func, off)

        out = [(*at(f, 0), GO_ENTRIES[f], False) for f in sorted(info.funcs) if f in GO_ENTRIES]
        for func, offsets in info.returns:
            out += [(*at(func, off), "go_tls_ret", False) for off in offsets]
        return out

    # --- the Go HTTP/2 header probes, per process ---
    def want_hints(self, pid: int) -> None:
        """A connection of pid was met mid-way: its header blocks are named by the probes."""
        if pid in self.hints or pid not in self._go_pids or len(self.hints) >= self.max_files:
            return
        entry = self._pids.get(pid)
        for key in entry[1] if entry else ():
            info = self._kinds.get(key)
            if info is not None and info.h2_probes and not info.pie:
                self._hint(pid, key, info)
                return

    def _hint(self, pid: int, key: tuple[int, int], info: elf.ElfInfo,
              old: set[int] | None = None) -> None:
        t = self.targets.get(key)
        if t is None:
            return
        h = Hints(key, old=old or set())
        try:
            for func, prog in info.h2_probes:
                h.links.append(self.obj.program(prog).attach_uprobe(t.path, func, pid=pid))
        except libbpf.BpfError as e:
            self._error("attach_failed")
            log.warning("uprobes: HTTP/2 header probes on %s (pid %d): %s", t.path, pid, e.short)
            for link in h.links:
                self._destroy(link)
            return
        self.hints[pid] = h
        self.hints_attached["connections_before_start" if h.old else "met_midway"] += 1
        log.info("uprobes: HTTP/2 header probes on pid %d (%s)", pid,
                 f"{len(h.old)} connections from before the agent" if h.old else
                 "a connection met mid-way")

    def _unhint(self, pid: int) -> None:
        h = self.hints.pop(pid, None)
        for link in h.links if h else ():
            self._destroy(link)

    def _check_hints(self) -> None:
        midway = self.midway()
        for pid, h in list(self.hints.items()):
            if h.old:
                h.old &= procs.established_sockets(pid, self.proc)
            if not h.old and pid not in midway:
                self._unhint(pid)
                log.info("uprobes: HTTP/2 header probes off pid %d (no connection needs them)",
                         pid)

    def _go_offsets(self, pid: int, info: elf.ElfInfo | None) -> None:
        """Where a Go process keeps what the HTTP/2 header probes read (per process: the map
        go_offsets); None: forget it."""
        m = self.obj.map("go_offsets")
        key = ct.c_uint32(pid)
        if info is None:
            m.delete(key)
            return
        if self._Offsets is None:
            self._Offsets = self.obj.struct("go_h2_offsets")
        v = self._Offsets()
        for name, off in info.h2_offsets + info.h2_types:
            setattr(v, name, off)
        try:
            m.update(key, v)
        except libbpf.BpfError:
            self._error("go_offsets_full")

    def _attach(self, pid: int, m: procs.Mapped, info: elf.ElfInfo) -> bool:
        if info.why_not:
            if (m.dev, m.inode) not in self._refused:
                if len(self._refused) >= 65536:
                    self._refused.clear()
                self._refused.add((m.dev, m.inode))
                self._error("go_stripped" if info.stripped else "go_unsupported")
                log.warning("uprobes: %s (pid %d): not probed: %s", m.path, pid, info.why_not)
            return False
        if len(self.targets) >= self.max_files:
            self.skipped_files += 1
            return False
        path = procs.openable(pid, m, self.proc)
        if path is None:
            return False
        t = Target((m.dev, m.inode), path, info.kind)
        try:
            for func, off, prog, ret in self._probes(info):
                t.links.append(self.obj.program(prog).attach_uprobe(path, func, offset=off,
                                                                     retprobe=ret))
        except libbpf.BpfError as e:
            self._error("attach_failed")
            log.warning("uprobes: %s (%s, pid %d): %s", m.path, info.kind, pid, e.short)
            for link in t.links:
                self._destroy(link)
            return False
        self.targets[t.key] = t
        log.info("uprobes: %s probes on %s (pid %d)", info.kind, m.path, pid)
        return True

    def _destroy(self, link: libbpf.Link) -> None:
        link.destroy()
        if link in self.obj.links:
            self.obj.links.remove(link)

    def _release(self, key: tuple[int, int], pid: int) -> None:
        t = self.targets.get(key)
        if t is not None:
            t.pids.discard(pid)
            if not t.pids:
                t.unused_since = time.monotonic()

    def _gone(self, pid: int) -> None:
        self._unhint(pid)
        if pid in self._go_pids:
            self._go_pids.discard(pid)
            self._go_offsets(pid, None)
        old = self._pids.pop(pid, None)
        if old:
            for key in old[1]:
                self._release(key, pid)

    def _expire(self, now: float) -> None:
        # processes that exited since they were looked at
        for pid, (start, _) in list(self._pids.items()):
            if procs.start_time(pid, self.proc) != start:
                self._gone(pid)
        for key, t in list(self.targets.items()):
            if t.unused_since and now - t.unused_since >= self.detach_after:
                for link in t.links:
                    self._destroy(link)
                del self.targets[key]
                log.info("uprobes: %s probes removed from %s (no process maps it)", t.kind,
                         t.path)

    def _error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def close(self) -> None:
        for pid in list(self.hints):
            self._unhint(pid)
        for t in self.targets.values():
            for link in t.links:
                self._destroy(link)
        self.targets.clear()

    # --- what it says ---
    def state_sizes(self) -> dict[str, int]:
        return {"uprobe_files": len(self.targets), "uprobe_processes": len(self._pids),
                "uprobe_files_inspected": len(self._kinds), "uprobe_hint_processes": len(self.hints)}

    def found(self) -> list[dict[str, object]]:
        """Probed files and the processes mapping them (podscope check, the web page)."""
        return [{"kind": t.kind, "path": _host_path(t.path), "probes": len(t.links),
                 "pids": sorted(t.pids)} for t in self.targets.values()]

    def metrics(self) -> Iterable[Metric]:
        files = GaugeMetricFamily("podscope_uprobe_files",
                                  "Executable files with podscope uprobes (TLS libraries, "
                                  "binaries with TLS linked in)", labels=["kind"])
        probes = GaugeMetricFamily("podscope_uprobes_attached", "Uprobes attached",
                                   labels=["kind"])
        by_kind: dict[str, tuple[int, int]] = {}
        for t in self.targets.values():
            n, p = by_kind.get(t.kind, (0, 0))
            by_kind[t.kind] = (n + 1, p + len(t.links))
        for kind, (n, p) in sorted(by_kind.items()):
            files.add_metric([kind], n)
            probes.add_metric([kind], p)
        yield files
        yield probes
        per_file = GaugeMetricFamily("podscope_uprobe_file_processes",
                                     "Processes mapping each probed file (0: its probes go "
                                     "after uprobe_detach_after)", labels=["kind", "path"])
        for t in self.targets.values():
            per_file.add_metric([t.kind, _host_path(t.path)], len(t.pids))
        yield per_file
        lat = HistogramMetricFamily(
            "podscope_uprobe_attach_seconds",
            "From a process's exec (or its mapping of a library) to uprobes on its files",
            buckets=[(_le(le), n) for le, n in zip(LATENCY_BUCKETS, self.latency_counts,
                                                    strict=True)],
            sum_value=self.latency_sum)
        yield lat
        procs_g = GaugeMetricFamily("podscope_uprobe_processes",
                                    "Processes that map a probed file")
        procs_g.add_metric([], len(self._pids))
        yield procs_g
        hints = GaugeMetricFamily(
            "podscope_uprobe_hint_processes",
            "Go processes with HTTP/2 header probes: connections from before the agent, or met "
            "mid-way, whose HPACK state is not known")
        hints.add_metric([], len(self.hints))
        yield hints
        attached = CounterMetricFamily(
            "podscope_uprobe_hint_attachments",
            "Go processes given the HTTP/2 header probes, by why", labels=["reason"])
        for reason, n in self.hints_attached.items():
            attached.add_metric([reason], n)
        yield attached
        errs = CounterMetricFamily("podscope_uprobe_errors",
                                   "Files podscope could not probe, by reason "
                                   "(limit: more than max_uprobe_files)", labels=["reason"])
        for reason, n in sorted({**self.errors, "limit": self.skipped_files}.items()):
            errs.add_metric([reason], n)
        yield errs


def _le(v: float) -> str:
    return "+Inf" if v == float("inf") else repr(v)


def _host_path(path: str) -> str:
    """/proc/PID/root/usr/lib/x.so -> /usr/lib/x.so (the name inside the process)."""
    parts = path.split("/", 4)
    if len(parts) == 5 and parts[1] == "proc" and parts[3] == "root":
        return "/" + parts[4]
    return path


def survey(proc: str = "/proc", scope: str = "pods") -> list[dict[str, object]]:
    """What the agent would probe now, without probing: per process in scope that maps a TLS
    library or a Go binary with crypto/tls, the file, its kind and, when it cannot be probed,
    why (`podscope check --tls`)."""
    kinds: dict[tuple[int, int], elf.ElfInfo] = {}
    out: list[dict[str, object]] = []
    me = os.getpid()
    for name in sorted(os.listdir(proc), key=lambda n: (len(n), n)):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        ref = proc_pod_ref(pid, proc)
        if ref is None or (scope == "pods" and not (ref.pod_uid or ref.container_id)):
            continue
        for m in procs.exec_mappings(pid, proc):
            key = (m.dev, m.inode)
            if key not in kinds:
                path = procs.openable(pid, m, proc)
                try:
                    kinds[key] = elf.inspect(path) if path else elf.ElfInfo("", frozenset())
                except OSError:
                    kinds[key] = elf.ElfInfo("", frozenset())
            info = kinds[key]
            if info.kind in ("openssl", "go"):
                try:
                    comm = open(f"{proc}/{pid}/comm").read().strip()  # noqa: SIM115
                except OSError:
                    comm = ""
                out.append({"pid": pid, "process": comm, "pod_uid": ref.pod_uid,
                            "container_id": ref.container_id, "cgroup": ref.path,
                            "path": m.path, "kind": info.kind,
                            "go_version": info.go_version,
                            "probed": not info.why_not, "why_not": info.why_not})
    return out
