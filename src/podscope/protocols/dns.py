"""DNS messages (RFC 1035): the header and the first question, from bytes that may be cut short
(the kernel captures at most 512 bytes of a message). Pure functions, no BPF.

`parse` raises DnsError for anything that is not a DNS message; `TcpFramer` splits the byte
stream of DNS over TCP (each message after a two-byte length) into messages."""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct("!HHHHHH")
MAX_NAME = 255

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
          6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE"}
QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
          33: "SRV", 35: "NAPTR", 43: "DS", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 255: "ANY",
          257: "CAA"}


class DnsError(ValueError):
    """Not a DNS message (or not one podscope can read): the reason is a short label."""


@dataclass(frozen=True)
class Message:
    id: int
    response: bool
    opcode: int
    rcode: int
    questions: int
    answers: int
    name: str  # the first question's name, "" when the capture ended before it
    qtype: int  # 0 when unknown
    truncated: bool  # the TC bit: the answer did not fit (the client retries over TCP)

    @property
    def rcode_name(self) -> str:
        return RCODES.get(self.rcode, f"RCODE{self.rcode}")

    @property
    def qtype_name(self) -> str:
        return QTYPES.get(self.qtype, f"TYPE{self.qtype}") if self.qtype else "unknown"


def _name(data: bytes, off: int) -> tuple[str, int]:
    """The uncompressed name at `off` (a question's name is never compressed in practice; a
    pointer ends it as far as it was read) and the offset after it."""
    labels: list[str] = []
    size = 0
    while True:
        if off >= len(data):
            raise DnsError("truncated")
        n = data[off]
        if n == 0:
            return ".".join(labels) + ("" if labels else "."), off + 1
        if n & 0xC0 == 0xC0:  # compression pointer
            return ".".join(labels), off + 2
        if n & 0xC0:
            raise DnsError("bad_label")
        label = data[off + 1: off + 1 + n]
        if len(label) < n:
            raise DnsError("truncated")
        size += n + 1
        if size > MAX_NAME:
            raise DnsError("name_too_long")
        labels.append(label.decode("ascii", errors="backslashreplace"))
        off += 1 + n


def parse(data: bytes) -> Message:
    if len(data) < HEADER.size:
        raise DnsError("short")
    mid, flags, qd, an, _ns, _ar = HEADER.unpack_from(data)
    opcode = (flags >> 11) & 0xF
    if opcode > 6 or (flags >> 4) & 0x7 and opcode == 0 and qd == 0:
        raise DnsError("bad_header")
    if qd > 64 or an > 4096:
        raise DnsError("bad_header")
    name, qtype = "", 0
    if qd:
        try:
            name, off = _name(data, HEADER.size)
            if off + 4 <= len(data):
                qtype = struct.unpack_from("!H", data, off)[0]
        except DnsError as e:
            if str(e) != "truncated":
                raise
    return Message(mid, bool(flags & 0x8000), opcode, flags & 0xF, qd, an, name, qtype,
                   bool(flags & 0x0200))


class TcpFramer:
    """One direction of a DNS-over-TCP stream: the bytes of each syscall in (how many it moved,
    and the prefix of them the capture kept), the captured prefix of every message that ended
    out. Bytes the capture missed inside a message are skipped by count; a length prefix that
    was not captured loses the stream (DnsError)."""

    CAP = 512

    def __init__(self) -> None:
        self._len = b""  # the length prefix read so far
        self._remaining = 0  # bytes of the current message still to come
        self._body = b""  # its captured prefix
        self._gap = False  # a part of it was not captured: nothing after is kept

    def feed(self, captured: bytes, total: int) -> list[bytes]:
        out: list[bytes] = []
        p = 0
        while p < total:
            if self._remaining == 0:
                if p >= len(captured):
                    self._len = b""
                    raise DnsError("tcp_lost_sync")
                take = min(2 - len(self._len), len(captured) - p)
                self._len += captured[p: p + take]
                p += take
                if len(self._len) == 2:
                    self._remaining = int.from_bytes(self._len, "big")
                    self._len, self._body, self._gap = b"", b"", False
                continue
            take = min(self._remaining, total - p)
            known = captured[p: p + take]
            if not self._gap and len(self._body) < self.CAP:
                self._body += known[: self.CAP - len(self._body)]
            if len(known) < take:
                self._gap = True
            p += take
            self._remaining -= take
            if self._remaining == 0:
                out.append(self._body)
        return out
