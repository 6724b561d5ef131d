"""HTTP/1.x message framing over a byte stream: pure functions and small state machines, no I/O.

`MessageStream` takes the bytes of one direction of one connection, in whatever pieces the
syscalls delivered them, and returns complete messages (head + body size), pipelining included.
`Exchange` pairs the two directions of a connection. Malformed input raises `HttpParseError`
with a short `reason` (counted by the caller); it never raises anything else.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

MAX_HEAD = 64 * 1024  # a head larger than this is treated as malformed
METHODS = frozenset({b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH",
                     b"CONNECT", b"TRACE"})


class HttpParseError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Head:
    is_request: bool
    version: str
    method: str = ""
    target: str = ""
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    head_len: int = 0

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


@dataclass
class Message:
    head: Head
    body_len: int = 0
    start: int = 0  # offset in the direction's stream of the first byte
    end: int = 0  # offset after the last byte
    complete: bool = True  # False: ended by the connection closing (or cut short)


def looks_like_http1(data: bytes) -> bool:
    """The in-kernel test, restated: a request method followed by a space, or 'HTTP/1.'."""
    if data.startswith(b"HTTP/1."):
        return True
    sp = data.find(b" ", 0, 8)
    return sp > 0 and data[:sp] in METHODS


def parse_head(data: bytes | bytearray, is_request: bool) -> Head | None:
    """Parse a message head at the start of data. None: not complete yet."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HEAD:
            raise HttpParseError("head_too_large")
        if data[:1] and not data[:1].isalpha():
            raise HttpParseError("not_http")
        return None
    raw = bytes(data[:end])
    lines = raw.split(b"\r\n")
    try:
        start = lines[0].decode("ascii")
    except UnicodeDecodeError:
        raise HttpParseError("bad_start_line") from None
    parts = start.split(" ", 2)
    if is_request:
        if len(parts) != 3 or parts[0].encode() not in METHODS or not parts[2].startswith("HTTP/1."):
            raise HttpParseError("bad_request_line")
        head = Head(True, parts[2][5:], method=parts[0], target=parts[1])
    else:
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() \
                or len(parts[1]) != 3:
            raise HttpParseError("bad_status_line")
        head = Head(False, parts[0][5:], status=int(parts[1]))
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise HttpParseError("bad_header")
        head.headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    head.head_len = end + 4
    return head


def body_framing(head: Head, request_method: str = "") -> tuple[str, int]:
    """("none", 0) | ("length", n) | ("chunked", 0) | ("close", 0), per RFC 9112 section 6.3."""
    if not head.is_request:
        if request_method == "HEAD" or 100 <= head.status < 200 or head.status in (204, 304):
            return ("none", 0)
        if request_method == "CONNECT" and 200 <= head.status < 300:
            return ("close", 0)
    te = head.header("transfer-encoding")
    if te is not None:
        if te.lower().replace(" ", "").split(",")[-1] == "chunked":
            return ("chunked", 0)
        if head.is_request:
            raise HttpParseError("bad_transfer_encoding")
        return ("close", 0)
    cl = head.header("content-length")
    if cl is not None:
        values = {v.strip() for v in cl.split(",")}
        value = next(iter(values))
        if len(values) != 1 or not (value.isascii() and value.isdigit()):
            raise HttpParseError("bad_content_length")
        return ("length", int(value))
    return ("none", 0) if head.is_request else ("close", 0)


class ChunkedBody:
    """Streaming chunked-body reader: counts the body's bytes, finds its end."""

    def __init__(self) -> None:
        self.state = "size"  # size | data | data_crlf | trailer
        self.remaining = 0
        self.body_len = 0
        self._line = bytearray()

    def feed(self, data: bytes | memoryview, pos: int = 0) -> tuple[int, bool]:
        """Consume from data[pos:]; returns (new position, finished)."""
        n = len(data)
        while pos < n:
            if self.state == "data":
                take = min(self.remaining, n - pos)
                pos += take
                self.remaining -= take
                self.body_len += take
                if self.remaining == 0:
                    self.state = "data_crlf"
                continue
            nl = bytes(data[pos:]).find(b"\n")
            if nl < 0:
                self._line += data[pos:]
                if len(self._line) > 4096:
                    raise HttpParseError("bad_chunk")
                return n, False
            line = bytes(self._line + data[pos:pos + nl]).rstrip(b"\r")
            self._line.clear()
            pos += nl + 1
            if self.state == "size":
                size_txt = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_txt, 16)
                except ValueError:
                    raise HttpParseError("bad_chunk") from None
                if size < 0:
                    raise HttpParseError("bad_chunk")
                if size == 0:
                    self.state = "trailer"
                else:
                    self.remaining = size
                    self.state = "data"
            elif self.state == "data_crlf":
                if line:
                    raise HttpParseError("bad_chunk")
                self.state = "size"
            else:  # trailer section: ends with an empty line
                if not line:
                    return pos, True
        return pos, False


class MessageStream:
    """One direction of one connection. `feed` returns the messages completed by the bytes."""

    def __init__(self, is_request: bool):
        self.is_request = is_request
        self.buf = bytearray()
        self.offset = 0  # stream offset of buf[0]
        self.cur: Message | None = None
        self._framing: tuple[str, int] = ("none", 0)
        self._chunked: ChunkedBody | None = None
        self._left = 0
        # responses: the methods of the requests they answer, in order (HEAD has no body)
        self.request_methods: deque[str] = deque()

    def feed(self, data: bytes) -> list[Message]:
        self.buf += data
        out: list[Message] = []
        pos = 0
        while True:
            if self.cur is None:
                if pos >= len(self.buf):
                    break
                head = parse_head(memoryview(self.buf)[pos:].tobytes(), self.is_request)
                if head is None:
                    break
                method = ""
                if not self.is_request and not 100 <= head.status < 200:
                    method = self.request_methods.popleft() if self.request_methods else ""
                elif not self.is_request:
                    method = self.request_methods[0] if self.request_methods else ""
                self._framing = body_framing(head, method)
                self.cur = Message(head, start=self.offset + pos)
                pos += head.head_len
                kind, n = self._framing
                if kind == "chunked":
                    self._chunked = ChunkedBody()
                self._left = n
                if kind == "none" or (kind == "length" and n == 0):
                    out.append(self._finish(pos))
                    continue
            kind, _ = self._framing
            if kind == "length":
                take = min(self._left, len(self.buf) - pos)
                self._left -= take
                self.cur.body_len += take
                pos += take
                if self._left:
                    break
                out.append(self._finish(pos))
            elif kind == "chunked":
                assert self._chunked is not None
                pos, done = self._chunked.feed(memoryview(self.buf), pos)
                self.cur.body_len = self._chunked.body_len
                if not done:
                    break
                out.append(self._finish(pos))
            else:  # until the connection closes
                self.cur.body_len += len(self.buf) - pos
                pos = len(self.buf)
                break
        del self.buf[:pos]
        self.offset += pos
        return out

    def skip(self, n: int) -> list[Message]:
        """n bytes went by that were not captured (beyond the kernel's chunk size, or sent with
        sendfile). Fine inside a body of known length or one delimited by close; anywhere else
        the stream cannot be followed: HttpParseError("truncated")."""
        if n <= 0:
            return []
        if self.cur is None or self.buf:
            raise HttpParseError("truncated")
        kind, _ = self._framing
        if kind == "close":
            self.cur.body_len += n
            self.offset += n
            return []
        if kind != "length" or n > self._left:
            raise HttpParseError("truncated")
        self._left -= n
        self.cur.body_len += n
        self.offset += n
        return [self._finish(0)] if not self._left else []

    def _finish(self, pos: int) -> Message:
        assert self.cur is not None
        msg = self.cur
        msg.end = self.offset + pos
        self.cur = None
        self._chunked = None
        return msg

    def close(self) -> Message | None:
        """The connection closed: a body delimited by close is complete, anything else is cut."""
        if self.cur is None:
            return None
        msg = self.cur
        msg.end = self.offset + len(self.buf)
        msg.complete = self._framing[0] == "close"
        self.cur = None
        return msg


@dataclass
class Pair:
    request: Message
    response: Message | None  # None: the connection ended without a response


MAX_PENDING = 1024  # requests waiting for their responses on one connection (pipelining)


class Exchange:
    """Pairs requests with responses on one connection (FIFO: HTTP/1.x answers in order). At
    most MAX_PENDING requests wait for their answers: one more is "too_many_pending" (the
    connection starts over), never memory without bound."""

    def __init__(self) -> None:
        self.requests = MessageStream(is_request=True)
        self.responses = MessageStream(is_request=False)
        self.pending: deque[Message] = deque()

    def client_bytes(self, data: bytes, skipped: int = 0) -> list[Message]:
        """Bytes from the client (then `skipped` bytes that were not captured); returns the
        requests they completed."""
        done = self.requests.feed(data) if data else []
        done += self.requests.skip(skipped)
        for m in done:
            self.add_request(m)
        return done

    def add_request(self, m: Message) -> None:
        if len(self.pending) >= MAX_PENDING:
            raise HttpParseError("too_many_pending")
        self.pending.append(m)
        self.responses.request_methods.append(m.head.method)

    def server_bytes(self, data: bytes, skipped: int = 0) -> list[Pair]:
        out = []
        done = self.responses.feed(data) if data else []
        done += self.responses.skip(skipped)
        for m in done:
            if 100 <= m.head.status < 200 and m.head.status != 101:
                continue  # interim (100 Continue, 103 Early Hints): the final response follows
            req = self.pending.popleft() if self.pending else None
            if req is None:
                raise HttpParseError("response_without_request")
            out.append(Pair(req, m))
        return out

    def close(self) -> list[Pair]:
        out = []
        last = self.responses.close()
        if last is not None and self.pending:
            out.append(Pair(self.pending.popleft(), last))
        while self.pending:
            out.append(Pair(self.pending.popleft(), None))
        return out
