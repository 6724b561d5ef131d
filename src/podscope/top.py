"""`podscope top`: a live table of pods and their golden signals.

It reads /api/v1/overview from a running agent (`--agent URL`; by default the local one at
127.0.0.1:9464 when it answers), or, without one, loads the probes itself (as root) and computes
the same overview in-process. Sort with `--sort`, or press the column's key while it runs
(r requests, e errors, p p99, t retransmits, d drops, a accept queue, k kernel errors,
u run-queue p99, n name; q or x quits). A slow or absent answer keeps the last view on screen
and tries again; piped output (`--once | ...`) gets every column.
"""

from __future__ import annotations

import json
import select
import sys
import termios
import time
import tty
import urllib.request
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

SORTS = {
    "requests": "requests_per_second", "errors": "error_ratio", "p99": "p99_seconds",
    "retransmits": "retransmits_per_second", "drops": "drops_per_second",
    "queue": "accept_queue_depth", "name": "id", "total": "requests_total",
    "kernel": "kernel_errors_total", "runqueue": "runqueue_p99_seconds",
    "pressure": "pressure_max_ratio",
}
KEYS = {"r": "requests", "e": "errors", "p": "p99", "t": "retransmits", "d": "drops",
        "a": "queue", "n": "name", "k": "kernel", "u": "runqueue", "s": "pressure"}
QUIT = ("q", "x")
DEFAULT_AGENT = "http://127.0.0.1:9464"


def _seconds(s: float | None) -> str:
    if s is None:
        return "–"
    if s < 1e-3:
        return f"{s * 1e6:.0f}µs"
    if s < 1:
        return f"{s * 1e3:.1f}ms"
    return f"{s:.2f}s"


def _stalled(ratios: dict[str, float]) -> str:
    """The resource its tasks were stalled on most (PSI some), as a share of the window."""
    if not ratios:
        return "–"
    res, r = max(ratios.items(), key=lambda kv: kv[1])
    text = f"{res} {100 * r:.0f}%"
    return f"[red]{text}[/red]" if r >= 0.1 else text


def table(view: dict[str, Any], sort: str) -> Table:
    key = SORTS[sort]
    rows = sorted(view["pods"], key=lambda p: (p.get(key) is None, p.get(key) or 0)
                  if key != "id" else (False, p["id"]), reverse=key != "id")
    t = Table(title=f"podscope top — node {view['node']} — last {view['window_seconds']:.0f}s"
              f" — sorted by {sort}", expand=True)
    for col, just in (("POD", "left"), ("WORKLOAD", "left"), ("REQ/S", "right"),
                      ("REQUESTS", "right"), ("ERR%", "right"), ("P99", "right"),
                      ("RETRANS/S", "right"), ("DROPS/S", "right"), ("CONN/S", "right"),
                      ("ACCEPT Q", "right"), ("KERNEL ERR", "right"), ("THROTTLED", "right"),
                      ("RUNQ P99", "right"), ("STALLED", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for p in rows:
        err = 100 * p["error_ratio"]
        queue = (f"{p['accept_queue_depth']:.0f}/{p['accept_queue_limit']:.0f}"
                 if p["accept_queue_limit"] else "–")
        t.add_row(p["id"], p["workload"] or p.get("process", ""),
                  f"{p['requests_per_second']:.1f}", f"{p['requests_total']:.0f}",
                  f"[red]{err:.1f}[/red]" if err >= 5 else f"{err:.1f}",
                  _seconds(p["p99_seconds"]),
                  f"{p['retransmits_per_second']:.1f}", f"{p['drops_per_second']:.1f}",
                  f"{p['connections_per_second']:.1f}", queue,
                  f"[red]{p['kernel_errors_total']:.0f}[/red]" if p["kernel_errors_total"]
                  else "0", f"{100 * p['throttled_ratio']:.0f}%",
                  _seconds(p["runqueue_p99_seconds"]), _stalled(p.get("pressure_ratio", {})))
    return t


def _from_agent(url: str) -> Callable[[], dict[str, Any]]:
    if "://" not in url:  # 127.0.0.1:9464, as the help shows it
        url = "http://" + url
    def fetch() -> dict[str, Any]:
        with urllib.request.urlopen(url.rstrip("/") + "/api/v1/overview", timeout=10) as r:
            return dict(json.loads(r.read()))
    return fetch


def _local() -> tuple[Callable[[], dict[str, Any]], Callable[[], None]]:
    """Load the probes in this process: the agent without any sink."""
    from .agent import Agent
    from .config import Config
    from .overview import Overview

    agent = Agent(Config(kubernetes="auto"))
    agent.start()
    assert agent.store is not None
    ov = Overview(agent.metrics, agent.store)

    def fetch() -> dict[str, Any]:
        for c in agent.collectors:
            c.poll(0)
        return ov.snapshot()
    return fetch, agent.close


def run(agent_url: str | None, sort: str, interval: float, once: bool, as_json: bool,
        local: bool = False) -> int:
    if sort not in SORTS:
        raise ValueError(f"--sort {sort!r}: one of {', '.join(SORTS)}")
    close: Callable[[], None] = lambda: None  # noqa: E731
    fetch = _from_agent(agent_url or DEFAULT_AGENT)
    try:
        if local:
            raise ConnectionRefusedError("--local")
        fetch()
    except OSError as e:
        if agent_url:
            raise OSError(f"no podscope agent at {agent_url}: {e}") from None
        fetch, close = _local()  # no agent here: run the probes ourselves
        fetch()
        print("podscope top: no agent; the probes run in this process", file=sys.stderr,
              flush=True)
    # a pipe or a file gets every column (a terminal gets its own width)
    console = Console() if sys.stdout.isatty() else Console(width=220)
    try:
        if once:
            time.sleep(interval)  # rates need a second look
            view = fetch()
            if as_json:
                print(json.dumps(view, indent=1))
            else:
                console.print(table(view, sort))
            return 0
        view = fetch()
        with _keys() as key, Live(table(view, sort), console=console,
                                  refresh_per_second=4, screen=False) as live:
            while True:
                deadline = time.monotonic() + interval
                while time.monotonic() < deadline:
                    k = key(0.1)
                    if k in QUIT:
                        return 0
                    if k in KEYS:
                        sort = KEYS[k]
                        break
                try:
                    view = fetch()
                    live.update(table(view, sort))
                except OSError as e:  # a slow or absent answer: keep the last view, try again
                    t = table(view, sort)
                    t.caption = f"[yellow]agent not answering ({e}); showing the last view[/]"
                    live.update(t)
    except KeyboardInterrupt:
        return 0
    finally:
        close()


class _keys:  # noqa: N801 (a context manager used as `with _keys() as key`)
    """Single key presses from a terminal (nothing when stdin is not one)."""

    def __enter__(self) -> Callable[[float], str]:
        self.old = None
        if sys.stdin.isatty():
            self.old = termios.tcgetattr(sys.stdin)
            tty.setcbreak(sys.stdin.fileno())
        return self.read

    def read(self, timeout: float) -> str:
        if self.old is None:
            time.sleep(timeout)
            return ""
        ready, _, _ = select.select([sys.stdin], [], [], timeout)
        return sys.stdin.read(1) if ready else ""

    def __exit__(self, *exc: object) -> None:
        if self.old is not None:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, self.old)
