"""What an executable file offers to uprobes: TLS library functions (OpenSSL, BoringSSL, shared
or linked in) and Go's crypto/tls. Only the section headers, the string tables and the symbol
tables are read; libbpf resolves the symbols' offsets when attaching."""

from __future__ import annotations

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


@dataclass(frozen=True)
class ElfInfo:
    kind: str  # "openssl", "go" or "" (nothing to hook)
    funcs: frozenset[str]  # the functions of the kind's list that the file has
    stripped: bool = False  # a Go binary without its symbol table


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
                funcs = frozenset(_defined(elf, sections, GO_TLS_FUNCS))
                stripped = ".symtab" not in sections  # whether it uses TLS is not known
                return ElfInfo("go" if funcs or stripped else "", funcs, stripped=stripped)
            funcs = frozenset(_defined(elf, sections, OPENSSL_FUNCS))
        except (ELFError, ValueError, IndexError, struct.error):  # not ELF, or truncated
            return ElfInfo("", frozenset())
    if "SSL_read" in funcs and "SSL_write" in funcs:
        return ElfInfo("openssl", funcs)
    return ElfInfo("", frozenset())
