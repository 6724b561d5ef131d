"""Span ids from a request's TCP position (native/links.c) and the trace joiner (traces.py)."""

from __future__ import annotations

import struct

from podscope import _fast
from podscope.traces import TraceJoiner, joiner_families

SERVER, CLIENT = 1, 2
SEQ, TP = 1, 2


def link(addr: bytes, port: int, seq: int, family: int = 2, flags: int = SEQ,
         trace: bytes = bytes(16), span: bytes = bytes(8)) -> bytes:
    """A struct http_link (bpf/http.h)."""
    b = addr.ljust(16, b"\0") + struct.pack("<IHBB", seq, port, family, flags) + trace + span
    b += bytes([1]) + bytes(7)
    assert len(b) == _fast.HTTP_LINK_SIZE
    return b


def test_both_ends_of_a_request_derive_the_same_pair() -> None:
    k = link(bytes([10, 0, 0, 7]), 40000, 123456)
    c = _fast.span_ids(CLIENT, k, 0, b"", 0)
    s = _fast.span_ids(SERVER, k, 0, b"", 0)
    assert c is not None and s is not None
    assert c[2] is None and s[2] == c[1]  # the server's parent is the client's span
    assert c[0] == s[0] and len(c[0]) == 32 and len(c[1]) == 16
    assert c[1] != s[1]
    # the server may see an IPv4 client as IPv4-mapped IPv6: the same ids
    mapped = link(bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 7]), 40000, 123456, family=10)
    assert _fast.span_ids(SERVER, mapped, 0, b"", 0) == s
    # any other position: other ids
    for other in (link(bytes([10, 0, 0, 7]), 40000, 123457), link(bytes([10, 0, 0, 8]), 40000,
                  123456), link(bytes([10, 0, 0, 7]), 40001, 123456)):
        assert _fast.span_ids(CLIENT, other, 0, b"", 0)[1] != c[1]  # type: ignore[index]
    assert _fast.span_ids(CLIENT, k, 3, b"", 0)[1] != c[1]  # type: ignore[index] (h2 stream)
    assert _fast.span_ids(CLIENT, link(bytes(4), 1, 1, flags=0), 0, b"", 0) is None


def test_a_child_takes_its_parents_trace_and_a_traceparent_wins() -> None:
    up = link(bytes([10, 0, 0, 1]), 50000, 7)  # the request the thread serves
    down = link(bytes([10, 0, 0, 2]), 41000, 99)  # the call it makes
    served = _fast.span_ids(SERVER, up, 0, b"", 0)
    child = _fast.span_ids(CLIENT, down, 0, up, 0)
    assert served and child and child[0] == served[0] and child[2] == served[1]
    trace, span = bytes(range(1, 17)), bytes(range(40, 48))
    up_tp = link(bytes([10, 0, 0, 1]), 50000, 7, flags=SEQ | TP, trace=trace, span=span)
    served = _fast.span_ids(SERVER, up_tp, 0, b"", 0)
    assert served and served[0] == trace.hex()
    assert _fast.span_ids(CLIENT, down, 0, up_tp, 0)[0] == trace.hex()  # type: ignore[index]
    # the call's own traceparent (an instrumented service) names its parent
    own = _fast.span_ids(CLIENT, link(bytes([10, 0, 0, 2]), 41000, 99, flags=SEQ | TP,
                                      trace=trace, span=span), 0, up, 0)
    assert own and own[0] == trace.hex() and own[2] == span.hex()


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_joiner_gives_a_tree_its_roots_trace() -> None:
    clock = Clock()
    j: TraceJoiner[str] = TraceJoiner(hold=2.0, clock=clock)
    # children end first: back server, front client, front server, client
    j.add(b"bs", b"fc", b"T2", "back server")
    j.add(b"fc", b"fs", b"T1", "front client")
    clock.t = 1.0
    j.add(b"fs", b"cc", b"T1", "front server")
    j.add(b"cc", None, b"T1", "client")
    assert j.take() == []
    clock.t = 2.5
    assert j.take() == [("back server", b"T1"), ("front client", b"T1")]
    clock.t = 3.5
    assert j.take() == [("front server", b"T1"), ("client", b"T1")]
    # a later child of a span gone out still finds its trace
    j.add(b"bs2", b"fc", b"T9", "late child")
    assert j.take(everything=True) == [("late child", b"T1")]
    assert j.counts["rekeyed"] == 2 and j.counts["late"] == 0 and len(j) == 0


def test_the_joiner_is_bounded_and_counts_what_it_could_not_join() -> None:
    clock = Clock()
    j: TraceJoiner[int] = TraceJoiner(hold=1.0, max_pending=3, max_seen=4, clock=clock)
    j.add(b"c", b"p", b"Tc", 1)
    clock.t = 5
    assert j.take() == [(1, b"Tc")]  # its parent came too late
    j.add(b"p", None, b"Tp", 2)
    assert j.counts["late"] == 1
    for i in range(5):
        j.add(bytes([i]), None, b"T", i)
    assert len(j) == 3 and j.counts["overflow"] == 3  # "p" waits too
    j.take(everything=True)
    assert len(j._seen) <= 4
    names = {f.name: f for f in joiner_families(j)}
    assert names["podscope_trace_join_pending_spans"].samples[0].value == 0


def rec(span: str, parent: str | None, t: float, d: float, pod: str, role: str,
        trace: str = "aa" * 16) -> dict[str, object]:
    return {"trace_id": trace, "span_id": span, "parent_span_id": parent, "time": t,
            "duration_seconds": d, "k8s_namespace_name": "shop", "k8s_pod_name": pod,
            "role": role, "status": 200, "method": "GET", "path": "/x", "protocol": "1.1",
            "grpc_status": None}


def test_trace_tree_gathers_a_request_and_draws_its_waterfall() -> None:
    from podscope.trace import Trees, format_tree

    clock = Clock()
    t = Trees(hold=1.0, quiet=1.0, clock=clock)
    # the back end's span ends first and came with a trace id of its own hop
    t.add(rec("22" * 8, "11" * 8, 100.010, 0.020, "back", "server", trace="bb" * 16))
    t.add(rec("11" * 8, "00" * 8, 100.005, 0.030, "front", "client"))
    t.add(rec("00" * 8, None, 100.000, 0.040, "front", "server"))
    clock.t = 1.5
    assert t.take() == []  # gathered, not quiet yet
    clock.t = 3.0
    (tree,) = t.take()
    assert {r["trace_id"] for r in tree} == {"aa" * 16}
    text = format_tree(tree).splitlines()
    assert text[0].startswith("trace " + "aa" * 16) and "40.000ms" in text[0]
    assert [ln.split("|")[2].split()[0:2] for ln in text[1:]] == [
        ["server", "shop/front"], ["client", "shop/front"], ["server", "shop/back"]]
    assert text[1].index("server") < text[2].index("client") < text[3].index("server")
    assert text[1].count("#") == 32 and text[3].count("#") == 16


def test_slow_trees_keep_the_slowest_per_pod_for_the_window() -> None:
    from podscope.traces import SlowTrees

    clock = Clock()
    st = SlowTrees(lambda r: str(r["k8s_pod_name"]), per_pod=2, max_pods=3, window=60.0,
                   hold=0.5, clock=clock)
    for i, d in enumerate((0.010, 0.050, 0.030)):  # three requests of pod a
        st.add(rec(f"{i:016x}", None, 100.0 + i, d, "a", "server", trace=f"{i:032x}"))
    clock.t = 2.0
    st.take()
    clock.t = 4.0
    st.take()
    assert [t["duration_seconds"] for t in st.view()["trees"]] == [0.050, 0.030]
    for i, pod in enumerate("bcde"):  # more pods than max_pods: one is forgotten
        st.add(rec(f"{i + 10:016x}", None, 200.0, 0.001, pod, "server", trace=f"{i + 10:032x}"))
    clock.t = 6.0
    st.take()
    clock.t = 8.0
    st.take()
    assert len(st._by_pod) <= 3 and len(st) <= 6
    clock.t = 100.0  # the window is over
    st.take()
    assert st.view()["trees"] == [] and len(st) == 0


def test_traceparent_follows_the_w3c_rules() -> None:
    from podscope.collectors.http import traceparent

    t, s = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    assert traceparent([("TraceParent", f"00-{t}-{s}-01")]) == (bytes.fromhex(t),
                                                                 bytes.fromhex(s), 1)
    assert traceparent([("traceparent", f" 00-{t}-{s}-00 ")]) == (bytes.fromhex(t),
                                                                   bytes.fromhex(s), 0)
    assert traceparent([("traceparent", f"01-{t}-{s}-01-what-comes-next")]) is not None
    for bad in (f"00-{t.upper()}-{s}-01", f"ff-{t}-{s}-01", f"00-{'0' * 32}-{s}-01",
                f"00-{t}-{'0' * 16}-01", f"00-{t}-{s}-01-more", f"00-{t[:-1]}-{s}-01", ""):
        assert traceparent([("traceparent", bad)]) is None, bad
    assert traceparent([("b3", f"{t}-{s}-1")]) is None


def test_an_http2_request_gets_the_sequence_number_of_its_headers_frame() -> None:
    import h2.config
    import h2.connection

    from podscope.protocols.http2 import H2Connection

    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    preface = c.data_to_send()
    c.send_headers(1, [(":method", "GET"), (":path", "/a"), (":scheme", "http"),
                       (":authority", "x")], end_stream=True)
    first = c.data_to_send()
    c.send_headers(3, [(":method", "GET"), (":path", "/b"), (":scheme", "http"),
                       (":authority", "x")], end_stream=True)
    second = c.data_to_send()
    parent = bytes(range(56))
    conn = H2Connection("server")
    seq0 = 0xFFFFFF00  # wraps around
    conn.feed(True, preface + first[:5], 1, seq=seq0)  # the first frame split over two reads
    conn.feed(True, first[5:] + second, 2, seq=(seq0 + len(preface) + 5) & 0xFFFFFFFF,
              parent=parent)
    a, b = conn.streams[1], conn.streams[3]
    assert a.seq == (seq0 + len(preface)) & 0xFFFFFFFF
    assert b.seq == (seq0 + len(preface) + len(first)) & 0xFFFFFFFF
    assert b.parent == parent and a.parent == parent  # both completed in the second read
