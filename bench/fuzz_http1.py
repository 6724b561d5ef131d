"""Fuzz the HTTP/1 stream parser (`podscope.protocols.http1`) for a while: mutated real and RFC
messages fed through `Exchange` in random pieces, with random uncaptured gaps, both directions.

Checks on every input:
- nothing but HttpParseError escapes a public entry point (client_bytes, server_bytes, close);
- no input takes longer than HANG seconds (a hang);
- split invariance: the same bytes fed whole and in random pieces give the same requests and
  responses (methods, targets, statuses, body lengths) or the same error.
Prints one JSON line of figures and writes it to bench/results/<date>/fuzz_http1.json.
Usage: python bench/fuzz_http1.py [--minutes 5] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tcp_overhead import write_results  # noqa: E402
from test_http1_conformance import CASES  # noqa: E402

from podscope.protocols.http1 import Exchange, HttpParseError  # noqa: E402

HANG = 1.0
SEEDS_REQ = [c.data for c in CASES if c.is_request] + [
    b"GET /a?x=1 HTTP/1.1\r\nHost: a\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
    b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n0\r\n\r\n",
    b"GET /chat HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x85abcdefghi",
    b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n\x16\x03\x01\x00\x05hello",
]
SEEDS_RESP = [c.data for c in CASES if not c.is_request] + [
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Length: 3\r\nConnection: keep-alive"
    b"\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1f4\r\n" + b"x" * 500 + b"\r\n0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05Hello",
    b"HTTP/1.0 200 OK\r\n\r\nuntil close",
]
TOKENS = [b"\r\n", b"\n", b"\r", b" ", b":", b";", b"0", b"ffffffff", b"Content-Length: 5\r\n",
          b"Transfer-Encoding: chunked\r\n", b"HTTP/1.1 ", b"GET ", b"\r\n\r\n", b"\x00", b"\xff"]


def mutate(rnd: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 6)):
        op = rnd.randrange(6)
        i = rnd.randint(0, len(buf))
        if op == 0 and buf:
            buf[min(i, len(buf) - 1)] = rnd.randrange(256)
        elif op == 1:
            buf[i:i] = rnd.choice(TOKENS)
        elif op == 2 and buf:
            del buf[i:i + rnd.randint(1, 8)]
        elif op == 3:
            other = rnd.choice(SEEDS_REQ + SEEDS_RESP)
            j = rnd.randint(0, len(other))
            buf[i:] = other[j:]
        elif op == 4:
            buf[i:i] = buf[i:i + rnd.randint(1, 64)] * rnd.randint(1, 4)
        else:
            buf[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 16)))
    return bytes(buf[:20000])


def pieces(rnd: random.Random, data: bytes) -> list[bytes]:
    if not data:
        return []
    cuts = sorted(set(rnd.randint(1, max(1, len(data) - 1)) for _ in range(rnd.randint(0, 8))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=False) if b > a]


def run(req: list[bytes], resp: list[bytes], gap: int) -> object:
    """What the parser made of it: the pairs, or the first error's reason."""
    ex = Exchange()
    out: list[tuple[object, ...]] = []
    resp = resp or [b""]  # the gap comes with the last piece, even an empty one
    try:
        for p in req:
            ex.client_bytes(p)
        for k, p in enumerate(resp):
            pairs = ex.server_bytes(p, gap if k == len(resp) - 1 else 0)
            out += [(x.request.head.method, x.request.head.target,
                     x.response.head.status if x.response else None,
                     x.response.body_len if x.response else None) for x in pairs]
        out += [(x.request.head.method, x.response is not None) for x in ex.close()]
    except HttpParseError as e:
        out += [(x.request.head.method, x.request.head.target,
                 x.response.head.status if x.response else None,
                 x.response.body_len if x.response else None) for x in e.pairs]
        return ("error", e.reason, out, len(ex.pending))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"
                                         / time.strftime("%Y-%m-%d") / "fuzz_http1.json"))
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    deadline = time.monotonic() + args.minutes * 60
    n = escaped = hangs = split_differs = errors = 0
    slowest = 0.0
    examples: list[str] = []
    while time.monotonic() < deadline:
        req = mutate(rnd, rnd.choice(SEEDS_REQ)) if rnd.random() < 0.8 else rnd.choice(SEEDS_REQ)
        resp = mutate(rnd, rnd.choice(SEEDS_RESP)) if rnd.random() < 0.8 \
            else rnd.choice(SEEDS_RESP)
        gap = rnd.choice([0, 0, 0, 1, 100, 100_000])
        n += 1
        t0 = time.perf_counter()
        try:
            whole = run([req], [resp], gap)
            split = run(pieces(rnd, req), pieces(rnd, resp), gap)
        except Exception:  # noqa: BLE001 - this is what is being counted
            escaped += 1
            if len(examples) < 5:
                examples.append(f"{req!r} {resp!r}: {traceback.format_exc(limit=3)}")
            continue
        took = time.perf_counter() - t0
        slowest = max(slowest, took)
        hangs += took > HANG
        errors += isinstance(whole, tuple)
        if whole != split:
            split_differs += 1
            if len(examples) < 5:
                examples.append(f"split differs: {req!r} {resp!r}: {whole} vs {split}")
    figures = {"minutes": args.minutes, "seed": args.seed, "inputs": n,
               "inputs_with_a_parse_error": errors, "exceptions_escaping": escaped,
               "hangs_over_1s": hangs, "slowest_input_seconds": round(slowest, 4),
               "split_results_differ": split_differs, "examples": examples}
    write_results(args.out, [figures])
    print(json.dumps(figures))
    return 0 if not (escaped or hangs or split_differs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
