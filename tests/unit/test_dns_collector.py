"""The DNS collector's user-space side fed with events as dns.bpf.c writes them: pairing by
socket and id, the TCP framing, timeouts, and no exception for any input."""

from __future__ import annotations

import ctypes as ct
from typing import Any

import dns.message
import dns.rcode
from hypothesis import given, settings
from hypothesis import strategies as st

from podscope.collectors.dns import DnsCollector
from podscope.metadata.store import MetadataStore


def collector(records: list[dict[str, Any]]) -> DnsCollector:
    return DnsCollector(MetadataStore(None, proc="/nonexistent"),
                        emit=lambda _k, r: records.append(r), timeout=1.0)


def event(c: DnsCollector, data: bytes, sent: bool, ts: int, sock: int = 5, tcp: bool = False,
          length: int | None = None) -> bytes:
    e = c.Event()
    e.ts_ns, e.sock, e.dir, e.proto = ts, sock, 0 if sent else 1, 6 if tcp else 17
    e.len = len(data) if length is None else length
    e.captured = min(len(data), 512)
    e.family, e.server_port = 2, 53
    e.server[:4] = [10, 0, 0, 53]
    ct.memmove(e.data, data, e.captured)
    return bytes(e)


def pair(name: str, qtype: str, rcode: int) -> tuple[bytes, bytes]:
    q = dns.message.make_query(name, qtype)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    return q.to_wire(), r.to_wire()


def test_udp_pairs_by_socket_and_id_and_times_out() -> None:
    recs: list[dict[str, Any]] = []
    c = collector(recs)
    q1, r1 = pair("a.test", "A", dns.rcode.NOERROR)
    q2, r2 = pair("b.test", "AAAA", dns.rcode.NXDOMAIN)
    q3, _ = pair("c.test", "MX", dns.rcode.NOERROR)
    for raw in (event(c, q1, True, 1000), event(c, q2, True, 2000), event(c, q3, True, 3000),
                event(c, r2, False, 2_002_000), event(c, r1, False, 5_001_000),
                event(c, r1, False, 6_000_000)):  # the last: a duplicate answer
        c._on_event(raw)
    c.expire(3000 + 10**9)
    by = {r["query_name"]: r for r in recs}
    assert by["a.test"]["rcode"] == "NOERROR" and by["a.test"]["duration_seconds"] == 0.005
    assert by["b.test"]["rcode"] == "NXDOMAIN" and by["b.test"]["query_type"] == "AAAA"
    assert by["c.test"]["rcode"] == "TIMEOUT" and by["c.test"]["server_address"] == "10.0.0.53"
    assert sum(c.unmatched.values()) == 1
    assert sum(c.timeouts.values.values()) == 1


def test_tcp_messages_split_across_reads() -> None:
    recs: list[dict[str, Any]] = []
    c = collector(recs)
    q, r = pair("t.test", "TXT", dns.rcode.SERVFAIL)
    fq, fr = len(q).to_bytes(2, "big") + q, len(r).to_bytes(2, "big") + r
    c._on_event(event(c, fq, True, 10, tcp=True))
    c._on_event(event(c, fr[:2], False, 20, tcp=True))  # glibc reads the length first
    c._on_event(event(c, fr[2:], False, 30, tcp=True))
    assert [(x["query_name"], x["rcode"], x["transport"]) for x in recs] == [
        ("t.test", "SERVFAIL", "tcp")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=80), st.booleans(), st.booleans(),
                          st.integers(0, 3), st.integers(0, 600)), max_size=20))
def test_any_input_is_counted_never_raised(evs: list[tuple[bytes, bool, bool, int, int]]) -> None:
    recs: list[dict[str, Any]] = []
    c = collector(recs)
    for i, (data, sent, tcp, sock, extra) in enumerate(evs):
        c._on_event(event(c, data, sent, i * 1000, sock=sock, tcp=tcp, length=len(data) + extra))
    c.expire(10**12)
