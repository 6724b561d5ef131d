"""What the running kernel allows, found by trying; `podscope check` prints it.

Probe results are three-valued: supported, not supported (with the reason and what to do), or
inconclusive (an unexpected error; not cached)."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field

from . import libbpf
from .metadata.cgroups import cgroup2_mount

TRACEFS = "/sys/kernel/tracing"
BPFFS = "/sys/fs/bpf"
BTF_PATH = "/sys/kernel/btf/vmlinux"

_libc = ctypes.CDLL(None, use_errno=True)


class Fatal(Exception):
    """A condition the agent cannot run under: one clear message, exit code 2."""


@dataclass
class Probe:
    name: str
    ok: bool | None  # None: inconclusive
    detail: str = ""


@dataclass
class Signal:
    name: str
    hooks: list[str]
    ok: bool | None  # None: not available, but a fallback provides the signal
    detail: str = ""


@dataclass
class Report:
    probes: list[Probe] = field(default_factory=list)
    signals: list[Signal] = field(default_factory=list)

    @property
    def default_ok(self) -> bool:
        return all(s.ok is not False for s in self.signals)


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


def probe_kprobes() -> Probe:
    path = os.path.join(TRACEFS, "kprobe_events")
    if not os.path.exists(os.path.join(TRACEFS, "events")):
        return Probe("kprobes", None, f"tracefs not mounted at {TRACEFS}")
    if not os.path.exists(path):
        return Probe("kprobes", False, "no kprobe_events in tracefs: kernel built without "
                     "CONFIG_KPROBES (podscope uses tracepoints instead)")
    try:
        with open(path, "a") as f:
            f.write("p:podscope_probe/tcp_v4_connect tcp_v4_connect\n")
        with open(path, "a") as f:
            f.write("-:podscope_probe/tcp_v4_connect\n")
        return Probe("kprobes", True, "a kprobe on tcp_v4_connect was created and removed")
    except OSError as e:
        return Probe("kprobes", False, f"creating a kprobe failed: {os.strerror(e.errno or 0)}")


def _probe_program(prog_name: str, label: str, attach: bool) -> Probe:
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
            return Probe(label, False, f"program load refused: {os.strerror(e.errno)}")
        if attach:
            try:
                obj.program(prog_name).attach()
            except libbpf.BpfError as e:
                return Probe(label, False, f"attach refused: {os.strerror(e.errno)}")
        return Probe(label, True, "loaded" + (" and attached" if attach else ""))
    finally:
        obj.close()


def probe_all() -> list[Probe]:
    probes = [
        Probe("btf", os.path.exists(BTF_PATH), BTF_PATH),
        Probe("tracefs", _mounted(TRACEFS, "tracefs"), TRACEFS),
        Probe("bpffs", _mounted(BPFFS, "bpf"), BPFFS),
        Probe("cgroup2", cgroup2_mount() is not None, cgroup2_mount() or "not mounted"),
        probe_kprobes(),
        _probe_program("probe_fentry", "fentry", attach=True),
        _probe_program("probe_ringbuf", "ringbuf", attach=True),
        _probe_program("probe_syscall_tp", "syscall tracepoints", attach=True),
    ]
    return probes


# Signal -> programs of tcp.bpf.o it needs.
TCP_SIGNALS: dict[str, list[str]] = {
    "tcp connections (opened, closed, connect latency, duration)": ["tcp_state"],
    "tcp bytes, retransmits, rtt (socket counters)": ["tcp_state", "tcp_iter"],
    "tcp resets sent/received": ["tcp_rst_send", "tcp_rst_recv"],
    "packet drops by reason, listen overflows/drops": ["tcp_drop"],
    "tcp accept/SYN queue depth (iter/tcp)": ["tcp_iter"],
    "tcp connection records (ring buffer)": ["tcp_state"],
}


# Signal -> programs of http.bpf.o it needs: the socket tracepoints, and the fallback.
HTTP_SIGNALS: dict[str, list[str]] = {
    "http/1.x requests (tp_btf sock_recv_length/sock_send_length)": ["http_recv", "http_send"],
    "http requests ended by connection close": ["http_close"],
}
HTTP_FALLBACK_SIGNALS: dict[str, list[str]] = {
    "http/1.x requests (fallback: syscall tracepoints)": [
        f"http_sx_{n}" for n in ("read", "readv", "recvfrom", "recvmsg", "write", "writev",
                                 "sendto", "sendmsg")],
    "http requests ended by connection close (fallback)": ["http_sx_close"],
}
HTTP_HINT = ("HTTP needs the sock:sock_recv_length and sock:sock_send_length tracepoints and "
             "bpf_task_pt_regs (Linux 6.x); without them podscope runs with TCP signals only")


def probe_signals(family: str, table: dict[str, list[str]], hint: str = "") -> list[Signal]:
    """Load `family`.bpf.o and attach each program: which signals of `table` work here."""
    results: dict[str, tuple[str, str | None]] = {}

    def failed(e: Exception) -> list[Signal]:
        return [Signal(s, [], False, f"{e}" + (f" ({hint})" if hint else "")) for s in table]

    try:
        obj = libbpf.BpfObject(libbpf.bpf_object_path(family), family)
    except libbpf.BpfError as e:
        return failed(e)
    wanted = {p for progs in table.values() for p in progs}
    for prog in obj.programs():  # load only what the table names (each program costs load time)
        prog.autoload = prog.name in wanted or not prog.section.startswith(("tp_btf/", "tracepoint/"))
    try:
        try:
            obj.load()
        except libbpf.BpfError as e:
            return failed(e)
        for p in obj.programs():
            try:
                if p.section.startswith("iter/"):
                    p.attach_iter()
                else:
                    p.attach()
                results[p.name] = (p.section, None)
            except libbpf.BpfError as e:
                results[p.name] = (p.section, str(e) + (f" ({hint})" if hint else ""))
    finally:
        obj.close()
    out = []
    for sig, progs in table.items():
        hooks = [results[p][0] for p in progs if p in results]
        errs = [results[p][1] for p in progs if p in results and results[p][1]]
        missing = [p for p in progs if p not in results]
        detail = "; ".join([e for e in errs if e] + [f"program {m} missing" for m in missing])
        out.append(Signal(sig, hooks, not errs and not missing, detail))
    return out


# Signal -> programs of kernel.bpf.o and sched.bpf.o.
KERNEL_SIGNALS: dict[str, list[str]] = {
    "process creation failures by errno": [
        "kern_clone", "kern_clone3", "kern_fork", "kern_vfork"],
    "mount failures by errno": [
        "kern_mount", "kern_fsmount", "kern_move_mount", "kern_open_tree"],
    "oom kills by victim (oom:mark_victim)": ["kern_oom"],
    "processes ended by a signal (sched_process_exit)": ["kern_exit"],
}
KERNEL_HINT = "the syscall tracepoints need tracefs at /sys/kernel/tracing"
SCHED_SIGNALS: dict[str, list[str]] = {
    "cpu: switches, off-CPU time, run-queue delay": [
        "sched_iter", "sched_exit"],
}


DNS_SIGNALS: dict[str, list[str]] = {
    "dns queries: latency, rcode, timeouts (port 53)": ["dns_send", "dns_recv"],
}


def probe_tcp_signals() -> list[Signal]:
    return probe_signals("tcp", TCP_SIGNALS)


def check() -> Report:
    preflight()
    return Report(probes=probe_all(),
                  signals=probe_tcp_signals() + probe_http_signals()
                  + probe_signals("kernel", KERNEL_SIGNALS, KERNEL_HINT)
                  + probe_signals("sched", SCHED_SIGNALS)
                  + probe_signals("dns", DNS_SIGNALS, HTTP_HINT))


def probe_http_signals() -> list[Signal]:
    """The socket tracepoints; where they fail, whether the syscall-tracepoint fallback works."""
    out = probe_signals("http", HTTP_SIGNALS, HTTP_HINT)
    if all(s.ok for s in out):
        return out
    fallback = probe_signals("http", HTTP_FALLBACK_SIGNALS)
    if all(s.ok for s in fallback):  # HTTP works, through the fallback
        for s in out:
            s.ok = None
            s.detail += " (the syscall-tracepoint fallback below is used)"
    return out + fallback


def format_report(r: Report) -> str:
    def mark(ok: bool | None) -> str:
        return {True: "yes", False: "no", None: "?"}[ok]

    lines = ["kernel features:"]
    for p in r.probes:
        lines.append(f"  {p.name:<22} {mark(p.ok):<4} {p.detail}")
    lines.append("signals:")
    for s in r.signals:
        how = ", ".join(dict.fromkeys(s.hooks)) if s.ok else s.detail
        lines.append(f"  {s.name:<62} {mark(s.ok):<4} {how}")
    lines.append("default signals: " + ("all available" if r.default_ok else "NOT all available"))
    return "\n".join(lines)


