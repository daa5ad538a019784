"""`cascade demo`: train a tiny text-to-image cascade on CPU, sample, evaluate, write a report."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from ..demo import FAST, FULL, ablation_table, run_demo
from ..demo import __doc__ as DEMO_DOC


def demo(argv: list[str]) -> int:
    """`cascade demo [--out DIR] [--fast] [--base-steps N] [--threads N] [--ablation PATH]`."""
    parser = argparse.ArgumentParser(prog="cascade demo", description=DEMO_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="working and output folder")
    parser.add_argument("--fast", action="store_true", help="a few steps of everything (a smoke test, for CI)")
    parser.add_argument("--base-steps", type=int, default=None, help="override the base stage's training steps")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="cores to use: the two training processes get half each, sampling runs in this "
                             "many processes of one torch thread, evaluation in this one (default: the "
                             "machine's cores)")
    parser.add_argument("--ablation", type=Path, default=None,
                        help="the ablation table (ablation.md of `cascade ablation --out DIR`) to show in the report "
                             "(default: OUT/../ablation/ablation.md when it exists)")
    args = parser.parse_args(argv)
    try:
        ablation = ablation_table(args.out, args.ablation)
    except FileNotFoundError as error:
        parser.error(str(error))
    plan = FAST if args.fast else FULL
    if args.base_steps is not None:
        try:
            plan = replace(plan, train_steps=(args.base_steps,) + plan.train_steps[1:])
        except ValueError as error:
            parser.error(f"--base-steps: {error}")
    return run_demo(args.out, plan, args.threads, fast=args.fast, ablation=ablation)
