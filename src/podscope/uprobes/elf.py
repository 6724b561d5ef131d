"""What an executable file offers to uprobes: TLS library functions (OpenSSL, BoringSSL, shared
or linked in) and Go's crypto/tls. Only the section headers, the string tables and the symbol
tables are read; libbpf resolves the symbols' offsets when attaching."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

# OpenSSL 1.1 and 3 and BoringSSL: the functions podscope hooks (SSL_read and SSL_write are
# required; the others are used when present)
OPENSSL_FUNCS = ("SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex", "SSL_do_handshake",
                 "SSL_set_fd", "SSL_free")
GO_TLS_FUNCS = ("crypto/tls.(*Conn).Read", "crypto/tls.(*Conn).Write")
GO_TLS_READS = ("crypto/tls.(*Conn).Read",)  # probed at each RET too


@dataclass(frozen=True)
class ElfInfo:
    kind: str  # "openssl", "go", "ld" (a dynamic linker) or "" (nothing to hook)
    funcs: frozenset[str]  # the functions of the kind's list that the file has
    stripped: bool = False  # a Go binary without its symbol table
    go_version: str = ""  # "go1.19.8"
    # Go: the offsets of each function's RET instructions from its start (uprobes there stand
    # in for return probes)
    returns: tuple[tuple[str, tuple[int, ...]], ...] = ()
    why_not: str = ""  # a Go binary that cannot be probed: why
    # Go's HTTP/2 and gRPC: (function, program) to attach, the struct offsets and the type
    # descriptor addresses (link-time: add the load bias of a PIE)
    h2_probes: tuple[tuple[str, str], ...] = ()
    h2_offsets: tuple[tuple[str, int], ...] = ()
    h2_types: tuple[tuple[str, int], ...] = ()
    pie: bool = False
    # stripped Go binaries: each function's offset in the file (probed by offset, not name)
    file_offsets: tuple[tuple[str, int], ...] = ()


GO_MIN = (1, 17)  # the register ABI

# Go's HTTP/2 and gRPC: function -> program (the header blocks before HPACK)
GO_H2_FUNCS = {
    "google.golang.org/grpc/internal/transport.(*http2Server).operateHeaders": "go_grpc_srv_rh",
    "google.golang.org/grpc/internal/transport.(*http2Client).operateHeaders": "go_grpc_cli_rh",
    "google.golang.org/grpc/internal/transport.(*loopyWriter).writeHeader": "go_grpc_wh",
    "net/http.(*http2serverConn).processHeaders": "go_nh_srv_rh",
    "net/http.(*http2serverConn).writeHeaders": "go_nh_srv_wh",
    "net/http.(*http2clientConnReadLoop).processHeaders": "go_nh_cli_rh",
    "net/http.(*http2ClientConn).encodeHeaders": "go_nh_cli_enc",
    "net/http.(*http2ClientConn).writeHeaders": "go_nh_cli_wh",
}
_GRPC_T = "google.golang.org/grpc/internal/transport."
# struct go_h2_offsets field -> (DWARF struct names, member)
GO_H2_FIELDS = {
    "grpc_server_conn": ((_GRPC_T + "http2Server",), "conn"),
    "grpc_client_conn": ((_GRPC_T + "http2Client",), "conn"),
    "grpc_loopy_framer": ((_GRPC_T + "loopyWriter",), "framer"),
    "grpc_framer_writer": ((_GRPC_T + "framer",), "writer"),
    "grpc_bufwriter_conn": ((_GRPC_T + "bufWriter",), "conn"),
    "meta_fields": (("golang.org/x/net/http2.MetaHeadersFrame", "net/http.http2MetaHeadersFrame"),
                    "Fields"),
    "frame_stream_id": (("golang.org/x/net/http2.FrameHeader", "net/http.http2FrameHeader"),
                        "StreamID"),
    "nh_sc_conn": (("net/http.http2serverConn",), "conn"),
    "nh_res_stream_id": (("net/http.http2writeResHeaders",), "streamID"),
    "nh_res_code": (("net/http.http2writeResHeaders",), "httpResCode"),
    "nh_rl_cc": (("net/http.http2clientConnReadLoop",), "cc"),
    "nh_cc_tconn": (("net/http.http2ClientConn",), "tconn"),
    "req_method": (("net/http.Request",), "Method"),
    "req_url": (("net/http.Request",), "URL"),
    "req_host": (("net/http.Request",), "Host"),
    "url_path": (("net/url.URL",), "Path"),
}
# what each program needs (a program whose fields the DWARF lacks is not attached)
GO_H2_NEEDS = {
    "go_grpc_srv_rh": ("grpc_server_conn", "meta_fields", "frame_stream_id"),
    "go_grpc_cli_rh": ("grpc_client_conn", "meta_fields", "frame_stream_id"),
    "go_grpc_wh": ("grpc_loopy_framer", "grpc_framer_writer", "grpc_bufwriter_conn"),
    "go_nh_srv_rh": ("nh_sc_conn", "meta_fields", "frame_stream_id"),
    "go_nh_srv_wh": ("nh_sc_conn", "nh_res_stream_id", "nh_res_code"),
    "go_nh_cli_rh": ("nh_rl_cc", "nh_cc_tconn", "meta_fields", "frame_stream_id"),
    "go_nh_cli_enc": ("req_method", "req_url", "req_host", "url_path"),
    "go_nh_cli_wh": ("nh_cc_tconn",),
}
GO_TYPES = {"type_tcp_conn": "*net.TCPConn", "type_tls_conn": "*crypto/tls.Conn",
            "type_wrap_conn": "*google.golang.org/grpc/internal/credentials.syscallConn"}
GO_TYPES_NEEDED = ("type_tcp_conn", "type_tls_conn")


def go_h2_layout(elf: ELFFile, sections: dict[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """(struct go_h2_offsets fields from DWARF, type descriptor addresses from the symbols) of
    a Go binary; empty when it has no DWARF (-ldflags=-w)."""
    if ".debug_info" not in sections:
        return {}, {}
    wanted: dict[str, list[tuple[str, str]]] = {}
    for field_name, (structs, member) in GO_H2_FIELDS.items():
        for st in structs:
            wanted.setdefault(st, []).append((member, field_name))
    offsets: dict[str, int] = {}
    dwarf = elf.get_dwarf_info()
    for cu in dwarf.iter_CUs():
        for die in cu.iter_DIEs():
            if die.tag != "DW_TAG_structure_type":
                continue
            name = die.attributes.get("DW_AT_name")
            members = wanted.get(name.value.decode("latin-1")) if name else None
            if not members:
                continue
            by_member = dict(members)
            for child in die.iter_children():
                cname = child.attributes.get("DW_AT_name")
                loc = child.attributes.get("DW_AT_data_member_location")
                if cname and loc is not None:
                    f = by_member.get(cname.value.decode("latin-1"))
                    if f is not None and isinstance(loc.value, int):
                        offsets.setdefault(f, loc.value)
    # the type descriptors, from the static itabs of (type, net.Conn): itab._type at +8
    types: dict[str, int] = {}
    names = {f"go{sep}itab.{t},net.Conn": k for k, t in GO_TYPES.items() for sep in ".:"}
    for sym in sections[".symtab"].iter_symbols():
        k = names.get(sym.name)
        if k is not None:
            (types[k],) = struct.unpack("<Q", _read_at(elf, sym["st_value"] + 8, 8))
            if len(types) == len(GO_TYPES):
                break
    return offsets, types


def go_version(data: bytes, elf: ELFFile) -> str:
    """The Go version a binary was built with, from its .go.buildinfo section."""
    magic = b"\xff Go buildinf:"
    if not data.startswith(magic) or len(data) < 32:
        return ""
    ptr_size, flags = data[14], data[15]
    if flags & 2:  # Go 1.18: the strings follow the header, each with a varint length
        n, shift, at = 0, 0, 32
        while at < len(data):
            b = data[at]
            n |= (b & 0x7F) << shift
            at += 1
            shift += 7
            if not b & 0x80:
                break
        return data[at: at + n].decode("latin-1")
    # before: a pointer to a Go string header (pointer, length)
    fmt = ("<" if flags & 1 == 0 else ">") + ("Q" if ptr_size == 8 else "I")
    try:
        (hdr,) = struct.unpack_from(fmt, data, 16)
        ptr_len = _read_at(elf, hdr, 2 * ptr_size)
        sptr, slen = struct.unpack(fmt[0] + fmt[1] * 2, ptr_len)
        return _read_at(elf, sptr, min(slen, 64)).decode("latin-1")
    except (struct.error, ValueError):
        return ""


def _read_at(elf: ELFFile, addr: int, size: int) -> bytes:
    elf.stream.seek(_file_offset(elf, addr))
    return bytes(elf.stream.read(size))


def _parse_go_version(v: str) -> tuple[int, int]:
    parts = v.removeprefix("go").split(".")
    try:
        return int(parts[0]), int(re.match(r"\d+", parts[1]).group())  # type: ignore[union-attr]
    except (IndexError, ValueError, AttributeError):
        return (0, 0)


def go_funcs(pclntab: bytes, names: set[str]) -> dict[str, tuple[int, int]]:
    """(address, size) of the named functions from Go's own function table (.gopclntab): a
    stripped binary (-ldflags=-s) keeps it, the runtime needs it. Go 1.16 and later."""
    if len(pclntab) < 8:
        return {}
    magic = struct.unpack_from("<I", pclntab)[0]
    ptr = pclntab[7]
    word = "<Q" if ptr == 8 else "<I"

    def uintptr(at: int) -> int:
        return int(struct.unpack_from(word, pclntab, at)[0])

    hdr = 8
    if magic in (0xFFFFFFF0, 0xFFFFFFF1):  # Go 1.18, 1.20
        nfunc = uintptr(hdr)
        text_start = uintptr(hdr + 2 * ptr)
        funcname_off = uintptr(hdr + 3 * ptr)
        pcln_off = uintptr(hdr + 7 * ptr)
        ent, ent_size = "<II", 8
    elif magic == 0xFFFFFFFA:  # Go 1.16, 1.17
        nfunc = uintptr(hdr)
        text_start = 0
        funcname_off = uintptr(hdr + 2 * ptr)
        pcln_off = uintptr(hdr + 6 * ptr)
        ent, ent_size = ("<QQ", 16) if ptr == 8 else ("<II", 8)
    else:
        return {}
    out: dict[str, tuple[int, int]] = {}
    tab = pcln_off
    for i in range(nfunc):
        entry, funcoff = struct.unpack_from(ent, pclntab, tab + i * ent_size)
        next_entry = struct.unpack_from(ent, pclntab, tab + (i + 1) * ent_size)[0]
        name_off = struct.unpack_from("<i", pclntab, pcln_off + funcoff + (
            4 if ent_size == 8 else ptr))[0]
        at = funcname_off + name_off
        end = pclntab.find(b"\0", at)
        name = pclntab[at:end].decode("latin-1")
        if name in names:
            out[name] = (text_start + entry, next_entry - entry)
            if len(out) == len(names):
                break
    return out


def _file_offset(elf: ELFFile, addr: int) -> int:
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= addr < seg["p_vaddr"] + seg["p_filesz"]:
            return int(addr - seg["p_vaddr"] + seg["p_offset"])
    raise ValueError(f"address {addr:#x} is in no loaded segment")


def _rets(elf: ELFFile, addr: int, size: int) -> tuple[int, ...]:
    import capstone  # type: ignore[import-untyped]

    arch = elf["e_machine"]
    if arch == "EM_X86_64":
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    elif arch == "EM_AARCH64":
        md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    else:
        return ()
    code = _read_at(elf, addr, size)
    return tuple(i.address - addr for i in md.disasm(code, addr) if i.mnemonic == "ret")


def _func_returns(elf: ELFFile, sections: dict[str, Any], names: tuple[str, ...]
                  ) -> dict[str, tuple[int, ...]]:
    """Offsets of the RET instructions of each named function, found by the symbol table."""
    wanted = set(names)
    out: dict[str, tuple[int, ...]] = {}
    for sym in sections[".symtab"].iter_symbols():
        if sym.name in wanted and sym["st_size"]:
            out[sym.name] = _rets(elf, sym["st_value"], sym["st_size"])
            if len(out) == len(wanted):
                break
    return out


def _defined(elf: ELFFile, sections: dict[str, Any], names: tuple[str, ...]) -> set[str]:
    """Which of names the file defines (a symbol with a section and an address, in .dynsym or
    .symtab): a library that only imports SSL_read names it too."""
    found: set[str] = set()
    for symtab, strtab in ((".dynsym", ".dynstr"), (".symtab", ".strtab")):
        if symtab not in sections or strtab not in sections:
            continue
        strings = sections[strtab].data()
        offsets: dict[int, str] = {}
        for name in names:
            needle = b"\0" + name.encode() + b"\0"
            at = strings.find(needle)
            while at >= 0:
                offsets[at + 1] = name
                at = strings.find(needle, at + 1)
        if not offsets:
            continue
        fmt = "<IBBHQQ" if elf.elfclass == 64 else "<IIIBBH"
        for ent in struct.iter_unpack(fmt, _whole(sections[symtab].data(), struct.calcsize(fmt))):
            if elf.elfclass == 64:
                st_name, shndx, value = ent[0], ent[3], ent[4]
            else:
                st_name, shndx, value = ent[0], ent[5], ent[1]
            if st_name in offsets and shndx != 0 and value:
                found.add(offsets[st_name])
    return found


def _whole(data: bytes, size: int) -> bytes:
    return data[: len(data) - len(data) % size]


def inspect(path: str) -> ElfInfo:
    """Raises OSError when the file cannot be read; a file that is not ELF has nothing."""
    with open(path, "rb") as f:
        try:
            elf = ELFFile(f)
            sections = {s.name: s for s in elf.iter_sections()}
            if ".gopclntab" in sections or ".go.buildinfo" in sections:
                return _go(elf, sections)
            funcs = frozenset(_defined(elf, sections, OPENSSL_FUNCS + ("_dl_debug_state",)))
        except (ELFError, ValueError, IndexError, struct.error):  # not ELF, or truncated
            return ElfInfo("", frozenset())
    if "SSL_read" in funcs and "SSL_write" in funcs:
        return ElfInfo("openssl", funcs)
    if "_dl_debug_state" in funcs:  # a dynamic linker: told when a process loads libraries
        return ElfInfo("ld", frozenset({"_dl_debug_state"}))
    return ElfInfo("", frozenset())


def _go(elf: ELFFile, sections: dict[str, Any]) -> ElfInfo:
    version = (go_version(sections[".go.buildinfo"].data(), elf)
               if ".go.buildinfo" in sections else "")
    if ".symtab" not in sections:
        return _go_stripped(elf, sections, version)
    funcs = frozenset(_defined(elf, sections, GO_TLS_FUNCS + tuple(GO_H2_FUNCS)))
    if not funcs & set(GO_TLS_FUNCS):
        return ElfInfo("", frozenset(), go_version=version)
    if _parse_go_version(version) < GO_MIN:
        return ElfInfo("go", funcs, go_version=version,
                       why_not=f"{version or 'unknown Go version'}: before Go 1.17's register ABI")
    reads = tuple(f for f in GO_TLS_READS if f in funcs)  # Write is taken at its entry
    rets = _func_returns(elf, sections, reads)
    if any(not rets.get(f) for f in reads):
        return ElfInfo("go", funcs, go_version=version, why_not="no RET found in crypto/tls")
    h2 = [f for f in GO_H2_FUNCS if f in funcs]
    probes: list[tuple[str, str]] = []
    offsets: dict[str, int] = {}
    types: dict[str, int] = {}
    if h2:
        offsets, types = go_h2_layout(elf, sections)
        if all(k in types for k in GO_TYPES_NEEDED):
            probes = [(f, GO_H2_FUNCS[f]) for f in h2
                      if all(n in offsets for n in GO_H2_NEEDS[GO_H2_FUNCS[f]])]
    return ElfInfo("go", funcs, go_version=version, returns=tuple(sorted(rets.items())),
                   h2_probes=tuple(probes), h2_offsets=tuple(sorted(offsets.items())),
                   h2_types=tuple(sorted(types.items())), pie=elf["e_type"] == "ET_DYN")


def _go_stripped(elf: ELFFile, sections: dict[str, Any], version: str) -> ElfInfo:
    """A Go binary without its symbol table (-ldflags=-s): the functions from .gopclntab,
    probed by file offset. Its HTTP/2 structs are not known without DWARF (-w goes with -s):
    crypto/tls only."""
    if ".gopclntab" not in sections:
        return ElfInfo("go", frozenset(), stripped=True, go_version=version,
                       why_not="stripped Go binary without .gopclntab")
    found = go_funcs(sections[".gopclntab"].data(), set(GO_TLS_FUNCS))
    if not found:
        return ElfInfo("", frozenset(), stripped=True, go_version=version)
    if _parse_go_version(version) < GO_MIN:
        return ElfInfo("go", frozenset(found), stripped=True, go_version=version,
                       why_not=f"{version or 'unknown Go version'}: before Go 1.17's register ABI")
    rets: dict[str, tuple[int, ...]] = {}
    for f in GO_TLS_READS:
        if f in found:
            rets[f] = _rets(elf, *found[f])
            if not rets[f]:
                return ElfInfo("go", frozenset(found), stripped=True, go_version=version,
                               why_not="no RET found in crypto/tls")
    offsets = tuple(sorted((f, _file_offset(elf, a)) for f, (a, _n) in found.items()))
    return ElfInfo("go", frozenset(found), stripped=True, go_version=version,
                   returns=tuple(sorted(rets.items())), file_offsets=offsets)
