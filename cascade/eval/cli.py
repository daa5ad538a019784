"""`cascade eval <command>`: dispatches to the evaluation package's subcommands."""

from __future__ import annotations

import importlib
import sys

# name -> ("module:function", one-line help)
EVAL_COMMANDS: dict[str, tuple[str, str]] = {
    "benchmark": ("cascade.eval.benchmark:main", "feature-extraction images/s and FID-from-cached-statistics time"),
    "metrics": ("cascade.eval.metrics_cli:main", "FID / IS / precision-recall / KID (/ CLIP score) of samples or a sweep"),
    "report": ("cascade.eval.report:main", "HTML + Markdown report: metrics, sweep plots, sample grids, human eval"),
    "sheets": ("cascade.eval.sheets.cli:main", "make blinded DrawBench-style comparison sheets, ingest filled ones"),
    "sr": ("cascade.eval.metrics_cli:sr_main", "per-stage SR evaluation: FID vs real high-res, low-res consistency PSNR"),
    "stats": ("cascade.eval.metrics_cli:stats_main", "compute and cache reference statistics of a real image set"),
}


def _usage() -> str:
    lines = ["usage: cascade eval <command> [options]", "", "commands:"]
    width = max((len(n) for n in EVAL_COMMANDS), default=0)
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in sorted(EVAL_COMMANDS.items())]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in EVAL_COMMANDS:
        print(f"cascade eval: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, function_name = EVAL_COMMANDS[name][0].split(":")
    return int(getattr(importlib.import_module(module_name), function_name)(rest) or 0)
