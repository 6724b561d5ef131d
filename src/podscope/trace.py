"""`podscope trace http` and `podscope trace db`: a live stream of requests, or of database and
cache operations, one line each (or JSON lines). `trace http --tree` prints whole requests
instead: each tree of spans that one request made across the pods of this node (docs/traces.md),
as a waterfall, once it has been quiet for a while.

It loads its own instance of the HTTP programs with records on, so it works beside a running
agent or alone."""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from . import features
from .collectors.http import HttpCollector
from .metadata.resolve import cli_store, resolve
from .traces import Trees, tree_order

_DUR = re.compile(r"^\s*([0-9.]+)\s*(ns|us|µs|ms|s|m)?\s*$")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, None: 1.0}


def parse_duration(text: str) -> float:
    """'50ms' -> 0.05; a bare number is seconds."""
    m = _DUR.match(text)
    if not m:
        raise ValueError(f"--min-duration {text!r}: expected a number with ns, us, ms, s or m")
    return float(m.group(1)) * _UNIT[m.group(2)]


def status_filter(spec: str) -> Callable[[int | None], bool]:
    """'404,5xx,none' -> a predicate on a record's status (None: no response)."""
    exact: set[int] = set()
    classes: set[int] = set()
    none = False
    for part in spec.split(","):
        p = part.strip().lower()
        if p == "none":
            none = True
        elif re.fullmatch(r"[1-5]xx", p):
            classes.add(int(p[0]))
        elif re.fullmatch(r"\d{3}", p):
            exact.add(int(p))
        else:
            raise ValueError(f"--status {part!r}: expected a code (404), a class (5xx) or none")

    def ok(status: int | None) -> bool:
        if status is None:
            return none
        return status in exact or status // 100 in classes

    return ok


def pod_matches(rec: dict[str, Any], want: str) -> bool:
    ns, sep, name = want.rpartition("/")
    if sep:
        return bool(rec.get("k8s_namespace_name") == ns and rec.get("k8s_pod_name") == name)
    return want in (rec.get("k8s_pod_name"), rec.get("k8s_pod_uid")) or bool(
        rec.get("container_id") and str(rec["container_id"]).startswith(want))


def db_status_filter(spec: str) -> Callable[[str], bool]:
    """'1062,WRONGTYPE,ok,error' -> a predicate on an operation's status code ("": success)."""
    want = {p.strip() for p in spec.split(",") if p.strip()}
    if not want or any(not re.fullmatch(r"[A-Za-z0-9_.:-]{1,32}", p) for p in want):
        raise ValueError(f"--status {spec!r}: expected codes (1062, 23505, WRONGTYPE), ok or error")

    def ok(code: str) -> bool:
        return code in want or ("ok" in want and not code) or ("error" in want and bool(code))

    return ok


def _when_and_pod(rec: dict[str, Any]) -> tuple[str, str]:
    t = time.strftime("%H:%M:%S", time.localtime(rec["time"])) + f".{int(rec['time'] % 1 * 1e3):03d}"
    pod = (f"{rec.get('k8s_namespace_name')}/{rec['k8s_pod_name']}" if rec.get("k8s_pod_name")
           else rec.get("container_name") or rec.get("k8s_pod_uid") or rec.get("cgroup") or "-")
    return t, pod


def format_db_line(rec: dict[str, Any]) -> str:
    t, pod = _when_and_pod(rec)
    peer = f"{rec['peer_addr']}:{rec['peer_port']}"
    what = rec.get("db_query_text") or " ".join(
        p for p in (rec["db_operation_name"], rec.get("db_collection_name")) if p)
    return (f"{t} {rec['role']:<6} {pod[:36]:<36} {rec['db_system_name']:<10} "
            f"{rec['db_response_status_code'] or 'ok':<9} {rec['duration_seconds'] * 1e3:9.3f}ms "
            f"{rec['request_bytes']:>8}B {rec['response_bytes']:>9}B {peer:<21} "
            f"{rec.get('db_namespace') or '-'} {what}")


def format_line(rec: dict[str, Any]) -> str:
    t, pod = _when_and_pod(rec)
    status = rec["status"] if rec["status"] is not None else "---"
    peer = f"{rec['peer_addr']}:{rec['peer_port']}"
    line = (f"{t} {rec['role']:<6} {pod[:36]:<36} {rec['method']:<7} {status} "
            f"{rec['duration_seconds'] * 1e3:9.3f}ms {rec['request_bytes']:>8}B "
            f"{rec['response_bytes']:>9}B {peer:<21} {rec['path']}")
    if rec.get("on_cpu_seconds") is not None:
        line += (f"  [cpu {rec['on_cpu_seconds'] * 1e3:.1f}ms rq {rec['runqueue_seconds'] * 1e3:.1f}"
                 f"ms blocked {rec['blocked_seconds'] * 1e3:.1f}ms")
        why = [(k[8:-8], v) for k, v in rec.items()
               if k.startswith("blocked_") and k.endswith("_seconds") and k != "blocked_seconds"
               and v]
        if why:
            line += " (" + ", ".join(f"{k} {v * 1e3:.1f}ms" for k, v in
                                     sorted(why, key=lambda kv: -kv[1])) + ")"
        memory = []
        if rec.get("reclaim_seconds"):
            memory.append(f"reclaim {rec['reclaim_seconds'] * 1e3:.1f}ms")
        if rec.get("major_faults"):
            memory.append(f"{rec['major_faults']} major faults")
        if memory:  # reclaim runs on the CPU (or waits, blocked): a part of the above
            line += "; of which " + ", ".join(memory)
        line += "]"
    return line


BAR = 32  # columns of a waterfall's time line


def format_tree(recs: list[dict[str, Any]]) -> str:
    """A waterfall: one line per span, indented under its parent, with a bar on a common time
    line from the first start to the last end."""
    order = tree_order(recs)
    t0 = min(r["time"] for r in recs)
    t1 = max(r["time"] + r["duration_seconds"] for r in recs)
    span = max(t1 - t0, 1e-9)
    roots = [r for d, r in order if d == 0]
    head = (f"trace {recs[0].get('trace_id') or '-'}  {(t1 - t0) * 1e3:.3f}ms  "
            f"{len(recs)} span{'s' if len(recs) != 1 else ''}"
            f"{'' if len(roots) == 1 else f' ({len(roots)} roots)'}")
    lines = [head]
    for depth, r in order:
        a = int((r["time"] - t0) / span * BAR)
        b = max(a + 1, round((r["time"] + r["duration_seconds"] - t0) / span * BAR))
        bar = " " * a + "#" * (min(b, BAR) - a)
        _t, pod = _when_and_pod(r)
        status = r["status"] if r["status"] is not None else "---"
        grpc = r.get("grpc_status") is not None
        what = f"grpc {r['grpc_status']} {r['path']}" if grpc else f"{r['method']} {r['path']}"
        lines.append(f"  |{bar:<{BAR}}| {'  ' * depth}{r['role']:<6} {pod[:36]} {status} "
                     f"{r['duration_seconds'] * 1e3:.3f}ms {what}")
    return "\n".join(lines)


def run(pod: str | None, min_duration: str | None, status: str | None, duration: float | None,
        as_json: bool, capture_headers: bool = False, out: IO[str] = sys.stdout,
        blocked_reasons: bool = False, kubeconfig: str = "", node: str = "",
        protocol: str = "http", tree: bool = False) -> int:
    min_s = parse_duration(min_duration) if min_duration else 0.0
    db = protocol == "db"
    want_kind = "db_operation" if db else "http_request"
    status_ok: Callable[[Any], bool] | None = None
    if status:
        status_ok = db_status_filter(status) if db else status_filter(status)
    cg2 = features.preflight()
    store = cli_store(cg2, kubeconfig, node)
    target = resolve(store, pod) if pod else None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    trees = Trees() if tree and not db else None

    def show_tree(recs: list[dict[str, Any]]) -> None:
        roots = [r for d, r in tree_order(recs) if d == 0]
        if max(r["duration_seconds"] for r in roots) < min_s:
            return
        if status_ok is not None and not any(status_ok(r["status"]) for r in recs):
            return
        if target is not None and not any(target.matches(r) for r in recs):
            return
        text = json.dumps({"trace_id": recs[0].get("trace_id"), "spans": recs}) if as_json \
            else format_tree(recs)
        out.write(text + "\n")
        out.flush()

    def show(kind: str, rec: dict[str, Any]) -> None:
        if trees is not None:
            if kind == "http_request":
                trees.add(rec)
            return
        if kind != want_kind or rec["duration_seconds"] < min_s:
            return
        if status_ok is not None and not status_ok(
                rec["db_response_status_code"] if db else rec["status"]):
            return
        if target is not None and not target.matches(rec):
            return
        line = json.dumps(rec) if as_json else format_db_line(rec) if db else format_line(rec)
        out.write(line + "\n")
        out.flush()

    col = HttpCollector(store, emit=show, records=True,
                        capture_headers=capture_headers, breakdown_reasons=blocked_reasons)
    try:
        col.start()
        what = "database and cache operations" if db else "HTTP requests"
        print(f"tracing {what}{' of ' + target.title if target else ''} (Ctrl-C to stop)",
              file=sys.stderr, flush=True)
        deadline = time.monotonic() + duration if duration else None
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            col.poll(100)
            if trees is not None:
                for recs in trees.take():
                    show_tree(recs)
        col.poll(0)
        col.drain()  # what the engines hold (database operations) since the last drain
        if trees is not None:
            for recs in trees.take(everything=True):
                show_tree(recs)
    finally:
        col.close()
    return 0
