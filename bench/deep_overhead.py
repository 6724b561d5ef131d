"""Overhead of the diagnostics of issue 8, against the default agent, on nginx with wrk.

Each comparison alternates rounds of two agents on the same workload (nginx returning a 40-byte
body in one pod, `wrk -t2 -c32` keep-alive from another: the worst case per request):
  triggers-idle   default agent vs the same with a trigger rule that never fires (the always-on
                  part: baselines, the trigger checks): target indistinguishable
  blocked-reasons default vs http_breakdown_reasons = true (a sched_switch probe)
  netlat          default vs netlat = true (a hash update per packet)
  profile         default vs default while `podscope profile --off-cpu` samples the server pod
Reports the median throughput ratio (second / first) and the p99 latency ratio per comparison.
Usage: python bench/deep_overhead.py [--rounds N] [--seconds S] [--only NAME] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_overhead import wrk  # noqa: E402
from tcp_overhead import PODSCOPE, Agent, write_results  # noqa: E402

from podscope.testing.pods import PodNetwork  # noqa: E402
from podscope.testing.servers import start_nginx  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COMPARISONS = {
    "triggers-idle": ('[[triggers]]\nname = "never"\nsignal = "http_p99_seconds"\n'
                      'above = 1000\nfor_seconds = 5\n'),
    "blocked-reasons": "http_breakdown_reasons = true\n",
    "netlat": "netlat = true\n",
    "profile": "",
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "deep_overhead.json"))
    a = ap.parse_args()
    results: list[dict[str, Any]] = []
    with PodNetwork() as net, tempfile.TemporaryDirectory(prefix="podscope-bench-") as tmp:
        server, client = net.pod("deep-s"), net.pod("deep-c")
        start_nginx(server)
        url = f"http://{server.ip}/ok"
        wrk(client, url, 2, 32, 2)  # warm-up
        base_cfg = Path(tmp) / "base.toml"
        base_cfg.write_text(f'reports_dir = "{tmp}/reports"\n')
        for name in a.only or list(COMPARISONS):
            cfg = Path(tmp) / f"{name}.toml"
            cfg.write_text(f'reports_dir = "{tmp}/reports"\n' + COMPARISONS[name])
            ratios, p99s = [], []
            for i in range(a.rounds):
                got: dict[str, dict[str, float]] = {}
                for mode in (("base", "on") if i % 2 == 0 else ("on", "base")):
                    agent = Agent(["--config", str(base_cfg if mode == "base" else cfg)])
                    time.sleep(1.0)
                    prof = None
                    if name == "profile" and mode == "on":
                        prof = subprocess.Popen(
                            [PODSCOPE, "profile", "--pod", server.uid, "--off-cpu", "--duration",
                             f"{a.seconds + 2:g}s", "--out", f"{tmp}/prof"],
                            stdout=subprocess.DEVNULL)
                        time.sleep(1.5)  # its probes are attached
                    got[mode] = wrk(client, url, a.seconds, 32, 2)
                    if prof is not None:
                        prof.wait(60)
                    agent.stop()
                ratios.append(got["on"]["rps"] / got["base"]["rps"])
                p99s.append(got["on"]["p99_s"] / got["base"]["p99_s"])
                print(f"  {name} round {i + 1}: base {got['base']['rps']:.0f} rps, on "
                      f"{got['on']['rps']:.0f} rps, ratio {ratios[-1]:.4f}", flush=True)
            results.append({"comparison": name, "rounds": a.rounds, "seconds": a.seconds,
                            "median_ratio": statistics.median(ratios), "ratios": ratios,
                            "median_p99_ratio": statistics.median(p99s)})
    write_results(a.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
