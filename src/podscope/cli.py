"""podscope command line: run, check, top, demo, trace, profile, report, join."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

from . import __version__


class _Parser(argparse.ArgumentParser):
    """Errors in one line (what was wrong, and where to look), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="podscope", description=__doc__)
    p.add_argument("--version", action="version", version=f"podscope {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    r = sub.add_parser("run", help="run the agent on this host")
    r.add_argument("--listen", metavar="HOST:PORT", help="serve /metrics and /healthz here")
    r.add_argument("--duration", metavar="DURATION",
                   help="stop by itself after this (60, 60s, 5m)")
    r.add_argument("--export", action="append", default=[], dest="exports",
                   metavar="jsonl:PATH|csv:PATH",
                   help="write one record per closed connection and per HTTP request")
    r.add_argument("--http-headers", action="store_const", const=True, default=None,
                   dest="http_capture_headers",
                   help="HTTP records carry headers (credentials redacted)")
    r.add_argument("--config", metavar="FILE", help="TOML config file")
    r.add_argument("--pushgateway", metavar="URL", help="push every metric to this Pushgateway")
    r.add_argument("--push-interval", metavar="DURATION", help="between pushes (15s)")
    r.add_argument("--otlp", metavar="URL",
                   help="OTLP/HTTP endpoint (http://collector:4318): spans and metrics")
    r.add_argument("--node-name", help="this node's name (default: $NODE_NAME, the host name)")
    r.add_argument("--kubeconfig", metavar="FILE",
                   help="Kubernetes API access (default: in-cluster, $KUBECONFIG, ~/.kube/config)")
    r.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    ck = sub.add_parser("check", help="which signals this kernel supports, and why not")
    ck.add_argument("--json", action="store_true", help="the report as JSON")
    ck.add_argument("--tls", action="store_true",
                    help="the TLS libraries and Go binaries the agent would probe, per pod")
    ck.add_argument("--all", action="store_true",
                    help="with --tls: every process, not only those of pods and containers")
    tp = sub.add_parser("top", help="live table of pods and their golden signals")
    tp.add_argument("--agent", metavar="URL",
                    help="a running agent (default: 127.0.0.1:9464 if it answers, else the "
                         "probes are loaded here)")
    tp.add_argument("--local", action="store_true",
                    help="load the probes here even if an agent runs (as root)")
    tp.add_argument("--sort", default="requests",
                    help="requests, errors, p99, retransmits, drops, queue, name, total, kernel, "
                         "runqueue, pressure")
    tp.add_argument("--interval", type=_positive_seconds, default=2.0, metavar="DURATION",
                    help="between refreshes (2s)")
    tp.add_argument("--once", action="store_true", help="print one table and exit")
    tp.add_argument("--json", action="store_true", help="with --once: the overview as JSON")
    d = sub.add_parser("demo", help="three demo pods with traffic, and the agent watching them")
    d.add_argument("--listen", default="127.0.0.1:9464", metavar="HOST:PORT")
    d.add_argument("--duration", type=_positive_seconds, metavar="DURATION",
                   help="stop by itself after this (60s, 5m)")
    t = sub.add_parser("trace", help="live stream of requests (http) or of database and cache "
                                     "operations (db)")
    t.add_argument("protocol", choices=["http", "db"])
    t.add_argument("--pod", help="pod name, namespace/name, pod UID or container id prefix")
    t.add_argument("--min-duration", metavar="DURATION", help="only slower requests (50ms, 1s)")
    t.add_argument("--status", metavar="CODES",
                   help="only these statuses: http 404,5xx,none; db 1062,WRONGTYPE,ok,error")
    t.add_argument("--duration", type=_positive_seconds, metavar="DURATION",
                   help="stop after this (10s)")
    t.add_argument("--json", action="store_true", help="one JSON object per line")
    t.add_argument("--tree", action="store_true",
                   help="http: whole requests, each tree of spans across this node's pods as a "
                        "waterfall (a request shows once it has been quiet for a few seconds)")
    t.add_argument("--headers", action="store_true",
                   help="include request and response headers (credentials redacted)")
    t.add_argument("--kubeconfig", metavar="FILE", default="",
                   help="Kubernetes API access, as the agent's (pod names)")
    t.add_argument("--node-name", default="", help="this node's name (default: $NODE_NAME)")
    t.add_argument("--blocked-reasons", action="store_true",
                   help="server requests: blocked time by reason (sleep, lock, disk, network); "
                        "adds a probe to every context switch while tracing")
    pr = sub.add_parser("profile", help="flame graphs of one pod: where its CPU time goes "
                                        "(and with --off-cpu, where it blocks)")
    pr.add_argument("--pod", required=True,
                    help="namespace/name (needs the Kubernetes API), name, pod UID or container "
                         "id prefix")
    pr.add_argument("--duration", default="10s", metavar="DURATION", help="how long (10s)")
    pr.add_argument("--off-cpu", action="store_true", help="also where its threads block")
    pr.add_argument("--frequency", type=_hertz, default=99, metavar="HZ",
                    help="samples per second per CPU, 1 to 1000 (99)")
    pr.add_argument("--out", default="podscope-profile", metavar="DIR",
                    help="where the .svg, .folded and profile.json go")
    pr.add_argument("--kubeconfig", metavar="FILE", default="",
                    help="Kubernetes API access, as the agent's (pod names)")
    pr.add_argument("--node-name", default="", help="this node's name (default: $NODE_NAME)")
    pr.add_argument("--reports-dir", metavar="DIR", default="",
                    help="write it as a report into the agent's reports_dir (instead of --out): "
                         "the agent lists it at /api/reports and on its page")
    pr.add_argument("--json", action="store_true", help="print the summary as JSON")
    rp = sub.add_parser("report", help="a pod's latency when idle, under load and now (from a "
                                       "running agent)")
    rp.add_argument("--pod", help="namespace/name, name, pod UID or container id prefix "
                                  "(default: every pod)")
    rp.add_argument("--agent", default="http://127.0.0.1:9464", metavar="URL")
    rp.add_argument("--json", action="store_true")
    j = sub.add_parser("join", help="an OTLP relay between the agents and a collector: one "
                                    "trace id per tree of spans, across nodes")
    j.add_argument("--listen", default="0.0.0.0:4318", metavar="HOST:PORT",
                   help="where the agents send (their --otlp): OTLP/HTTP (0.0.0.0:4318)")
    j.add_argument("--otlp", required=True, metavar="URL",
                   help="the collector the joined spans (and the metrics) go on to")
    j.add_argument("--hold", type=_positive_seconds, default=5.0, metavar="DURATION",
                   help="how long a span waits for its ancestors (5s): the longest request "
                        "whose tree is joined whole")
    j.add_argument("--duration", type=_positive_seconds, metavar="DURATION",
                   help="stop by itself after this")
    return p


def _positive_seconds(text: str) -> float:
    from .config import parse_seconds

    try:
        return parse_seconds(text, "")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a duration above 0 (2, 2s, 500ms)") from None


def _hertz(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number from 1 to 1000")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cmd is None:
        parser.print_help(sys.stderr)
        return 2
    from . import features
    from .libbpf import BpfError

    try:
        if args.cmd == "check" and args.tls:
            import json

            from .uprobes.manager import survey

            found = survey(scope="all" if args.all else "pods")
            if args.json:
                print(json.dumps(found, indent=1))
            else:
                print(format_tls_survey(found))
            return 0
        if args.cmd == "check":
            logging.basicConfig(level=logging.ERROR, format="podscope: %(message)s")
            report = features.check()
            if args.json:
                import dataclasses
                import json

                print(json.dumps(dataclasses.asdict(report) | {"default_ok": report.default_ok},
                                 indent=1))
            else:
                print(features.format_report(report))
            return 0 if report.default_ok else 1
        if args.cmd == "demo":
            from . import demo

            logging.basicConfig(level=logging.WARNING, format="podscope: %(message)s")
            return demo.run(args.listen, args.duration)
        if args.cmd == "top":
            from . import top

            logging.basicConfig(level=logging.WARNING, format="podscope: %(message)s")
            return top.run(args.agent, args.sort, args.interval, args.once, args.json,
                           local=args.local)
        if args.cmd == "trace":
            from . import trace

            logging.basicConfig(level=logging.WARNING, format="podscope: %(message)s")
            return trace.run(args.pod, args.min_duration, args.status, args.duration, args.json,
                             args.headers, blocked_reasons=args.blocked_reasons,
                             kubeconfig=args.kubeconfig, node=args.node_name,
                             protocol=args.protocol, tree=args.tree)
        if args.cmd == "join":
            from . import join

            logging.basicConfig(level=logging.INFO, format="podscope join: %(message)s")
            return join.run(args.listen, args.otlp, args.hold, args.duration)
        if args.cmd == "report":
            from . import baselines

            return baselines.report_cli(args.agent, args.pod, args.json)
        if args.cmd == "profile":
            from . import profiling
            from .trace import parse_duration

            logging.basicConfig(level=logging.WARNING, format="podscope: %(message)s")
            return profiling.run(args.pod, parse_duration(args.duration), args.off_cpu,
                                 args.frequency, args.out, args.kubeconfig, args.json,
                                 reports_dir=args.reports_dir, node=args.node_name)
        from .agent import Agent
        from .config import Config

        cfg = Config.load(args.config, {"listen": args.listen, "duration": args.duration,
                                        "exports": args.exports, "log_level": args.log_level,
                                        "http_capture_headers": args.http_capture_headers,
                                        "node_name": args.node_name,
                                        "pushgateway": args.pushgateway,
                                        "otlp": args.otlp,
                                        "push_interval": args.push_interval,
                                        "kubeconfig": args.kubeconfig})
        logging.basicConfig(level=cfg.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return Agent(cfg).run()
    except features.Fatal as e:
        print(f"podscope: {e}", file=sys.stderr)
        return 2
    except (BpfError, ValueError, OSError) as e:
        print(f"podscope: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


def format_tls_survey(found: list[dict[str, object]]) -> str:
    """podscope check --tls: per pod (or container, or cgroup), the processes and their files."""
    if not found:
        return "no process of a pod or container maps a TLS library or a Go binary with TLS"
    lines = []
    by_owner: dict[str, list[dict[str, object]]] = {}
    for f in found:
        owner = (f"pod {f['pod_uid']}" if f["pod_uid"] else
                 f"container {str(f['container_id'])[:12]}" if f["container_id"] else
                 f"cgroup {f['cgroup']}")
        by_owner.setdefault(owner, []).append(f)
    for owner, items in by_owner.items():
        lines.append(owner)
        for f in items:
            state = "probed" if f["probed"] else f"not probed: {f['why_not']}"
            ver = f" {f['go_version']}" if f["go_version"] else ""
            lines.append(f"  pid {f['pid']:<7} {str(f['process']):<16} {f['kind']}{ver:<10} "
                         f"{f['path']}  ({state})")
    return "\n".join(lines)
