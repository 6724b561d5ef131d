"""HTTP/2 (and gRPC over it) from the captured byte streams of one connection. Pure, no I/O.

`H2Connection` takes each direction's bytes as the syscalls delivered them, parses frames, decodes
header blocks with the `hpack` library (one decoder per direction), and returns a finished
`H2Request` per stream. A connection whose start was not seen has no dynamic table: header fields
that refer to it are reported as unknown, never guessed, and the request's `outcome` says so
("full", "partial", "none"). Malformed input raises `H2Error` with a short `reason`; the caller
counts it and starts the connection over. State is bounded: streams, header blocks and the
dynamic tables have caps.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from hpack import Decoder, HPACKError
from hpack.table import HeaderTable, table_entry_size

STATIC_ENTRIES = len(HeaderTable.STATIC_TABLE)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
UNKNOWN = "__unknown__"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20
SETTINGS_HEADER_TABLE_SIZE = 0x1
_FRAME_HEADER = struct.Struct(">BHBBI")  # length (24 bits: 8 + 16), type, flags, stream id

MAX_FRAME = 1 << 24  # the protocol's own limit (24-bit length)
MAX_HEADER_BLOCK = 256 * 1024  # one header block, CONTINUATIONs included
MAX_TABLE = 64 * 1024  # dynamic table size we are willing to mirror
MAX_STREAMS = 4096  # open streams tracked per connection
MAX_CACHED_BLOCKS = 4096  # decoded header blocks kept (BlockCache)
MAX_CACHED_BLOCK_BYTES = 1024  # larger blocks are decoded every time (caches stay < 5 MB)

# Decoded header blocks that refer only to the static table and to literals: such a block is a
# pure function of its bytes, whatever connection carried it. Steady traffic repeats the same
# blocks (nginx's responses differ only in `date`, once a second), so one cache can serve all
# connections: the decoded headers, and the entries the block adds to the dynamic table (replayed
# on a hit: nginx adds its response headers every time).
BlockCache = dict[bytes, tuple["_Summary", list[tuple[bytes, bytes]]]]


class H2Error(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Table(HeaderTable):
    """An HPACK table that, when the connection's start was not seen, answers references to
    entries it never saw with a marker instead of failing the whole header block."""

    def __init__(self) -> None:
        self.version = 0  # changes whenever the dynamic table may have
        super().__init__()
        self.synced = True
        self.misses = 0
        self.dynamic_refs = 0  # look-ups that reached the dynamic table
        self.added: list[tuple[bytes, bytes]] = []  # entries added (cleared by the caller)

        self.pending: list[tuple[bytes, bytes]] = []  # adds not applied yet (defer)

    def add(self, name: bytes, value: bytes) -> None:
        self.version += 1
        self.added.append((name, value))
        super().add(name, value)

    def defer(self, adds: list[tuple[bytes, bytes]]) -> None:
        """Entries a cached header block adds: applied only when a block is decoded (flush).
        Most of them are evicted before anything refers to them."""
        self.version += len(adds)
        self.pending += adds
        if len(self.pending) > 1024:
            self.flush()

    def flush(self) -> None:
        """Apply the deferred entries. After any sequence of adds an HPACK table holds the
        longest run of newest entries that fits its size, so only that run is added."""
        pending, self.pending = self.pending, []
        size = keep = 0
        for name, value in reversed(pending):
            size += table_entry_size(name, value)
            if size > self._maxsize:
                break
            keep += 1
        if keep < len(pending):  # the older ones, and everything in the table, are evicted
            self.dynamic_entries.clear()
            self._current_size = 0
        for name, value in pending[len(pending) - keep:]:
            HeaderTable.add(self, name, value)

    @property
    def maxsize(self) -> int:
        return int(HeaderTable.maxsize.fget(self))  # type: ignore[attr-defined]

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.version += 1
        self.dynamic_refs += 1  # a size update: the block's effect depends on the table
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]

    def get_by_index(self, index: int) -> tuple[bytes, bytes]:
        if index > STATIC_ENTRIES:
            self.dynamic_refs += 1
        try:
            return super().get_by_index(index)
        except HPACKError:
            if self.synced:
                raise
            self.misses += 1
            return (UNKNOWN.encode(), UNKNOWN.encode())


@dataclass
class H2Request:
    stream_id: int
    method: str = UNKNOWN
    path: str = UNKNOWN
    authority: str = ""
    status: int = 0  # 0: none (reset, or not decoded)
    grpc_status: int | None = None
    grpc_message: str = ""
    content_type: str = ""
    req_bytes: int = 0  # DATA payload, both ways
    resp_bytes: int = 0
    start_ns: int = 0
    end_ns: int = 0
    first_byte_ns: int = 0  # the response's first HEADERS frame
    reset: bool = False
    outcome: str = "full"  # full | partial | none | uprobes (named by hints, see hint())
    hinted: bool = False
    _req_done: bool = False
    _resp_done: bool = False

    @property
    def is_grpc(self) -> bool:
        return self.content_type.startswith("application/grpc")


@dataclass
class _Direction:
    is_client: bool
    buf: bytearray = field(default_factory=bytearray)
    table: _Table = field(default_factory=_Table)
    decoder: Decoder = field(init=False)
    preface_left: int = 0
    skip: int = 0  # DATA payload bytes still to pass (not captured)
    block: bytearray = field(default_factory=bytearray)  # header block being assembled
    # header blocks that refer to the dynamic table, by (bytes, table version), when they left
    # the table unchanged (all-indexed requests from a warmed-up client); see H2Connection.blocks
    cache: dict[tuple[bytes, int], tuple[_Summary | None, int]] = field(default_factory=dict)
    block_stream: int = 0
    block_flags: int = 0

    def __post_init__(self) -> None:
        self.decoder = Decoder()
        self.decoder.header_table = self.table
        self.decoder.max_allowed_table_size = MAX_TABLE


@dataclass(frozen=True)
class _Summary:
    """What a decoded header block says about its stream: the H2Request fields it sets."""
    fields: tuple[tuple[str, Any], ...]
    content_type: str
    has_status: bool
    has_method: bool


_FIELDS = {":method": "method", ":path": "path", ":authority": "authority",
           "grpc-message": "grpc_message"}


def _summarize(headers: Any) -> _Summary:
    fields: list[tuple[str, Any]] = []
    content_type = ""
    names = set()
    for name, value in headers:
        n, v = name.decode("latin-1"), value.decode("latin-1")
        names.add(n)
        if n in _FIELDS:
            fields.append((_FIELDS[n], v))
        elif n == ":status" and v.isdigit():
            fields.append(("status", int(v)))
        elif n == "grpc-status" and v.isdigit():
            fields.append(("grpc_status", int(v)))
        elif n == "content-type" and not content_type:
            content_type = v
    return _Summary(tuple(fields), content_type, ":status" in names, ":method" in names)


class H2Connection:
    """role: "server" (this side received the preface) or "client". seen_start: False when the
    capture began mid-connection (no preface seen): decoding is then partial where it must be."""

    def __init__(self, role: str, seen_start: bool = True, role_known: bool = True,
                 blocks: BlockCache | None = None):
        self.role = role
        self.blocks: BlockCache = {} if blocks is None else blocks
        # False: a connection seen mid-way, its direction guessed; the first decoded header
        # block confirms it (H2Error("role_swapped") when it was wrong)
        self.role_known = role_known
        self.decoded = 0  # requests finished
        self.client = _Direction(True)
        self.server = _Direction(False)
        self.seen_start = seen_start
        if seen_start:
            self.client.preface_left = len(PREFACE)
        else:
            for d in (self.client, self.server):
                d.table.synced = False
        self.streams: dict[int, H2Request] = {}
        # header blocks named by the program itself (uprobes) before their frames came
        self.hints: dict[tuple[int, bool], dict[str, Any]] = {}
        self.hinted = False  # hints come for this connection (a probed Go program)
        # finished streams whose last header block is not decoded, waiting for its hint: it
        # comes before the next bytes from that side (the program's reader names each block
        # before it reads on)
        self.waiting: dict[int, H2Request] = {}

    # --- input ---
    def hint(self, stream_id: int, from_client: bool, fields: dict[str, Any], ts: int = 0
             ) -> list[H2Request]:
        """One header block of stream_id as the program that sent or received it had it before
        HPACK (H2Request attributes: method, path, authority, status, grpc_status, content_type):
        it names the stream where the decoder could not (no HPACK state: a connection seen
        mid-way). Returns the requests it finished (one waiting for this hint)."""
        self.hinted = True
        st = self.waiting.get(stream_id)
        if st is not None:
            _apply_hint(st, fields)
            if not _named(st):  # another block of it is still to be named (its trailers)
                return []
            del self.waiting[stream_id]
            _hinted_outcome(st)
            return [st]
        st = self.streams.get(stream_id)
        if st is None:
            if len(self.hints) >= MAX_STREAMS:
                self.hints.clear()
            self.hints[(stream_id, from_client)] = {**fields, "_ts": ts}
            return []
        _apply_hint(st, fields)
        return []

    def _release(self, out: list[H2Request]) -> None:
        out.extend(self.waiting.values())
        self.waiting.clear()

    def feed(self, from_client: bool, data: bytes, ts: int, uncaptured: int = 0) -> list[H2Request]:
        """Bytes one side sent (then `uncaptured` bytes that were not copied). Returns the
        requests these bytes finished."""
        d = self.client if from_client else self.server
        out: list[H2Request] = []
        if self.waiting and not from_client:
            self._release(out)  # their hints would have come before these bytes
        if not self.seen_start and not d.buf and data.startswith(PREFACE):
            # taken for mid-way (a server's SETTINGS can come first), but this is the start
            if not from_client:
                raise H2Error("role_swapped")
            self.seen_start = self.role_known = True
            self.client.table.synced = self.server.table.synced = True
            self.client.cache.clear()
            self.server.cache.clear()
            data = data[len(PREFACE):]
        if d.preface_left:
            take = min(d.preface_left, len(data))
            if PREFACE[len(PREFACE) - d.preface_left:][:take] != data[:take]:
                raise H2Error("bad_preface")
            d.preface_left -= take
            data = data[take:]
        d.buf += data
        self._frames(d, ts, out)
        if uncaptured:
            self._gap(d, uncaptured)
        return out

    def _gap(self, d: _Direction, n: int) -> None:
        """Bytes we did not see: only DATA payload can be passed over."""
        if d.buf:
            raise H2Error("truncated")
        if n > d.skip:
            raise H2Error("truncated")
        d.skip -= n

    def _frames(self, d: _Direction, ts: int, out: list[H2Request]) -> None:
        buf = d.buf
        pos = 0
        while True:
            if d.skip:
                take = min(d.skip, len(buf) - pos)
                d.skip -= take
                pos += take
                if d.skip:
                    break
            if len(buf) - pos < 9:
                break
            hi, lo, ftype, flags, sid = _FRAME_HEADER.unpack_from(buf, pos)
            length = hi << 16 | lo
            sid &= 0x7FFFFFFF
            if length > MAX_FRAME:
                raise H2Error("frame_too_large")
            if ftype == DATA and len(buf) - pos < 9 + length:
                # DATA payload is only counted: do not wait for (or keep) its bytes
                avail = len(buf) - pos - 9
                self._data(d, sid, flags, length, ts, out, complete=False)
                d.skip = length - avail
                pos = len(buf)
                break
            if len(buf) - pos < 9 + length:
                if length > MAX_HEADER_BLOCK:
                    raise H2Error("frame_too_large")
                break
            if ftype == DATA and not d.block:
                pos += 9 + length
                self._data(d, sid, flags, length, ts, out, complete=True)
                continue
            payload = bytes(buf[pos + 9:pos + 9 + length])
            pos += 9 + length
            self._frame(d, ftype, flags, sid, payload, ts, out)
        del buf[:pos]
        if len(buf) > MAX_HEADER_BLOCK + 9:
            raise H2Error("frame_too_large")

    # --- frames ---
    def _frame(self, d: _Direction, ftype: int, flags: int, sid: int, payload: bytes, ts: int,
               out: list[H2Request]) -> None:
        if d.block and ftype != CONTINUATION:
            raise H2Error("continuation_expected")
        if ftype == DATA:
            self._data(d, sid, flags, len(payload), ts, out, complete=True)
        elif ftype in (HEADERS, PUSH_PROMISE):
            if ftype == PUSH_PROMISE:
                return  # a promised stream's headers: not a request of this client
            frag = _strip(payload, flags, ftype)
            d.block = bytearray(frag)
            d.block_stream, d.block_flags = sid, flags
            if flags & END_HEADERS:
                self._headers(d, ts, out)
        elif ftype == CONTINUATION:
            if not d.block or sid != d.block_stream:
                raise H2Error("unexpected_continuation")
            d.block += payload
            if len(d.block) > MAX_HEADER_BLOCK:
                raise H2Error("headers_too_large")
            if flags & END_HEADERS:
                self._headers(d, ts, out)
        elif ftype == RST_STREAM:
            st = self.streams.pop(sid, None)
            if st is not None:
                st.reset = True
                st.end_ns = ts
                out.append(st)
        elif ftype == SETTINGS and not flags & 0x1:
            for i in range(0, len(payload) - 5, 6):
                ident = int.from_bytes(payload[i:i + 2], "big")
                if ident == SETTINGS_HEADER_TABLE_SIZE:
                    value = int.from_bytes(payload[i + 2:i + 6], "big")
                    # the sender's decoder limit: binds the other side's encoder
                    other = self.server if d.is_client else self.client
                    other.decoder.max_allowed_table_size = min(value, MAX_TABLE)
        elif ftype == GOAWAY and len(payload) >= 4:
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            for sid2 in [s for s in self.streams if s > last]:
                st = self.streams.pop(sid2)
                st.reset = True
                st.end_ns = ts
                out.append(st)

    def _data(self, d: _Direction, sid: int, flags: int, length: int, ts: int,
              out: list[H2Request], complete: bool) -> None:
        st = self.streams.get(sid)
        if st is None:
            return
        if d.is_client:
            st.req_bytes += length
        else:
            st.resp_bytes += length
        if flags & END_STREAM:
            self._end(d, st, ts, out)

    def _headers(self, d: _Direction, ts: int, out: list[H2Request]) -> None:
        sid, flags, block = d.block_stream, d.block_flags, bytes(d.block)
        d.block = bytearray()
        table = d.table
        misses = table.misses
        pure = self.blocks.get(block)
        summary: _Summary | None
        if pure is not None:
            summary, adds = pure
            if adds:
                table.defer(adds)
        elif (hit := d.cache.get((block, table.version))) is not None:
            summary, missed = hit
            table.misses += missed
        else:
            table.flush()
            version, refs = table.version, table.dynamic_refs
            table.added = []
            try:
                summary = _summarize(d.decoder.decode(block, raw=True))
            except HPACKError:
                if table.synced:
                    raise H2Error("hpack") from None
                summary = None
            if len(block) > MAX_CACHED_BLOCK_BYTES:
                pass
            elif summary is not None and table.dynamic_refs == refs:
                if len(self.blocks) >= MAX_CACHED_BLOCKS:
                    self.blocks.clear()
                self.blocks[block] = (summary, table.added)
            elif table.version == version:
                if len(d.cache) >= 256:
                    d.cache.clear()
                d.cache[(block, version)] = (summary, table.misses - misses)
            table.added = []
        if summary is None:
            outcome = "none"
        else:
            outcome = "partial" if table.misses > misses else "full"
            if not self.role_known:
                if (summary.has_status and d.is_client) or (summary.has_method
                                                            and not d.is_client):
                    raise H2Error("role_swapped")
                if summary.has_status or summary.has_method:
                    self.role_known = True
        st = self.streams.get(sid)
        if d.is_client and st is None:
            if len(self.streams) >= MAX_STREAMS:
                raise H2Error("too_many_streams")
            st = self.streams[sid] = H2Request(sid, start_ns=ts, outcome=outcome)
        if st is None and (sid, True) in self.hints and len(self.streams) < MAX_STREAMS:
            # a request whose frames were not seen (read before the probes came, in pieces
            # the decoder could not place) but that the program named: it starts there
            named = self.hints.pop((sid, True))
            st = self.streams[sid] = H2Request(sid, start_ns=named.get("_ts") or ts,
                                               outcome="partial")
            st._req_done = True
            _apply_hint(st, named)
        if st is None:
            return  # the server speaks on a stream whose request we never saw
        if not d.is_client and not st.first_byte_ns:
            st.first_byte_ns = ts
        if outcome != "full" and st.outcome != "none":
            st.outcome = outcome
        if summary is not None:
            for attr, value in summary.fields:
                setattr(st, attr, value)
            if summary.content_type and not st.content_type:
                st.content_type = summary.content_type
        if self.hints:
            h = self.hints.pop((sid, d.is_client), None)
            if h is not None:
                _apply_hint(st, h)
        if flags & END_STREAM:
            self._end(d, st, ts, out)

    def _end(self, d: _Direction, st: H2Request, ts: int, out: list[H2Request]) -> None:
        if d.is_client:
            st._req_done = True
        else:
            st._resp_done = True
            st.end_ns = ts
        if st._resp_done:  # a response that ends first ends the exchange (the server is done)
            self.streams.pop(st.stream_id, None)
            self.decoded += 1
            if (self.hinted and st.outcome != "full" and not _named(st)
                    and len(self.waiting) < MAX_STREAMS):
                self.waiting[st.stream_id] = st
                return
            _hinted_outcome(st)
            out.append(st)

    def close(self, ts: int) -> list[H2Request]:
        """The connection ended: what is still open did not finish."""
        out: list[H2Request] = []
        self._release(out)
        for st in self.streams.values():
            st.reset = True
            st.end_ns = ts
            out.append(st)
        self.streams.clear()
        return out


def _strip(payload: bytes, flags: int, ftype: int) -> bytes:
    """The header block fragment of a HEADERS frame (padding and priority removed)."""
    pos, end = 0, len(payload)
    if flags & PADDED:
        if not payload:
            raise H2Error("bad_padding")
        end -= payload[0]
        pos = 1
    if ftype == HEADERS and flags & PRIORITY_FLAG:
        pos += 5
    if end < pos:
        raise H2Error("bad_padding")
    return payload[pos:end]


def grpc_service_method(path: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method'); unknown parts stay UNKNOWN."""
    parts = path.split("/")
    if len(parts) == 3 and not parts[0] and parts[1] and parts[2]:
        return parts[1], parts[2]
    return UNKNOWN, UNKNOWN


def _apply_hint(st: H2Request, fields: dict[str, Any]) -> None:
    """What the decoder left unknown, from a hint (never overrides what it decoded)."""
    for attr, value in fields.items():
        if attr == "_ts":
            continue
        if attr in ("method", "path") and getattr(st, attr) != UNKNOWN:
            continue
        if attr == "status" and st.status:
            continue
        if attr == "grpc_status" and st.grpc_status is not None:
            continue
        if attr in ("authority", "content_type") and getattr(st, attr):
            continue
        setattr(st, attr, value)
    st.hinted = True


def _named(st: H2Request) -> bool:
    """Method, path and the status (gRPC: its status) known."""
    if UNKNOWN in (st.method, st.path):
        return False
    return st.grpc_status is not None if st.is_grpc else bool(st.status)


def _hinted_outcome(st: H2Request) -> None:
    if st.outcome != "full" and st.hinted and _named(st):
        st.outcome = "uprobes"
