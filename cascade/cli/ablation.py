"""`cascade ablation`: train the demo's base with each recipe for several seeds, score every row."""

from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import replace
from pathlib import Path

from ..demo.ablation import FAST_ABLATION, AblationPlan
from ..demo.ablation import __doc__ as ABLATION_DOC


def ablation(argv: list[str]) -> int:
    """`cascade ablation [--out DIR] [--seeds 0,1,2] [--train-steps N] [--captions N] [--rows KEYS]
    [--reference KEY] [--train-images N] [--accelerator cpu|gpu] [--lanes N] [--loader-workers N] [--fast]`."""
    parser = argparse.ArgumentParser(prog="cascade ablation", description=ABLATION_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"), help="working and output folder")
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
    parser.add_argument("--fast", action="store_true", help="a few steps of everything (a smoke test)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads: the --lanes training processes share them (default: the machine's cores)")
    args = parser.parse_args(argv)
    plan = FAST_ABLATION if args.fast else AblationPlan()
    changes = {}
    if args.seeds is not None:
        try:
            changes["seeds"] = tuple(int(value) for value in args.seeds.split(","))
        except ValueError:
            parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if args.accelerator is not None:
        changes["accelerator"] = args.accelerator
    if args.loader_workers is not None:
        if args.loader_workers < 0:
            parser.error(f"--loader-workers: must be >= 0, got {args.loader_workers}")
        changes["loader_workers"] = args.loader_workers
    for name in ("train_steps", "captions", "samples_per_caption", "train_images", "lanes"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                parser.error(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
            changes[name] = value
    plan = replace(plan, **changes)
    if plan.train_steps % plan.snapshots:
        parser.error(f"--train-steps: must be a multiple of {plan.snapshots} (post-hoc EMA snapshots), "
                     f"got {plan.train_steps}")
    from ..demo.ablation import run_ablation, select_rows

    row_keys = None if args.rows is None else [key.strip() for key in args.rows.split(",") if key.strip()]
    try:
        select_rows(row_keys, args.reference)
    except ValueError as error:
        parser.error(str(error))
    command = "cascade ablation " + " ".join(shlex.quote(arg) for arg in argv)
    run_ablation(args.out, plan, args.threads, command.strip(), row_keys=row_keys, reference=args.reference)
    return 0
