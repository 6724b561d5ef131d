"""HTTP/2 (and gRPC over it) from the captured byte streams of one connection. No I/O.

`H2Connection` takes each direction's bytes as the syscalls delivered them and returns a finished
`H2Request` per stream. Frames and HPACK are compiled code (`podscope._fast.H2Wire`,
native/h2.c: one decoder per direction, bounded buffers and tables); this module keeps the
requests: streams, their timing and sizes, and the hints of probed Go programs. A connection whose
start was not seen has no dynamic table: header fields that refer to it are reported as unknown,
never guessed, and the request's `outcome` says so ("full", "partial", "none"). Malformed input
raises `H2Error` with a short `reason`; the caller counts it and starts the connection over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

from .. import _fast

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
UNKNOWN = "__unknown__"

# frame types and flags (RFC 9113 6): H2Wire parses them; tests and fixtures build frames
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20
MAX_STREAMS = 4096  # open streams tracked per connection
OUTCOMES = ("full", "partial", "none")  # H2Wire's header block outcome codes

_fast.h2_huffman(REQUEST_CODES, REQUEST_CODES_LENGTH)  # the code is hpack's, not restated


class H2Error(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


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
    seq: int | None = None  # TCP sequence number of its HEADERS frame's first byte, if known
    parent: bytes = b""  # struct http_link of the request its sender's thread was serving
    traceparent: str | None = None  # the request's traceparent header (with seq only)
    _req_done: bool = False
    _resp_done: bool = False

    @property
    def is_grpc(self) -> bool:
        return self.content_type.startswith("application/grpc")


class H2Connection:
    """role: "server" (this side received the preface) or "client". seen_start: False when the
    capture began mid-connection (no preface seen): decoding is then partial where it must be."""

    def __init__(self, role: str, seen_start: bool = True, role_known: bool = True):
        self.role = role
        # False: a connection seen mid-way, its direction guessed; the first decoded header
        # block confirms it (H2Error("role_swapped") when it was wrong)
        self.role_known = role_known
        self.decoded = 0  # requests finished
        self.wire = _fast.H2Wire(seen_start)
        self.streams: dict[int, H2Request] = {}
        # header blocks named by the program itself (uprobes) before their frames came
        self.hints: dict[tuple[int, bool], dict[str, Any]] = {}
        self.hinted = False  # hints come for this connection (a probed Go program)
        # finished streams whose last header block is not decoded, waiting for its hint: it
        # comes before the next bytes from that side (the program's reader names each block
        # before it reads on)
        self.waiting: dict[int, H2Request] = {}
        self._fed = [0, 0]  # bytes fed per side (server, client), uncaptured ones included
        # of the bytes being fed: where they begin, the sequence number there, the parent
        self._at: tuple[int, int | None, bytes] = (0, None, b"")

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

    @property
    def seen_start(self) -> bool:
        return self.wire.seen_start

    def feed(self, from_client: bool, data: bytes, ts: int, uncaptured: int = 0,
             seq: int | None = None, parent: bytes = b"") -> list[H2Request]:
        """Bytes one side sent (then `uncaptured` bytes that were not copied). Returns the
        requests these bytes finished. seq: the TCP sequence number of data[0] (requests get
        the one of their first byte); parent: the sender's thread's server request (records)."""
        out: list[H2Request] = []
        if self.waiting and not from_client:
            self._release(out)  # their hints would have come before these bytes
        self._at = (self._fed[from_client], seq, parent)
        self._fed[from_client] += len(data) + uncaptured
        events, error = self.wire.feed(from_client, data, uncaptured)
        for ev in events:
            kind = ev[0]
            if kind == _fast.EV_DATA:
                st = self.streams.get(ev[1])
                if st is None:
                    continue
                if from_client:
                    st.req_bytes += ev[3]
                else:
                    st.resp_bytes += ev[3]
                if ev[2] & END_STREAM:
                    self._end(from_client, st, ts, out)
            elif kind == _fast.EV_HEADERS:
                self._headers(from_client, ev, ts, out)
            elif kind == _fast.EV_RST:
                st = self.streams.pop(ev[1], None)
                if st is not None:
                    st.reset = True
                    st.end_ns = ts
                    out.append(st)
            elif kind == _fast.EV_GOAWAY:
                for sid2 in [s for s in self.streams if s > ev[1]]:
                    st = self.streams.pop(sid2)
                    st.reset = True
                    st.end_ns = ts
                    out.append(st)
            elif kind == _fast.EV_PREFACE:  # taken for mid-way, but this is the start
                self.role_known = True
        if error is not None:
            raise H2Error(error)
        return out

    def _headers(self, is_client: bool, ev: tuple[Any, ...], ts: int,
                 out: list[H2Request]) -> None:
        (_kind, sid, flags, code, method, path, authority, status, grpc_status, grpc_message,
         content_type, has_status, has_method, off, tparent) = ev
        outcome = OUTCOMES[code]
        if code != 2 and not self.role_known:
            if (has_status and is_client) or (has_method and not is_client):
                raise H2Error("role_swapped")
            if has_status or has_method:
                self.role_known = True
        st = self.streams.get(sid)
        if is_client and st is None:
            if len(self.streams) >= MAX_STREAMS:
                raise H2Error("too_many_streams")
            st = self.streams[sid] = H2Request(sid, start_ns=ts, outcome=outcome)
            at, seq, parent = self._at
            if seq is not None:
                st.seq = (seq + off - at) & 0xFFFFFFFF
                st.parent = parent
                st.traceparent = tparent
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
        if not is_client and not st.first_byte_ns:
            st.first_byte_ns = ts
        if outcome != "full" and st.outcome != "none":
            st.outcome = outcome
        if method is not None:
            st.method = method
        if path is not None:
            st.path = path
        if authority is not None:
            st.authority = authority
        if grpc_message is not None:
            st.grpc_message = grpc_message
        if status is not None:
            st.status = status
        if grpc_status is not None:
            st.grpc_status = grpc_status
        if content_type and not st.content_type:
            st.content_type = content_type
        if self.hints:
            h = self.hints.pop((sid, is_client), None)
            if h is not None:
                _apply_hint(st, h)
        if flags & END_STREAM:
            self._end(is_client, st, ts, out)

    def _end(self, is_client: bool, st: H2Request, ts: int, out: list[H2Request]) -> None:
        if is_client:
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
