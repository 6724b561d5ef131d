"""The compiled database engine (podscope._fast.DbEngine) on Redis streams: requests paired with
replies in order (pipelined, cut at any byte), errors by prefix, RESP3 pushes and attributes that
are not replies, MULTI/EXEC, pub/sub left unpaired, large values not captured, garbage counted
and the connection started over. The real servers are in tests/kernel/test_db.py."""

from __future__ import annotations

import ctypes as ct
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from podscope import _fast, libbpf
from podscope.collectors.db import _CELL
from podscope.collectors.http import HttpCollector
from podscope.metadata.store import MetadataStore

SAMPLE = libbpf.SAMPLE_FN(_fast.SAMPLE_CALLBACK)
REDIS, MEMCACHED = 4, 5
CLIENT, SERVER = 2, 1
_C = HttpCollector(MetadataStore(None, proc="/nonexistent"))


def cmd(*args: str | bytes) -> bytes:
    out = b"*%d\r\n" % len(args)
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n%s\r\n" % (len(b), b)
    return out


def event(data: bytes, ts: int, inbound: bool, role: int = CLIENT, conn: int = 5,
          kind: str = "HTTP_S_DATA", length: int | None = None, gap: int = 0,
          proto: int = REDIS) -> bytes:
    ev = _C.StreamEv()
    ev.conn_id, ev.ts_ns, ev.cgroup_id, ev.netns = conn, ts, 77, 4026531840
    ev.len = len(data) if length is None else length
    ev.captured = len(data)
    ev.kind = _C.stream_kinds[kind]
    ev.inbound = int(inbound)
    ev.role, ev.family, ev.proto, ev.gap = role, 2, proto, gap
    ev.local_port, ev.peer_port = 40000, 6379
    ev.peer_addr[:4] = [10, 0, 0, 9]
    return bytes(ev) + data


def batch(records: list[bytes]) -> bytes:
    b = _fast.Batch()
    for r in records:
        buf = ct.create_string_buffer(r, len(r))
        SAMPLE(b.ctx, ct.addressof(buf), len(r))
    return b.take()


def ops(e: Any) -> tuple[dict[tuple[str, str], int], dict[str, int], dict[tuple[str, str], int]]:
    """(operation, status) -> count, errors, and (operation, status) -> duration sum (ns)."""
    cells, errors = e.take()
    counts: dict[tuple[str, str], int] = {}
    sums: dict[tuple[str, str], int] = {}
    for (_ident, system, op, status), cell in cells:
        assert system in ("redis", "memcached", "postgresql")
        v = _CELL.unpack(cell)
        counts[(op, status)] = counts.get((op, status), 0) + v[0]
        sums[(op, status)] = sums.get((op, status), 0) + v[1]
        assert sum(v[4:]) == v[0]
    return counts, dict(errors), sums


def client_exchange(pairs: list[tuple[bytes, bytes]], pipelined: bool = True) -> list[bytes]:
    """A client's writes and reads: all requests, then all replies (pipelined), or in turn."""
    if pipelined:
        return [event(b"".join(q for q, _ in pairs), 1000, False),
                event(b"".join(r for _, r in pairs), 5000, True)]
    out = []
    for i, (q, r) in enumerate(pairs):
        out += [event(q, 1000 + 10 * i, False), event(r, 1003 + 10 * i, True)]
    return out


PAIRS = [
    (cmd("SET", "k", "v"), b"+OK\r\n"),
    (cmd("get", "k"), b"$1\r\nv\r\n"),
    (cmd("GET", "missing"), b"$-1\r\n"),
    (cmd("LPUSH", "k", "x"), b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"),
    (cmd("INCR", "n"), b":1\r\n"),
    (cmd("LRANGE", "l", "0", "-1"), b"*2\r\n$1\r\na\r\n*1\r\n:5\r\n"),
    (cmd("HGETALL", "h"), b"%1\r\n+f\r\n$1\r\n1\r\n"),
    (cmd("NOPE"), b"-ERR unknown command 'NOPE'\r\n"),
    (b"PING\r\n", b"+PONG\r\n"),  # an inline command
    (cmd("HELLO", "3"), b"|1\r\n+key\r\n+val\r\n%0\r\n"),  # an attribute, then the reply
    (cmd("MULTI"), b"+OK\r\n"),
    (cmd("SET", "a", "1"), b"+QUEUED\r\n"),
    (cmd("EXEC"), b"*1\r\n+OK\r\n"),
]
WANT = {("SET", ""): 2, ("GET", ""): 2, ("LPUSH", "WRONGTYPE"): 1, ("INCR", ""): 1,
        ("LRANGE", ""): 1, ("HGETALL", ""): 1, ("NOPE", "ERR"): 1, ("PING", ""): 1,
        ("HELLO", ""): 1, ("MULTI", ""): 1, ("EXEC", ""): 1}


def test_requests_paired_with_replies_in_turn_and_pipelined() -> None:
    for pipelined in (False, True):
        e = _fast.DbEngine()
        e.process(batch(client_exchange(PAIRS, pipelined)))
        counts, errors, sums = ops(e)
        assert counts == WANT and not errors
        assert e.operations == 13
        if not pipelined:
            assert all(s == 3 * counts[k] for k, s in sums.items())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.booleans())
def test_cut_anywhere_the_same(cuts: list[int], server: bool) -> None:
    """Each side's bytes cut into syscalls at arbitrary places; as the server sees them too."""
    reqs = b"".join(q for q, _ in PAIRS)
    reps = b"".join(r for _, r in PAIRS)

    def pieces(data: bytes) -> list[bytes]:
        out, i, j = [], 0, 0
        while i < len(data):
            n = cuts[j % len(cuts)]
            out.append(data[i:i + n])
            i, j = i + n, j + 1
        return out

    role = SERVER if server else CLIENT
    evs = [event(p, 100 + i, server, role) for i, p in enumerate(pieces(reqs))]
    evs += [event(p, 10_000 + i, not server, role) for i, p in enumerate(pieces(reps))]
    e = _fast.DbEngine()
    for i in range(0, len(evs), 7):
        e.process(batch(evs[i:i + 7]))
    counts, errors, _ = ops(e)
    assert counts == WANT and not errors


def test_pushes_are_not_replies_and_pubsub_is_not_paired() -> None:
    e = _fast.DbEngine()
    e.process(batch([
        event(cmd("GET", "a"), 1, False),
        event(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n$1\r\nx\r\n", 2, True),
        event(cmd("SUBSCRIBE", "c1", "c2"), 3, False),
        event(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nc1\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$2\r\nc2\r\n:2\r\n",
              4, True),
        event(b"*3\r\n$7\r\nmessage\r\n$2\r\nc1\r\n$5\r\nhello\r\n", 5, True),
        event(cmd("PING"), 6, False),
        event(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n", 7, True),
    ]))
    counts, errors, sums = ops(e)
    assert counts == {("GET", ""): 1, ("SUBSCRIBE", ""): 1} and not errors
    assert sums[("GET", "")] == 1  # the push before the reply did not end it


def test_a_large_value_not_captured_is_passed_over() -> None:
    big = b"x" * 100_000
    e = _fast.DbEngine()
    reply = b"$100000\r\n" + big + b"\r\n"
    e.process(batch([event(cmd("GET", "big"), 10, False),
                     event(reply[:8192], 20, True, length=len(reply)),
                     event(cmd("GET", "k"), 30, False), event(b"$1\r\nv\r\n", 40, True)]))
    counts, errors, _ = ops(e)
    assert counts == {("GET", ""): 2} and not errors


def test_a_large_reply_of_many_elements_ends_before_the_next_request() -> None:
    """LRANGE of 3000 elements: the kernel copies 8 KB of each read; what it answered ends with
    the last bytes read before the client's next request (as redis-cli's COMMAND DOCS)."""
    reply = b"*3000\r\n" + b"".join(b"$5\r\nv%04d\r\n" % i for i in range(3000))
    e = _fast.DbEngine()
    e.process(batch([
        event(cmd("LRANGE", "l", "0", "-1"), 100, False),
        event(reply[:8192], 200, True, length=16384),
        event(reply[16384:16384 + 8192], 300, True, length=len(reply) - 16384),
        event(cmd("GET", "k"), 400, False), event(b"$1\r\nv\r\n", 450, True),
        event(cmd("MSET", *[f"k{i}" for i in range(4000)]), 500, False, length=60000),
        event(b"+OK\r\n", 520, True),
        event(cmd("KEYS", "*"), 600, False), event(reply[:8192], 700, True, length=len(reply)),
        event(b"", 800, False, kind="HTTP_S_CLOSE"),
    ]))
    counts, errors, sums = ops(e)
    assert counts == {("LRANGE", ""): 1, ("GET", ""): 1, ("MSET", ""): 1, ("KEYS", ""): 1}
    assert not errors
    assert sums == {("LRANGE", ""): 200, ("GET", ""): 50, ("MSET", ""): 20, ("KEYS", ""): 100}


def test_garbage_and_lost_events_are_counted_and_the_parser_starts_over() -> None:
    e = _fast.DbEngine()
    e.process(batch([
        event(cmd("GET", "a"), 1, False), event(b"?what\r\n", 2, True),  # not RESP
        event(cmd("GET", "b"), 3, False), event(b"$1\r\nv\r\n", 4, True),
        event(cmd("SET", "c", "d"), 5, False, gap=1), event(b"+OK\r\n", 6, True),
        event(cmd("GET", "e"), 7, False),
        event(b"", 8, False, kind="HTTP_S_CLOSE"),
    ]))
    counts, errors, _ = ops(e)
    assert counts == {("GET", ""): 1, ("SET", ""): 1}
    assert errors == {"redis_not_resp": 1, "db_unpaired": 1, "db_events_lost": 1,
                      "db_unanswered": 1}
    assert e.connections == 0


def test_names_from_the_wire_are_bounded() -> None:
    e = _fast.DbEngine()
    e.process(batch([event(cmd(b"g\xffet", "k") + cmd("x" * 100), 1, False),
                     event(b"-oops lower\r\n+OK\r\n", 2, True)]))
    counts, errors, _ = ops(e)
    # a command name with a byte no command has: _OTHER; a long name is cut at 32 bytes
    assert counts == {("_OTHER", "oops"): 1, ("X" * 32, ""): 1} and not errors


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=64)), max_size=40))
def test_random_bytes_never_crash(chunks: list[tuple[bool, bytes]]) -> None:
    e = _fast.DbEngine()
    e.process(batch([event(b, i, inbound) for i, (inbound, b) in enumerate(chunks)]))
    counts, errors, _ = ops(e)
    assert all(n > 0 for n in counts.values())
    assert struct.calcsize("<4Q40Q") == _fast.DB_CELL_SIZE


K250 = b"k" * 250  # the longest key memcached takes
MC = [
    (b"set k 0 0 5\r\nhello\r\n", b"STORED\r\n"),
    (b"set " + K250 + b" 0 0 3\r\nabc\r\n", b"STORED\r\n"),
    (b"gets " + K250 + b"\r\n", b"VALUE " + K250 + b" 0 3 12345678901\r\nabc\r\nEND\r\n"),
    (b"get k missing\r\n", b"VALUE k 0 5\r\nhello\r\nEND\r\n"),
    (b"gets k\r\n", b"VALUE k 0 5 9\r\nhello\r\nEND\r\n"),
    (b"get nothing\r\n", b"END\r\n"),
    (b"add k 0 0 1\r\nx\r\n", b"NOT_STORED\r\n"),
    (b"cas k 0 0 1 99\r\ny\r\n", b"EXISTS\r\n"),
    (b"incr n 1\r\n", b"NOT_FOUND\r\n"),
    (b"delete k\r\n", b"DELETED\r\n"),
    (b"touch k 10\r\n", b"NOT_FOUND\r\n"),
    (b"bogus\r\n", b"ERROR\r\n"),
    (b"set k 0 0 notanumber\r\n", b"CLIENT_ERROR bad data chunk\r\n"),
    (b"mg k v t\r\n", b"VA 2 t-1\r\nhi\r\n"),
    (b"ms k 2 T0\r\nhi\r\n", b"HD\r\n"),
    (b"md k\r\n", b"HD\r\n"),
    (b"stats\r\n", b"STAT pid 1\r\nSTAT uptime 5\r\nEND\r\n"),
    (b"version\r\n", b"VERSION 1.6.18\r\n"),
]
MC_WANT = {("set", ""): 2, ("set", "CLIENT_ERROR"): 1, ("get", ""): 2, ("gets", ""): 2,
           ("add", ""): 1, ("cas", ""): 1, ("incr", ""): 1, ("delete", ""): 1, ("touch", ""): 1,
           ("bogus", "ERROR"): 1, ("mg", ""): 1, ("ms", ""): 1, ("md", ""): 1, ("stats", ""): 1,
           ("version", ""): 1}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.booleans())
def test_memcached_text_and_meta_cut_anywhere(cuts: list[int], pipelined: bool) -> None:
    """Every request paired with its response (retrievals until END, data blocks passed over);
    noreply and quiet requests get none; a set whose size is not a number gets CLIENT_ERROR."""
    pairs = MC
    reqs = b"".join(q for q, _ in pairs) + b"set q 0 0 1 noreply\r\nz\r\nmd q q\r\n"
    reps = b"".join(r for _, r in pairs)

    def pieces(data: bytes) -> list[bytes]:
        out, i, j = [], 0, 0
        while i < len(data):
            out.append(data[i:i + cuts[j % len(cuts)]])
            i, j = i + cuts[j % len(cuts)], j + 1
        return out

    if pipelined:
        evs = [event(x, 100 + i, False, proto=MEMCACHED) for i, x in enumerate(pieces(reqs))]
        evs += [event(x, 9000 + i, True, proto=MEMCACHED) for i, x in enumerate(pieces(reps))]
    else:
        evs = []
        for i, (q, r) in enumerate(pairs):
            evs += [event(q, 100 * i, False, proto=MEMCACHED),
                    event(r, 100 * i + 7, True, proto=MEMCACHED)]
    e = _fast.DbEngine()
    e.process(batch(evs))
    counts, errors, sums = ops(e)
    want = {k: v for k, v in MC_WANT.items()}
    assert counts == want and not errors
    if not pipelined:
        assert all(s == 7 * counts[k] for k, s in sums.items())


def test_memcached_errors_and_garbage() -> None:
    e = _fast.DbEngine()
    e.process(batch([
        event(b"get a\r\n", 2, False, proto=MEMCACHED),
        event(b"SERVER_ERROR out of memory\r\n", 3, True, proto=MEMCACHED),
        event(b"get c\r\n", 4, False, proto=MEMCACHED),
        event(b"\x00\x01binary\r\n", 5, True, proto=MEMCACHED),  # not the text protocol
        event(b"get b\r\n", 6, False, proto=MEMCACHED),
        event(b"END\r\n", 7, True, proto=MEMCACHED),
    ]))
    counts, errors, _ = ops(e)
    assert counts == {("get", "SERVER_ERROR"): 1, ("get", ""): 1}
    assert errors == {"memcached_not_text": 1, "db_unpaired": 1}


POSTGRES = 6


def pg(t: bytes, body: bytes) -> bytes:
    return t + (len(body) + 4).to_bytes(4, "big") + body


def pg_exchange() -> tuple[list[bytes], list[bytes]]:
    """A libpq-like session: SSL refused, startup, login, then simple and extended queries, a
    prepared statement used twice, a unique violation."""
    startup = b"\x00\x03\x00\x00user\x00bench\x00database\x00db\x00\x00"
    client = [
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
        (len(startup) + 4).to_bytes(4, "big") + startup,
        pg(b"Q", b"SELECT abalance FROM pgbench_accounts WHERE aid = 7;\x00"),
        pg(b"Q", b"/* hi */ insert into t values (1)\x00"),
        pg(b"P", b"\x00  update t set x = $1\x00\x00\x00") + pg(b"B", b"\x00\x00" + b"\x00" * 6)
        + pg(b"E", b"\x00\x00\x00\x00\x00") + pg(b"S", b""),
        pg(b"P", b"s1\x00DELETE FROM t\x00\x00\x00") + pg(b"S", b""),
        pg(b"B", b"\x00s1\x00" + b"\x00" * 6) + pg(b"E", b"\x00\x00\x00\x00\x00") + pg(b"S", b""),
        pg(b"X", b""),
    ]
    ready = pg(b"Z", b"I")
    server = [
        b"N",
        pg(b"R", b"\x00\x00\x00\x00") + pg(b"S", b"server_version\x0015\x00")
        + pg(b"K", b"\x00" * 8) + ready,
        pg(b"T", b"\x00\x01abalance\x00" + b"\x00" * 18) + pg(b"D", b"\x00\x01\x00\x00\x00\x010")
        + pg(b"C", b"SELECT 1\x00") + ready,
        pg(b"E", b"SERROR\x00C23505\x00Mduplicate key\x00\x00") + ready,
        pg(b"1", b"") + pg(b"2", b"") + pg(b"C", b"UPDATE 3\x00") + ready,
        pg(b"1", b"") + ready,
        pg(b"2", b"") + pg(b"C", b"DELETE 1\x00") + ready,
    ]
    return client, server


PG_WANT = {("SELECT", ""): 1, ("INSERT", "23505"): 1, ("UPDATE", ""): 1, ("PREPARE", ""): 1,
           ("DELETE", ""): 1}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=20), st.booleans())
def test_postgres_simple_extended_and_prepared_cut_anywhere(cuts: list[int], server: bool) -> None:
    client_msgs, server_msgs = pg_exchange()
    role = SERVER if server else CLIENT
    evs, ts = [], 0
    for i, q in enumerate(client_msgs):
        pieces, j, k = [], 0, i
        while j < len(q):
            n = cuts[k % len(cuts)]
            pieces.append(q[j:j + n])
            j, k = j + n, k + 1
        for piece in pieces:
            ts += 1
            evs.append(event(piece, ts, server, role, proto=POSTGRES))
        if i < len(server_msgs):
            ts += 10
            evs.append(event(server_msgs[i], ts, not server, role, proto=POSTGRES))
    e = _fast.DbEngine()
    e.process(batch(evs))
    counts, errors, _ = ops(e)
    assert counts == PG_WANT and not errors


def test_postgres_encrypted_connections_are_left_alone() -> None:
    e = _fast.DbEngine()
    e.process(batch([event(b"\x00\x00\x00\x08\x04\xd2\x16\x2f", 1, False, proto=POSTGRES),
                     event(b"S", 2, True, proto=POSTGRES),
                     event(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 3, False,
                           proto=POSTGRES)]))
    counts, errors, _ = ops(e)
    assert not counts and errors == {"postgres_encrypted": 1}


def test_postgres_connection_met_after_its_start() -> None:
    """The engine forgot an idle connection (or the agent restarted): its next query is read as
    a query, not as a startup message."""
    e = _fast.DbEngine()
    e.process(batch([event(pg(b"Q", b"SELECT 1\x00"), 1, False, proto=POSTGRES),
                     event(pg(b"C", b"SELECT 1\x00") + pg(b"Z", b"I"), 2, True, proto=POSTGRES)]))
    counts, errors, _ = ops(e)
    assert counts == {("SELECT", ""): 1} and not errors
