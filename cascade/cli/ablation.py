"""`cascade ablation`: train the demo's base with each recipe for several seeds, score every row."""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..demo.ablation import FAST_ABLATION, AblationPlan
from ..demo.ablation import __doc__ as ABLATION_DOC
from ..demo.sr_ablation import FAST_SR_ABLATION, SR_ROWS, SRAblationPlan


def ablation(argv: list[str]) -> int:
    """`cascade ablation [--out DIR] [--seeds 0,1,2] [--train-steps N] [--captions N] [--rows KEYS]
    [--reference KEY] [--train-images N] [--accelerator cpu|gpu] [--lanes N] [--loader-workers N] [--fast]
    [--sr BASE]`; with `--sr BASE` the rows are the SR stages' (`cascade.demo.sr_ablation`)."""
    parser = argparse.ArgumentParser(prog="cascade ablation", description=ABLATION_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="working and output folder (default runs/ablation; with --sr, runs/sr-ablation)")
    parser.add_argument("--seeds", default=None, help="training seeds, comma separated (default 0,1,2)")
    parser.add_argument("--train-steps", type=int, default=None, help="training steps of every run")
    parser.add_argument("--captions", type=int, default=None, help="distinct held-out captions scored")
    parser.add_argument("--samples-per-caption", type=int, default=None, help="images per caption and row")
    parser.add_argument("--train-images", type=int, default=None,
                        help="synthetic training images written (default 6000; the rows that see more images "
                             "than this repeat them)")
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default=None,
                        help="where the trainings and the sampling run (default cpu; gpu: one CUDA device, "
                             "--lanes trainings on it at once)")
    parser.add_argument("--lanes", type=int, default=None, help="trainings at once (default 2)")
    parser.add_argument("--loader-workers", type=int, default=None,
                        help="DataLoader worker processes per training (default: the config's, 1)")
    parser.add_argument("--rows", default=None,
                        help="only these rows, by key, comma separated (the baseline always; default: every row), "
                             "e.g. sigmoid_b0,lr2e-3: only their trainings run")
    parser.add_argument("--reference", default=None,
                        help="the row every paired difference is taken from, by key (default: baseline); with "
                             "--rows, the baseline then runs only if listed")
    parser.add_argument("--sr", type=Path, default=None, metavar="BASE",
                        help="ablate the demo's SR stages instead, every row on this trained base's images (a .ckpt "
                             "or export, e.g. a demo's runs/base/checkpoints/last.ckpt); its rows: "
                             + ", ".join(row.key for row in SR_ROWS))
    parser.add_argument("--fast", action="store_true", help="a few steps of everything (a smoke test)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads: the --lanes training processes share them (default: the machine's cores)")
    args = parser.parse_args(argv)
    if args.sr is not None:
        return sr_ablation(parser, args, argv)
    args.out = args.out or Path("runs/ablation")
    plan = FAST_ABLATION if args.fast else AblationPlan()
    changes = plan_changes(parser, args)
    if args.accelerator is not None:
        changes["accelerator"] = args.accelerator
    if args.loader_workers is not None:
        if args.loader_workers < 0:
            parser.error(f"--loader-workers: must be >= 0, got {args.loader_workers}")
        changes["loader_workers"] = args.loader_workers
    plan = replace(plan, **changes)
    if plan.train_steps % plan.snapshots:
        parser.error(f"--train-steps: must be a multiple of {plan.snapshots} (post-hoc EMA snapshots), "
                     f"got {plan.train_steps}")
    from ..demo.ablation import run_ablation, select_rows

    row_keys, command = checked_rows(parser, args, argv, select_rows)
    run_ablation(args.out, plan, args.threads, command, row_keys=row_keys, reference=args.reference)
    return 0


def sr_ablation(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> int:
    """`cascade ablation --sr BASE ...`: the SR stages' rows on the base's images."""
    for flag in ("accelerator", "loader_workers"):
        if getattr(args, flag) is not None:
            parser.error(f"--{flag.replace('_', '-')}: the SR ablation trains and samples on the CPU; leave it out with --sr")
    plan = replace(FAST_SR_ABLATION if args.fast else SRAblationPlan(), **plan_changes(parser, args))
    if plan.train_steps % plan.validations:
        parser.error(f"--train-steps: must be a multiple of {plan.validations} (the validations that save "
                     f"checkpoints), got {plan.train_steps}")
    if not args.sr.exists():
        parser.error(f"--sr: {args.sr} does not exist (a trained base: e.g. a demo's runs/base/checkpoints/last.ckpt)")
    from ..demo.sr_ablation import run_sr_ablation, select_sr_rows

    row_keys, command = checked_rows(parser, args, argv, select_sr_rows)
    run_sr_ablation(args.out or Path("runs/sr-ablation"), args.sr, plan, args.threads, command, row_keys=row_keys,
                    reference=args.reference)
    return 0


def plan_changes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The plan fields both ablations share, from the flags given (parser.error naming a bad one)."""
    changes = {}
    if args.seeds is not None:
        try:
            changes["seeds"] = tuple(int(value) for value in args.seeds.split(","))
        except ValueError:
            parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    for name in ("train_steps", "captions", "samples_per_caption", "train_images", "lanes"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                parser.error(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
            changes[name] = value
    return changes


def checked_rows(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str],
                 select: Callable[[list[str] | None, str | None], object]) -> tuple[list[str] | None, str]:
    """The row keys of --rows (None: every row), checked by `select` with --reference (parser.error
    naming a bad one), and the command line that reproduces the table."""
    row_keys = None if args.rows is None else [key.strip() for key in args.rows.split(",") if key.strip()]
    try:
        select(row_keys, args.reference)
    except ValueError as error:
        parser.error(str(error))
    return row_keys, ("cascade ablation " + " ".join(shlex.quote(arg) for arg in argv)).strip()
