"""podscope command line: run, check."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="podscope", description=__doc__)
    p.add_argument("--version", action="version", version=f"podscope {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the agent on this host")
    r.add_argument("--listen", metavar="HOST:PORT", help="serve /metrics and /healthz here")
    r.add_argument("--duration", type=float, metavar="SECONDS", help="stop by itself after this")
    r.add_argument("--export", action="append", default=[], dest="exports",
                   metavar="jsonl:PATH|csv:PATH", help="write one record per closed connection")
    r.add_argument("--config", metavar="FILE", help="TOML config file")
    r.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    sub.add_parser("check", help="which signals this kernel supports, and why not")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from . import features
    from .libbpf import BpfError

    try:
        if args.cmd == "check":
            logging.basicConfig(level=logging.ERROR, format="podscope: %(message)s")
            report = features.check()
            print(features.format_report(report))
            return 0 if report.default_ok else 1
        from .agent import Agent
        from .config import Config

        cfg = Config.load(args.config, {"listen": args.listen, "duration": args.duration,
                                        "exports": args.exports, "log_level": args.log_level})
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
