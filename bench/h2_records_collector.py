"""The HTTP collector's own cost per HTTP/2 request with records on, without BPF or a workload:
one connection's stream events (a server's view: 20k GETs over h2c with the records' TCP
sequence numbers and parents, as the kernel sends them) through the Python path (event by
event, H2Connection) and through the compiled engine (batches of 64, H2Engine(records=True)),
each request published as a record dict to a list. Prints microseconds per request for each.
Usage (from the repository root): .venv/bin/python bench/h2_records_collector.py [--requests N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hpack import Encoder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.unit import test_h2engine as t  # noqa: E402  (the unit tests' event builders)


def pieces(n: int) -> list[tuple[bool, bytes]]:
    ce, se = Encoder(), Encoder()
    out = [(True, t.PREFACE + t.frame(t.SETTINGS, 0, 0, b"")),
           (False, t.frame(t.SETTINGS, 0, 0, b""))]
    for i in range(n):
        sid = 2 * i + 1
        out.append((True, t.frame(t.HEADERS, t.END_HEADERS | t.END_STREAM, sid, ce.encode([
            (":method", "GET"), (":scheme", "http"), (":path", "/index.html"),
            (":authority", "s")]))))
        out.append((False, t.frame(t.HEADERS, t.END_HEADERS, sid, se.encode([
            (":status", "200"), ("server", "nginx")])) + t.frame(t.DATA, t.END_STREAM, sid, b"x")))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    a = ap.parse_args()
    work = pieces(a.requests)
    for engine in (False, True):
        c, recs = t.records_collector(engine)
        evs = t.with_links(c, [t.event(c, "HTTP_S_DATA", inbound, data, ts=1000 * (i + 1))
                               for i, (inbound, data) in enumerate(work)]
                           + [t.event(c, "HTTP_S_CLOSE", False, b"", ts=10**12)], (5, 9))
        if engine:
            batches = [t.batch(evs[i:i + 64]) for i in range(0, len(evs), 64)]
            t0 = time.perf_counter()
            for b in batches:
                c._on_streams(memoryview(b))
            with c._lock:
                c._fold_h2()
        else:
            t0 = time.perf_counter()
            for r in evs:
                c._on_stream(r)
        dt = time.perf_counter() - t0
        assert len(recs) == a.requests, len(recs)
        print(f"{'engine' if engine else 'python'}: {dt / len(recs) * 1e6:.1f} us per request "
              f"({len(recs)} records)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
