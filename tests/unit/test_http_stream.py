"""The collector's streamed-connection path (what user space does for pipelined connections and
header capture), fed with stream events as the kernel writes them: exact pairing, exact sizes
across uncaptured bytes, and no exception for any input."""

from __future__ import annotations

import ctypes as ct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from podscope.collectors.http import HttpCollector
from podscope.metadata.store import MetadataStore
from podscope.protocols.http2 import PREFACE

REQ = b"GET /a/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def collector(records: list[dict[str, Any]]) -> HttpCollector:
    c = HttpCollector(MetadataStore(None, proc="/nonexistent"),
                      emit=lambda _k, r: records.append(r), records=True, capture_headers=True)
    return c


def event(c: HttpCollector, kind: str, inbound: bool, data: bytes, length: int | None = None,
          ts: int = 1000, conn: int = 7, method: int = 0, proto: int = 1, gap: int = 0,
          tls: int = 0) -> bytes:
    ev = c.StreamEv()
    ev.tls = tls
    ev.conn_id = conn
    ev.ts_ns = ts
    ev.len = len(data) if length is None else length
    ev.captured = len(data)
    ev.kind = c.stream_kinds[kind]
    ev.inbound = int(inbound)
    ev.role = 1  # server
    ev.family = 2
    ev.method = method
    ev.proto = proto
    ev.gap = gap
    return bytes(ev) + data


def test_pipelined_pairs_times_and_sizes() -> None:
    recs: list[dict[str, Any]] = []
    c = collector(recs)
    c._on_stream(event(c, "HTTP_S_DATA", True, REQ * 3, ts=1_000))
    c._on_stream(event(c, "HTTP_S_DATA", False, RESP, ts=2_000))
    # the second response's body was sent with sendfile: only its length is known
    c._on_stream(event(c, "HTTP_S_DATA", False, RESP[:-5], ts=3_000))
    c._on_stream(event(c, "HTTP_S_DATA", False, b"", length=5, ts=4_000))
    c._on_stream(event(c, "HTTP_S_DATA", False, RESP.replace(b"200 OK", b"404 No"), ts=5_000))
    c._on_stream(event(c, "HTTP_S_CLOSE", False, b"", ts=6_000))
    assert [(r["status"], r["response_bytes"], r["request_bytes"]) for r in recs] == [
        (200, len(RESP), len(REQ))] * 2 + [(404, len(RESP), len(REQ))]
    assert [round(r["duration_seconds"] * 1e9) for r in recs] == [1_000, 3_000, 4_000]
    assert all(dict(r["request_headers"])["Authorization"] == "<redacted>" for r in recs)
    assert not c._streams  # freed at close


def test_seed_request_then_unanswered_at_close() -> None:
    recs: list[dict[str, Any]] = []
    c = collector(recs)
    c._on_stream(event(c, "HTTP_S_SEED", True, b"/first", length=40, ts=500, method=1))
    c._on_stream(event(c, "HTTP_S_DATA", True, REQ, ts=900))
    c._on_stream(event(c, "HTTP_S_DATA", False, RESP, ts=1_500))
    c._on_stream(event(c, "HTTP_S_CLOSE", False, b""))
    assert [(r["path"], r["status"], r["request_bytes"]) for r in recs] == [
        ("/first", 200, 40), ("/a/1", None, len(REQ))]
    assert round(recs[0]["duration_seconds"] * 1e9) == 1_000


def test_garbage_is_counted_and_the_connection_resumes() -> None:
    recs: list[dict[str, Any]] = []
    c = collector(recs)
    c._on_stream(event(c, "HTTP_S_DATA", True, REQ))
    c._on_stream(event(c, "HTTP_S_DATA", False, b"\x00\x01 binary junk\r\n\r\n"))
    assert c.parse_errors == {"not_http": 1}
    c._on_stream(event(c, "HTTP_S_DATA", False, RESP))  # not after a request: ignored
    c._on_stream(event(c, "HTTP_S_DATA", True, REQ))
    c._on_stream(event(c, "HTTP_S_DATA", False, RESP))
    assert [r["status"] for r in recs] == [200]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["HTTP_S_DATA", "HTTP_S_DATA", "HTTP_S_SEED",
                                           "HTTP_S_CLOSE"]),
                          st.booleans(),
                          st.one_of(st.binary(max_size=200),
                                    st.sampled_from([REQ, RESP, REQ * 2, RESP[:20], b"0\r\n\r\n"])),
                          st.integers(min_value=0, max_value=1 << 20),
                          st.integers(min_value=0, max_value=3)),
                max_size=12))
def test_fuzz_stream_events_never_raise(events: list[tuple[str, bool, bytes, int, int]]) -> None:
    recs: list[dict[str, Any]] = []
    c = collector(recs)
    for kind, inbound, data, extra, conn in events:
        c._on_stream(event(c, kind, inbound, data, length=len(data) + extra, conn=conn))
    # truncated and malformed raw events too
    c._on_stream(b"")
    c._on_stream(bytes(ct.sizeof(c.StreamEv) - 1))


def test_http2_grpc_through_the_collector_and_a_lost_event() -> None:
    from tests.unit.test_http2 import Peer, grpc_call

    recs: list[dict[str, Any]] = []
    c = collector(recs)
    cl, sv = Peer(), Peer()
    req, resp = grpc_call(cl, sv, 1, "/demo.Echo/Unary", 5)
    c._on_stream(event(c, "HTTP_S_DATA", True, PREFACE + req, ts=100, proto=2))
    c._on_stream(event(c, "HTTP_S_DATA", False, resp, ts=400, proto=2))
    assert [(r["protocol"], r["path"], r["grpc_status"], r["decode"]) for r in recs] == [
        ("2", "/demo.Echo/Unary", 5, "full")]
    assert c._rpcs and not c._aggs
    # events were lost: the decoder starts over without its tables, and says so
    req, resp = grpc_call(cl, sv, 3, "/demo.Echo/Unary", 0)
    c._on_stream(event(c, "HTTP_S_DATA", True, req, ts=500, proto=2, gap=1))
    c._on_stream(event(c, "HTTP_S_DATA", False, resp, ts=600, proto=2))
    assert recs[-1]["decode"] == "partial" and recs[-1]["path"] == "__unknown__"
    assert c.parse_errors["stream_events_lost"] == 1
    c._on_stream(event(c, "HTTP_S_CLOSE", False, b"", proto=2))
    assert not c._streams


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=150), st.integers(0, 1 << 16),
                          st.sampled_from([2, 3]), st.integers(0, 1)), max_size=12))
def test_fuzz_http2_stream_events_never_raise(events: list[tuple[bool, bytes, int, int, int]]) -> None:
    recs: list[dict[str, Any]] = []
    c = collector(recs)
    c._turn_off = lambda sk: None  # type: ignore[method-assign]  # no kernel map here
    for inbound, data, extra, proto, gap in events:
        c._on_stream(event(c, "HTTP_S_DATA", inbound, PREFACE[:len(data) % 30] + data,
                           length=len(data) + extra, proto=proto, gap=gap))
    c._on_stream(event(c, "HTTP_S_CLOSE", False, b"", proto=2))


def test_a_method_outside_the_known_set_is_other_with_its_original() -> None:
    """RFC 9110: any token is a method. Metrics say _OTHER (a bounded label), the record keeps
    what was sent, as the OpenTelemetry conventions ask (http.request.method_original)."""
    from opentelemetry.sdk.resources import Resource

    from podscope.sinks.otlp import span_of

    recs: list[dict[str, Any]] = []
    c = collector(recs)
    c._on_stream(event(c, "HTTP_S_DATA", True, b"PROPFIND /dav/1 HTTP/1.1\r\nDepth: 1\r\n\r\n"))
    c._on_stream(event(c, "HTTP_S_DATA", False, RESP.replace(b"200 OK", b"207 Multi")))
    (r,) = recs
    assert (r["method"], r["method_original"], r["status"]) == ("_OTHER", "PROPFIND", 207)
    assert c.parse_errors == {}
    span = span_of(r, Resource({}))
    assert span.name == "HTTP /dav/{id}" and span.attributes is not None
    assert span.attributes["http.request.method_original"] == "PROPFIND"


def test_a_lost_event_resynchronises_inside_the_next_write() -> None:
    """Events were lost in the middle of a body: the next read holds the body's end and then a
    new request. The request is found at its line start and paired; no error for the rest."""
    recs: list[dict[str, Any]] = []
    c = collector(recs)
    post = b"POST /up HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"p" * 4000
    c._on_stream(event(c, "HTTP_S_DATA", True, post, ts=1_000))
    c._on_stream(event(c, "HTTP_S_DATA", True, b"p" * 50 + b"\r\n" + REQ, ts=2_000, gap=1))
    c._on_stream(event(c, "HTTP_S_DATA", False, RESP, ts=3_000))
    c._on_stream(event(c, "HTTP_S_DATA", True, REQ, ts=4_000))
    c._on_stream(event(c, "HTTP_S_DATA", False, RESP, ts=5_000))
    assert [(r["method"], r["path"], r["status"]) for r in recs] == [("GET", "/a/1", 200)] * 2
    assert c.parse_errors == {"stream_events_lost": 1} and c.resyncs == 1
    assert recs[0]["request_bytes"] == len(REQ)


def test_tls_plaintext_is_https_in_metrics_records_and_spans() -> None:
    """A connection whose bytes came from a TLS library (uprobes): url_scheme https on the
    series, url_scheme and tls in the record, url.scheme on the span."""
    from opentelemetry.sdk.resources import Resource

    from podscope.sinks.otlp import span_of

    recs: list[dict[str, Any]] = []
    c = collector(recs)
    c._on_stream(event(c, "HTTP_S_DATA", True, REQ, tls=1))
    c._on_stream(event(c, "HTTP_S_DATA", False, RESP, tls=1))
    c._on_stream(event(c, "HTTP_S_DATA", True, REQ, conn=8))
    c._on_stream(event(c, "HTTP_S_DATA", False, RESP, conn=8))
    assert [(r["url_scheme"], r["tls"]) for r in recs] == [("https", True), ("http", False)]
    assert sorted(k[8] for k in c._aggs) == ["http", "https"]
    span = span_of(recs[0], Resource({}))
    assert span.attributes is not None and span.attributes["url.scheme"] == "https"
