"""HTTP/1.x message framing over a byte stream: pure functions and small state machines, no I/O.

`MessageStream` takes the bytes of one direction of one connection, in whatever pieces the
syscalls delivered them, and returns complete messages (head + body size), pipelining included.
`Exchange` pairs the two directions of a connection. Malformed input raises `HttpParseError`
with a short `reason` (counted by the caller); it never raises anything else.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_HEAD = 64 * 1024  # a head larger than this is treated as malformed
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_EMPTY_LINE = re.compile(rb"\n\r?\n")  # the end of a head: an empty line, CRLF or bare LF
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_VERSION = re.compile(r"HTTP/1\.[0-9]")
MAX_HELD = 64 * 1024  # client bytes held while an Upgrade or CONNECT awaits its answer


class HttpParseError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
        # what the same input completed before the error (never lost to it)
        self.messages: list[Message] = []
        self.pairs: list[Pair] = []


def is_token(b: bytes) -> bool:
    return bool(b) and all(c in _TCHAR for c in b)


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
        """The field's value; repeated lines joined with ", " (RFC 9110 section 5.3)."""
        name = name.lower()
        vals = [v for k, v in self.headers if k.lower() == name]
        return ", ".join(vals) if vals else None


@dataclass
class Message:
    head: Head
    body_len: int = 0
    start: int = 0  # offset in the direction's stream of the first byte
    end: int = 0  # offset after the last byte
    complete: bool = True  # False: ended by the connection closing (or cut short)


# A request line: a token method, a target, "HTTP/1.x", the line's end (RFC 9112 section 3).
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,24} [^\s]{1,8192} HTTP/1\.[0-9]\r?\n")


def find_request(data: bytes | bytearray, pos: int = 0) -> int:
    """Where the first request line at or after pos begins (at pos or right after a line feed),
    -1 if none: how a stream whose capture began in the middle of a message, or lost bytes,
    finds the next message boundary (RFC 9112 section 2.2 allows a recipient to skip to one)."""
    while 0 <= pos < len(data):
        if _REQUEST_LINE.match(data, pos):
            return pos
        pos = data.find(b"\n", pos)
        if pos >= 0:
            pos += 1
    return -1


def _start_line(line: bytes, is_request: bool) -> Head:
    """A request line (any token method, RFC 9112 section 3) or a status line (a reason phrase
    may hold any octet: obs-text, section 4)."""
    if is_request:
        parts = line.split(b" ")
        if (len(parts) != 3 or not is_token(parts[0]) or not parts[1]
                or not _VERSION.fullmatch(parts[2].decode("latin-1"))):
            raise HttpParseError("bad_request_line")
        return Head(True, parts[2][5:].decode(), method=parts[0].decode(),
                    target=parts[1].decode("latin-1"))
    version, _, rest = line.partition(b" ")
    code = rest[:3]
    if (not _VERSION.fullmatch(version.decode("latin-1")) or len(code) != 3
            or not code.isdigit() or rest[3:4] not in (b"", b" ")):
        raise HttpParseError("bad_status_line")
    return Head(False, version[5:].decode(), status=int(code))


def parse_head(data: bytes | bytearray, is_request: bool, pos: int = 0) -> Head | None:
    """Parse a message head at data[pos:] (read in place: no copy of what follows). None: not
    complete yet. Lines may end in CRLF or a bare LF (RFC 9112 section 2.2); obs-fold
    continuation lines are joined."""
    if data[pos:pos + 1] and not is_token(bytes(data[pos:pos + 1])):  # whatever the split:
        raise HttpParseError("not_http")  # the first byte says
    end = pos + MAX_HEAD + 4
    m = _EMPTY_LINE.search(data, pos, end)
    if m is None:
        first = data.find(b"\n", pos, end)
        if first >= 0:  # a whole start line: say at once if it is none
            _start_line(bytes(data[pos:first]).rstrip(b"\r"), is_request)
        if len(data) - pos > MAX_HEAD:
            raise HttpParseError("head_too_large")
        return None
    lines = [ln[:-1] if ln.endswith(b"\r") else ln
             for ln in bytes(data[pos:m.start()]).split(b"\n")]
    head = _start_line(lines[0], is_request)
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):  # obs-fold: part of the line before
            if not head.headers:
                raise HttpParseError("bad_header")
            k, v = head.headers[-1]
            head.headers[-1] = (k, (v + " " + line.strip(b" \t").decode("latin-1")).strip())
            continue
        name, sep, value = line.partition(b":")
        if not sep or not is_token(name):
            raise HttpParseError("bad_header")
        head.headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    head.head_len = m.end() - pos
    return head


def body_framing(head: Head, request_method: str = "") -> tuple[str, int]:
    """("none", 0) | ("length", n) | ("chunked", 0) | ("close", 0) | ("tunnel", 0), per RFC
    9112 section 6.3: every Transfer-Encoding and Content-Length line counts, not the first."""
    if not head.is_request:
        if head.status == 101 or (request_method == "CONNECT" and 200 <= head.status < 300):
            return ("tunnel", 0)  # what follows the head is another protocol's
        if request_method == "HEAD" or 100 <= head.status < 200 or head.status in (204, 304):
            return ("none", 0)
    te = head.header("transfer-encoding")
    if te is not None:
        codings = [c.strip().lower() for c in te.split(",") if c.strip()]
        if codings and codings[-1] == "chunked" and codings.count("chunked") == 1:
            return ("chunked", 0)
        if head.is_request or "chunked" in codings:
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
    """Streaming chunked-body reader (RFC 9112 section 7.1): counts the body's bytes, finds its
    end. Chunk sizes are hex digits only (no sign, prefix or separator)."""

    def __init__(self) -> None:
        self.state = "size"  # size | data | data_crlf | trailer
        self.remaining = 0
        self.body_len = 0
        self._line = bytearray()

    def feed(self, data: bytes | bytearray, pos: int = 0) -> tuple[int, bool]:
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
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._line += data[pos:]
                if len(self._line) > 4096:
                    raise HttpParseError("bad_chunk")
                return n, False
            line = bytes(self._line + data[pos:nl]).rstrip(b"\r")
            self._line.clear()
            pos = nl + 1
            if self.state == "size":
                size_txt = line.split(b";", 1)[0].strip(b" \t")
                if not _HEX.fullmatch(size_txt):
                    raise HttpParseError("bad_chunk")
                size = int(size_txt, 16)
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

    def skip(self, n: int) -> bool:
        """n bytes that were not captured; False: they went past the chunk being read, so its
        framing can no longer be followed."""
        if self.state == "data" and not self._line and n <= self.remaining:
            self.remaining -= n
            self.body_len += n
            if self.remaining == 0:
                self.state = "data_crlf"
            return True
        self.body_len += n
        return False


class MessageStream:
    """One direction of one connection. `feed` returns the messages completed by the bytes.

    Beyond plain framing: empty lines between messages are ignored (RFC 9112 section 2.2); after
    a 101 or a successful CONNECT the rest is a tunnel, never parsed; a request that asks for an
    Upgrade (or a CONNECT) holds the bytes that follow it until its answer says whether they are
    HTTP (`release`); a chunked body whose framing was lost to uncaptured bytes ends where the
    next message starts at a write's beginning."""

    def __init__(self, is_request: bool):
        self.is_request = is_request
        self.buf = bytearray()
        self.offset = 0  # stream offset of buf[0]
        self.cur: Message | None = None
        self._framing: tuple[str, int] = ("none", 0)
        self._chunked: ChunkedBody | None = None
        self._left = 0
        self.tunnel = False  # the connection carries another protocol now
        self.held = False  # requests: waiting for the answer to an Upgrade or CONNECT
        self._lost = False  # a chunked body's framing was lost: it ends at the next message
        # responses: the methods of the requests they answer, in order (HEAD has no body)
        self.request_methods: deque[str] = deque()
        # called with each message as it completes, before the bytes after it are parsed (an
        # exchange pairs it then: what happens is the same whatever pieces the bytes came in)
        self.sink: Callable[[Message], None] | None = None

    def _emit(self, out: list[Message], msg: Message) -> None:
        out.append(msg)
        if self.sink is not None:
            self.sink(msg)

    def feed(self, data: bytes) -> list[Message]:
        if self.tunnel:
            self.offset += len(data)
            return []
        out: list[Message] = []
        if self._lost and self.cur is not None:
            if not self._starts_message(data):
                self.cur.body_len += len(data)
                self.offset += len(data)
                return []
            self._lost = False
            self._emit(out, self._finish(0))  # it ended where this write begins
        self.buf += data
        if self.held:
            if len(self.buf) > MAX_HELD:  # no answer, bytes flowing: it is a tunnel
                self.release(True)
            return out
        try:
            self._parse(out)
        except HttpParseError as e:
            e.messages = out
            raise
        return out

    def _starts_message(self, data: bytes) -> bool:
        data = data.lstrip(b"\r\n")
        if not self.is_request:
            return data.startswith(b"HTTP/1.")
        sp = data.find(b" ", 0, 32)
        return sp > 0 and is_token(data[:sp])

    def _parse(self, out: list[Message]) -> None:
        pos = 0
        try:
            while not self.tunnel and not self.held:
                if self.cur is None:
                    while pos < len(self.buf) and self.buf[pos] in (0x0D, 0x0A):
                        if self.buf[pos] == 0x0D and pos + 1 >= len(self.buf):
                            break  # a CR whose LF has not come yet
                        if self.buf[pos] == 0x0D and self.buf[pos + 1] != 0x0A:
                            raise HttpParseError("not_http")
                        pos += 2 if self.buf[pos] == 0x0D else 1
                    if pos >= len(self.buf) or self.buf[pos] == 0x0D:
                        break
                    head = parse_head(self.buf, self.is_request, pos)
                    if head is None:
                        break
                    method = ""
                    if not self.is_request:
                        final = head.status == 101 or not 100 <= head.status < 200
                        if final:
                            method = self.request_methods.popleft() if self.request_methods else ""
                        else:
                            method = self.request_methods[0] if self.request_methods else ""
                    self._framing = body_framing(head, method)
                    self.cur = Message(head, start=self.offset + pos)
                    pos += head.head_len
                    kind, n = self._framing
                    if kind == "chunked":
                        self._chunked = ChunkedBody()
                    self._left = n
                    if kind in ("none", "tunnel") or (kind == "length" and n == 0):
                        self._emit(out, self._finish(pos))
                        if kind == "tunnel":
                            self.tunnel = True
                            pos = len(self.buf)
                        elif self.is_request and (head.method == "CONNECT"
                                                  or head.header("upgrade") is not None):
                            self.held = True
                        continue
                kind, _ = self._framing
                if kind == "length":
                    take = min(self._left, len(self.buf) - pos)
                    self._left -= take
                    self.cur.body_len += take
                    pos += take
                    if self._left:
                        break
                    self._emit(out, self._finish(pos))
                    if self.is_request and self.cur is None and out[-1].head.header("upgrade"):
                        self.held = True
                elif kind == "chunked":
                    assert self._chunked is not None
                    pos, done = self._chunked.feed(self.buf, pos)
                    self.cur.body_len = self._chunked.body_len
                    if not done:
                        break
                    self._emit(out, self._finish(pos))
                else:  # until the connection closes
                    self.cur.body_len += len(self.buf) - pos
                    pos = len(self.buf)
                    break
        finally:
            del self.buf[:pos]
            self.offset += pos

    def release(self, tunnel: bool) -> list[Message]:
        """The answer to the held request came: a tunnel (the held bytes and all that follow are
        another protocol's), or plain HTTP again (the held bytes are parsed now)."""
        if not self.held:
            return []
        self.held = False
        if tunnel:
            self.tunnel = True
            self.offset += len(self.buf)
            self.buf.clear()
            return []
        return self.feed(b"")

    def skip(self, n: int) -> list[Message]:
        """n bytes went by that were not captured (beyond the kernel's chunk size, or sent with
        sendfile). Fine inside a body of known length, one delimited by close, a tunnel, and a
        chunked body (whose end is then found at the next message); anywhere else the stream
        cannot be followed: HttpParseError("truncated")."""
        if n <= 0:
            return []
        if self.tunnel:
            self.offset += n
            return []
        if self.cur is None or self.buf or self.held:
            raise HttpParseError("truncated")
        kind, _ = self._framing
        self.offset += n
        if kind == "close" or self._lost:
            self.cur.body_len += n
            return []
        if kind == "chunked":
            assert self._chunked is not None
            if not self._chunked.skip(n):
                self._lost = True
            self.cur.body_len = self._chunked.body_len
            return []
        if kind != "length" or n > self._left:
            raise HttpParseError("truncated")
        self._left -= n
        self.cur.body_len += n
        out: list[Message] = []
        if not self._left:
            self._emit(out, self._finish(0))
        return out

    def end_lost(self) -> bool:
        """The other side proved that a message whose chunked framing was lost has ended (a
        final response came for the request being sent): complete it, to the sink."""
        if not self._lost or self.cur is None:
            return False
        self._lost = False
        self._emit([], self._finish(len(self.buf)))
        return True

    def _finish(self, pos: int) -> Message:
        assert self.cur is not None
        msg = self.cur
        msg.end = self.offset + pos
        self.cur = None
        self._chunked = None
        return msg

    def close(self) -> Message | None:
        """The connection closed: a body delimited by close is complete (and a chunked one whose
        framing was lost is taken as ended), anything else is cut."""
        if self.cur is None:
            return None
        msg = self.cur
        msg.end = self.offset + len(self.buf)
        msg.complete = self._framing[0] == "close" or self._lost
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
    connection starts over), never memory without bound. An Upgrade or CONNECT request holds
    the client's next bytes until its answer: a 101 (or a 2xx to CONNECT) makes both directions
    a tunnel, any other answer lets the held bytes be parsed as requests."""

    def __init__(self) -> None:
        self.requests = MessageStream(is_request=True)
        self.responses = MessageStream(is_request=False)
        self.pending: deque[Message] = deque()
        self._out: list[Pair] = []
        self.requests.sink = self.add_request
        self.responses.sink = self._on_response

    @property
    def tunnel(self) -> bool:
        return self.responses.tunnel

    def client_bytes(self, data: bytes, skipped: int = 0) -> list[Message]:
        """Bytes from the client (then `skipped` bytes that were not captured); returns the
        requests they completed. Each request is pending as soon as it is complete: on an
        error, those before it stay, whatever the pieces the bytes came in."""
        done = self.requests.feed(data) if data else []
        return done + self.requests.skip(skipped)

    def add_request(self, m: Message) -> None:
        if len(self.pending) >= MAX_PENDING:
            raise HttpParseError("too_many_pending")
        self.pending.append(m)
        self.responses.request_methods.append(m.head.method)

    def server_bytes(self, data: bytes, skipped: int = 0) -> list[Pair]:
        """Bytes from the server; returns the pairs they completed. Each response is paired as
        soon as it is complete: on an error, the pairs before it ride on the error as `pairs`."""
        self._out = []
        try:
            if data:
                self.responses.feed(data)
            self.responses.skip(skipped)
        except HttpParseError as e:
            e.pairs = self._out
            raise
        return self._out

    def _on_response(self, m: Message) -> None:
        if 100 <= m.head.status < 200 and m.head.status != 101:
            return  # interim (100 Continue, 103 Early Hints): the final response follows
        if not self.pending:
            # a request whose chunked body went beyond the capture ends where its answer comes
            self.requests.end_lost()
        req = self.pending.popleft() if self.pending else None
        if req is None:
            raise HttpParseError("response_without_request")
        self._out.append(Pair(req, m))
        if self.requests.held and not self.pending:  # the answer to the held request
            tunnel = m.head.status == 101 or (req.head.method == "CONNECT"
                                              and 200 <= m.head.status < 300)
            self.requests.release(tunnel)  # released requests are pending (the sink)

    def close(self) -> list[Pair]:
        out = []
        last = self.responses.close()
        if last is not None and self.pending:
            out.append(Pair(self.pending.popleft(), last))
        while self.pending:
            out.append(Pair(self.pending.popleft(), None))
        return out
