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
    kind: str  # "openssl", "go" or "" (nothing to hook)
    funcs: frozenset[str]  # the functions of the kind's list that the file has
    stripped: bool = False  # a Go binary without its symbol table
    go_version: str = ""  # "go1.19.8"
    # Go: the offsets of each function's RET instructions from its start (uprobes there stand
    # in for return probes)
    returns: tuple[tuple[str, tuple[int, ...]], ...] = ()
    why_not: str = ""  # a Go binary that cannot be probed: why


GO_MIN = (1, 17)  # the register ABI


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
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= addr < seg["p_vaddr"] + seg["p_filesz"]:
            elf.stream.seek(addr - seg["p_vaddr"] + seg["p_offset"])
            return bytes(elf.stream.read(size))
    raise ValueError(f"address {addr:#x} is in no loaded segment")


def _parse_go_version(v: str) -> tuple[int, int]:
    parts = v.removeprefix("go").split(".")
    try:
        return int(parts[0]), int(re.match(r"\d+", parts[1]).group())  # type: ignore[union-attr]
    except (IndexError, ValueError, AttributeError):
        return (0, 0)


def _func_returns(elf: ELFFile, sections: dict[str, Any], names: tuple[str, ...]
                  ) -> dict[str, tuple[int, ...]]:
    """Offsets of the RET instructions of each named function (x86-64 and arm64)."""
    import capstone  # type: ignore[import-untyped]

    arch = elf["e_machine"]
    if arch == "EM_X86_64":
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    elif arch == "EM_AARCH64":
        md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    else:
        return {}
    wanted = set(names)
    out: dict[str, tuple[int, ...]] = {}
    for sym in sections[".symtab"].iter_symbols():
        if sym.name in wanted and sym["st_size"]:
            addr, size = sym["st_value"], sym["st_size"]
            code = _read_at(elf, addr, size)
            out[sym.name] = tuple(i.address - addr for i in md.disasm(code, addr)
                                  if i.mnemonic == "ret")
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
            funcs = frozenset(_defined(elf, sections, OPENSSL_FUNCS))
        except (ELFError, ValueError, IndexError, struct.error):  # not ELF, or truncated
            return ElfInfo("", frozenset())
    if "SSL_read" in funcs and "SSL_write" in funcs:
        return ElfInfo("openssl", funcs)
    return ElfInfo("", frozenset())


def _go(elf: ELFFile, sections: dict[str, Any]) -> ElfInfo:
    version = (go_version(sections[".go.buildinfo"].data(), elf)
               if ".go.buildinfo" in sections else "")
    if ".symtab" not in sections:
        # stripped (-ldflags=-s): the functions are not found by name here
        return ElfInfo("go", frozenset(), stripped=True, go_version=version,
                       why_not="stripped Go binary (no symbol table)")
    funcs = frozenset(_defined(elf, sections, GO_TLS_FUNCS))
    if not funcs:
        return ElfInfo("", frozenset(), go_version=version)
    if _parse_go_version(version) < GO_MIN:
        return ElfInfo("go", funcs, go_version=version,
                       why_not=f"{version or 'unknown Go version'}: before Go 1.17's register ABI")
    reads = tuple(f for f in GO_TLS_READS if f in funcs)  # Write is taken at its entry
    rets = _func_returns(elf, sections, reads)
    if any(not rets.get(f) for f in reads):
        return ElfInfo("go", funcs, go_version=version, why_not="no RET found in crypto/tls")
    return ElfInfo("go", funcs, go_version=version, returns=tuple(sorted(rets.items())))
