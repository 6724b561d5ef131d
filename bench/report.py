"""Markdown table of bench/tcp_overhead.py and bench/http_overhead.py JSON outputs

    .venv/bin/python bench/report.py bench/out/tcp_overhead.json [more.json ...]
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any


def fmt(v: Any, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def main(paths: list[str]) -> int:
    cols: list[tuple[str, dict[str, Any]]] = []
    for i, path in enumerate(paths, 1):
        with open(path) as f:
            data = json.load(f)
        for r in data["results"]:
            cols.append((f"{r['scenario']} (file {i})", r))
    rows = [
        ("rounds × seconds", lambda r: f"{r['rounds']} × {r['seconds_per_run']}"),
        ("**median throughput ratio on/off**", lambda r: f"**{r['median_ratio_on_off']:.4f}**"),
        ("per-round ratios", lambda r: " ".join(f"{x:.3f}" for x in r["ratios"])),
        ("median req/s off / on", lambda r: f"{statistics.median(r['off_rps']):.0f} / "
                                            f"{statistics.median(r['on_rps']):.0f}"),
        ("median p99 latency ratio on/off",
         lambda r: fmt(r.get("median_p99_latency_ratio_on_off"), ".3f")),
        ("BPF ns per request", lambda r: fmt(r["bpf_ns_per_request"], ".2f")),
        ("BPF program runs per request", lambda r: fmt(r["bpf_program_runs_per_request"], ".4f")),
        ("BPF ns per connection", lambda r: fmt(r.get("bpf_ns_per_connection"), ".0f")),
        ("agent CPU s per 10k requests", lambda r: fmt(r["agent_cpu_seconds_per_10k_requests"],
                                                       ".4f")),
        ("requests per agent CPU second", lambda r: fmt(r.get("requests_per_agent_cpu_second"),
                                                        ".0f")),
        ("events lost", lambda r: fmt(r.get("events_lost"), "d")),
        ("agent peak RSS (MB)", lambda r: fmt(r["agent_peak_rss_mb"] or None, ".1f")),
    ]
    print("| | " + " | ".join(name for name, _ in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for label, get in rows:
        print(f"| {label} | " + " | ".join(get(r) for _, r in cols) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
