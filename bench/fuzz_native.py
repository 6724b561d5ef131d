"""Fuzz podscope._fast (src/podscope/native) built with AddressSanitizer and UBSan: `make
fuzz-native` builds it into build/asan and runs this with libasan preloaded, so any out-of-bounds
access, use-after-free or undefined behaviour aborts the run with a report.

Every entry point gets random input for MINUTES:
- the ring buffer callback with random record sizes and a random batch limit, then take/split,
  the in-place view and clear (every record comes back, in order, or is counted as dropped);
- split of random bytes (well framed, truncated, garbage): a list or ValueError, nothing else;
- HttpJsonl.encode of random batches of random struct http_record bytes (any path, address,
  method, role, breakdown), short records among them, resolvers that sometimes fail: the lines
  parse as JSON and there is one per whole record, or the resolver's own exception comes back;
- H2Wire.feed of HTTP/2 connections: real header blocks (hpack's encoder, Huffman or not, table
  size changes) in frames cut at random points, mutated (bytes flipped, cut, inserted), both
  directions, seen from the start or mid-way, with uncaptured gaps: events or a reason;
- H2Engine.process of stream event batches (struct http_stream_event with those bytes, random
  kinds, lost-event marks, hints, closes, truncated events, several connections at once), then
  take(): aggregate cells of the right size, and every connection handed over or kept; the same
  into an engine with records (random links, parents and sequence numbers) and take_records():
  one tuple of 21 fields per finished request, then HttpJsonl.encode_h2 of them (a line each
  that parses as JSON) with now and then a foreign tuple among them (an error, not a crash);
- DbEngine.process of Redis, memcached, PostgreSQL, MySQL and NATS connections' stream events: real
  RESP2/RESP3 commands and replies (pipelined, nested, errors, pushes, attributes), memcached text
  and meta requests and responses (data blocks, noreply, quiet, 250-byte keys), PostgreSQL
  startups (SSL asked), simple and extended queries and answers, MySQL greetings, logins,
  commands and answers (result sets with and without EOF packets, prepare OKs), NATS lines and
  payloads (publishes, requests, deliveries, -ERR, long INFO and CONNECT), with records
  (statements normalised) and take_records(), mutated, cut at
  random points, with lost events, uncaptured bytes and closes, several connections at once;
  take().
A crash is the sanitizer's report and a non-zero exit. Prints one JSON line of figures and
writes it to bench/results/<date>/fuzz_native.json.
Usage: python bench/fuzz_native.py [--minutes 5] [--seed N] [--module build/asan/_fast...so]
"""

from __future__ import annotations

import argparse
import ctypes as ct
import importlib.machinery
import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def load_module(path: str) -> None:
    """Import the given build of podscope._fast (the sanitized one) in place of the package's."""
    import podscope

    loader = importlib.machinery.ExtensionFileLoader("podscope._fast", path)
    spec = importlib.util.spec_from_file_location("podscope._fast", path, loader=loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    sys.modules["podscope._fast"] = mod
    podscope._fast = mod  # type: ignore[attr-defined]


class Boom(Exception):
    pass


def in_order(got: list[bytes], sent: list[bytes]) -> bool:
    """got is sent with some records left out, the rest in their order."""
    it = iter(sent)
    return all(any(g == s for s in it) for g in got)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--module", help="a build of podscope._fast to fuzz (default: the package's)")
    a = ap.parse_args()
    if a.module:
        load_module(a.module)
    from tcp_overhead import write_results

    from podscope import _fast, libbpf
    from podscope.collectors.http import BLOCK_REASONS, METHODS

    rng = random.Random(a.seed)
    sample = libbpf.SAMPLE_FN(_fast.SAMPLE_CALLBACK)
    size = _fast.HTTP_RECORD_SIZE
    figures = {"seed": a.seed, "module": a.module or _fast.__file__, "batches": 0,
               "records": 0, "dropped": 0, "split_inputs": 0, "split_errors": 0,
               "encoded_lines": 0, "short_records": 0, "resolver_failures": 0,
               "h2_connections": 0, "h2_events": 0, "h2_errors": 0,
               "engine_events": 0, "engine_left": 0, "engine_handovers": 0, "engine_cells": 0,
               "engine_records": 0, "engine_lines": 0, "engine_foreign_records": 0,
               "db_events": 0, "db_operations": 0, "db_errors": 0,
               "db_records": 0}
    import ctypes as _ct

    http_obj = libbpf.BpfObject(libbpf.bpf_object_path("http"), "http")  # its BTF: the layout
    StreamEv = http_obj.struct("http_stream_event")
    python_conns: dict[int, object] = {}

    def adopt(record: bytes) -> None:
        ev = StreamEv.from_buffer_copy(record[:_ct.sizeof(StreamEv)])
        python_conns[ev.conn_id] = None
        figures["engine_handovers"] += 1
        if len(python_conns) > 5:
            python_conns.clear()

    engine = _fast.H2Engine(python_conns, adopt)
    rengine = _fast.H2Engine(python_conns, adopt, records=True)  # and the records of each request
    db = _fast.DbEngine(records=True)  # records: the statements normalised too

    def bulk(b: bytes) -> bytes:
        return b"$%d\r\n%s\r\n" % (len(b), b)

    def resp_value(depth: int = 0) -> bytes:
        t = rng.randrange(12 if depth < 3 else 8)
        if t == 0:
            return b"+" + rng.choice([b"OK", b"PONG", b"QUEUED"]) + b"\r\n"
        if t == 1:
            return b"-" + rng.choice([b"ERR x", b"WRONGTYPE y", b"MOVED 1 a:1", b"e"]) + b"\r\n"
        if t == 2:
            return b":%d\r\n" % rng.randrange(-5, 10**6)
        if t == 3:
            return bulk(rng.randbytes(rng.choice([0, 1, 5, 300, 9000])))
        if t == 4:
            return rng.choice([b"$-1\r\n", b"*-1\r\n", b"_\r\n", b"#t\r\n", b",1.5\r\n"])
        if t == 5:
            return b"!%d\r\nSYNTAX bad\r\n" % len(b"SYNTAX bad")
        if t in (6, 7):
            return b"(12345678901234567890\r\n" if t == 6 else b"=7\r\ntxt:abc\r\n"
        kind = rng.choice([b"*", b"~", b">", b"%", b"|"])
        n = rng.randrange(0, 4)
        items = b"".join(resp_value(depth + 1) for _ in range(n * (2 if kind in b"%|" else 1)))
        return kind + b"%d\r\n" % n + items

    def mc_stream(request: bool) -> bytes:
        """memcached's text and meta protocols: requests, or responses."""
        out = b""
        for _ in range(rng.randrange(1, 6)):
            key = rng.choice([b"k", b"\x10" * 8 + b"abc", b"k" * 250])
            data = rng.randbytes(rng.choice([0, 3, 1024, 9000]))
            if request:
                out += rng.choice([
                    b"get " + key + b"\r\n", b"gets " + key + b" " + key + b"\r\n",
                    b"set " + key + b" 0 0 %d\r\n" % len(data) + data + b"\r\n",
                    b"set " + key + b" 0 0 %d noreply\r\n" % len(data) + data + b"\r\n",
                    b"ms " + key + b" %d T0\r\n" % len(data) + data + b"\r\n",
                    b"mg " + key + b" v q\r\n", b"delete " + key + b"\r\n", b"stats\r\n",
                    b"incr " + key + b" 1\r\n", b"set k 0 0 x\r\n", b"quit\r\n"])
            else:
                out += rng.choice([
                    b"STORED\r\n", b"END\r\n", b"ERROR\r\n", b"CLIENT_ERROR bad\r\n",
                    b"VALUE " + key + b" 0 %d\r\n" % len(data) + data + b"\r\nEND\r\n",
                    b"VA %d t\r\n" % len(data) + data + b"\r\n", b"HD\r\n", b"EN\r\n",
                    b"STAT pid 1\r\nEND\r\n", b"42\r\n"])
        return mutate(out)

    def pg_msg(t: bytes, body: bytes) -> bytes:
        return t + (len(body) + 4).to_bytes(4, "big") + body

    def pg_stream(request: bool, first: bool) -> bytes:
        """PostgreSQL: a client's startup (maybe after an SSLRequest) and queries, or a server's
        answers."""
        out = b""
        if request and first:
            if rng.random() < 0.3:
                out += b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
            body = b"\x00\x03\x00\x00user\x00u\x00\x00"
            out += (len(body) + 4).to_bytes(4, "big") + body
        for _ in range(rng.randrange(1, 6)):
            sql = rng.choice([b"SELECT 1", b"insert into t values (1)", b"/* c */ UPDATE t",
                              b"", rng.randbytes(rng.choice([3, 200, 9000])), *SQL])
            if request:
                out += rng.choice([
                    pg_msg(b"Q", sql + b"\x00"),
                    pg_msg(b"P", b"s1\x00" + sql + b"\x00\x00\x00") + pg_msg(b"S", b""),
                    pg_msg(b"B", b"\x00s1\x00" + b"\x00" * 6) + pg_msg(b"E", b"\x00" * 5)
                    + pg_msg(b"S", b""), pg_msg(b"S", b""), pg_msg(b"X", b"")])
            else:
                out += rng.choice([
                    b"N", pg_msg(b"Z", b"I"), pg_msg(b"C", b"SELECT 1\x00") + pg_msg(b"Z", b"I"),
                    pg_msg(b"E", b"SERROR\x00C23505\x00\x00") + pg_msg(b"Z", b"E"),
                    pg_msg(b"D", rng.randbytes(rng.choice([4, 9000]))), pg_msg(b"1", b"")])
        return mutate(out)

    SQL = [b"SELECT a FROM \"s\".t WHERE a = 'x''y' AND b IN (1, 2.5e+3, 0xff) -- c\n;",
           b"/* x */ insert into `db`.`t` values (\"s\\\"q\", -1, .5, '\\'')",
           b"UPDATE LOW_PRIORITY t SET v = 'unterminated", b"delete from (select 1) x",
           b"SELECT '" + b"a" * 300 + b"'", b"SELECT " + b"1, " * 100 + b"2 FROM t",
           b"use shop", b"USE `sh op`"]

    def my_pkt(seq: int, body: bytes) -> bytes:
        return len(body).to_bytes(3, "little") + bytes([seq & 0xFF]) + body

    def my_stream(request: bool, first: bool) -> bytes:
        """MySQL/MariaDB: a greeting and login, commands (text, prepared, with no answer), or a
        server's answers (OK, ERR, result sets with and without EOF packets, prepare OKs)."""
        out = b""
        if first:
            out += (my_pkt(1, rng.choice([0xEA20F, 0x10EA20F, 0xEAA0F, 0xEA22F]).to_bytes(4, "little")
                           + b"\x00" * 28) if request else
                    my_pkt(0, b"\x0a10.11.6-MariaDB\x00" + b"\x00" * 13 + b"\xff\xf7\x21\x02\x00"
                           + b"\xff\x81" + b"\x00" * 11) + my_pkt(2, b"\x00\x00\x00\x02\x00"))
        for _ in range(rng.randrange(1, 6)):
            sql = rng.choice([b"SELECT 1", b"insert into t values (1)", b"/* c */ CALL p()", b"",
                              rng.randbytes(rng.choice([3, 200, 9000])), *SQL])
            if request:
                out += rng.choice([
                    my_pkt(0, b"\x03" + sql), my_pkt(0, b"\x16" + sql),
                    my_pkt(0, b"\x17" + rng.randbytes(4) + b"\x00\x01\x00\x00\x00"),
                    my_pkt(0, bytes([rng.randrange(0x20)])), my_pkt(0, b"\x19\x01\x00\x00\x00"),
                    my_pkt(2, rng.randbytes(rng.choice([0, 40, 300])))])
            else:
                col = my_pkt(2, b"\x03def" + rng.randbytes(20))
                eof = my_pkt(3, b"\xfe\x00\x00" + rng.choice([b"\x02\x00", b"\x0a\x00"]))
                ok_eof = my_pkt(4, b"\xfe\x00\x00" + rng.choice([b"\x02\x00", b"\x0a\x00"]) + b"\x00\x00")
                out += rng.choice([
                    my_pkt(1, b"\x00\x00\x00\x02\x00\x00\x00"), my_pkt(1, b"\xff\x26\x04#23000dup"),
                    my_pkt(1, b"\x01") + col + eof + my_pkt(4, b"\x011") + eof,
                    my_pkt(1, b"\x02") + col + col + my_pkt(4, b"\x00\x00\x01") + ok_eof,
                    my_pkt(1, b"\x01\x00") + my_pkt(2, rng.randbytes(rng.choice([4, 9000]))) + ok_eof,
                    my_pkt(1, b"\x00" + rng.randbytes(4) + bytes([rng.randrange(3), 0,
                                                                  rng.randrange(3), 0, 0, 0, 0]))
                    + col * rng.randrange(4) + rng.choice([eof, b""]),
                    my_pkt(1, b"\xfb/tmp/f"), eof, my_pkt(1, b"\xfe\xff\xff\xff")])
        return mutate(out)

    def nats_stream(request: bool, first: bool) -> bytes:
        """NATS: a client's CONNECT, subscriptions, publishes (with headers, reply subjects), or a
        server's INFO, deliveries, -ERR and PONG."""
        out = b""
        if first:
            out += (b'CONNECT {"name":"' + b"n" * rng.choice([5, 600]) + b'"}\r\n' if request
                    else b'INFO {"server_id":"' + b"s" * rng.choice([5, 600]) + b'"}\r\n')
        for _ in range(rng.randrange(1, 6)):
            data = rng.randbytes(rng.choice([0, 5, 9000]))
            subj = rng.choice([b"orders.new", b"_INBOX.a.b", b"x" * 300, b"svc.echo"])
            if request:
                out += rng.choice([
                    b"PUB %s %d\r\n%s\r\n" % (subj, len(data), data),
                    b"PUB %s _INBOX.a.%d %d\r\n%s\r\n" % (subj, rng.randrange(99), len(data),
                                                            data),
                    b"HPUB %s 12 %d\r\nNATS/1.0\r\n\r\n%s\r\n" % (subj, 12 + len(data), data),
                    b"SUB orders.* 1\r\n", b"UNSUB 1\r\n", b"PING\r\n", b"PUB bad\r\n"])
            else:
                out += rng.choice([
                    b"MSG %s 1 %d\r\n%s\r\n" % (subj, len(data), data),
                    b"MSG _INBOX.a.%d 1 %d\r\n%s\r\n" % (rng.randrange(99), len(data), data),
                    b"HMSG %s 1 r 12 12\r\nNATS/1.0\r\n\r\n\r\n" % subj,
                    b"-ERR 'Permissions Violation for Publish to \"x\"'\r\n", b"+OK\r\n",
                    b"PONG\r\n", b"-ERR 'Unknown Protocol Operation'\r\n"])
        return mutate(out)

    def mutate(out: bytes) -> bytes:
        data = bytearray(out)
        for _ in range(rng.choice([0, 0, 0, 1, 3])):
            if data:
                i = rng.randrange(len(data))
                op = rng.randrange(3)
                if op == 0:
                    data[i] = rng.randrange(256)
                elif op == 1:
                    del data[i:i + rng.randrange(1, 8)]
                else:
                    data[i:i] = rng.randbytes(rng.randrange(1, 8))
        return bytes(data)

    def resp_stream(request: bool) -> bytes:
        out = b""
        for _ in range(rng.randrange(1, 6)):
            if request:
                args = [rng.choice([b"GET", b"set", b"SUBSCRIBE", b"MULTI", b"EXEC",
                                    rng.randbytes(4)])]
                args += [rng.randbytes(rng.choice([0, 3, 40])) for _ in range(rng.randrange(3))]
                out += (b"*%d\r\n" % len(args) + b"".join(bulk(x) for x in args)
                        if rng.random() < 0.9 else b"PING\r\n")
            else:
                out += resp_value()
        return mutate(out)

    def labels_of(cg: int, netns: int) -> bytes:
        if rng.random() < 0.01:
            raise Boom()
        return b'"cgroup":"id:%d","netns":%d' % (cg, netns)

    def target_of(raw: bytes) -> bytes:
        if rng.random() < 0.01:
            raise Boom()
        return b'"path":%s,"route":"/r"' % json.dumps(raw.decode("latin-1")).encode()

    def peer_of(family: int, raw: bytes) -> bytes:
        return json.dumps(raw.hex()).encode()

    from hpack import Encoder

    from podscope.protocols import http2

    def h2_stream() -> bytes:
        """A client's bytes: preface, SETTINGS, HEADERS (+CONTINUATION), DATA, RST, GOAWAY."""
        e = Encoder()
        out = bytearray(http2.PREFACE if rng.random() < 0.7 else b"")
        for sid in range(1, rng.randrange(2, 20), 2):
            if rng.random() < 0.2:
                e.header_table_size = rng.choice([0, 100, 4096, 70000 if rng.random() < .1 else 8])
            hdrs = [(rng.choice([":method", ":path", ":status", "content-type", "grpc-status",
                                 "x-y", ":authority"]),
                     rng.choice(["GET", "/a/b", "200", "application/grpc", "0", "v" * 200, ""]))
                    for _ in range(rng.randrange(6))]
            block = e.encode(hdrs, huffman=rng.random() < 0.5)
            cut = rng.randrange(len(block) + 1)
            flags = http2.END_STREAM if rng.random() < 0.5 else 0
            if rng.random() < 0.3:  # split into HEADERS + CONTINUATION
                out += frame(http2.HEADERS, flags, sid, block[:cut])
                out += frame(http2.CONTINUATION, http2.END_HEADERS, sid, block[cut:])
            else:
                pad = rng.random() < 0.2
                body = (bytes([3]) + block + b"\0\0\0") if pad else block
                out += frame(http2.HEADERS, flags | http2.END_HEADERS | (http2.PADDED if pad
                                                                         else 0), sid, body)
            if rng.random() < 0.5:
                out += frame(http2.DATA, http2.END_STREAM, sid, rng.randbytes(rng.randrange(300)))
            if rng.random() < 0.1:
                out += frame(rng.choice([http2.RST_STREAM, http2.GOAWAY, http2.SETTINGS,
                                         http2.PING]), 0, sid, rng.randbytes(8))
        for _ in range(rng.randrange(4)):  # mutations
            if not out:
                break
            i = rng.randrange(len(out))
            op = rng.randrange(3)
            if op == 0:
                out[i] ^= 1 << rng.randrange(8)
            elif op == 1:
                del out[i:i + rng.randrange(1, 20)]
            else:
                out[i:i] = rng.randbytes(rng.randrange(1, 10))
        return bytes(out)

    def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
        return (len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big")
                + payload)

    enc = _fast.HttpJsonl(labels_of, target_of, peer_of,
                          tuple(json.dumps(METHODS[i]).encode() for i in range(len(METHODS))),
                          tuple(b'"r%d"' % i for i in range(len(BLOCK_REASONS))), 1.7e9,
                          text_of=lambda v: json.dumps(v).encode())
    deadline = time.monotonic() + a.minutes * 60
    while time.monotonic() < deadline:
        # HTTP/2: a connection's two directions in random pieces
        wire = _fast.H2Wire(rng.random() < 0.6)
        figures["h2_connections"] += 1
        for _ in range(rng.randrange(1, 4)):
            data, from_client = h2_stream(), rng.random() < 0.7
            pos = 0
            while pos < len(data):
                n = rng.randrange(1, 400)
                gap = rng.randrange(0, 50) if rng.random() < 0.05 else 0
                events, error = wire.feed(from_client, data[pos:pos + n], gap)
                pos += n
                figures["h2_events"] += len(events)
                if error is not None:
                    figures["h2_errors"] += 1
                    wire = _fast.H2Wire(False)
                    break
        # the engine: stream events of a few connections
        b = _fast.Batch()
        for _ in range(rng.randrange(1, 40)):
            ev = StreamEv()
            ev.conn_id = rng.randrange(1, 50)
            ev.kind = rng.choice([0, 0, 0, 0, 1, 2, 3])
            ev.proto = rng.choice([2, 2, 2, 1, 3, 4])
            ev.gap = int(rng.random() < 0.03)
            ev.role, ev.inbound = rng.choice([1, 2]), rng.randrange(2)
            ev.ts_ns = rng.randrange(1 << 40)
            data = h2_stream()[:rng.randrange(0, 600)] if ev.kind == 0 else rng.randbytes(40)
            ev.captured = len(data) if rng.random() < 0.9 else rng.randrange(0, 1000)
            ev.len = ev.captured + (rng.randrange(0, 100) if rng.random() < 0.1 else 0)
            ev.skip = rng.randrange(0, 30) if rng.random() < 0.05 else 0
            if rng.random() < 0.7:
                ev.link.flags = rng.choice([1, 1, 3, 0, 255])
                ev.link.seq = rng.randrange(1 << 32)
                ev.link.client_port = rng.randrange(1 << 16)
            if rng.random() < 0.3:
                ev.parent.flags, ev.parent.seq = rng.choice([1, 3, 0]), rng.randrange(1 << 32)
            rec = bytes(ev) + data
            if rng.random() < 0.02:
                rec = rec[:rng.randrange(len(rec))]
            buf = ct.create_string_buffer(rec, len(rec))
            sample(b.ctx, ct.addressof(buf), len(rec))
            figures["engine_events"] += 1
        taken = b.take()
        figures["engine_left"] += len(engine.process(taken))
        rengine.process(taken)
        recs = rengine.take_records()
        assert all(len(r) == 21 and len(r[-1]) == 16 for r in recs)
        figures["engine_records"] += len(recs)
        if recs:  # their JSON lines (HttpJsonl.encode_h2), now and then with a foreign tuple
            bad = rng.random() < 0.1
            if bad:
                recs.insert(rng.randrange(len(recs) + 1), tuple(
                    rng.choice([None, -1, 2**70, b"x", "s", (1, 2)])
                    for _ in range(rng.choice([3, 21]))))
            chunks: list[bytes] = []
            try:
                n_lines = enc.encode_h2(recs, lambda chunk, n, out=chunks: out.append(chunk))
                assert not bad and n_lines == len(recs), "encode_h2 line count"
                for line in b"".join(chunks).splitlines():
                    json.loads(line)
                figures["engine_lines"] += n_lines
            except Boom:
                figures["resolver_failures"] += 1
            except (TypeError, OverflowError, ValueError):
                assert bad, "encode_h2 refused an engine record"
                figures["engine_foreign_records"] += 1
        if rng.random() < 0.1:
            rengine.take()
            cells, _errors = engine.take()
            assert all(len(cell) == _fast.H2_CELL_SIZE for _k, cell in cells)
            figures["engine_cells"] += len(cells)
        # databases: Redis connections' events, the two sides in random pieces
        b = _fast.Batch()
        for _ in range(rng.randrange(1, 30)):
            conn, role = rng.randrange(1, 8), rng.choice([1, 2])
            request = rng.random() < 0.5
            conn = rng.randrange(1, 17)
            # Redis, memcached, PostgreSQL, MySQL, NATS
            proto = (4 if conn < 5 else 5 if conn < 8 else 6 if conn < 11 else 7 if conn < 14
                     else 8)
            data = (resp_stream(request) if proto == 4 else mc_stream(request) if proto == 5
                    else pg_stream(request, rng.random() < 0.3) if proto == 6
                    else my_stream(request, rng.random() < 0.2) if proto == 7
                    else nats_stream(request, rng.random() < 0.2))
            pos = 0
            while pos < len(data) or not data:
                n = rng.randrange(1, 200)
                ev = StreamEv()
                ev.conn_id, ev.proto, ev.role = conn, rng.choice([proto, proto, proto, 2]), role
                ev.kind = 1 if rng.random() < 0.03 else 0
                ev.inbound = int(request == (role == 1))
                ev.gap = int(rng.random() < 0.02)
                ev.ts_ns = rng.randrange(1 << 40)
                piece = data[pos:pos + n]
                ev.captured = len(piece)
                ev.len = len(piece) + (rng.randrange(1, 20000) if rng.random() < 0.03 else 0)
                rec = bytes(ev) + piece
                if rng.random() < 0.01:
                    rec = rec[:rng.randrange(len(rec))]
                buf = ct.create_string_buffer(rec, len(rec))
                sample(b.ctx, ct.addressof(buf), len(rec))
                figures["db_events"] += 1
                pos += n
                if not data:
                    break
        batch = b.take()
        db.process(batch)
        engine.process(batch)  # the HTTP/2 engine leaves them alone
        if rng.random() < 0.2:
            cells, errors = db.take()
            assert all(len(cell) == _fast.DB_CELL_SIZE for _k, cell in cells)
            figures["db_operations"] += sum(int.from_bytes(cell[:8], "little")
                                            for _k, cell in cells)
            figures["db_errors"] += sum(errors.values())
            recs = db.take_records()
            assert all(q is None or len(q) < 128 for *_r, q in recs)
            figures["db_records"] += len(recs)
        if rng.random() < 0.01:
            db.expire(1 << 41)
        # the callback, take, split, view, clear
        b = _fast.Batch(limit=rng.choice([4096, 65536, 1 << 20]))
        recs = [rng.randbytes(rng.choice([0, 1, 7, 8, 9, size - 1, size, size + 5,
                                          rng.randrange(0, 70000)])) for _ in range(rng.randrange(40))]
        dropped0 = b.dropped
        for r in recs:
            buf = ct.create_string_buffer(r, len(r))
            sample(b.ctx, ct.addressof(buf), len(r))
        if rng.random() < 0.5:
            got = _fast.split(b.take())
        else:
            with memoryview(b) as view:
                got = _fast.split(view)
            b.clear()
        kept = len(recs) - (b.dropped - dropped0)
        assert len(got) == kept and in_order(got, recs), "a batch lost or reordered records"
        figures["batches"] += 1
        figures["records"] += len(recs)
        figures["dropped"] += b.dropped - dropped0
        # split of arbitrary bytes
        data = bytearray(rng.randbytes(rng.randrange(0, 200)))
        if rng.random() < 0.5 and len(data) >= 8:
            data[0:4] = rng.randrange(0, 300).to_bytes(4, "little")
        figures["split_inputs"] += 1
        try:
            _fast.split(bytes(data))
        except ValueError:
            figures["split_errors"] += 1
        # records
        b = _fast.Batch()
        recs = []
        for _ in range(rng.randrange(1, 30)):
            n = size if rng.random() < 0.9 else rng.randrange(0, size + 64)
            r = bytearray(rng.randbytes(n))
            recs.append(bytes(r))
            buf = ct.create_string_buffer(bytes(r), len(r))
            sample(b.ctx, ct.addressof(buf), len(r))
        out: list[bytes] = []
        short0 = enc.short_records
        try:
            lines = enc.encode(b.take(), lambda chunk, n, out=out: out.append(chunk))
        except Boom:
            figures["resolver_failures"] += 1
            continue
        text = b"".join(out).splitlines()
        assert len(text) == lines == sum(len(r) >= size for r in recs), "line count"
        for line in text:
            json.loads(line)
        figures["encoded_lines"] += lines
        figures["short_records"] += enc.short_records - short0
    print(json.dumps(figures), flush=True)
    out_dir = Path(__file__).resolve().parent / "results" / time.strftime("%Y-%m-%d")
    write_results(str(out_dir / "fuzz_native.json"), [figures])
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
