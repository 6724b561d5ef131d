"""The DNS parser and the DNS-over-TCP framer against messages built by dnspython."""

from __future__ import annotations

import random

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from podscope.protocols.dns import DnsError, Message, TcpFramer, parse


def query(name: str, qtype: str = "A") -> bytes:
    return bytes(dns.message.make_query(name, qtype).to_wire())


def answer(name: str, qtype: str, rcode: int, answers: int = 0) -> bytes:
    q = dns.message.make_query(name, qtype)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    for i in range(answers):
        r.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "A", f"10.0.0.{i + 1}"))
    return bytes(r.to_wire())


@pytest.mark.parametrize(("qtype", "rcode", "answers"), [
    ("A", dns.rcode.NOERROR, 2), ("AAAA", dns.rcode.NOERROR, 0), ("MX", dns.rcode.NXDOMAIN, 0),
    ("TXT", dns.rcode.SERVFAIL, 0), ("SRV", dns.rcode.REFUSED, 0), ("HTTPS", dns.rcode.NOERROR, 0)])
def test_query_and_response(qtype: str, rcode: int, answers: int) -> None:
    q = parse(query("api.example.test", qtype))
    assert not q.response and q.name == "api.example.test"
    assert q.qtype_name == qtype and q.questions == 1
    r = parse(answer("api.example.test", qtype, rcode, answers))
    assert r.response
    assert r.rcode_name == dns.rcode.to_text(rcode) and r.answers == answers
    assert r.name == "api.example.test" and r.qtype_name == qtype


def test_ids_pair() -> None:
    wire = dns.message.make_query("x.test", "A")
    resp = dns.message.make_response(wire)
    assert parse(wire.to_wire()).id == parse(resp.to_wire()).id == wire.id


def test_cut_short_keeps_the_header() -> None:
    full = answer("a-rather-long-name.example.test", "A", 0, 30)
    m = parse(full[:20])  # the name itself is cut
    assert m.response and m.answers == 30 and m.name == "" and m.qtype == 0
    m = parse(full[:512])
    assert m.name == "a-rather-long-name.example.test" and m.qtype_name == "A"


@pytest.mark.parametrize("data", [b"", b"\x00" * 5, b"\xff" * 12 + b"\x05ab", b"\x00\x01\x00\x00\x00\x01"
                                  + b"\x00" * 6 + b"\x40" + b"x" * 70])
def test_garbage_is_a_dns_error(data: bytes) -> None:
    with pytest.raises(DnsError):
        parse(data)


def test_random_bytes_only_raise_dns_error() -> None:
    rnd = random.Random(7)
    valid = [query("svc.ns.svc.cluster.local", "AAAA"), answer("x.test", "A", 3, 1)]
    for _ in range(5000):
        if rnd.random() < 0.5:
            data = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 80)))
        else:
            b = bytearray(rnd.choice(valid))
            for _ in range(rnd.randrange(1, 6)):
                b[rnd.randrange(len(b))] = rnd.getrandbits(8)
            data = bytes(b[: rnd.randrange(len(b) + 1)])
        try:
            m = parse(data)
        except DnsError:
            continue
        assert isinstance(m, Message)


def framed(msgs: list[bytes]) -> bytes:
    return b"".join(len(m).to_bytes(2, "big") + m for m in msgs)


def test_tcp_framer_any_split() -> None:
    msgs = [query("a.test"), answer("a.test", "A", 0, 3), query("b.test", "AAAA")]
    stream = framed(msgs)
    rnd = random.Random(3)
    for _ in range(200):
        f, got, p = TcpFramer(), [], 0
        while p < len(stream):
            n = rnd.randrange(1, 40)
            got += f.feed(stream[p: p + n], len(stream[p: p + n]))
            p += n
        assert got == msgs


def test_tcp_framer_skips_what_was_not_captured() -> None:
    big = answer("big.test", "A", 0, 100)  # > 512 bytes
    assert len(big) > 600
    small = query("next.test")
    stream = framed([big, small])
    f = TcpFramer()
    cut = 2 + len(big)
    # one read moved the whole first message; only 514 bytes of it were captured
    out = f.feed(stream[:514], cut) + f.feed(stream[cut:], len(stream) - cut)
    assert len(out) == 2 and out[0] == big[:512] and out[1] == small
    assert parse(out[0]).answers == 100


def test_tcp_framer_lost_length_is_an_error() -> None:
    f = TcpFramer()
    with pytest.raises(DnsError):
        f.feed(b"", 10)
