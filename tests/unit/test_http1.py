"""HTTP/1.x framing and pairing over captured byte streams, split at every possible point."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podscope.protocols.http1 import (
    Exchange,
    HttpParseError,
    MessageStream,
    body_framing,
    parse_head,
)
from podscope.protocols.routes import (
    OTHER,
    REDACTED,
    RouteBudget,
    redact_headers,
    redact_target,
    template_path,
)

GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
HEAD = b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /up HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n")


def feed_split(stream_bytes: bytes, step: int, is_request: bool) -> list:  # type: ignore[type-arg]
    s = MessageStream(is_request)
    out = []
    for i in range(0, len(stream_bytes), step):
        out += s.feed(stream_bytes[i:i + step])
    return out


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_pipelined_requests_any_split(step: int) -> None:
    msgs = feed_split(GET + POST + GET, step, True)
    assert [m.head.method for m in msgs] == ["GET", "POST", "GET"]
    assert [m.body_len for m in msgs] == [0, 5, 0]
    assert msgs[1].start == len(GET) and msgs[2].end == len(GET + POST + GET)


@pytest.mark.parametrize("step", [1, 5, 1000])
def test_chunked_response(step: int) -> None:
    msgs = feed_split(CHUNKED + OK, step, False)
    assert [m.body_len for m in msgs] == [9, 3]


def test_body_framing_table() -> None:
    def resp(status: int, hdrs: str = "") -> object:
        return parse_head(f"HTTP/1.1 {status} X\r\n{hdrs}\r\n".encode(), False)

    assert body_framing(resp(204)) == ("none", 0)  # type: ignore[arg-type]
    assert body_framing(resp(304, "Content-Length: 10\r\n")) == ("none", 0)  # type: ignore[arg-type]
    assert body_framing(resp(100)) == ("none", 0)  # type: ignore[arg-type]
    assert body_framing(resp(200, "Content-Length: 10\r\n"), "HEAD") == ("none", 0)  # type: ignore[arg-type]
    assert body_framing(resp(200, "Content-Length: 10\r\n")) == ("length", 10)  # type: ignore[arg-type]
    assert body_framing(resp(200)) == ("close", 0)  # type: ignore[arg-type]
    with pytest.raises(HttpParseError, match="bad_content_length"):
        body_framing(resp(200, "Content-Length: 1, 2\r\n"))  # type: ignore[arg-type]


def test_exchange_pairs_in_order_with_head_and_100_continue() -> None:
    ex = Exchange()
    ex.client_bytes(HEAD + GET)
    pairs = ex.server_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n" + OK)
    assert [(p.request.head.method, p.response.body_len) for p in pairs if p.response] == \
        [("HEAD", 0), ("GET", 3)]
    ex.client_bytes(b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert ex.server_bytes(b"HTTP/1.1 100 Continue\r\n\r\n") == []
    ex.client_bytes(b"ok")
    (p,) = ex.server_bytes(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert p.request.head.method == "POST" and p.response and p.response.head.status == 201


def test_exchange_close_ends_bodies_and_unanswered_requests() -> None:
    ex = Exchange()
    ex.client_bytes(GET + GET)
    assert ex.server_bytes(b"HTTP/1.0 200 OK\r\n\r\nstreamed until close") == []
    pairs = ex.close()
    assert pairs[0].response is not None and pairs[0].response.body_len == 20
    assert pairs[0].response.complete and pairs[1].response is None


@pytest.mark.parametrize(("data", "reason"), [
    (b"\x16\x03\x01\x02\x00", "not_http"),
    (b"GET /a HTTP/2.0\r\n\r\n", "bad_request_line"),
    (b"GET /a HTTP/1.1\r\nBad Header\r\n\r\n", "bad_header"),
    (b"G@T /a HTTP/1.1\r\n\r\n", "bad_request_line"),
    (b"POST /a HTTP/1.1\r\nContent-Length: \xb25\r\n\r\n", "bad_content_length"),
    (b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad_chunk"),
])
def test_malformed_requests(data: bytes, reason: str) -> None:
    with pytest.raises(HttpParseError) as e:
        MessageStream(True).feed(data)
    assert e.value.reason == reason



@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_fuzz_random_bytes_never_raise_anything_else(data: bytes, step: int) -> None:
    for is_request in (True, False):
        s = MessageStream(is_request)
        try:
            for i in range(0, len(data), step):
                s.feed(data[i:i + step])
            s.close()
        except HttpParseError:
            pass


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([GET + POST, CHUNKED + OK, POST + GET]), st.data())
def test_fuzz_mutated_messages(base: bytes, data: st.DataObject) -> None:
    buf = bytearray(base)
    for _ in range(data.draw(st.integers(1, 5))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    ex = Exchange()
    try:
        ex.client_bytes(bytes(buf[:cut]))
        ex.server_bytes(bytes(buf[cut:]))
        ex.close()
    except HttpParseError:
        pass


@pytest.mark.parametrize(("path", "route"), [
    ("/users/123/orders/42", "/users/{id}/orders/{id}"),
    ("/items/3f2b9c1e-8d4a-4b6e-9f00-1234567890ab", "/items/{id}"),
    ("/blob/9f86d081884c7d65", "/blob/{id}"),
    ("/t/eyJhbGciOiJIUzI1NiJ9abc123", "/t/{id}"),
    ("/api/v1/health?x=1", "/api/v1/health"),
    ("/static/app.css", "/static/app.css"),
    ("http://example.test/a/7", "/a/{id}"),
    ("*", "*"),
])
def test_route_templates(path: str, route: str) -> None:
    assert template_path(path) == route


def test_redaction() -> None:
    assert redact_target("/s?q=kittens&token=abc") == f"/s?q={REDACTED}&token={REDACTED}"
    assert redact_target("/plain") == "/plain"
    hdrs = redact_headers([("Authorization", "Bearer x"), ("Cookie", "a=b"), ("Set-Cookie", "c"),
                           ("X-Session-Id", "s"), ("Accept", "text/html")])
    assert [v for _, v in hdrs] == [REDACTED] * 4 + ["text/html"]


def test_route_budget_overflows_into_other() -> None:
    b = RouteBudget(limit=2)
    assert [b.route("pod", r) for r in ("/a", "/b", "/a", "/c", "/d")] == \
        ["/a", "/b", "/a", OTHER, OTHER]
    assert b.overflow["pod"] == 2 and b.route("other-pod", "/c") == "/c"


def test_unanswered_pipelined_requests_are_bounded() -> None:
    """100k pipelined requests that get no answer: the connection stops at MAX_PENDING
    (counted by the collector as too_many_pending and started over), never 100 MB of state."""
    from podscope.protocols.http1 import MAX_PENDING, Exchange, HttpParseError

    ex = Exchange()
    chunk = b"GET /q HTTP/1.1\r\nHost: a\r\n\r\n" * 1000
    with pytest.raises(HttpParseError) as e:
        for _ in range(100):
            ex.client_bytes(chunk)
    assert e.value.reason == "too_many_pending"
    assert len(ex.pending) == MAX_PENDING
