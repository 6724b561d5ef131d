"""What the running kernel allows, found by trying; `podscope check` prints it.

Two layers:
- `kernel()`: the facts the BPF objects are configured by (tracepoints and their arguments read
  from kernel BTF, map types and helpers probed by libbpf), probed once per process. Probes are
  three-valued: supported, not supported (with the kernel version that brought it), or
  inconclusive (the probe itself failed: not cached, treated as "not supported" for choosing).
- `check()`: every collector of the agent's registry is built, loaded and attached exactly as the
  agent would do it, and says per signal which hook set it uses, whether it works, is degraded
  (and why) or unavailable (and why), and what loading cost."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
from dataclasses import dataclass, field

from . import libbpf
from .metadata.cgroups import cgroup2_mount

TRACEFS = "/sys/kernel/tracing"
BPFFS = "/sys/fs/bpf"
BTF_PATH = "/sys/kernel/btf/vmlinux"

_libc = ctypes.CDLL(None, use_errno=True)
log = logging.getLogger("podscope.features")


class Fatal(Exception):
    """A condition the agent cannot run under: one clear message, exit code 2."""


@dataclass
class Probe:
    name: str
    ok: bool | None  # None: inconclusive
    detail: str = ""


@dataclass
class Signal:
    """One signal of one collector, as this kernel runs it."""
    name: str
    collector: str
    state: str  # "works", "degraded" or "unavailable"
    hooks: str = ""  # the hook set in use
    detail: str = ""  # degraded or unavailable: why (the kernel's reason, and what to do)
    default: bool = True  # a default signal (check's exit code); False: deep probes
    load_ms: float = 0.0  # the collector's object: bpf_object__load time

    @property
    def ok(self) -> bool:
        return self.state != "unavailable"


@dataclass
class Report:
    kernel: str = ""
    probes: list[Probe] = field(default_factory=list)
    signals: list[Signal] = field(default_factory=list)

    @property
    def default_ok(self) -> bool:
        return all(s.ok for s in self.signals if s.default)


def _mounted(path: str, fstype: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path and line.split()[2] == fstype for line in f)


def _mount(fstype: str, path: str) -> None:
    if _libc.mount(fstype.encode(), path.encode(), fstype.encode(), 0, None):
        e = ctypes.get_errno()
        raise OSError(e, f"mounting {fstype} at {path}: {os.strerror(e)}")


def ensure_mounts() -> list[str]:
    """Mount tracefs and bpffs when missing; return what was mounted."""
    done = []
    for fstype, path in (("tracefs", TRACEFS), ("bpf", BPFFS)):
        if os.path.isdir(path) and not _mounted(path, fstype):
            try:
                _mount(fstype, path)
                done.append(path)
            except OSError:
                pass  # reported by the probes that need it
    return done


def preflight() -> str:
    """Conditions without which nothing works. Returns the cgroup2 mount point."""
    if os.geteuid() != 0:
        raise Fatal("podscope must run as root (it loads BPF programs and reads every "
                    "process's namespaces): run it with sudo, or as a privileged DaemonSet")
    if not os.path.exists(BTF_PATH):
        raise Fatal(f"kernel has no BTF at {BTF_PATH}: podscope needs a kernel built with "
                    "CONFIG_DEBUG_INFO_BTF=y (every major distribution ships one since 2021)")
    try:
        libbpf.Btf.vmlinux().close()
    except libbpf.BpfError:
        raise Fatal(f"kernel BTF at {BTF_PATH} is empty or not valid BTF: podscope needs "
                    "a kernel built with CONFIG_DEBUG_INFO_BTF=y") from None
    cg2 = cgroup2_mount()
    if not cg2:
        raise Fatal("no cgroup2 file system is mounted: podscope attributes sockets and tasks by "
                    "their cgroup v2 id; mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) "
                    "or boot with systemd.unified_cgroup_hierarchy=1")
    ensure_mounts()
    return cg2


# --- the kernel facts the BPF objects are configured by ------------------------------------


@dataclass(frozen=True)
class Kernel:
    release: str
    sock_length_tps: bool  # sock:sock_recv_length and sock_send_length (v6.3)
    task_storage: bool | None  # task-local storage maps and bpf_get_current_task_btf (v5.11)
    task_pt_regs: bool | None  # bpf_task_pt_regs (v5.15)
    kfree_skb_args: int  # tracepoint arguments: 2 (skb, location), 3 (+reason, v5.17), 4 (+sk)
    sched_switch_args: int  # 3, or 4 with prev_state (v5.18)
    tcp_send_reset_args: int  # 2, or 3 (+reason, v6.10, when resets without a socket got traced)
    block_rq_issue_args: int = 1  # 1 (rq), or 2 (request_queue first, before v5.11)

    @property
    def has_task_storage(self) -> bool:
        return bool(self.task_storage)

    @property
    def has_task_pt_regs(self) -> bool:
        return bool(self.task_pt_regs)


def _tp_args(vmlinux: libbpf.Btf, tracepoint: str) -> int:
    """Arguments of a tracepoint (its btf_trace_ typedef, minus the leading context); 0 when the
    kernel has no such tracepoint."""
    try:
        return vmlinux.func_proto_params(f"btf_trace_{tracepoint}") - 1
    except (KeyError, TypeError):
        return 0


@functools.cache
def kernel() -> Kernel:
    """Probed once per process (a probe that failed is logged and counts as missing)."""
    vmlinux = libbpf.Btf.vmlinux()
    try:
        socks = all(_tp_args(vmlinux, tp) for tp in ("sock_recv_length", "sock_send_length"))
        kfree = _tp_args(vmlinux, "kfree_skb")
        switch = _tp_args(vmlinux, "sched_switch")
        rst = _tp_args(vmlinux, "tcp_send_reset")
        block = _tp_args(vmlinux, "block_rq_issue")
    finally:
        vmlinux.close()
    storage = libbpf.probe_map_type(libbpf.MAP_TASK_STORAGE)
    task_btf = libbpf.probe_helper(libbpf.FUNC_GET_CURRENT_TASK_BTF)
    regs = libbpf.probe_helper(libbpf.FUNC_TASK_PT_REGS)
    for what, v in (("task storage maps", storage), ("bpf_get_current_task_btf", task_btf),
                    ("bpf_task_pt_regs", regs)):
        if v is None:
            log.warning("probing %s failed (inconclusive): podscope does without it", what)
    both = None if storage is None or task_btf is None else bool(storage and task_btf)
    return Kernel(release=platform.release(), sock_length_tps=socks, task_storage=both,
                  task_pt_regs=regs, kfree_skb_args=kfree, sched_switch_args=switch,
                  tcp_send_reset_args=rst, block_rq_issue_args=block)


def use_task_store(obj: libbpf.BpfObject, *maps: str, entries: int = 65536) -> None:
    """Per-thread maps of `obj` (include/task_store.bpf.h): task storage where the kernel has it,
    else preallocated hashes keyed by thread id, `entries` threads each."""
    k = kernel()
    obj.set_rodata(has_task_storage=k.has_task_storage)
    if not k.has_task_storage:
        for name in maps:
            m = obj.map(name)
            m.set_type(libbpf.MAP_HASH, flags=0)
            m.set_max_entries(entries)


def socket_hooks(setting: str) -> str:
    """The hook set of the collectors that read socket payloads (HTTP, DNS): "socket" (the socket
    tracepoints, Linux 6.3: only socket I/O pays) or "syscalls" (the syscall tracepoints: every
    read and write of every process pays a little). "auto": socket where the kernel has them."""
    if setting not in ("auto", "socket", "syscalls"):
        raise ValueError(f"http_hooks {setting!r}: expected auto, socket or syscalls")
    if setting != "auto":
        return setting
    k = kernel()
    if k.sock_length_tps and k.has_task_pt_regs:
        return "socket"
    log.info("no sock_recv_length/sock_send_length tracepoints (Linux 6.3): HTTP and DNS use "
             "the syscall tracepoints (read, write, ...), which cost every such syscall a little")
    return "syscalls"


def set_prev_state(obj: libbpf.BpfObject) -> None:
    """sched_switch programs: whether the tracepoint passes prev_state (v5.18)."""
    obj.set_rodata(has_prev_state=kernel().sched_switch_args >= 4)


# --- `podscope check` ------------------------------------------------------------------------


def probe_kprobes() -> Probe:
    """A kprobe BPF program attached through perf_event_open (libbpf), as a tool would do."""
    return _probe_program("probe_kprobe", "kprobes", attach=True,
                          no="the kernel has no kprobes (CONFIG_KPROBES): podscope uses "
                             "tracepoints only, so nothing is lost")


def _probe_program(prog_name: str, label: str, attach: bool, no: str = "") -> Probe:
    try:
        obj = libbpf.BpfObject(libbpf.bpf_object_path("features"), "features")
    except libbpf.BpfError as e:
        return Probe(label, None, str(e))
    try:
        for p in obj.programs():
            p.autoload = p.name == prog_name
        try:
            obj.load()
        except libbpf.BpfError as e:
            return Probe(label, False, no or f"program load refused: {os.strerror(e.errno)}")
        if attach:
            try:
                obj.program(prog_name).attach()
            except libbpf.BpfError as e:
                return Probe(label, False, no or f"attach refused: {os.strerror(e.errno)}")
        return Probe(label, True, "loaded" + (" and attached" if attach else ""))
    finally:
        obj.close()


def _since(v: bool | None, yes: str, version: str) -> Probe:
    name = yes
    if v is None:
        return Probe(name, None, "the probe failed (inconclusive)")
    return Probe(name, v, "" if v else f"needs Linux {version}")


def probe_all() -> list[Probe]:
    k = kernel()
    return [
        Probe("btf", os.path.exists(BTF_PATH), BTF_PATH),
        Probe("tracefs", _mounted(TRACEFS, "tracefs"), TRACEFS),
        Probe("bpffs", _mounted(BPFFS, "bpf"), BPFFS),
        Probe("cgroup2", cgroup2_mount() is not None, cgroup2_mount() or "not mounted"),
        probe_kprobes(),
        _probe_program("probe_fentry", "fentry", attach=True),
        _probe_program("probe_ringbuf", "ringbuf", attach=True),
        _probe_program("probe_syscall_tp", "syscall tracepoints", attach=True),
        Probe("socket tracepoints", k.sock_length_tps,
              "sock_recv_length, sock_send_length" if k.sock_length_tps
              else "no sock_recv_length/sock_send_length (Linux 6.3): the syscall tracepoints "
                   "are used"),
        _since(k.task_storage, "task storage", "5.11"),
        _since(k.task_pt_regs, "bpf_task_pt_regs", "5.15"),
        Probe("kfree_skb drop reason", k.kfree_skb_args >= 3,
              "" if k.kfree_skb_args >= 3 else "needs Linux 5.17: drops are counted without "
                                                "their reason"),
    ]


def check() -> Report:
    """Every collector, built and loaded as the agent does, asked what works."""
    from .collectors.registry import probe_collectors

    preflight()
    return Report(kernel=platform.release(), probes=probe_all(), signals=probe_collectors())


def format_report(r: Report) -> str:
    def mark(ok: bool | None) -> str:
        return {True: "yes", False: "no", None: "?"}[ok]

    lines = [f"kernel {r.kernel}", "kernel features:"]
    for p in r.probes:
        lines.append(f"  {p.name:<22} {mark(p.ok):<4} {p.detail}")
    lines.append("signals:")
    for s in r.signals:
        what = s.hooks if s.state == "works" else f"{s.hooks}: {s.detail}" if s.hooks else s.detail
        cost = f"{s.load_ms:7.0f} ms" if s.load_ms else "       -  "
        lines.append(f"  {s.collector:<7} {s.name:<50} {s.state:<11} {cost}  {what}")
    lines.append("default signals: " + ("all available" if r.default_ok else "NOT all available"))
    return "\n".join(lines)
