"""Thin ctypes binding to the system libbpf (libbpf.so.1).

Order is always: open -> set rodata and map sizes -> load -> attach. Every error names the
object, program or map, the hook and the errno text. Kernel<->user structs are never restated
here: ``BpfObject.struct(name)`` builds the ctypes view from the object's own BTF.
"""

from __future__ import annotations

import ctypes as ct
import ctypes.util
import errno as errno_mod
import logging
import os
import re
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

from . import _fast

log = logging.getLogger("podscope.libbpf")


class BpfError(Exception):
    """A libbpf call failed; the message names what, where and why."""

    def __init__(self, what: str, err: int, reason: str = ""):
        self.errno = abs(err)
        self.reason = reason  # one line: why (the verifier's last word, when it refused)
        super().__init__(f"{what}: {os.strerror(self.errno)} (errno {self.errno})")

    @property
    def short(self) -> str:
        """One line for logs and `check`: what failed, and why."""
        first = str(self).splitlines()[0].replace("; libbpf said:", "")
        return f"{first}: {self.reason}" if self.reason else first


def _load_lib() -> ct.CDLL:
    for name in ("libbpf.so.1", ctypes.util.find_library("bpf") or ""):
        if not name:
            continue
        try:
            return ct.CDLL(name, use_errno=True)
        except OSError:
            continue
    raise BpfError("loading libbpf.so.1 (install the libbpf1 package)", errno_mod.ENOENT)


_lib: ct.CDLL | None = None
_libc = ct.CDLL(None, use_errno=True)

_PRINT_FN = ct.CFUNCTYPE(ct.c_int, ct.c_int, ct.c_char_p, ct.c_void_p)
SAMPLE_FN = ct.CFUNCTYPE(ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_size_t)

# libbpf log lines of the last failed load, for error messages (the verifier log lives here).
_recent_log: list[str] = []


@_PRINT_FN
def _print_cb(level: int, fmt: bytes, va_list: int) -> int:
    buf = ct.create_string_buffer(1 << 18)  # a verifier log arrives as one message
    _libc.vsnprintf(buf, ct.c_size_t(len(buf)), fmt, ct.c_void_p(va_list))
    line = buf.value.decode(errors="replace").rstrip()
    if line:
        _recent_log.append(line)
        del _recent_log[:-2000]
        log.debug(line)  # surfaced in the error of a failed call (see BpfObject.load)
    return 0


def lib() -> ct.CDLL:
    global _lib
    if _lib is not None:
        return _lib
    L = _load_lib()
    P, INT, U32, SZ, VP, CP = ct.c_void_p, ct.c_int, ct.c_uint32, ct.c_size_t, ct.c_void_p, ct.c_char_p
    sigs: dict[str, tuple[Any, list[Any]]] = {
        "libbpf_set_print": (P, [_PRINT_FN]),
        "libbpf_num_possible_cpus": (INT, []),
        "bpf_object__open_file": (P, [CP, VP]),
        "bpf_object__load": (INT, [P]),
        "bpf_object__close": (None, [P]),
        "bpf_object__btf": (P, [P]),
        "bpf_object__next_program": (P, [P, P]),
        "bpf_object__find_program_by_name": (P, [P, CP]),
        "bpf_object__find_map_by_name": (P, [P, CP]),
        "bpf_object__next_map": (P, [P, P]),
        "bpf_program__name": (CP, [P]),
        "bpf_program__section_name": (CP, [P]),
        "bpf_program__set_autoload": (INT, [P, ct.c_bool]),
        "bpf_program__autoload": (ct.c_bool, [P]),
        "bpf_program__fd": (INT, [P]),
        "bpf_program__attach": (P, [P]),
        "bpf_program__attach_iter": (P, [P, VP]),
        "bpf_program__attach_perf_event": (P, [P, INT]),
        "bpf_program__attach_cgroup": (P, [P, INT]),
        "bpf_program__attach_uprobe": (P, [P, ct.c_bool, INT, CP, SZ]),
        "bpf_program__attach_uprobe_opts": (P, [P, INT, CP, SZ, VP]),
        "bpf_link__fd": (INT, [P]),
        "bpf_link__destroy": (INT, [P]),
        "bpf_iter_create": (INT, [INT]),
        "bpf_map__name": (CP, [P]),
        "bpf_map__fd": (INT, [P]),
        "bpf_map__set_max_entries": (INT, [P, U32]),
        "bpf_map__set_type": (INT, [P, INT]),
        "bpf_map__set_map_flags": (INT, [P, U32]),
        "libbpf_probe_bpf_map_type": (INT, [INT, VP]),
        "libbpf_probe_bpf_helper": (INT, [INT, INT, VP]),
        "libbpf_probe_bpf_prog_type": (INT, [INT, VP]),
        "bpf_map__max_entries": (U32, [P]),
        "bpf_map__key_size": (U32, [P]),
        "bpf_map__value_size": (U32, [P]),
        "bpf_map__type": (INT, [P]),
        "bpf_map__initial_value": (P, [P, ct.POINTER(SZ)]),
        "bpf_map_lookup_elem": (INT, [INT, VP, VP]),
        "bpf_map_update_elem": (INT, [INT, VP, VP, ct.c_uint64]),
        "bpf_map_delete_elem": (INT, [INT, VP]),
        "bpf_map_get_next_key": (INT, [INT, VP, VP]),
        "bpf_map_lookup_batch": (INT, [INT, VP, VP, VP, VP, ct.POINTER(U32), VP]),
        "bpf_map_lookup_and_delete_batch": (INT, [INT, VP, VP, VP, VP, ct.POINTER(U32), VP]),
        "ring_buffer__new": (P, [INT, SAMPLE_FN, VP, VP]),
        "ring_buffer__add": (INT, [P, INT, SAMPLE_FN, VP]),
        "ring_buffer__poll": (INT, [P, INT]),
        "ring_buffer__consume": (INT, [P]),
        "ring_buffer__free": (None, [P]),
        "ring_buffer__epoll_fd": (INT, [P]),
        "btf__load_vmlinux_btf": (P, []),
        "btf__free": (None, [P]),
        "btf__find_by_name_kind": (INT, [P, CP, U32]),
        "btf__type_by_id": (P, [P, U32]),
        "btf__name_by_offset": (CP, [P, U32]),
        "btf__type_cnt": (U32, [P]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(L, name)
        fn.restype = res
        fn.argtypes = args
    _libc.vsnprintf.argtypes = [ct.c_char_p, ct.c_size_t, ct.c_char_p, ct.c_void_p]
    L.libbpf_set_print(_print_cb)
    _lib = L
    return L


_ENOTSUPP = 524  # kernel-internal "operation not supported" (no batch ops for this map type)


def _errno() -> int:
    return ct.get_errno() or errno_mod.EINVAL


def num_possible_cpus() -> int:
    n = lib().libbpf_num_possible_cpus()
    if n < 0:
        raise BpfError("counting possible CPUs", n)
    return int(n)


# --- BTF --------------------------------------------------------------------------------------

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 8, 9, 10, 11
KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_TYPE_TAG, KIND_ENUM64 = 13, 14, 15, 18, 19
_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)


class Btf:
    """Read-only view of a BTF blob owned by libbpf (an object's, or the kernel's)."""

    def __init__(self, ptr: int, owned: bool = False):
        self.ptr = ptr
        self.owned = owned
        self._structs: dict[str, type[ct.Structure]] = {}

    @classmethod
    def vmlinux(cls) -> Btf:
        p = lib().btf__load_vmlinux_btf()
        if not p:
            raise BpfError("loading kernel BTF (/sys/kernel/btf/vmlinux)", _errno())
        return cls(p, owned=True)

    def close(self) -> None:
        if self.owned and self.ptr:
            lib().btf__free(self.ptr)
        self.ptr = 0

    def _u32s(self, tid: int, count: int) -> list[int]:
        p = lib().btf__type_by_id(self.ptr, tid)
        if not p:
            raise KeyError(f"BTF type id {tid}")
        return list((ct.c_uint32 * count).from_address(p))

    def _header(self, tid: int) -> tuple[str, int, int, int, int]:
        name_off, info, size_or_type = self._u32s(tid, 3)
        name = (lib().btf__name_by_offset(self.ptr, name_off) or b"").decode()
        return name, (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size_or_type

    def find(self, name: str, kind: int) -> int:
        tid = lib().btf__find_by_name_kind(self.ptr, name.encode(), kind)
        if tid < 0:
            raise KeyError(f"no BTF type {name!r} of kind {kind}")
        return int(tid)

    def _resolve(self, tid: int) -> int:
        while True:
            _, kind, _, _, nxt = self._header(tid)
            if kind not in _MODIFIERS:
                return tid
            tid = nxt

    def _ctype(self, tid: int) -> Any:
        tid = self._resolve(tid)
        name, kind, vlen, _, size = self._header(tid)
        if kind == KIND_INT:
            enc = self._u32s(tid, 4)[3]
            signed = bool((enc >> 24) & 1)
            return {1: ct.c_int8 if signed else ct.c_uint8, 2: ct.c_int16 if signed else ct.c_uint16,
                    4: ct.c_int32 if signed else ct.c_uint32, 8: ct.c_int64 if signed else ct.c_uint64,
                    16: ct.c_uint8 * 16}[size]
        if kind in (KIND_ENUM, KIND_ENUM64):
            return {1: ct.c_uint8, 2: ct.c_uint16, 4: ct.c_uint32, 8: ct.c_uint64}[size]
        if kind == KIND_PTR:
            return ct.c_uint64
        if kind == KIND_ARRAY:
            elem, _, nelems = self._u32s(tid, 6)[3:6]
            return self._ctype(elem) * nelems
        if kind == KIND_STRUCT:
            return self._build_struct(tid, name)
        raise TypeError(f"BTF kind {kind} ({name!r}) has no ctypes view")

    def _build_struct(self, tid: int, name: str) -> type[ct.Structure]:
        if name and name in self._structs:
            return self._structs[name]
        _, _, vlen, kflag, size = self._header(tid)
        words = self._u32s(tid, 3 + 3 * vlen)
        fields: list[tuple[str, Any]] = []
        pos = 0
        for i in range(vlen):
            m_name_off, m_type, m_off = words[3 + 3 * i: 6 + 3 * i]
            bit_off = m_off & 0xFFFFFF if kflag else m_off
            if (kflag and m_off >> 24) or bit_off % 8:
                raise TypeError(f"struct {name}: bitfields are not allowed in shared structs")
            off = bit_off // 8
            m_name = (lib().btf__name_by_offset(self.ptr, m_name_off) or b"").decode()
            cty = self._ctype(m_type)
            if off > pos:
                fields.append((f"_gap{pos}", ct.c_uint8 * (off - pos)))
            fields.append((m_name, cty))
            pos = off + ct.sizeof(cty)
        if size > pos:
            fields.append((f"_gap{pos}", ct.c_uint8 * (size - pos)))
        cls = type(name or f"anon{tid}", (ct.Structure,), {"_pack_": 1, "_fields_": fields})
        if ct.sizeof(cls) != size:
            raise TypeError(f"struct {name}: ctypes size {ct.sizeof(cls)} != BTF size {size}")
        if name:
            self._structs[name] = cls
        return cls

    def struct(self, name: str) -> type[ct.Structure]:
        return self._build_struct(self.find(name, KIND_STRUCT), name)

    def enum(self, name: str) -> dict[str, int]:
        try:
            tid = self.find(name, KIND_ENUM)
        except KeyError:
            tid = self.find(name, KIND_ENUM64)
        _, kind, vlen, kflag, _ = self._header(tid)
        out: dict[str, int] = {}
        if kind == KIND_ENUM:
            words = self._u32s(tid, 3 + 2 * vlen)
            for i in range(vlen):
                n = (lib().btf__name_by_offset(self.ptr, words[3 + 2 * i]) or b"").decode()
                v = words[4 + 2 * i]
                out[n] = v - (1 << 32) if kflag and v >= 1 << 31 else v
        else:
            words = self._u32s(tid, 3 + 3 * vlen)
            for i in range(vlen):
                n = (lib().btf__name_by_offset(self.ptr, words[3 + 3 * i]) or b"").decode()
                out[n] = words[4 + 3 * i] | (words[5 + 3 * i] << 32)
        return out

    def func_proto_params(self, typedef_name: str) -> int:
        """Number of parameters of the function pointer a typedef names (tracepoint arity)."""
        tid = self.find(typedef_name, KIND_TYPEDEF)
        _, _, _, _, ptr = self._header(tid)
        _, kind, _, _, proto = self._header(ptr)
        if kind != KIND_PTR:
            raise TypeError(f"{typedef_name} is not a function pointer")
        _, kind, vlen, _, _ = self._header(proto)
        if kind != KIND_FUNC_PROTO:
            raise TypeError(f"{typedef_name} is not a function pointer")
        return vlen

    def datasec_vars(self, section: str) -> dict[str, tuple[int, int]]:
        """Variables of a data section: name -> (offset, size)."""
        tid = self.find(section, KIND_DATASEC)
        _, _, vlen, _, _ = self._header(tid)
        words = self._u32s(tid, 3 + 3 * vlen)
        out = {}
        for i in range(vlen):
            vtype, off, size = words[3 + 3 * i: 6 + 3 * i]
            out[self._header(vtype)[0]] = (off, size)
        return out


# --- maps, links, ring buffers ------------------------------------------------------------------


class Map:
    def __init__(self, obj: BpfObject, ptr: int):
        self.obj = obj
        self.ptr = ptr
        self.name = lib().bpf_map__name(ptr).decode()

    @property
    def fd(self) -> int:
        return int(lib().bpf_map__fd(self.ptr))

    @property
    def key_size(self) -> int:
        return int(lib().bpf_map__key_size(self.ptr))

    @property
    def value_size(self) -> int:
        return int(lib().bpf_map__value_size(self.ptr))

    @property
    def max_entries(self) -> int:
        return int(lib().bpf_map__max_entries(self.ptr))

    def set_max_entries(self, n: int) -> None:
        ret = lib().bpf_map__set_max_entries(self.ptr, n)
        if ret:
            raise BpfError(f"{self.obj.name}: resizing map {self.name} to {n}", ret)
        self.obj._remember(("max_entries", self.name, n))

    def set_type(self, map_type: int, flags: int | None = None) -> None:
        """Change the map's type (and flags) before load: an older kernel's stand-in."""
        ret = lib().bpf_map__set_type(self.ptr, map_type)
        if not ret and flags is not None:
            ret = lib().bpf_map__set_map_flags(self.ptr, flags)
        if ret:
            raise BpfError(f"{self.obj.name}: changing the type of map {self.name}", ret)
        self.obj._remember(("type", self.name, (map_type, flags)))

    def check_types(self, key: type[ct._CData] | None, value: type[ct._CData] | None) -> None:
        """Fail loudly when the user-space view differs from the map's sizes."""
        for what, t, size in (("key", key, self.key_size), ("value", value, self.value_size)):
            if t is not None and ct.sizeof(t) != size:
                raise TypeError(f"map {self.name}: {what} is {size} bytes, "
                                f"user-space type {t.__name__} is {ct.sizeof(t)}")

    def _found(self, ret: int, what: str) -> bool:
        """True on success, False for a missing key, BpfError otherwise."""
        if ret == 0:
            return True
        err = _errno()
        if err == errno_mod.ENOENT:
            return False
        raise BpfError(f"{what} map {self.name}", err)

    def lookup(self, key: ct._CData, value: ct._CData) -> bool:
        return self._found(lib().bpf_map_lookup_elem(self.fd, ct.byref(key), ct.byref(value)),
                           "lookup in")

    def update(self, key: ct._CData, value: ct._CData, flags: int = 0) -> None:
        if lib().bpf_map_update_elem(self.fd, ct.byref(key), ct.byref(value), flags):
            raise BpfError(f"update of map {self.name}", _errno())

    def delete(self, key: ct._CData) -> bool:
        return self._found(lib().bpf_map_delete_elem(self.fd, ct.byref(key)), "delete in")

    def keys(self, key_type: type[ct._CData]) -> Iterator[Any]:
        prev: Any = None
        while True:
            nxt = key_type()
            ret = lib().bpf_map_get_next_key(self.fd, ct.byref(prev) if prev is not None else None,
                                             ct.byref(nxt))
            if ret:
                err = _errno()
                if err == errno_mod.ENOENT:
                    return
                raise BpfError(f"iterating map {self.name}", err)
            yield nxt
            prev = nxt

    def items(self, key_type: type[ct._CData], value_type: type[ct._CData],
              batch: int = 1024, delete: bool = False) -> list[tuple[Any, Any]]:
        """All entries, read with bpf_map_lookup_batch (one syscall per `batch` entries);
        falls back to key iteration where the map type has no batch support. delete=True
        empties the map as it goes (bpf_map_lookup_and_delete_batch)."""
        fn = lib().bpf_map_lookup_and_delete_batch if delete else lib().bpf_map_lookup_batch
        out: list[tuple[Any, Any]] = []
        keys: Any = (key_type * batch)()  # type: ignore[operator]
        values: Any = (value_type * batch)()  # type: ignore[operator]
        in_tok = ct.c_uint64(0)
        out_tok = ct.c_uint64(0)
        first = True
        while True:
            count = ct.c_uint32(batch)
            ret = fn(self.fd, None if first else ct.byref(in_tok), ct.byref(out_tok), keys, values,
                     ct.byref(count), None)
            err = _errno() if ret else 0
            if ret and err != errno_mod.ENOENT:
                if first and err in (errno_mod.EINVAL, _ENOTSUPP):
                    out = self._items_slow(key_type, value_type)
                    if delete:
                        for k, _v in out:
                            self.delete(k)
                    return out
                raise BpfError(f"batch lookup in map {self.name}", err)
            for i in range(count.value):
                k = key_type()
                ct.memmove(ct.byref(k), ct.byref(keys, i * ct.sizeof(key_type)), ct.sizeof(key_type))
                v = value_type()
                ct.memmove(ct.byref(v), ct.byref(values, i * ct.sizeof(value_type)),
                           ct.sizeof(value_type))
                out.append((k, v))
            if ret:  # ENOENT: that was the last batch
                return out
            in_tok.value = out_tok.value
            first = False

    def _items_slow(self, key_type: type[ct._CData],
                    value_type: type[ct._CData]) -> list[tuple[Any, Any]]:
        out = []
        for k in self.keys(key_type):
            v = value_type()
            if self.lookup(k, v):
                out.append((k, v))
        return out

    def percpu_sum_u64(self, key: int) -> int:
        """Sum over CPUs of a per-CPU array's u64 slot."""
        ncpu = num_possible_cpus()
        vals = (ct.c_uint64 * ncpu)()
        k = ct.c_uint32(key)
        if lib().bpf_map_lookup_elem(self.fd, ct.byref(k), vals):
            raise BpfError(f"lookup in per-CPU map {self.name}", _errno())
        return int(sum(vals))


class _UprobeOpts(ct.Structure):
    # struct bpf_uprobe_opts of libbpf 1.1 (libbpf checks .sz and accepts older, smaller opts)
    _fields_ = [("sz", ct.c_size_t), ("ref_ctr_offset", ct.c_size_t), ("bpf_cookie", ct.c_uint64),
                ("retprobe", ct.c_bool), ("func_name", ct.c_char_p)]


class Link:
    def __init__(self, ptr: int, what: str):
        self.ptr = ptr
        self.what = what

    @property
    def fd(self) -> int:
        return int(lib().bpf_link__fd(self.ptr))

    def destroy(self) -> None:
        if self.ptr:
            lib().bpf_link__destroy(self.ptr)
            self.ptr = 0


class Program:
    def __init__(self, obj: BpfObject, ptr: int):
        self.obj = obj
        self.ptr = ptr
        self.name = lib().bpf_program__name(ptr).decode()
        self.section = lib().bpf_program__section_name(ptr).decode()

    @property
    def autoload(self) -> bool:
        return bool(lib().bpf_program__autoload(self.ptr))

    @autoload.setter
    def autoload(self, on: bool) -> None:
        if lib().bpf_program__set_autoload(self.ptr, on):
            raise BpfError(f"{self.obj.name}: autoload of {self.name}", _errno())
        self.obj._remember(("autoload", self.name, on))

    @property
    def fd(self) -> int:
        return int(lib().bpf_program__fd(self.ptr))

    def _link(self, ptr: int, hook: str) -> Link:
        if not ptr:
            raise BpfError(f"attaching {hook} (program {self.name}) for collector {self.obj.name}",
                           _errno())
        link = Link(ptr, hook)
        self.obj.links.append(link)
        return link

    def attach(self) -> Link:
        """Attach by section name: tracepoint/, raw_tp/, tp_btf/, iter/, ..."""
        return self._link(lib().bpf_program__attach(self.ptr), self.section)

    def attach_iter(self) -> Link:
        return self._link(lib().bpf_program__attach_iter(self.ptr, None), self.section)

    def attach_perf_event(self, pfd: int) -> Link:
        """Attach to an open perf event; from then on the link owns pfd (closes it on destroy)."""
        return self._link(lib().bpf_program__attach_perf_event(self.ptr, pfd),
                          f"perf_event fd {pfd}")

    def attach_cgroup(self, cgroup_fd: int) -> Link:
        return self._link(lib().bpf_program__attach_cgroup(self.ptr, cgroup_fd),
                          f"{self.section} on cgroup fd {cgroup_fd}")

    def attach_uprobe(self, binary: str, func: str | None = None, offset: int = 0, pid: int = -1,
                      retprobe: bool = False) -> Link:
        """uprobe on binary at func (resolved by libbpf from the ELF symbols) plus offset."""
        opts = _UprobeOpts(sz=ct.sizeof(_UprobeOpts), retprobe=retprobe,
                           func_name=func.encode() if func else None)
        where = f"{binary}:{func or ''}+{offset:#x}"
        return self._link(lib().bpf_program__attach_uprobe_opts(self.ptr, pid, binary.encode(),
                                                                offset, ct.byref(opts)),
                          f"{'uretprobe' if retprobe else 'uprobe'} {where}")


def _failed_program(lines: list[str]) -> str | None:
    """The program libbpf's log says the kernel refused (its last "prog 'X': ... failed")."""
    for line in reversed(lines):
        m = re.match(r"libbpf: prog '([^']+)': (?:BPF program load failed|failed to load|"
                     r"failed to prepare load attributes|failed to find kernel BTF)", line)
        if m:
            return m.group(1)
    return None


def _refusal_reason(lines: list[str], prog: str, err: BpfError) -> str:
    """One line: the verifier's or libbpf's own words about why `prog` was refused."""
    text = "\n".join(lines)
    start = text.rfind(f"prog '{prog}': -- BEGIN PROG LOAD LOG --")
    if start >= 0:
        body = text[start:].split("-- END PROG LOAD LOG --")[0].split("\n")[1:]
        # the verifier's last word comes before its "processed N insns" line; instruction,
        # source and register-state lines are not it
        words = [ln.strip() for ln in body if ln.strip()
                 and not ln.startswith(("processed ", ";", " "))
                 and not re.match(r"^(\d+: |from \d+ to \d+|R\d+(_w)?=|verification time)", ln)]
        if words:
            return words[-1]
    for line in reversed(lines):
        if f"prog '{prog}'" in line:
            return line.split(": ", 2)[-1].strip()
    return os.strerror(err.errno)


# --- feature probes (libbpf's own) ------------------------------------------------------------

MAP_HASH, MAP_LRU_HASH, MAP_TASK_STORAGE = 1, 9, 29
PROG_TRACEPOINT = 5
FUNC_GET_CURRENT_TASK_BTF, FUNC_TASK_PT_REGS = 158, 175


def probe_map_type(map_type: int) -> bool | None:
    """True/False: the kernel has the map type; None: the probe itself failed."""
    ret = lib().libbpf_probe_bpf_map_type(map_type, None)
    return None if ret < 0 else bool(ret)


def probe_helper(helper: int, prog_type: int = PROG_TRACEPOINT) -> bool | None:
    ret = lib().libbpf_probe_bpf_helper(prog_type, helper, None)
    return None if ret < 0 else bool(ret)


def iter_read(link: Link, chunk: int = 1 << 16) -> bytes:
    """Run an iterator program once (in the calling thread's namespaces) and return its output."""
    fd = lib().bpf_iter_create(link.fd)
    if fd < 0:
        raise BpfError(f"creating iterator for {link.what}", _errno())
    try:
        parts: list[bytes] = []
        while True:
            b = os.read(fd, chunk)
            if not b:
                return b"".join(parts)
            parts.append(b)
    finally:
        os.close(fd)


class RingBuffer:
    """Drains BPF ring buffers without a trip into Python per record: libbpf's callback is the
    compiled one of podscope._fast, which gathers each map's records in a Batch while the poll
    runs (no GIL held). After the poll, a map's handler gets either the whole batch at once
    (`batch=True`: a memoryview of the Batch in place, valid during the call, for compiled
    consumers) or each record's bytes in turn."""

    def __init__(self, m: Map, handler: Callable[[Any], None], batch: bool = False):
        self.map = m
        self._sinks: list[tuple[Map, _fast.Batch, Callable[[Any], None], bool]] = []
        self._cb = SAMPLE_FN(_fast.SAMPLE_CALLBACK)
        b = self._sink(m, handler, batch)
        self.ptr = lib().ring_buffer__new(m.fd, self._cb, b.ctx, None)
        if not self.ptr:
            raise BpfError(f"creating ring buffer reader for map {m.name}", _errno())

    def _sink(self, m: Map, handler: Callable[[Any], None], batch: bool) -> _fast.Batch:
        b = _fast.Batch()
        self._sinks.append((m, b, handler, batch))  # kept alive as long as the reader
        return b

    def add(self, m: Map, handler: Callable[[Any], None], batch: bool = False) -> None:
        """Drain another ring buffer map in the same poll."""
        b = self._sink(m, handler, batch)
        ret = lib().ring_buffer__add(self.ptr, m.fd, self._cb, b.ctx)
        if ret:
            self._sinks.pop()
            raise BpfError(f"adding ring buffer {m.name} to the reader of {self.map.name}", ret)

    @property
    def epoll_fd(self) -> int:
        """Readable when any of the maps has records: wait on it, then consume()."""
        return int(lib().ring_buffer__epoll_fd(self.ptr))

    @property
    def dropped(self) -> int:
        """Records the reader could not keep (memory): counted, never expected."""
        return sum(b.dropped for _m, b, _h, _batch in self._sinks)

    def _dispatch(self) -> None:
        for m, b, handler, batch in self._sinks:
            if not b.pending:
                continue
            if batch:
                with memoryview(b) as view:  # read in place, no copy
                    try:
                        handler(view)
                    except Exception:  # a consumer's bug loses this batch, never the reader
                        log.exception("ring buffer %s batch handler failed", m.name)
                b.clear()
                continue
            for rec in _fast.split(b.take()):
                try:
                    handler(rec)
                except Exception:
                    log.exception("ring buffer %s handler failed", m.name)

    def poll(self, timeout_ms: int) -> int:
        n = lib().ring_buffer__poll(self.ptr, timeout_ms)
        self._dispatch()
        if n < 0 and -n != errno_mod.EINTR:
            raise BpfError(f"polling ring buffer {self.map.name}", n)
        return max(int(n), 0)

    def consume(self) -> int:
        n = lib().ring_buffer__consume(self.ptr)
        self._dispatch()
        return max(int(n), 0)

    def close(self) -> None:
        if self.ptr:
            lib().ring_buffer__free(self.ptr)
            self.ptr = 0


class BpfObject:
    """One compiled .bpf.o: open, configure, load, attach, close.

    Configuration made before load (rodata, autoload, map types and sizes) is remembered, so that
    load() can drop a program the kernel refuses and try again on a freshly opened object."""

    def __init__(self, path: str, name: str | None = None):
        self.path = path
        self.name = name or os.path.basename(path).split(".")[0]
        self.links: list[Link] = []
        self.loaded = False
        self.load_ms = 0.0  # time the last successful bpf_object__load took
        self.refused: dict[str, str] = {}  # program -> why the kernel refused it (load dropped it)
        self._config: list[tuple[str, str, Any]] = []
        self._open()

    def _open(self) -> None:
        ptr = lib().bpf_object__open_file(self.path.encode(), None)
        if not ptr:
            raise BpfError(f"opening BPF object {self.path}", _errno())
        self.ptr: int = ptr
        self._btf = Btf(lib().bpf_object__btf(ptr))

    def _remember(self, op: tuple[str, str, Any]) -> None:
        self._config.append(op)

    def _replay(self) -> None:
        config, self._config = self._config, []
        for kind, name, value in config:
            if kind == "autoload":
                self.program(name).autoload = value
            elif kind == "rodata":
                self.set_rodata(**{name: value})
            elif kind == "max_entries":
                self.map(name).set_max_entries(value)
            elif kind == "type":
                self.map(name).set_type(*value)

    @property
    def btf(self) -> Btf:
        return self._btf

    def struct(self, name: str) -> type[ct.Structure]:
        return self._btf.struct(name)

    def programs(self) -> list[Program]:
        out = []
        p = lib().bpf_object__next_program(self.ptr, None)
        while p:
            out.append(Program(self, p))
            p = lib().bpf_object__next_program(self.ptr, p)
        return out

    def program(self, name: str) -> Program:
        p = lib().bpf_object__find_program_by_name(self.ptr, name.encode())
        if not p:
            raise KeyError(f"{self.name}: no program {name}")
        return Program(self, p)

    def map(self, name: str) -> Map:
        p = lib().bpf_object__find_map_by_name(self.ptr, name.encode())
        if not p:
            raise KeyError(f"{self.name}: no map {name}")
        return Map(self, p)

    def set_rodata(self, **values: int | bool) -> None:
        """Set `const volatile` globals (before load)."""
        if self.loaded:
            raise RuntimeError(f"{self.name}: rodata can only be set before load")
        m = self.map(".rodata")
        size = ct.c_size_t(0)
        base = lib().bpf_map__initial_value(m.ptr, ct.byref(size))
        if not base:
            raise BpfError(f"{self.name}: reading .rodata", _errno())
        layout = self._btf.datasec_vars(".rodata")
        for key, val in values.items():
            if key not in layout:
                raise KeyError(f"{self.name}: no const volatile setting {key!r}")
            off, sz = layout[key]
            ct.memmove(base + off, int(val).to_bytes(sz, "little"), sz)
            self._remember(("rodata", key, val))

    def has_setting(self, key: str) -> bool:
        try:
            return key in self._btf.datasec_vars(".rodata")
        except KeyError:
            return False

    def load(self, optional: Collection[str] = ()) -> None:
        """Load every program with autoload on. When the kernel refuses one of `optional`, it is
        dropped (its reason kept in self.refused) and the object loads again without it; any
        other refusal raises BpfError."""
        while True:
            _recent_log.clear()
            t0 = time.perf_counter()
            ret = lib().bpf_object__load(self.ptr)
            if not ret:
                self.load_ms = (time.perf_counter() - t0) * 1000
                self.loaded = True
                return
            tail = "\n".join(_recent_log[-15:])
            failed = _failed_program(_recent_log)
            err = BpfError(f"loading BPF object {self.name} ({self.path})"
                           + (f"; libbpf said:\n{tail}\n" if tail else ""), ret)
            if failed is not None:
                err.reason = f"program {failed}: {_refusal_reason(_recent_log, failed, err)}"
            if failed is None or failed not in optional or failed in self.refused:
                raise err
            self.refused[failed] = err.reason.split(": ", 1)[1]
            lib().bpf_object__close(self.ptr)
            self._open()
            self._replay()
            self.program(failed).autoload = False

    def close(self) -> None:
        for link in reversed(self.links):
            link.destroy()
        self.links.clear()
        if self.ptr:
            lib().bpf_object__close(self.ptr)
            self.ptr = 0

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bpf_object_path(family: str) -> str:
    """Where the compiled object of a collector ships (inside the package)."""
    here = os.path.join(os.path.dirname(__file__), "bpf", f"{family}.bpf.o")
    path = os.environ.get("PODSCOPE_BPF_DIR")
    return os.path.join(path, f"{family}.bpf.o") if path else here
