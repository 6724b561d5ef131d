"""Fuzz the in-kernel HTTP/1 path and the collector's stream path with real sockets: the mutated
messages of fuzz_http1.py, each sent over its own loopback TCP connection in random pieces (the
request, then the response), while two agents watch: one with the default in-kernel path, one
with header capture (every byte parsed in user space). Needs root.

Checks:
- both agents stay healthy and log no traceback (nothing escapes the collectors);
- no input leaves a connection unfinished for long (its records come within SETTLE seconds of
  the connection's close, or they count as differing);
- agreement with the parser, fed the same pieces: for every connection whose bytes the parser
  reads without an error, each agent's requests (method, status) must equal the parser's. On
  inputs the parser rejects, the paths may legitimately differ (the kernel path counts what it
  can follow); those are counted, not failed.
Prints one JSON line of figures and writes it to bench/results/<date>/fuzz_http1_kernel.json.
Usage: python bench/fuzz_http1_kernel.py [--minutes 5] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz_http1 import SEEDS_REQ, SEEDS_RESP, mutate  # noqa: E402
from tcp_overhead import write_results  # noqa: E402

from podscope.protocols import http1  # noqa: E402
from podscope.protocols.http1 import Exchange, HttpParseError  # noqa: E402
from tests.conftest import AgentProc  # noqa: E402

SETTLE = 5.0
BATCH = 100
Row = tuple[str, int | None]


_RESPONSE_START = re.compile(rb"(?:^|(?<=\n))HTTP/1\.")
_HEAD_END = re.compile(rb"\r?\n\r?\n")


def heads_whole(rnd: random.Random, data: bytes, is_request: bool) -> list[bytes]:
    """Random pieces that never cut a message head: the shape the in-kernel path is built for
    (a head starts where a syscall's data does, or is streamed to user space, and is whole in
    one syscall, as servers and clients write them); bodies are cut anywhere."""
    starts = ([m.start() for m in re.finditer(rb"(?:^|(?<=\n))[!#$%&'*+\-.^_`|~0-9A-Za-z]+ ", data)
               if http1.find_request(data, m.start()) == m.start()] if is_request
              else [m.start() for m in _RESPONSE_START.finditer(data)])
    first = len(data) - len(data.lstrip(b"\r\n"))  # the first head, whatever its shape
    spans = [(0, m.end() if (m := _HEAD_END.search(data, first)) else len(data))]
    for a in starts:
        end = _HEAD_END.search(data, a)
        spans.append((a, end.end() if end else len(data)))
    cuts = [c for c in {rnd.randint(1, max(1, len(data) - 1)) for _ in range(rnd.randint(0, 8))}
            if not any(a < c < b for a, b in spans)]
    bounds = sorted({0, *cuts, len(data)})
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def parse(req: list[bytes], resp: list[bytes]) -> list[Row] | None:
    """(method, status) of each request as the parser reads the pieces (a response cut short
    by the close still has its status, as the collector records it); None when the input is
    not a complete, valid exchange: a parse error, a request cut short, a head cut short, a
    tunnel (after a 101 the kernel path looks at the bytes afresh)."""
    ex = Exchange()
    try:
        for p in req:
            ex.client_bytes(p)
        pairs = [pr for p in resp for pr in ex.server_bytes(p)]
        # a head cut short (the kernel path counts a request from its first line, and takes a
        # response's status from its first line: heads longer than it reads are common)
        cut = ex.requests.cur is not None or any(bytes(d.buf).strip(b"\r\n")
                                                 for d in (ex.requests, ex.responses))
        pairs += ex.close()
    except HttpParseError:
        return None
    if ex.tunnel or cut:
        return None
    return [(p.request.head.method, p.response.head.status if p.response is not None else None)
            for p in pairs]


class Agent(AgentProc):
    """The tests' agent process, exporting records; `records()` reads the new ones."""

    def __init__(self, work: Path, name: str, extra: list[str]):
        self.export = work / f"{name}.jsonl"
        self.read_at = 0
        super().__init__(["--export", f"jsonl:{self.export}", *extra], work)

    def healthy(self) -> bool:
        try:
            self.get("/healthz")
            return True
        except OSError:
            return False

    def records(self) -> list[dict[str, object]]:
        """The server-side records written since the last call."""
        if not self.export.exists():
            return []
        with open(self.export, "rb") as f:
            f.seek(self.read_at)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.read_at += end
        out = []
        for line in data[:end].splitlines():
            r = json.loads(line)
            if r.get("type") == "http_request" and r.get("role") == "server":
                out.append(r)
        return out


def exchange(listener: socket.socket, req: list[bytes], resp: list[bytes]) -> tuple[int, float]:
    """One connection: the request pieces, then (once the server read them all) the response
    pieces, then both sides close. Returns the client's port and when it connected (a record of
    an earlier connection from the same port is older)."""
    t0 = time.time()
    c = socket.create_connection(listener.getsockname())
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s, _ = listener.accept()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    port = c.getsockname()[1]
    sent = got = 0
    for p in req:
        c.sendall(p)
        sent += len(p)
        while got < sent:  # the server reads each piece before the next is sent, mostly alone
            got += len(s.recv(65536))
    for p in resp:
        s.sendall(p)
        time.sleep(0.0002)
    s.close()
    c.settimeout(5)
    try:
        while c.recv(65536):
            pass
    except OSError:
        pass
    c.close()
    return port, t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"
                                         / time.strftime("%Y-%m-%d") / "fuzz_http1_kernel.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("fuzz_http1_kernel: needs root (it loads BPF programs)")
    rnd = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="podscope-fuzz-"))
    agents: dict[str, Agent] = {}
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    n = valid = 0
    agree: Counter[str] = Counter()
    differ: Counter[str] = Counter()
    examples: list[str] = []
    try:
        agents = {"kernel": Agent(work, "kernel", []),
                  "stream": Agent(work, "stream", ["--http-headers"])}
        deadline = time.monotonic() + args.minutes * 60
        while time.monotonic() < deadline:
            batch: dict[int, tuple[list[bytes], list[bytes], list[Row] | None]] = {}
            since: dict[int, float] = {}
            for _ in range(BATCH):
                req = mutate(rnd, rnd.choice(SEEDS_REQ)) if rnd.random() < 0.8 \
                    else rnd.choice(SEEDS_REQ)
                resp = mutate(rnd, rnd.choice(SEEDS_RESP)) if rnd.random() < 0.8 \
                    else rnd.choice(SEEDS_RESP)
                rq, rs = heads_whole(rnd, req, True), heads_whole(rnd, resp, False)
                port, since[port] = exchange(listener, rq, rs)
                batch[port] = (rq, rs, parse(rq, rs))
                n += 1
            for name, a in agents.items():
                seen: dict[int, list[Row]] = {}
                want = {p for p, (_, _, truth) in batch.items() if truth}
                until = time.monotonic() + SETTLE
                while True:
                    for r in a.records():
                        peer = int(r["peer_port"])  # type: ignore[call-overload]
                        if peer in batch and float(r["time"]) >= since[peer] - 0.01:  # type: ignore[arg-type]
                            m = str(r["method_original"] or r["method"])
                            st = r["status"]
                            seen.setdefault(peer, []).append(
                                (m, int(st) if st is not None else None))  # type: ignore[call-overload]
                    done = {p for p in want
                            if Counter(seen.get(p, [])) == Counter(batch[p][2] or [])}
                    if done == want or time.monotonic() > until:
                        break
                    time.sleep(0.5)
                for port, (rq, rs, truth) in batch.items():
                    if truth is None:
                        continue
                    got = seen.get(port, [])
                    if Counter(got) == Counter(truth):
                        agree[name] += 1
                    else:
                        differ[name] += 1
                        if len(examples) < 8:
                            examples.append(f"{name}: {rq!r} / {rs!r}: parser {truth}, "
                                            f"agent {got}"[:1500])
                if not a.healthy():
                    raise SystemExit(f"agent {name} stopped answering: "
                                     f"{a.log.read_text()[-2000:]}")
            valid += sum(1 for _, _, t in batch.values() if t is not None)
    finally:
        listener.close()
        for a in agents.values():
            a.stop()
    tracebacks = {name: a.log.read_text().count("Traceback") for name, a in agents.items()}
    shutil.rmtree(work, ignore_errors=True)
    figures = {"minutes": args.minutes, "seed": args.seed, "connections": n,
               "parsed_without_error": valid, "agree": dict(agree), "differ": dict(differ),
               "agent_tracebacks": tracebacks,
               "examples": examples}
    write_results(args.out, [figures])
    return 0 if not (any(differ.values()) or any(tracebacks.values())) else 1


if __name__ == "__main__":
    raise SystemExit(main())
