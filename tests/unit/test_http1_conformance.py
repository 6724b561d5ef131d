"""The stream parser against RFC 9112 (framing section 6, chunked section 7, line endings
section 2.2) and RFC 9110 (methods section 9, CONNECT 9.3.6, Upgrade 7.8), with the shapes real
servers and clients send. Every case is fed whole, byte by byte and split at random points: the
messages must be the same each way (a property test)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podscope.protocols.http1 import (
    Exchange,
    HttpParseError,
    MessageStream,
    find_request,
)


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    is_request: bool
    # (method or status, target or "", body length) of each message; or the error reason
    want: list[tuple[str, str, int]] | str
    methods: tuple[str, ...] = ()  # responses: the requests they answer


def _summary(stream: MessageStream, pieces: list[bytes]) -> list[tuple[str, str, int]] | str:
    out = []
    try:
        for p in pieces:
            out += stream.feed(p)
    except HttpParseError as e:
        return e.reason
    return [(m.head.method or str(m.head.status), m.head.target, m.body_len) for m in out]


def _run(case: Case, pieces: list[bytes]) -> list[tuple[str, str, int]] | str:
    s = MessageStream(case.is_request)
    s.request_methods.extend(case.methods)
    return _summary(s, pieces)


REQ = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
CASES = [
    # section 6.3: framing
    Case("content-length body", b"POST /p HTTP/1.1\r\nContent-Length: 4\r\n\r\nq=42" + REQ, True,
         [("POST", "/p", 4), ("GET", "/a", 0)]),
    Case("chunked request", b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"3\r\nabc\r\n0\r\n\r\n" + REQ, True, [("POST", "/c", 3), ("GET", "/a", 0)]),
    Case("two content-length lines, same value", b"POST /p HTTP/1.1\r\nContent-Length: 2\r\n"
         b"Content-Length: 2\r\n\r\nok", True, [("POST", "/p", 2)]),
    Case("two content-length lines, different values", b"POST /p HTTP/1.1\r\nContent-Length: 2"
         b"\r\nContent-Length: 3\r\n\r\nok!", True, "bad_content_length"),
    Case("transfer-encoding over two lines, chunked last", b"HTTP/1.1 200 OK\r\n"
         b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nzz\r\n0\r\n\r\n",
         False, [("200", "", 2)], ("GET",)),
    Case("transfer-encoding chunked then identity (request)", b"POST /p HTTP/1.1\r\n"
         b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n", True,
         "bad_transfer_encoding"),
    Case("transfer-encoding not chunked in a response: until close", b"HTTP/1.1 200 OK\r\n"
         b"Transfer-Encoding: gzip\r\n\r\nabcdef", False, [], ("GET",)),
    Case("transfer-encoding wins over content-length", b"POST /p HTTP/1.1\r\nContent-Length: 99"
         b"\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n" + REQ, True,
         [("POST", "/p", 1), ("GET", "/a", 0)]),
    Case("no body for HEAD, 204 and 304", b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"
         b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
         False, [("200", "", 0), ("204", "", 0), ("304", "", 0)], ("HEAD", "GET", "GET")),
    # section 7.1: chunk sizes are hex digits, nothing else
    Case("chunk size with extension and whitespace", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: "
         b"chunked\r\n\r\n5 ;name=val\r\nhello\r\n0\r\nTrailer: t\r\n\r\n", False,
         [("200", "", 5)], ("GET",)),
    Case("chunk size 0x5", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello"
         b"\r\n0\r\n\r\n", False, "bad_chunk", ("GET",)),
    Case("chunk size 1_0", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n",
         False, "bad_chunk", ("GET",)),
    Case("chunk size +5", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello"
         b"\r\n0\r\n\r\n", False, "bad_chunk", ("GET",)),
    # section 2.2: empty lines before a request, bare LF line endings
    Case("empty line between requests", b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nq=42"
         b"\r\nGET / HTTP/1.1\r\n\r\n", True, [("POST", "/", 4), ("GET", "/", 0)]),
    Case("empty lines before the first request", b"\r\n\r\n\n" + REQ, True, [("GET", "/a", 0)]),
    Case("stray CRLF after 304 and 100 Continue", b"HTTP/1.1 100 Continue\r\n\r\n\r\n"
         b"HTTP/1.1 304 Not Modified\r\n\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
         False, [("100", "", 0), ("304", "", 0), ("200", "", 1)], ("GET", "GET")),
    Case("bare LF hides no header", b"POST /admin HTTP/1.1\nDummy: x\nContent-Length: 23\n\n"
         b"GET / HTTP/1.1\nHost: a\n\n", True, [("POST", "/admin", 23)]),
    Case("LF-only messages complete", b"GET /x HTTP/1.1\nHost: a\n\nGET /y HTTP/1.1\n\n", True,
         [("GET", "/x", 0), ("GET", "/y", 0)]),
    # section 4 and 5.2: any octet in a reason phrase, obs-fold
    Case("non-ASCII reason phrase", "HTTP/1.1 500 Oriëntatieprobleem\r\nContent-Length: 0"
         "\r\n\r\n".encode(), False, [("500", "", 0)], ("GET",)),
    Case("no reason phrase", b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", False,
         [("200", "", 2)], ("GET",)),
    Case("obs-fold in a response", b"HTTP/1.1 200 OK\r\nX-Long: a\r\n  b\r\nContent-Length: 1"
         b"\r\n\r\nz", False, [("200", "", 1)], ("GET",)),
    # RFC 9110 section 9: any token is a method
    *[Case(f"method {m}", f"{m} /r HTTP/1.1\r\nHost: a\r\n\r\n".encode(), True,
           [(m, "/r", 0)]) for m in ("REPORT", "PURGE", "SEARCH", "QUERY", "M-SEARCH", "LINK",
                                      "PROPFIND", "MKCOL")],
    Case("not a token method", b"G@T / HTTP/1.1\r\n\r\n", True, "bad_request_line"),
    Case("not HTTP at all", b"\x16\x03\x01\x02\x00\x01", True, "not_http"),
    Case("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", True, "bad_request_line"),
]


def _splits(data: bytes, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.randint(1, 6))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rfc_cases_whole_bytewise_and_split(case: Case) -> None:
    whole = _run(case, [case.data])
    assert whole == case.want
    assert _run(case, [case.data[i:i + 1] for i in range(len(case.data))]) == case.want
    for seed in range(20):
        assert _run(case, _splits(case.data, seed)) == case.want, seed


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([c for c in CASES if isinstance(c.want, list) and c.is_request]),
                min_size=1, max_size=4), st.data())
def test_any_concatenation_any_split_same_messages(cases: list[Case], data: st.DataObject) -> None:
    """Requests back to back (pipelined), cut anywhere: the same list as fed whole."""
    stream = b"".join(c.data for c in cases)
    want = _run(cases[0], [stream])
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=8))))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert _run(cases[0], pieces) == want


def test_messages_before_an_error_are_kept() -> None:
    """A whole feed and a byte-by-byte one agree: the request before the garbage counts."""
    data = REQ + b"G@T / HTTP/1.1\r\n\r\n"
    ex = Exchange()
    with pytest.raises(HttpParseError) as e:
        ex.client_bytes(data)
    assert e.value.reason == "bad_request_line" and len(ex.pending) == 1
    ex = Exchange()
    ex.client_bytes(REQ)
    with pytest.raises(HttpParseError) as e:
        ex.server_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nJUNK\r\n\r\n")
    assert [p.response.head.status for p in e.value.pairs if p.response] == [200]


@pytest.mark.parametrize("step", [1, 7, 10_000])
def test_websocket_upgrade_is_paired_and_the_tunnel_not_parsed(step: int) -> None:
    ex = Exchange()
    upgrade = (b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    frames = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58" * 3  # masked "Hello" frames
    for i in range(0, len(upgrade + frames), step):
        ex.client_bytes((upgrade + frames)[i:i + step])
    answer = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x05Hello")
    pairs = []
    for i in range(0, len(answer), step):
        pairs += ex.server_bytes(answer[i:i + step])
    assert [(p.request.head.target, p.response.head.status) for p in pairs if p.response] == \
        [("/chat", 101)]
    # what follows is the WebSocket's, both ways: never a request, a response or an error
    assert ex.client_bytes(b"GET / HTTP/1.1\r\n\r\n" + frames) == []
    assert ex.server_bytes(b"HTTP/1.1 200 OK\r\n\r\n\x81\x05Hello", 100) == []
    assert ex.tunnel and not ex.pending and ex.close() == []


def test_declined_upgrade_parses_what_was_held() -> None:
    ex = Exchange()
    ex.client_bytes(b"GET /a HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n" + REQ)
    assert len(ex.pending) == 1  # the request after it is held until the answer
    pairs = ex.server_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert len(pairs) == 1 and len(ex.pending) == 1  # the held request is parsed now
    (p,) = ex.server_bytes(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert p.request.head.target == "/a" and p.response is not None and not ex.tunnel


def test_connect_tunnel_sharing_a_buffer_with_the_head() -> None:
    ex = Exchange()
    tls = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(40))
    ex.client_bytes(b"CONNECT db.internal:443 HTTP/1.1\r\nHost: db.internal:443\r\n\r\n" + tls)
    (p,) = ex.server_bytes(b"HTTP/1.1 200 Connection Established\r\n\r\n" + tls)
    assert p.request.head.method == "CONNECT" and p.response and p.response.head.status == 200
    assert ex.client_bytes(tls * 3) == [] and ex.server_bytes(tls) == [] and ex.tunnel
    # refused: no tunnel, the connection goes on as HTTP
    ex = Exchange()
    ex.client_bytes(b"CONNECT x:443 HTTP/1.1\r\n\r\n")
    (p,) = ex.server_bytes(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    assert p.response and p.response.head.status == 403 and not ex.tunnel


@pytest.mark.parametrize("size", [16, 100_000])
def test_chunked_body_beyond_the_capture(size: int) -> None:
    """The kernel captures the first 8192 bytes of a write: a large chunked response written
    at once loses its framing; it ends where the next response starts, and at close."""
    body = b"%x\r\n" % size + b"z" * size + b"\r\n0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    whole = head + body
    cap = 8192 if size > 8192 else len(head) + 5
    ex = Exchange()
    ex.client_bytes(REQ + REQ + REQ)
    out = ex.server_bytes(whole[:cap], len(whole) - cap)
    out += ex.server_bytes(whole[:cap], len(whole) - cap)
    out += ex.server_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert [p.response.head.status for p in out if p.response] == [200, 200, 200]
    assert [p.response.end - p.response.start for p in out if p.response] == \
        [len(whole), len(whole), len(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")]
    ex.client_bytes(REQ)
    ex.server_bytes(whole[:cap], len(whole) - cap)
    (last,) = ex.close()
    assert last.response is not None and last.response.complete


def test_chunked_request_beyond_the_capture_ends_at_its_answer() -> None:
    """curl uploading with Transfer-Encoding: chunked writes the body at once: its framing is
    lost to the capture, and the final response (after a 100 Continue) says the request ended."""
    head = b"POST /u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
    body = b"7530\r\n" + b"a" * 30000 + b"\r\n0\r\n\r\n"
    ex = Exchange()
    assert ex.client_bytes(head) == []
    assert ex.server_bytes(b"HTTP/1.1 100 Continue\r\n\r\n") == []
    assert ex.client_bytes(body[:8192], len(body) - 8192) == []
    (p,) = ex.server_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert p.request.head.method == "POST" and p.request.end == len(head) + len(body)
    assert p.response is not None and p.response.head.status == 200
    assert [m.head.target for m in ex.client_bytes(REQ)] == ["/a"]  # and the next one parses


@pytest.mark.parametrize(("data", "at"), [
    (REQ, 0),
    (b"\r\n" + REQ, 2),  # an empty line first: the request starts after it
    (b"dy of the last one\r\n" + REQ, 20),  # the end of a body the capture started in
    (b"zz\nREPORT /cal HTTP/1.1\r\n\r\n", 3),  # any token method
    (b"zz\nM-SEARCH * HTTP/1.1\n\n", 3),  # bare LF
    (b"zzz GET / HTTP/1.1\r\n", -1),  # not at a line start
    (b"SET k v\r\nGET /x HTTP/2.0\r\n", -1),  # another protocol's line; not HTTP/1.x
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", -1),  # TLS
])
def test_find_request_resynchronises_at_a_request_line(data: bytes, at: int) -> None:
    assert find_request(data) == at
