"""The compiled HTTP/2 engine (podscope._fast.H2Engine) against the Python path it stands in for:
the same stream events, cut anywhere, give the same series — per route, per gRPC method, resets,
unanswered, decode outcomes, errors — also when a connection goes to Python midway (lost
events, malformed bytes) or a probed Go program sends hints."""

from __future__ import annotations

import ctypes as ct
import json
from typing import Any

from hpack import Encoder
from hypothesis import given, settings
from hypothesis import strategies as st

from podscope import _fast, libbpf
from podscope.collectors.http import HttpCollector, traceparent
from podscope.metadata.store import MetadataStore
from podscope.protocols.http2 import (
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PREFACE,
    RST_STREAM,
    SETTINGS,
)
from tests.unit.test_fast import same

SAMPLE = libbpf.SAMPLE_FN(_fast.SAMPLE_CALLBACK)


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


def collector(engine: bool) -> HttpCollector:
    c = HttpCollector(MetadataStore(None, proc="/nonexistent"))
    if engine:
        c._h2 = _fast.H2Engine(c._streams, c._adopt)
    return c


def event(c: HttpCollector, kind: str, inbound: bool, data: bytes, ts: int, conn: int = 7,
          role: int = 1, gap: int = 0, length: int | None = None, proto: int = 2,
          ports: tuple[int, int] = (8080, 40000)) -> bytes:
    ev = c.StreamEv()
    ev.conn_id, ev.ts_ns, ev.cgroup_id = conn, ts, 0
    ev.len = len(data) if length is None else length
    ev.captured = len(data)
    ev.kind = c.stream_kinds[kind]
    ev.inbound = int(inbound)
    ev.role, ev.family, ev.proto, ev.gap = role, 2, proto, gap
    ev.local_port, ev.peer_port = ports
    ev.peer_addr[:4] = [10, 0, 0, 9]
    return bytes(ev) + data


def hint(c: HttpCollector, sid: int, sent: bool, ts: int, conn: int = 7, proto: int = 2,
         ports: tuple[int, int] = (8080, 40000), **fields: Any) -> bytes:
    h = c.Hint()
    h.stream_id, h.sent, h.grpc_status = sid, int(sent), fields.get("grpc_status", -1)
    h.status = fields.get("status", 0)
    for name in ("method", "path"):
        v = fields.get(name, "").encode()
        setattr(h, f"{name}_len", len(v))
        ct.memmove(ct.addressof(h) + getattr(c.Hint, name).offset, v, len(v))
    return event(c, "HTTP_S_HINT", False, bytes(h), ts, conn=conn, proto=proto, ports=ports)


def batch(records: list[bytes]) -> bytes:
    b = _fast.Batch()
    for r in records:
        buf = ct.create_string_buffer(r, len(r))
        SAMPLE(b.ctx, ct.addressof(buf), len(r))
    return b.take()


def run(c: HttpCollector, records: list[bytes], per_batch: int) -> dict[str, Any]:
    if c._h2 is not None:
        for i in range(0, len(records), per_batch):
            c._on_streams(memoryview(batch(records[i:i + per_batch])))
        with c._lock:
            c._fold_h2()
    else:
        for r in records:
            c._on_stream(r)
    return {"aggs": c._aggs, "rpcs": c._rpcs, "unanswered": c.unanswered,
            "outcomes": c.h2_outcomes, "errors": c.parse_errors}


# valid and invalid W3C traceparent values (collectors/http.py traceparent() says which)
TRACEPARENTS = ["00-{t}-{s}-01", "zz-{t}", " 00-{t}-{s}-00\t", "01-{t}-{s}-01-later",
                "00-{t}-{s}-01-more", "ff-{t}-{s}-01", "00-" + "0" * 32 + "-{s}-01",
                "00-{t}-" + "0" * 16 + "-01", "00-{t}-{s}-0x", "00-{t}-{s}-01-\n",
                "00-{t}-{s}-01x", "00-{t}-{s}", "02-{t}-{s}-03-"]


def workload(cuts: list[int], requests: int, traceparent: bool = False) -> list[tuple[bool, bytes]]:
    """A server's view of one connection: the client's bytes (inbound) and its own. HTTP GETs,
    gRPC calls with statuses, a reset stream, pieces cut at `cuts`; with traceparent, every
    fourth request carries one of TRACEPARENTS."""
    ce, se = Encoder(), Encoder()
    cli = bytearray(PREFACE + frame(SETTINGS, 0, 0, b""))
    srv = bytearray(frame(SETTINGS, 0, 0, b""))
    out: list[tuple[bool, bytes]] = []
    for n in range(requests):
        sid = 2 * n + 1
        if n % 3 == 2:  # gRPC
            cli += frame(HEADERS, END_HEADERS, sid, ce.encode([
                (":method", "POST"), (":scheme", "http"), (":path", f"/pkg.S/M{n % 2}"),
                (":authority", "s"), ("content-type", "application/grpc")]))
            cli += frame(DATA, END_STREAM, sid, b"\0\0\0\0\1x")
            out += [(True, bytes(cli))]
            cli.clear()
            srv += frame(HEADERS, END_HEADERS, sid, se.encode([
                (":status", "200"), ("content-type", "application/grpc")]))
            srv += frame(DATA, 0, sid, b"\0\0\0\0\1y")
            srv += frame(HEADERS, END_HEADERS | END_STREAM, sid,
                         se.encode([("grpc-status", str(n % 4))]))
        else:
            tp = []
            if traceparent and n % 4 == 1:
                tp = [("traceparent", TRACEPARENTS[(n // 4) % len(TRACEPARENTS)].format(
                    t=f"{n + 1:032x}", s=f"{n + 7:016x}"))]
            cli += frame(HEADERS, END_HEADERS | END_STREAM, sid, ce.encode([
                (":method", "GET"), (":scheme", "http"), (":path", f"/u/{n}"),
                (":authority", "s"), *tp]))
            out += [(True, bytes(cli))]
            cli.clear()
            if n % 7 == 5:
                srv += frame(RST_STREAM, 0, sid, b"\0\0\0\x08")
            else:
                srv += frame(HEADERS, END_HEADERS, sid, se.encode([
                    (":status", "404" if n % 5 == 0 else "200"), ("server", "nginx")]))
                srv += frame(DATA, END_STREAM, sid, b"hello")
        data = bytes(srv)
        srv.clear()
        pos = 0
        for cut in sorted({c % (len(data) + 1) for c in cuts} | {len(data)}):
            if cut > pos:
                out.append((False, data[pos:cut]))
                pos = cut
    return out


def as_events(c: HttpCollector, pieces: list[tuple[bool, bytes]], close: bool = True) -> list[bytes]:
    recs = [event(c, "HTTP_S_DATA", inbound, data, ts=1000 * (i + 1))
            for i, (inbound, data) in enumerate(pieces)]
    if close:
        recs.append(event(c, "HTTP_S_CLOSE", False, b"", ts=1000 * (len(pieces) + 1)))
    return recs


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 400), max_size=6), st.integers(1, 30), st.integers(1, 9))
def test_the_engine_makes_the_series_the_python_path_makes(cuts: list[int], n: int,
                                                           per_batch: int) -> None:
    py, fast = collector(False), collector(True)
    pieces = workload(cuts, n)
    want = run(py, as_events(py, pieces), 1)
    got = run(fast, as_events(fast, pieces), per_batch)
    assert got == want
    assert fast._h2 is not None and fast._h2.requests == n and fast._h2.connections == 0


def test_open_streams_at_close_are_unanswered_in_both() -> None:
    py, fast = collector(False), collector(True)
    pieces = workload([], 4)
    pieces = pieces[:-1]  # the last response never came
    assert run(fast, as_events(fast, pieces), 3) == run(py, as_events(py, pieces), 1)
    assert any(k[2] == "no_response" for k in fast.unanswered)


def test_hints_on_a_connection_decoded_from_its_start_change_nothing() -> None:
    """A Go program's hint names what a decoder without HPACK state could not; on a connection
    seen from its preface it is counted and the series are Python's, request for request."""
    py, fast = collector(False), collector(True)
    pieces = workload([], 6)
    for c in (py, fast):
        recs = as_events(c, pieces[:5], close=False)  # request 3's response still to come
        recs.append(hint(c, 7, True, 5500, method="GET", path="/u/3"))
        recs += [event(c, "HTTP_S_DATA", inbound, data, ts=6000 + i)
                 for i, (inbound, data) in enumerate(pieces[5:])]
        recs.append(event(c, "HTTP_S_CLOSE", False, b"", ts=9000))
        run(c, recs, 4)
    assert fast._h2 is not None and fast._h2.connections == 0 and fast._h2.hints == 1
    assert fast._h2.requests == py.h2_outcomes[next(iter(py.h2_outcomes))] == 6
    assert run(fast, [], 1) == run(py, [], 1)
    assert not fast._streams  # it never went to Python


def test_malformed_bytes_are_counted_and_the_connection_goes_on_mid_way() -> None:
    py, fast = collector(False), collector(True)
    pieces = workload([], 3)
    bad = pieces[:2] + [(True, frame(9, END_HEADERS, 99, b"x"))] + pieces[2:]  # CONTINUATION
    assert run(fast, as_events(fast, bad), 2) == run(py, as_events(py, bad), 1)
    assert fast.parse_errors == {"http2_unexpected_continuation": 1}


def test_lost_events_hand_the_connection_over() -> None:
    py, fast = collector(False), collector(True)
    pieces = workload([], 5)
    for c in (py, fast):
        recs = as_events(c, pieces[:4], close=False)
        recs.append(event(c, "HTTP_S_DATA", True, pieces[4][1], ts=5000, gap=1))
        recs += as_events(c, pieces[5:])
        run(c, recs, 3)
    assert run(fast, [], 1) == run(py, [], 1)
    assert fast.parse_errors == {"stream_events_lost": 1}


def test_goaway_ends_later_streams() -> None:
    py, fast = collector(False), collector(True)
    ce = Encoder()
    reqs = b"".join(frame(HEADERS, END_HEADERS | END_STREAM, sid, ce.encode(
        [(":method", "GET"), (":path", "/g"), (":scheme", "http"), (":authority", "a")]))
        for sid in (1, 3, 5))
    pieces = [(True, PREFACE + reqs), (False, frame(GOAWAY, 0, 0, b"\0\0\0\x01\0\0\0\0"))]
    assert run(fast, as_events(fast, pieces), 2) == run(py, as_events(py, pieces), 1)
    assert sum(fast.unanswered.values()) == 3  # 1 is open at close; 3 and 5 by the GOAWAY


def test_a_client_that_names_its_request_before_its_preface_is_decoded_here() -> None:
    """A Go client's hint comes before its first write, so the kernel meets the connection as
    mid-way; the first bytes are its preface: a connection decoded from its start, here."""
    py, fast = collector(False), collector(True)
    ce, se = Encoder(), Encoder()
    req = PREFACE + frame(SETTINGS, 0, 0, b"") + frame(HEADERS, END_HEADERS | END_STREAM, 1,
                                                         ce.encode([(":method", "GET"),
                                                                    (":path", "/first"),
                                                                    (":scheme", "http"),
                                                                    (":authority", "a")]))
    resp = frame(HEADERS, END_HEADERS, 1, se.encode([(":status", "200")])) + frame(
        DATA, END_STREAM, 1, b"ok")
    ports = (40000, 8080)  # the client's side
    for c in (py, fast):
        recs = [hint(c, 1, True, 900, proto=3, ports=ports, method="GET", path="/first"),
                event(c, "HTTP_S_DATA", False, req, 1000, role=2, proto=3, ports=ports),
                event(c, "HTTP_S_DATA", True, resp, 2000, role=2, proto=3, ports=ports),
                event(c, "HTTP_S_CLOSE", False, b"", 3000, role=2, proto=3, ports=ports)]
        run(c, recs, 2)
    assert fast._h2 is not None and fast._h2.hints == 1 and fast._h2.requests == 1
    assert not fast._streams and fast._h2.connections == 0
    assert run(fast, [], 1) == run(py, [], 1)


def test_hints_of_a_connection_met_mid_way_go_to_python_first() -> None:
    """Hints, then bytes that are not a preface (a connection opened before the agent): Python
    gets the hints, then the bytes, in order, as without the engine."""
    py, fast = collector(False), collector(True)
    se = Encoder()
    resp = frame(HEADERS, END_HEADERS | END_STREAM, 1, se.encode([(":status", "200")]))
    for c in (py, fast):
        recs = [hint(c, 1, False, 900, proto=3, method="GET", path="/warm"),
                event(c, "HTTP_S_DATA", False, resp, 1000, proto=3),
                event(c, "HTTP_S_CLOSE", False, b"", 3000, proto=3)]
        run(c, recs, 1)
    assert fast._h2 is not None and fast._h2.requests == 0 and fast._h2.connections == 0
    assert run(fast, [], 1) == run(py, [], 1)


def test_a_server_that_speaks_before_the_preface_is_decoded_here() -> None:
    """Go's servers write their SETTINGS before they read the client's preface: the kernel meets
    the connection as mid-way; the preface that follows decides, and the SETTINGS are replayed."""
    import time

    py, fast = collector(False), collector(True)
    now = time.monotonic_ns()  # waiting events are kept for a second of this clock
    pieces = workload([], 4)
    for c in (py, fast):
        recs = [event(c, "HTTP_S_DATA", False, frame(SETTINGS, 0, 0, b"\0\x03\0\0\0\x64"), now,
                      proto=3)]
        recs += [event(c, "HTTP_S_DATA", inbound, data, now + 1000 * (i + 1), proto=3)
                 for i, (inbound, data) in enumerate(pieces)]
        recs.append(event(c, "HTTP_S_CLOSE", False, b"", now + 10**6, proto=3))
        run(c, recs, 3)
    assert fast._h2 is not None and fast._h2.requests == 4 and not fast._streams
    assert run(fast, [], 1) == run(py, [], 1)


def records_collector(engine: bool) -> tuple[HttpCollector, list[dict[str, Any]]]:
    out: list[dict[str, Any]] = []
    c = HttpCollector(MetadataStore(None, proc="/nonexistent"),
                      emit=lambda _kind, rec: out.append(rec), records=True)
    c._mono_to_wall = 1.7e9
    if engine:
        c._h2 = _fast.H2Engine(c._streams, c._adopt, records=True)
    return c, out


def with_links(c: HttpCollector, recs: list[bytes], seqs: tuple[int, int]) -> list[bytes]:
    """The events as the kernel sends them with records on: each DATA event's link holds the TCP
    sequence number of its first byte (per direction, wrapping past 2**32) and the socket's
    local address; every other write carries its thread's server request as the parent."""
    pos = {True: seqs[0], False: seqs[1]}
    hdr = ct.sizeof(c.StreamEv)
    out = []
    for i, r in enumerate(recs):
        ev = c.StreamEv.from_buffer_copy(r[:hdr])
        if ev.kind == c.stream_kinds["HTTP_S_DATA"]:
            inbound = bool(ev.inbound)
            ev.link.flags = c.link_seq
            ev.link.seq = pos[inbound]
            ev.link.family, ev.link.client_port = 2, ev.local_port
            ev.link.client_addr[:4] = [10, 0, 0, 1]
            pos[inbound] = (pos[inbound] + ev.len) & 0xFFFFFFFF
            if not inbound and i % 2:
                ev.parent.flags, ev.parent.seq, ev.parent.family = c.link_seq, 1000 + i, 2
                ev.parent.client_port = 50000 + i
        out.append(bytes(ev) + r[hdr:])
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 400), max_size=6), st.integers(1, 24), st.integers(1, 9),
       st.sampled_from([1, 2]), st.integers(0, 2**32 - 1))
def test_the_engine_makes_the_records_the_python_path_makes(cuts: list[int], n: int,
                                                            per_batch: int, role: int,
                                                            seq0: int) -> None:
    """With records: the engine's records are the Python path's, field for field (trace and
    span ids from the same sequence numbers, parents and traceparents), on either side of the
    connection, cut and batched anywhere; the series stay the engine's."""
    pieces = workload(cuts, n, traceparent=True)
    if role == 2:  # the client's view: its bytes are the outbound ones
        pieces = [(not inbound, data) for inbound, data in pieces]
    got: dict[bool, Any] = {}
    for engine in (False, True):
        c, recs = records_collector(engine)
        events = with_links(c, [event(c, "HTTP_S_DATA", inbound, data, ts=1000 * (i + 1),
                                      role=role)
                                for i, (inbound, data) in enumerate(pieces)]
                            + [event(c, "HTTP_S_CLOSE", False, b"", ts=10**6, role=role)],
                            (seq0, seq0 ^ 0x5A5A5A5A))
        series = run(c, events, per_batch if engine else 1)
        got[engine] = (recs, series)
        if engine:
            assert c._h2 is not None and c._h2.requests == n and c._h2.connections == 0
    assert got[True] == got[False]
    recs = got[True][0]
    assert len(recs) == n and all(r["protocol"] == "2" and r["span_id"] for r in recs)
    # the valid traceparents named the trace; the malformed ones did not
    named = 0
    for r in recs:
        k = int(r["path"].rsplit("/", 1)[1]) if r["path"].startswith("/u/") else -1
        tp = (TRACEPARENTS[(k // 4) % len(TRACEPARENTS)].format(t=f"{k + 1:032x}",
                                                                 s=f"{k + 7:016x}")
              if k % 4 == 1 else None)
        valid = tp is not None and traceparent([("traceparent", tp)]) is not None
        assert (r["trace_id"] == f"{k + 1:032x}") == valid, (r, tp)
        named += valid
    assert named or n < 2


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 400), max_size=6), st.integers(1, 24), st.integers(1, 9),
       st.sampled_from([1, 2]), st.integers(0, 2**32 - 1))
def test_the_engines_records_as_compiled_lines_equal_the_python_records(
        cuts: list[int], n: int, per_batch: int, role: int, seq0: int) -> None:
    """With a JSON-lines export only, the engine's records are written by compiled code
    (HttpJsonl.encode_h2): the same lines, key for key, as the records _h2_record publishes."""
    pieces = workload(cuts, n, traceparent=True)
    if role == 2:
        pieces = [(not inbound, data) for inbound, data in pieces]
    got: dict[bool, list[dict[str, Any]]] = {}
    for compiled in (False, True):
        lines: list[bytes] = []
        c, recs = records_collector(True)
        if compiled:
            c.emit_lines = lambda _k, data, _n, out=lines: out.append(data)
            c._jsonl = c._jsonl_encoder()
        events = with_links(c, [event(c, "HTTP_S_DATA", inbound, data, ts=1000 * (i + 1),
                                      role=role)
                                for i, (inbound, data) in enumerate(pieces)]
                            + [event(c, "HTTP_S_CLOSE", False, b"", ts=10**6, role=role)],
                            (seq0, seq0 ^ 0x5A5A5A5A))
        run(c, events, per_batch)
        got[compiled] = ([json.loads(x) for x in b"".join(lines).splitlines()] if compiled
                         else [{"type": "http_request", **r} for r in recs])
        assert not (compiled and recs)  # no dict was made
    assert len(got[True]) == len(got[False]) == n

    for g, w in zip(got[True], got[False], strict=True):
        assert list(g) == list(w)  # the same keys in the same order
        assert not {k: (g[k], w[k]) for k in w if not same(g[k], w[k])}
