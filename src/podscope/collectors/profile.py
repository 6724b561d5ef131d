"""Stack sampling of chosen containers for a bounded window (profile.bpf.c), and the symbols
for what it saw: kernel frames from /proc/kallsyms, user frames from the ELF symbols of the
binaries mapped by each process, read through /proc/PID/root (a container's own files).

Profiler.start() opens a software CPU-clock perf event per CPU and attaches the sampler (and,
with off_cpu, the sched_switch program); stop() detaches everything and returns folded stacks:
"comm;outermost frame;...;leaf frame" -> samples (on-CPU) or nanoseconds (off-CPU)."""

from __future__ import annotations

import bisect
import ctypes as ct
import logging
import os
import platform
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .. import features, libbpf

PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_CPU_CLOCK = 0
PERF_FLAG_FD_CLOEXEC = 8
ATTR_FREQ = 1 << 10
NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
TRAMPOLINE_FRAMES = ("__traceiter_", "bpf_trace_run", "bpf_prog_", "__bpf_trace_")


class PerfEventAttr(ct.Structure):
    """struct perf_event_attr up to config2, zero-padded to PERF_ATTR_SIZE_VER7 (128 bytes)."""
    _fields_ = [("type", ct.c_uint32), ("size", ct.c_uint32), ("config", ct.c_uint64),
                ("sample_freq", ct.c_uint64), ("sample_type", ct.c_uint64),
                ("read_format", ct.c_uint64), ("flags", ct.c_uint64),
                ("wakeup_events", ct.c_uint32), ("bp_type", ct.c_uint32),
                ("config1", ct.c_uint64), ("config2", ct.c_uint64), ("_rest", ct.c_uint8 * 56)]


def perf_cpu_clock(cpu: int, frequency: int) -> int:
    """A sampling CPU-clock event on one CPU, all tasks; its fd."""
    nr = NR_PERF_EVENT_OPEN.get(platform.machine())
    if nr is None:
        raise OSError(f"perf_event_open: unknown syscall number on {platform.machine()}")
    attr = PerfEventAttr(type=PERF_TYPE_SOFTWARE, size=ct.sizeof(PerfEventAttr),
                         config=PERF_COUNT_SW_CPU_CLOCK, sample_freq=frequency, flags=ATTR_FREQ)
    libc = ct.CDLL(None, use_errno=True)
    libc.syscall.restype = ct.c_long
    fd = libc.syscall(ct.c_long(nr), ct.byref(attr), ct.c_int(-1), ct.c_int(cpu), ct.c_int(-1),
                      ct.c_ulong(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        e = ct.get_errno()
        raise OSError(e, f"perf_event_open (software CPU clock, CPU {cpu}): {os.strerror(e)}")
    return int(fd)


def online_cpus() -> list[int]:
    out: list[int] = []
    with open("/sys/devices/system/cpu/online") as f:
        for part in f.read().strip().split(","):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    return out


log = logging.getLogger("podscope.profile")

# ---- symbols ----

class KernelSymbols:
    def __init__(self, path: str = "/proc/kallsyms"):
        entries: list[tuple[int, str]] = []
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in ("t", "T", "w", "W"):
                    addr = int(parts[0], 16)
                    if addr:
                        entries.append((addr, parts[2]))
        entries.sort()
        self.addrs = [a for a, _ in entries]
        self.names = [n for _, n in entries]
        if not entries:
            log.warning("kernel frames are shown as addresses: %s lists no addresses to this "
                        "process (kernel.kptr_restrict; podscope needs CAP_SYSLOG to read them)",
                        path)

    def name(self, addr: int) -> str:
        i = bisect.bisect_right(self.addrs, addr) - 1
        return self.names[i] if i >= 0 else f"0x{addr:x}"


@dataclass
class _Elf:
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    loads: list[tuple[int, int, int]] = field(default_factory=list)  # (offset, filesz, vaddr)

    def name(self, file_off: int) -> str | None:
        for off, size, vaddr in self.loads:
            if off <= file_off < off + size:
                v = file_off - off + vaddr
                i = bisect.bisect_right(self.starts, v) - 1
                if i >= 0 and v < self.ends[i]:
                    return self.names[i]
                return None
        return None


def read_elf(path: str) -> _Elf:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    out = _Elf()
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_LOAD":
                    out.loads.append((seg["p_offset"], seg["p_filesz"], seg["p_vaddr"]))
            syms: dict[int, tuple[int, str]] = {}
            for sec in elf.iter_sections():
                if not isinstance(sec, SymbolTableSection):
                    continue
                for sym in sec.iter_symbols():
                    if sym["st_info"]["type"] == "STT_FUNC" and sym["st_value"] and sym.name:
                        syms.setdefault(sym["st_value"], (max(sym["st_size"], 1), sym.name))
    except (OSError, ELFError, ValueError):
        return out
    for start in sorted(syms):
        size, name = syms[start]
        out.starts.append(start)
        out.ends.append(start + size)
        out.names.append(name)
    return out


class UserSymbols:
    """Per process: its executable mappings; per binary (by device and inode): its symbols."""

    def __init__(self, proc: str = "/proc"):
        self.proc = proc
        self._maps: dict[int, list[tuple[int, int, int, str]]] = {}
        self._elves: dict[tuple[int, int], _Elf] = {}

    def _mappings(self, pid: int) -> list[tuple[int, int, int, str]]:
        m = self._maps.get(pid)
        if m is None:
            m = []
            try:
                with open(f"{self.proc}/{pid}/maps") as f:
                    for line in f:
                        parts = line.split(maxsplit=5)
                        if len(parts) < 6 or "x" not in parts[1]:
                            continue
                        lo, hi = (int(x, 16) for x in parts[0].split("-"))
                        m.append((lo, hi, int(parts[2], 16), parts[5].strip()))
            except OSError:
                pass
            self._maps[pid] = m
        return m

    def _elf(self, pid: int, path: str) -> _Elf:
        full = f"{self.proc}/{pid}/root{path}"
        try:
            st = os.stat(full)
        except OSError:
            return _Elf()
        key = (st.st_dev, st.st_ino)
        e = self._elves.get(key)
        if e is None:
            e = self._elves[key] = read_elf(full)
        return e

    def name(self, pid: int, addr: int) -> str:
        for lo, hi, off, path in self._mappings(pid):
            if lo <= addr < hi:
                if not path.startswith("/"):
                    return path or "[anon]"
                sym = self._elf(pid, path).name(addr - lo + off)
                return sym or f"[{os.path.basename(path)}]"
        return "[unknown]"


# ---- the profiler ----

@dataclass
class Profile:
    on_cpu: Counter[str]  # folded stack -> samples
    off_cpu: Counter[str]  # folded stack -> nanoseconds blocked
    by_cgroup: Counter[int]  # cgroup id -> samples
    frequency: int
    seconds: float
    lost_stacks: int  # stack ids the kernel could not store (its stack map was full)


class Profiler:
    def __init__(self, cgroup_ids: list[int], frequency: int = 99, off_cpu: bool = False,
                 proc: str = "/proc"):
        self.cgroup_ids = cgroup_ids
        self.frequency = frequency
        self.off_cpu = off_cpu
        self.proc = proc
        self.obj = libbpf.BpfObject(libbpf.bpf_object_path("profile"), "profile")
        features.use_task_store(self.obj, "profile_blocked_tasks")
        features.set_prev_state(self.obj)
        self.Key = self.obj.struct("profile_key")
        self._fds: list[int] = []
        self._started = 0.0
        self._stopped = 0.0

    def start(self) -> None:
        import time

        o = self.obj
        o.program("profile_switch").autoload = self.off_cpu
        o.load()
        cg = o.map("profile_cgroups")
        for cid in self.cgroup_ids:
            cg.update(ct.c_uint64(cid), ct.c_uint8(1))
        try:
            prog = o.program("profile_sample")
            for cpu in online_cpus():
                fd = perf_cpu_clock(cpu, self.frequency)
                self._fds.append(fd)
                prog.attach_perf_event(fd)
                self._fds.remove(fd)  # the link owns it now: destroying the link closes it
            if self.off_cpu:
                o.program("profile_switch").attach()
        except Exception:
            self.close()
            raise
        self._started = time.monotonic()

    def stop(self) -> Profile:
        """Detach everything, then read what was counted and name it."""
        import time

        self._stopped = time.monotonic()
        for link in self.obj.links:
            link.destroy()
        self.obj.links.clear()
        try:
            return self._read()
        finally:
            self.close()

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self.obj.close()

    def _read(self) -> Profile:
        stacks = self.obj.map("profile_stacks")
        depth = stacks.value_size // 8
        ksyms = KernelSymbols()
        usyms = UserSymbols(self.proc)
        cache: dict[tuple[int, int], list[str]] = {}
        lost = 0

        def frames(stack_id: int, pid: int, kernel: bool) -> list[str]:
            key = (stack_id, -1 if kernel else pid)
            got = cache.get(key)
            if got is None:
                ips = (ct.c_uint64 * depth)()
                got = []
                if stack_id >= 0 and stacks.lookup(ct.c_uint32(stack_id), ips):
                    for ip in ips:
                        if not ip:
                            break
                        got.append(ksyms.name(ip) + "_[k]" if kernel else usyms.name(pid, ip))
                got.reverse()  # outermost first
                if kernel:  # the tracepoint and BPF frames of our own program are not the task's
                    for i, name in enumerate(got):
                        if name.startswith(TRAMPOLINE_FRAMES):
                            del got[i:]
                            break
                cache[key] = got
            return got

        def fold(map_name: str, by_cgroup: Counter[int] | None) -> Counter[str]:
            nonlocal lost
            out: Counter[str] = Counter()
            for k, v in self.obj.map(map_name).items(self.Key, ct.c_uint64):
                for sid in (k.kstack, k.ustack):
                    if sid == -17 or sid == -12:  # EEXIST / ENOMEM: the stack map was full
                        lost += 1
                comm = bytes(k.comm).split(b"\0", 1)[0].decode(errors="replace") or "?"
                path = frames(k.ustack, k.tgid, False) + frames(k.kstack, k.tgid, True)
                out[";".join([comm, *(path or ["[unknown]"])])] += v.value
                if by_cgroup is not None:
                    by_cgroup[k.cgroup_id] += v.value
            return out

        by_cgroup: Counter[int] = Counter()
        on = fold("profile_samples", by_cgroup)
        off = fold("profile_offcpu", None) if self.off_cpu else Counter()
        return Profile(on, off, by_cgroup, self.frequency,
                       max(self._stopped - self._started, 0.0), lost)


def top_functions(folded: Counter[str], n: int = 10) -> list[tuple[str, int]]:
    """The leaf frames with the most weight (self time)."""
    leaves: Counter[str] = Counter()
    for stack, v in folded.items():
        leaves[stack.rsplit(";", 1)[-1]] += v
    return leaves.most_common(n)


def as_dict(p: Profile) -> dict[str, Any]:
    return {"frequency_hz": p.frequency, "seconds": round(p.seconds, 3),
            "samples": sum(p.on_cpu.values()), "off_cpu_seconds": sum(p.off_cpu.values()) / 1e9,
            "lost_stacks": p.lost_stacks,
            "top_on_cpu": top_functions(p.on_cpu), "top_off_cpu": [
                (name, ns / 1e9) for name, ns in top_functions(p.off_cpu)]}
