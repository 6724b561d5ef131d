"""HTTP/2 framing and HPACK state per connection (protocols.http2), table-driven, plus fuzz."""

from __future__ import annotations

from hpack import Decoder, Encoder
from hypothesis import given, settings
from hypothesis import strategies as st

from podscope.protocols.http2 import (
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    UNKNOWN,
    H2Connection,
    H2Error,
    grpc_service_method,
)


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


class Peer:
    def __init__(self) -> None:
        self.enc = Encoder()

    def headers(self, sid: int, hdrs: list[tuple[str, str]], end: bool = False) -> bytes:
        return frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), sid, self.enc.encode(hdrs))


def grpc_req(c: Peer, sid: int, method: str) -> bytes:
    return c.headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", method),
                           (":authority", "svc:50051"), ("content-type", "application/grpc"),
                           ("te", "trailers")]) + frame(DATA, END_STREAM, sid, b"\0\0\0\0\3abc")


def grpc_resp(s: Peer, sid: int, status: int) -> bytes:
    resp = s.headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
    resp += frame(DATA, 0, sid, b"\0\0\0\0\2ok")
    return resp + s.headers(sid, [("grpc-status", str(status)), ("grpc-message", "m")], end=True)


def grpc_call(c: Peer, s: Peer, sid: int, method: str, status: int) -> tuple[bytes, bytes]:
    return grpc_req(c, sid, method), grpc_resp(s, sid, status)


def test_grpc_unary_calls_and_concurrent_streams() -> None:
    conn = H2Connection("server")
    c, s = Peer(), Peer()
    assert conn.feed(True, PREFACE + frame(SETTINGS, 0, 0, b""), 1) == []
    r1, r3 = grpc_req(c, 1, "/pkg.Greeter/Hello"), grpc_req(c, 3, "/pkg.Greeter/Bye")
    p3, p1 = grpc_resp(s, 3, 5), grpc_resp(s, 1, 0)  # answered out of order
    conn.feed(True, r1 + r3, 10)  # two streams in flight
    done = conn.feed(False, p3, 20) + conn.feed(False, p1, 30)
    assert [(d.stream_id, d.path, d.grpc_status, d.status, d.outcome) for d in done] == [
        (3, "/pkg.Greeter/Bye", 5, 200, "full"), (1, "/pkg.Greeter/Hello", 0, 200, "full")]
    assert [(d.start_ns, d.end_ns, d.req_bytes, d.resp_bytes) for d in done] == [
        (10, 20, 8, 7), (10, 30, 8, 7)]
    assert done[0].is_grpc and grpc_service_method(done[0].path) == ("pkg.Greeter", "Bye")
    assert not conn.streams


def test_trailers_only_reset_and_split_frames() -> None:
    conn = H2Connection("server")
    c, s = Peer(), Peer()
    req = PREFACE + c.headers(1, [(":method", "GET"), (":path", "/a"), (":scheme", "http"),
                                  (":authority", "x")], end=True)
    for i in range(len(req)):  # one byte at a time
        conn.feed(True, req[i:i + 1], 5)
    done = conn.feed(False, s.headers(1, [(":status", "200"), ("content-type", "application/grpc"),
                                          ("grpc-status", "5")], end=True), 9)
    assert [(d.method, d.path, d.grpc_status) for d in done] == [("GET", "/a", 5)]
    conn.feed(True, c.headers(3, [(":method", "GET"), (":path", "/b")], end=True), 11)
    done = conn.feed(False, frame(RST_STREAM, 0, 3, b"\0\0\0\x08"), 12)
    assert done[0].reset and done[0].status == 0


def test_large_data_is_counted_not_kept() -> None:
    conn = H2Connection("server")
    c = Peer()
    conn.feed(True, PREFACE + c.headers(1, [(":method", "POST"), (":path", "/up")]), 1)
    hdr = frame(DATA, END_STREAM, 1, b"x" * 100000)[:9]
    conn.feed(True, hdr + b"x" * 1000, 2, uncaptured=99000)
    assert conn.streams[1].req_bytes == 100000 and conn.wire.buffered(True) == 0


def test_mid_connection_start_decodes_what_it_can_and_never_guesses() -> None:
    c, s = Peer(), Peer()
    early = [grpc_call(c, s, sid, "/pkg.Svc/Warm", 0) for sid in (1, 3)]  # fills dynamic tables
    assert early
    conn = H2Connection("server", seen_start=False)
    # the path is now an indexed dynamic entry the late observer never saw
    r5, p5 = grpc_call(c, s, 5, "/pkg.Svc/Warm", 0)
    conn.feed(True, r5, 1)
    (d,) = conn.feed(False, p5, 2)
    assert d.outcome == "partial" and d.path == UNKNOWN
    # a new path is sent as a literal with indexing: decoded, and indexed for later
    r7, p7 = grpc_call(c, s, 7, "/pkg.Svc/Fresh", 9)
    conn.feed(True, r7, 3)
    (d,) = conn.feed(False, p7, 4)
    assert d.path == "/pkg.Svc/Fresh"  # a literal with a static-table name: decoded
    # "grpc-status: 9" is a literal too, but its name is a dynamic entry this observer never
    # saw: unknown, not guessed
    assert d.grpc_status is None and d.outcome == "partial"
    r9, p9 = grpc_call(c, s, 9, "/pkg.Svc/Fresh", 0)
    conn.feed(True, r9, 5)
    (d,) = conn.feed(False, p9, 6)
    assert d.path == "/pkg.Svc/Fresh"  # from the part of the table this observer saw


def test_header_flood_is_bounded() -> None:
    conn = H2Connection("server")
    conn.feed(True, PREFACE, 0)
    try:
        conn.feed(True, frame(HEADERS, 0, 1, b"\x00" * 1000) +
                  b"".join(frame(9, 0, 1, b"\x00" * 16000) for _ in range(20)), 1)
    except H2Error as e:
        assert e.reason == "headers_too_large"
    else:
        raise AssertionError("no limit")


def test_large_header_blocks_are_decoded_not_kept() -> None:
    """Distinct large header blocks (a client sending big cookies) are decoded, not kept."""
    conn = H2Connection("server")
    conn.feed(True, PREFACE, 0)
    for i in range(1, 200, 2):
        value = (b"%d-" % i) + b"c" * 2000
        # :method GET, :path /, then `cookie` (static name 32) as a literal without indexing
        block = b"\x82\x84\x0f\x11" + _hpack_len(len(value)) + value
        conn.feed(True, frame(HEADERS, END_HEADERS | END_STREAM, i, block), i)
    assert conn.wire.buffered(True) == 0
    assert len(conn.streams) == 100 and {st.path for st in conn.streams.values()} == {"/"}


def _hpack_len(n: int) -> bytes:
    """An HPACK string length (7-bit prefix, no Huffman)."""
    if n < 127:
        return bytes([n])
    out, n = [0x7F], n - 127
    while n >= 128:
        out.append(n % 128 | 0x80)
        n //= 128
    out.append(n)
    return bytes(out)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=120)), max_size=10), st.booleans())
def test_fuzz_only_h2error(chunks: list[tuple[bool, bytes]], seen: bool) -> None:
    conn = H2Connection("server", seen_start=seen)
    c, s = Peer(), Peer()
    req, resp = grpc_call(c, s, 1, "/a.B/C", 0)
    base = [(True, PREFACE if seen else b""), (True, req), (False, resp)]
    for from_client, data in base[:1] + chunks + base[1:]:
        try:
            conn.feed(from_client, data, 1)
        except H2Error:
            conn = H2Connection("server", seen_start=False)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_frames(data: st.DataObject) -> None:
    c, s = Peer(), Peer()
    req, resp = grpc_call(c, s, 1, "/a.B/C", 13)
    stream = bytearray(PREFACE + req)
    for _ in range(data.draw(st.integers(0, 6))):
        i = data.draw(st.integers(0, len(stream) - 1))
        stream[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(stream)))
    conn = H2Connection("server")
    try:
        conn.feed(True, bytes(stream[:cut]), 1)
        conn.feed(True, bytes(stream[cut:]), 2)
        conn.feed(False, resp, 3)
    except H2Error:
        pass


def test_midway_guess_corrected_by_a_preface() -> None:
    """A server's SETTINGS can come before the client's preface: the connection is first taken
    for one seen mid-way; the preface then makes it a fully decoded one."""
    conn = H2Connection("server", seen_start=False, role_known=False)
    conn.feed(False, frame(SETTINGS, 0, 0, b""), 1)
    c, s = Peer(), Peer()
    conn.feed(True, PREFACE + grpc_req(c, 1, "/a.B/C"), 2)
    (d,) = conn.feed(False, grpc_resp(s, 1, 0), 3)
    assert (d.path, d.grpc_status, d.outcome) == ("/a.B/C", 0, "full")
    wrong = H2Connection("client", seen_start=False, role_known=False)
    try:
        wrong.feed(False, PREFACE, 1)  # the preface came from what it took for the server
    except H2Error as e:
        assert e.reason == "role_swapped"
    else:
        raise AssertionError("not detected")


def test_decoded_block_cache_follows_the_table() -> None:
    """The same all-indexed block means something else once the table changed: never a stale
    answer from the cache."""
    conn = H2Connection("server")
    conn.feed(True, PREFACE, 0)

    def req(sid: int, block: bytes) -> str:
        conn.feed(True, frame(HEADERS, END_HEADERS | END_STREAM, sid, block), sid)
        return conn.streams[sid].path

    lit = Encoder()
    first = lit.encode([(":method", "GET"), (":path", "/one")])  # inserts ":path: /one"
    assert req(1, first) == "/one"
    assert req(3, b"\x82\xbe") == "/one"  # GET, dynamic index 62
    assert req(5, b"\x82\xbe") == "/one"  # the same block again: cached, still right
    second = lit.encode([(":method", "GET"), (":path", "/two")])  # inserts ":path: /two"
    assert req(7, second) == "/two"
    assert req(9, b"\x82\xbe") == "/two"  # index 62 is now the newer entry


def test_repeated_blocks_keep_the_dynamic_table_in_step() -> None:
    """Blocks with literals that add to the table (nginx's responses), repeated: a later block
    referring to the entries decodes as hpack's own decoder does."""
    conn = H2Connection("server")
    ref = Decoder()
    conn.feed(True, PREFACE + frame(SETTINGS, 0, 0, b""), 1)
    got = []
    blocks = []
    for i in range(1, 40, 2):
        path = f"/p/{i % 3}".encode()
        # :method GET, :scheme http (static), :path and x-tag as literals with indexing
        blocks.append(b"\x82\x86" + bytes([0x44, len(path)]) + path
                      + bytes([0x40, 5]) + b"x-tag" + bytes([1]) + b"v")
    # then one all-indexed block: index 62 = the newest entry (x-tag), 63 = the last :path
    blocks.append(b"\x82\x86\xbe\xbf")
    for n, block in enumerate(blocks):
        sid = 2 * n + 1
        ref.decode(block)
        conn.feed(True, frame(HEADERS, END_HEADERS | END_STREAM, sid, block), sid)
        out = conn.feed(False, frame(HEADERS, END_HEADERS | END_STREAM, sid, b"\x88"), sid + 1)
        got += [(r.path, r.outcome) for r in out]
    assert got == [(f"/p/{i % 3}", "full") for i in range(1, 40, 2)] + [("/p/0", "full")]


NAMES = [":method", ":path", ":authority", ":status", "grpc-status", "grpc-message",
         "content-type", "x-a", "cookie", "user-agent"]
VALUES = st.one_of(st.sampled_from(["GET", "POST", "/", "/a/b?c=1", "200", "404", "0", "13",
                                    "application/grpc", "text/html", "", "x" * 300]),
                   st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(st.tuples(st.sampled_from(NAMES), VALUES), max_size=12),
                          st.booleans(), st.sampled_from([None, 0, 64, 256, 4096, 65536])),
                min_size=1, max_size=12))
def test_decoding_agrees_with_hpack(blocks: list[tuple[list[tuple[str, str]], bool, int | None]]
                                    ) -> None:
    """Any header blocks, Huffman or not, across table size changes: each stream carries what
    hpack's own decoder reads from the same bytes (the last of a repeated field; a status only
    when it is digits, at most 18 of them after leading zeros; the first content-type)."""
    conn = H2Connection("server")
    enc, ref = Encoder(), Decoder()
    ref.max_allowed_table_size = 65536  # what H2Wire allows before any SETTINGS
    conn.feed(True, PREFACE, 0)
    for n, (headers, huffman, table) in enumerate(blocks):
        if table is not None:
            enc.header_table_size = table
        block = enc.encode(headers, huffman=huffman)
        want: dict[str, object] = {"method": UNKNOWN, "path": UNKNOWN, "authority": "",
                                   "status": 0, "grpc_status": None, "grpc_message": "",
                                   "content_type": ""}
        for name, value in ref.decode(block):
            attr = {":method": "method", ":path": "path", ":authority": "authority",
                    "grpc-message": "grpc_message"}.get(name)
            if attr:
                want[attr] = value
            elif name in (":status", "grpc-status") and value.isdigit() and \
                    int(value) < 10**18:  # no status has 19 digits: the decoder stops at 18
                want["status" if name == ":status" else "grpc_status"] = int(value)
            elif name == "content-type" and not want["content_type"]:
                want["content_type"] = value
        sid = 2 * n + 1
        conn.feed(True, frame(HEADERS, END_HEADERS, sid, block), sid)
        got = conn.streams[sid]
        assert {k: getattr(got, k) for k in want} == want
        assert got.outcome == "full"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.booleans(), st.booleans())
def test_any_bytes_give_requests_or_h2error(data: bytes, seen: bool, from_client: bool) -> None:
    conn = H2Connection("server", seen_start=seen)
    try:
        conn.feed(from_client, (PREFACE if seen and from_client else b"") + data, 1)
        conn.feed(not from_client, data[::-1], 2)
        conn.close(3)
    except H2Error:
        pass


def test_hints_name_streams_the_decoder_could_not() -> None:
    """Header blocks named by the program (uprobes before HPACK): a block it sent comes before
    its frame, one it received after; a stream whose last block is not decoded waits for its
    hint until the next bytes from that side."""
    c, s = Peer(), Peer()
    for sid in (1, 3):
        grpc_call(c, s, sid, "/pkg.Svc/Warm", 0)  # the tables fill before the observer starts
    conn = H2Connection("client", seen_start=False)
    r5, p5 = grpc_call(c, s, 5, "/pkg.Svc/Warm", 0)
    # the client sent its request: the hint first, then the frames
    assert conn.hint(5, True, {"method": "POST", "path": "/pkg.Svc/Warm",
                               "content_type": "application/grpc"}, 10) == []
    assert conn.feed(True, r5, 11) == []
    # the response's frames first: its trailers are not decodable, so the stream waits
    assert conn.feed(False, p5, 12) == []
    assert conn.hint(5, False, {"status": 200, "content_type": "application/grpc"}) == []
    (d,) = conn.hint(5, False, {"grpc_status": 0})  # the trailers' hint finishes it
    assert (d.method, d.path, d.grpc_status, d.outcome) == ("POST", "/pkg.Svc/Warm", 0,
                                                            "uprobes")
    # a stream whose trailers' hint never comes is released by the next bytes of that side
    r7, p7 = grpc_call(c, s, 7, "/pkg.Svc/Warm", 5)
    conn.hint(7, True, {"method": "POST", "path": "/pkg.Svc/Warm",
                        "content_type": "application/grpc"})
    conn.feed(True, r7, 13)
    assert conn.feed(False, p7, 14) == []
    r9, p9 = grpc_call(c, s, 9, "/pkg.Svc/Warm", 0)
    conn.feed(True, r9, 15)
    out = conn.feed(False, p9, 16)
    assert [x.stream_id for x in out][:1] == [7] and out[0].outcome == "partial"
    # what the decoder did decode is never overridden by a hint
    conn2 = H2Connection("server")
    c2, s2 = Peer(), Peer()
    req, resp = grpc_call(c2, s2, 1, "/pkg.Svc/Real", 0)
    conn2.feed(True, PREFACE + req, 1)
    conn2.hint(1, True, {"path": "/other"})
    (d,) = conn2.feed(False, resp, 2)
    assert d.path == "/pkg.Svc/Real" and d.outcome == "full"


def test_a_request_seen_only_through_its_hint_is_counted() -> None:
    """The request's frames were read before the probes came (the decoder could not place
    them): the server's response on that stream and the program's hint make the request."""
    c, s = Peer(), Peer()
    grpc_call(c, s, 1, "/pkg.Svc/Warm", 0)
    conn = H2Connection("server", seen_start=False)
    _req, resp = grpc_call(c, s, 3, "/pkg.Svc/Warm", 0)
    conn.hint(3, True, {"method": "POST", "path": "/pkg.Svc/Warm",
                        "content_type": "application/grpc"}, 100)
    conn.hint(3, False, {"grpc_status": 0, "status": 200})
    (d,) = conn.feed(False, resp, 200)
    assert (d.method, d.path, d.start_ns, d.end_ns, d.grpc_status) == (
        "POST", "/pkg.Svc/Warm", 100, 200, 0)
