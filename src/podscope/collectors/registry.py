"""Every collector the agent runs, in one table: its name, the setting that switches it, how it
is built, and what it needs when it cannot load at all. The agent starts them one by one, each in
its own guarded step (a collector the kernel refuses is logged once and left out; the agent goes
on); `podscope check` builds them exactly the same way and asks each what works."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..features import Signal
from ..libbpf import BpfError
from ..metadata.store import MetadataStore
from .base import Collector, Emit, EmitLines

log = logging.getLogger("podscope.collectors")


@dataclass
class Context:
    cfg: Config
    store: MetadataStore
    emit: Emit | None = None  # where records go (None: no records are wanted)
    emit_lines: EmitLines | None = None  # where records go as JSON lines, when they all can


@dataclass(frozen=True)
class Spec:
    name: str
    enabled: Callable[[Config], bool]
    make: Callable[[Context], Collector]
    needs: str  # what the collector needs from the kernel: said when it cannot load at all
    signals: tuple[str, ...]  # its signals, named when it cannot load at all
    default: bool = True  # default signals (check's exit code); False: a deep probe


def _cgroups(c: Context) -> Collector:
    from .cgroups import CgroupEventsCollector

    return CgroupEventsCollector(c.store)


def _tcp(c: Context) -> Collector:
    from .tcp import TcpCollector

    return TcpCollector(c.store, emit=c.emit, records=c.emit is not None,
                        listener_refresh=c.cfg.listener_refresh)


def _http(c: Context) -> Collector:
    from .http import HttpCollector

    return HttpCollector(c.store, emit=c.emit, records=c.emit is not None,
                         emit_lines=c.emit_lines,
                         capture_headers=c.cfg.http_capture_headers,
                         route_budget=c.cfg.http_route_budget,
                         request_timeout=c.cfg.http_request_timeout,
                         peer_series_ttl=c.cfg.http_peer_series_ttl, hooks=c.cfg.http_hooks,
                         breakdown_reasons=c.cfg.http_breakdown_reasons,
                         breakdown_reclaim=c.cfg.http_breakdown_reclaim, tls=c.cfg.tls,
                         max_uprobe_files=c.cfg.max_uprobe_files,
                         uprobe_detach_after=c.cfg.uprobe_detach_after)


def _kernel(c: Context) -> Collector:
    from .kernel import KernelCollector

    return KernelCollector(c.store, emit=c.emit, records=c.emit is not None)


def _dns(c: Context) -> Collector:
    from .dns import DnsCollector

    return DnsCollector(c.store, emit=c.emit, timeout=c.cfg.dns_timeout, hooks=c.cfg.http_hooks)


def _netlat(c: Context) -> Collector:
    from .netlat import NetlatCollector

    return NetlatCollector(c.store)


def _pressure(c: Context) -> Collector:
    from .pressure import PressureCollector

    return PressureCollector(c.store, proc=c.cfg.proc_root)


def _sched(c: Context) -> Collector:
    from .sched import SchedCollector

    return SchedCollector(c.store)


SPECS: tuple[Spec, ...] = (
    # first: each poll of the agent learns new cgroups before it reads what they did
    Spec("cgroups", lambda cfg: True, _cgroups, "tp_btf/cgroup_mkdir and cgroup_rmdir",
         ("cgroup names kept after removal (short-lived containers)",)),
    Spec("tcp", lambda cfg: True, _tcp,
         "tp_btf/inet_sock_set_state and iter/tcp (Linux 5.9 with BTF)",
         ("TCP golden signals",)),
    Spec("http", lambda cfg: cfg.http, _http,
         "the socket tracepoints (Linux 6.3) or the syscall tracepoints (tracefs at "
         "/sys/kernel/tracing)", ("HTTP/1.x, HTTP/2 and gRPC requests",)),
    Spec("kernel", lambda cfg: cfg.kernel, _kernel,
         "the syscall tracepoints (tracefs at /sys/kernel/tracing), tp_btf/mark_victim and "
         "sched_process_exit", ("kernel failures",)),
    Spec("dns", lambda cfg: cfg.dns, _dns,
         "the socket tracepoints (Linux 6.3) or the syscall tracepoints (tracefs at "
         "/sys/kernel/tracing)", ("DNS queries",)),
    Spec("netlat", lambda cfg: True, _netlat,
         "tp_btf/net_dev_start_xmit, netif_receive_skb, skb_copy_datagram_iovec, consume_skb, "
         "kfree_skb", ("network stack latency (deep probe)",), default=False),
    Spec("pressure", lambda cfg: cfg.pressure, _pressure,
         "cgroup v2 (PSI, io.stat, memory.events) or the v1 blkio and memory hierarchies",
         ("pressure stalls per container (PSI)", "block I/O per container",
          "memory.high events and refaults")),
    Spec("sched", lambda cfg: cfg.cpu, _sched,
         "iter/task and tp_btf/sched_process_exit (Linux 5.8)", ("CPU per pod",)),
)


def start(spec: Spec, ctx: Context) -> tuple[Collector | None, list[Signal]]:
    """Build and start one collector. On failure: None, and its signals as unavailable with the
    kernel's reason (logged once)."""
    t0 = time.perf_counter()
    col: Any = None
    try:
        col = spec.make(ctx)
        col.start()
    except (BpfError, OSError) as e:
        if col is not None:
            try:
                col.close()
            except Exception:
                log.exception("closing collector %s", spec.name)
        reason = e.short if isinstance(e, BpfError) else str(e)
        log.error("%s collector disabled: %s (it needs %s)", spec.name, reason, spec.needs)
        return None, [Signal(s, spec.name, "unavailable", "", f"{reason} (it needs {spec.needs})",
                             spec.default) for s in spec.signals]
    sigs = col.signals()
    for s in sigs:
        if s.state != "works":
            log.warning("%s: %s %s: %s", spec.name, s.name, s.state, s.detail)
    log.info("%s collector started in %.0f ms (BPF load %.0f ms)", spec.name,
             (time.perf_counter() - t0) * 1000, getattr(getattr(col, "obj", None), "load_ms", 0.0))
    return col, sigs


def probe_collectors() -> list[Signal]:
    """`podscope check`: every collector built, loaded and attached as the agent does (with
    default settings), asked per signal what works, then closed. The deep probes that load on
    demand (profiling) are tried too."""
    store = MetadataStore(None, proc="/nonexistent")
    ctx = Context(Config(), store)
    out: list[Signal] = []
    for spec in SPECS:
        col, sigs = start(spec, ctx)
        out += sigs
        if col is not None:
            col.close()
    out += _probe_profiler()
    return out


def _probe_profiler() -> list[Signal]:
    from .profile import Profiler

    name = "stack sampling on and off CPU (deep probe)"
    prof = None
    try:
        prof = Profiler([], off_cpu=True)
        prof.start()
        return [Signal(name, "profile", "works",
                       "perf_event (software CPU clock), tp_btf/sched_switch", "", False,
                       prof.obj.load_ms)]
    except (BpfError, OSError) as e:
        return [Signal(name, "profile", "unavailable", "", str(e).splitlines()[0], False)]
    finally:
        if prof is not None:
            prof.close()
