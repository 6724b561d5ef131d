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
    for (_ident, system, op, status, _coll, _ns), cell in cells:
        assert system in ("redis", "memcached", "postgresql", "mysql")
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
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=64)), max_size=40),
       st.sampled_from([4, 5, 6, 7]))
def test_random_bytes_never_crash(chunks: list[tuple[bool, bytes]], proto: int) -> None:
    e = _fast.DbEngine()
    e.process(batch([event(b, i, inbound, proto=proto) for i, (inbound, b) in enumerate(chunks)]))
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


MYSQL = 7
DEPRECATE_EOF = 1 << 24


def my(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def my_eof(status: int = 2, deprecate: bool = False) -> bytes:
    """The end of a list: an EOF packet, or (CLIENT_DEPRECATE_EOF) an OK packet of type 0xfe."""
    if deprecate:
        return b"\xfe\x00\x00" + status.to_bytes(2, "little") + b"\x00\x00"
    return b"\xfe\x00\x00" + status.to_bytes(2, "little")


def coldef(name: bytes) -> bytes:
    return b"\x03def\x02db\x01t\x01t" + bytes([len(name)]) + name + bytes([len(name)]) + name \
        + b"\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00"


def result(seq: int, cols: list[bytes], rows: list[bytes], deprecate: bool,
           more: bool = False) -> tuple[bytes, int]:
    out = my(seq, bytes([len(cols)]))
    for c in cols:
        seq += 1
        out += my(seq, coldef(c))
    if not deprecate:
        seq += 1
        out += my(seq, my_eof())
    for r in rows:
        seq += 1
        out += my(seq, r)
    seq += 1
    return out + my(seq, my_eof(0x0a if more else 2, deprecate)), seq + 1


def my_exchange(deprecate: bool, greeting: bool = True) -> tuple[list[bytes], list[bytes]]:
    """A libmariadb-like session: greeting and login, text queries (a result set, an error, a
    procedure's two results), two prepared statements executed, a ping, statements closed."""
    caps = 0xEA20F | (DEPRECATE_EOF if deprecate else 0)
    srv_caps = 0xF7DF | DEPRECATE_EOF | 0xEA20F
    ok = my(2, b"\x00\x00\x00\x02\x00\x00\x00")

    def ok_at(seq: int) -> bytes:
        return my(seq, b"\x00\x00\x00\x02\x00\x00\x00")

    client = [my(1, caps.to_bytes(4, "little") + b"\x00\x00\x00\x01\x21" + b"\x00" * 23
                 + b"root\x00\x00")] if greeting else []
    server = [my(0, b"\x0a10.11.6-MariaDB\x00" + b"\x07\x00\x00\x00" + b"abcdefgh\x00"
                 + (srv_caps & 0xFFFF).to_bytes(2, "little") + b"\x21\x02\x00"
                 + (srv_caps >> 16).to_bytes(2, "little") + b"\x15" + b"\x00" * 10
                 + b"ijklmnopqrstu\x00mysql_native_password\x00")] if greeting else []
    if greeting:
        server.append(ok)
    two, _ = result(1, [b"id", b"name"], [b"\x017\x03bob", b"\x018\x03amy"], deprecate)
    client.append(my(0, b"\x03SELECT id, name FROM t WHERE id > 6"))
    server.append(two)
    client.append(my(0, b"\x03/* app */ insert into t values (1)"))
    server.append(my(1, b"\xff\x26\x04#23000Duplicate entry '1' for key 'PRIMARY'"))
    first, seq = result(1, [b"a"], [b"\x011"], deprecate, more=True)
    client.append(my(0, b"\x03CALL p()"))
    server.append(first + ok_at(seq))
    # prepared: two parameters and no columns; one parameter and two columns
    client.append(my(0, b"\x16UPDATE t SET x = ? WHERE id = ?"))
    defs = my(2, coldef(b"?")) + my(3, coldef(b"?"))
    server.append(my(1, b"\x00\x01\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00") + defs
                  + (b"" if deprecate else my(4, my_eof())))
    client.append(my(0, b"\x16 select a, b from t where id = ?"))
    body = my(2, coldef(b"?")) + (b"" if deprecate else my(3, my_eof()))
    n = 3 if deprecate else 4
    body += my(n, coldef(b"a")) + my(n + 1, coldef(b"b"))
    body += b"" if deprecate else my(n + 2, my_eof())
    server.append(my(1, b"\x00\x02\x00\x00\x00\x02\x00\x01\x00\x00\x00\x00") + body)
    client.append(my(0, b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00"))
    server.append(ok_at(1))
    client.append(my(0, b"\x17\x02\x00\x00\x00\x00\x01\x00\x00\x00"))
    rows, _ = result(1, [b"a", b"b"], [b"\x00\x00\x01\x02"], deprecate)
    server.append(rows)
    client.append(my(0, b"\x0e"))
    server.append(ok_at(1))
    client.append(my(0, b"\x19\x01\x00\x00\x00") + my(0, b"\x19\x02\x00\x00\x00"))
    server.append(b"")
    client.append(my(0, b"\x01"))
    return client, server


MY_WANT = {("SELECT", ""): 2, ("INSERT", "1062"): 1, ("CALL", ""): 1, ("PREPARE", ""): 2,
           ("UPDATE", ""): 1, ("PING", ""): 1}


def cut(data: bytes, cuts: list[int], k: int) -> list[bytes]:
    pieces, j = [], 0
    while j < len(data):
        n = cuts[k % len(cuts)]
        pieces.append(data[j:j + n])
        j, k = j + n, k + 1
    return pieces


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=20), st.booleans(), st.booleans(),
       st.booleans())
def test_mysql_text_and_prepared_cut_anywhere(cuts: list[int], server: bool, deprecate: bool,
                                              greeting: bool) -> None:
    """The same session with EOF packets or without (CLIENT_DEPRECATE_EOF), from its greeting
    or met after its login (which of the two is then not known), cut at any byte."""
    client_msgs, server_msgs = my_exchange(deprecate, greeting)
    role = SERVER if server else CLIENT
    evs, ts = [], 0
    if greeting:  # the server speaks first
        server_msgs = server_msgs[:1] + server_msgs[1:]
        evs.append(event(server_msgs.pop(0), 1, not server, role, proto=MYSQL))
    for i, q in enumerate(client_msgs):
        for piece in cut(q, cuts, i):
            ts += 1
            evs.append(event(piece, ts, server, role, proto=MYSQL))
        if i < len(server_msgs) and server_msgs[i]:
            for piece in cut(server_msgs[i], cuts, i + 7):
                ts += 1
                evs.append(event(piece, ts + 10, not server, role, proto=MYSQL))
            ts += 10
    e = _fast.DbEngine()
    e.process(batch(evs))
    counts, errors, _ = ops(e)
    assert counts == MY_WANT and not errors


def test_mysql_large_result_not_captured_ends_before_the_next_command() -> None:
    rows, _ = result(1, [b"v"], [b"\xfc\x00\x10" + b"x" * 4096] * 40, False)
    e = _fast.DbEngine()
    e.process(batch([event(my(0, b"\x03SELECT v FROM big"), 1, False, proto=MYSQL),
                     event(rows[:300], 5, True, length=len(rows), proto=MYSQL),
                     event(my(0, b"\x0e"), 9, False, proto=MYSQL),
                     event(my(1, b"\x00\x00\x00\x02\x00\x00\x00"), 10, True, proto=MYSQL)]))
    counts, errors, sums = ops(e)
    assert counts == {("SELECT", ""): 1, ("PING", ""): 1} and not errors
    assert sums[("SELECT", "")] == 4


def test_mysql_encrypted_and_compressed_connections_are_left_alone() -> None:
    greet = my(0, b"\x0a8.0.36\x00" + b"\x01\x00\x00\x00" + b"abcdefgh\x00\xff\xff\x21\x02\x00"
               b"\xff\xff\x15" + b"\x00" * 10)
    for caps, reason, size in ((0x800 | 0x200, "mysql_encrypted", 32),
                               (0x20 | 0x200, "mysql_compressed", 40)):
        e = _fast.DbEngine()
        e.process(batch([event(greet, 1, True, proto=MYSQL),
                         event(my(1, caps.to_bytes(4, "little") + b"\x00" * (size - 4)), 2, False,
                               proto=MYSQL),
                         event(my(2, b"\x16\x03\x01garbage"), 3, False, proto=MYSQL)]))
        counts, errors, _ = ops(e)
        assert not counts and errors == {reason: 1}


def test_mysql_query_body_read_after_its_header() -> None:
    """A server reads a packet's header, then its body: a connection met mid-way is found at a
    body (the kernel saw the header go by before it knew the connection)."""
    e = _fast.DbEngine()
    ok = my(1, b"\x00\x00\x00\x02\x00\x00\x00")
    rows, _ = result(1, [b"1"], [b"\x011"], True)
    e.process(batch([event(b"\x03SELECT 1", 1, True, SERVER, proto=MYSQL),
                     event(rows, 2, False, SERVER, proto=MYSQL),
                     event(my(0, b"\x03COMMIT")[:4], 3, True, SERVER, proto=MYSQL),
                     event(b"\x03COMMIT", 4, True, SERVER, proto=MYSQL),
                     event(ok, 5, False, SERVER, proto=MYSQL)]))
    counts, errors, _ = ops(e)
    assert counts == {("SELECT", ""): 1, ("COMMIT", ""): 1} and not errors


NORMALISED = [
    (b"SELECT * FROM t WHERE id = 42 AND name = 'bob'", "SELECT * FROM t WHERE id = ? AND name = ?"),
    (b"select a from t where x in (1, 2,3 , 4.5e-3)", "select a from t where x in (?)"),
    (b"INSERT INTO t VALUES ('it''s', -7, 0xFF) -- trailing\n", "INSERT INTO t VALUES (?, -?)"),
    (b"  /* hint */ UPDATE  \"T\"\n SET v=$1\tWHERE k = 'a'", 'UPDATE "T" SET v=$1 WHERE k = ?'),
    (b"SELECT '" + b"x" * 100 + b"' FROM t", "SELECT ? FROM t"),
    (b"SELECT '" + b"x" * 200 + b"' FROM t", "SELECT ?"),  # past the 160 bytes kept
    (b"SELECT col" + b"umn" * 60, ("SELECT col" + "umn" * 60)[:124] + "..."),
    (b"SELECT '\xff\xfe' AS \xc3\xa9t\xe9", "SELECT ? AS \u00e9t\ufffd"),
]


def test_statements_in_records_have_no_literal_values() -> None:
    """Records carry each statement with its literal values replaced: strings (quotes doubled
    inside), numbers, lists of them; comments and blanks tidied; names and placeholders kept;
    cut at 127 characters; bytes that are not UTF-8 replaced."""
    e = _fast.DbEngine(records=True)
    evs = []
    for i, (sql, _want) in enumerate(NORMALISED):
        evs += [event(pg(b"Q", sql + b"\x00"), 2 * i + 1, False, proto=POSTGRES),
                event(pg(b"C", b"SELECT 1\x00") + pg(b"Z", b"I"), 2 * i + 2, True,
                      proto=POSTGRES)]
    e.process(batch(evs))
    got = [r[-1] for r in e.take_records()]
    assert got == [want for _sql, want in NORMALISED]
    # MySQL: double quotes are strings, and a backslash escapes
    e.process(batch([event(my(0, b"\x03SELECT \"a\\\"b\", 'c\\'d' FROM t"), 1, False, conn=8,
                           proto=MYSQL),
                     event(my(1, b"\x00\x00\x00\x02\x00\x00\x00"), 2, True, conn=8, proto=MYSQL)]))
    assert [r[-1] for r in e.take_records()] == ["SELECT ? FROM t"]
    assert _fast.DbEngine().take_records() == []  # not asked for: none kept


NATS = 8
NATS_CLIENT = [  # (what the client writes, what the server answers)
    (b'CONNECT {"verbose":false,"pedantic":false,"name":"' + b"n" * 400 + b'"}\r\nPING\r\n',
     b'INFO {"server_id":"' + b"s" * 500 + b'"}\r\nPONG\r\n'),
    (b"SUB _INBOX.abc.* 1\r\nSUB orders.* 2\r\nPUB orders.new 5\r\nhello\r\n", b""),
    (b"HPUB orders.paid 12 14\r\nNATS/1.0\r\n\r\nhi\r\n", b"MSG orders.new 2 5\r\nhello\r\n"),
    (b"PUB svc.echo _INBOX.abc.x1 4\r\nping\r\n",
     b"HMSG orders.paid 2 12 14\r\nNATS/1.0\r\n\r\nhi\r\nMSG _INBOX.abc.x1 1 8\r\nre: ping\r\n"),
    (b"PUB svc.echo _INBOX.abc.x2 4\r\nping\r\n", b"MSG _INBOX.abc.x2 1 0\r\n\r\n"),
    (b"PUB forbidden 1\r\nx\r\n", b"-ERR 'Permissions Violation for Publish to \"forbidden\"'\r\n"),
    (b"PING\r\n", b"PONG\r\n"),
]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=20))
def test_nats_messages_requests_and_errors_cut_anywhere(cuts: list[int]) -> None:
    """A client's publishes (with headers too), its deliveries, requests paired with the message
    on their reply subject, the server's -ERR by kind; long INFO and CONNECT lines passed."""
    evs, ts = [], 0
    for i, (q, r) in enumerate(NATS_CLIENT):
        for piece in cut(q, cuts, i):
            ts += 1
            evs.append(event(piece, ts, False, proto=NATS))
        for piece in cut(r, cuts, i + 3):
            ts += 1
            evs.append(event(piece, ts + 100, True, proto=NATS))
        ts += 100
    e = _fast.DbEngine(records=True)
    e.process(batch(evs))
    cells, errors = e.take()
    got: dict[tuple[str, str, str], int] = {}
    for (_ident, system, op, status, coll, _ns), cell in cells:
        assert system == "nats"
        got[(op, status, coll)] = got.get((op, status, coll), 0) + _CELL.unpack(cell)[0]
    assert got == {("publish", "", "orders.new"): 1, ("publish", "", "orders.paid"): 1,
                   ("publish", "", "svc.echo"): 2, ("publish", "", "forbidden"): 1,
                   ("receive", "", "orders.new"): 1, ("receive", "", "orders.paid"): 1,
                   ("receive", "", "_INBOX"): 2, ("request", "", "svc.echo"): 2,
                   ("error", "permissions_violation", ""): 1}, got
    assert not errors and e.take_records() == []  # messages are counted, not recorded
