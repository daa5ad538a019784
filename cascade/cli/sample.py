"""`cascade sample`: images for a prompt set or a class list, through the whole cascade, to disk.

    cascade sample --stages base.ckpt sr1/ sr2/ --prompts drawbench --n-per-condition 4 \\
        --out samples/ --guidance 5,3,1 --aug-level 0.1 --sweep guidance=1,3,5

Per-stage settings (`SamplingSettings`) take one value for every stage or a comma list with one
per stage; a setting not given keeps each stage's own (its `sampling:` section). Each
`--sweep key=v1,v2` multiplies the settings; every combination goes to its own sub-folder
(`guidance=3,aug_level=0.1/`). Rerunning the same command resumes: finished images are skipped.
Under torchrun or srun the work is split by rank with no overlap and no gaps.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path

import torch
from rich.console import Console

from ..data.prompt_sets import read_prompt_set
from ..files.sample_folder import merge_metadata, rank_and_world_size
from ..pipeline import Cascade
from ..pipeline.to_folder import FolderJob, barrier_if_distributed, sample_folder
from ..stages.config import StageConfigError

# The `SamplingSettings` fields a flag or a sweep sets, and how each is read from text.
SETTING_TYPES = {
    "sampler": str,
    "steps": int,
    "guidance": float,
    "dynamic_threshold": lambda text: None if text.lower() in ("off", "none") else float(text),
    "aug_level": float,
}


def parse_per_stage(flag: str, text: str | None, num_stages: int) -> list | None:
    """'3' -> [3, 3, 3]; '5,3,1' -> [5, 3, 1]; None -> None (each stage keeps its own)."""
    if text is None:
        return None
    parse = SETTING_TYPES[flag]
    try:
        values = [parse(part.strip()) for part in text.split(",")]
    except ValueError as error:
        raise ValueError(f"--{flag.replace('_', '-')}: cannot read {text!r}: {error}") from None
    if len(values) == 1:
        return values * num_stages
    if len(values) != num_stages:
        raise ValueError(f"--{flag.replace('_', '-')}: give one value or {num_stages} (one per stage), got {text!r}")
    return values


def parse_sweeps(sweeps: list[str]) -> list[tuple[str, list]]:
    """['guidance=1,3', 'aug_level=0,0.1'] -> [('guidance', [1.0, 3.0]), ('aug_level', [0.0, 0.1])]."""
    parsed = []
    for sweep in sweeps:
        key, separator, values = sweep.partition("=")
        key = key.strip().replace("-", "_")
        if not separator or key not in SETTING_TYPES or not values:
            raise ValueError(f"--sweep {sweep!r}: expected KEY=V1,V2,... with KEY one of {sorted(SETTING_TYPES)}")
        try:
            parsed.append((key, [SETTING_TYPES[key](value.strip()) for value in values.split(",")]))
        except ValueError as error:
            raise ValueError(f"--sweep {sweep!r}: {error}") from None
    return parsed


def per_stage_flags(args: argparse.Namespace, num_stages: int) -> dict[str, list]:
    """{setting: one value per stage} for the setting flags given on the command line."""
    flags = {key: parse_per_stage(key, getattr(args, key), num_stages) for key in SETTING_TYPES}
    return {key: values for key, values in flags.items() if values is not None}


def apply_setting(cascade: Cascade, stage_index: int | None, key: str, value: object, source: str) -> Cascade:
    """`cascade.updated(...)`; a value the settings reject fails with one line naming `source`
    (the flag or sweep that gave it)."""
    try:
        return cascade.updated(stage_index, **{key: value})
    except StageConfigError as error:
        where = "" if stage_index is None else f"stage {stage_index}: "
        raise ValueError(f"{source}: {where}{'; '.join(message for _, message in error.problems)}") from None


def sweep_variants(cascade: Cascade, flags: dict[str, list], sweeps: list[tuple[str, list]],
                   out: Path) -> list[tuple[Path, Cascade]]:
    """(folder, cascade) for every combination of the sweeps, the flags applied to each."""
    for key, values in flags.items():
        for index, value in enumerate(values):
            cascade = apply_setting(cascade, index, key, value, f"--{key.replace('_', '-')}")
    variants = []
    for combination in itertools.product(*[[(key, value) for value in values] for key, values in sweeps]):
        variant = cascade
        for key, value in combination:
            variant = apply_setting(variant, None, key, value, f"--sweep {key}={value}")
        folder = out / ",".join(f"{key}={value}" for key, value in combination) if combination else out
        variants.append((folder, variant))
    return variants


def read_conditions(args: argparse.Namespace) -> list[tuple[str | int, str | None]]:
    if args.prompts:
        records = read_prompt_set(args.prompts)
        conditions = [(record.prompt, record.category) for record in records]
    else:
        try:
            conditions = [(int(value), None) for value in args.classes.split(",") if value.strip()]
        except ValueError:
            raise ValueError(f"--classes must be comma-separated integers, got {args.classes!r}") from None
    if args.limit is not None:
        conditions = conditions[: args.limit]
    if not conditions:
        raise ValueError("no conditions to sample: the prompt file or class list is empty")
    return conditions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascade sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", required=True, help="base then SR stages: .ckpt files or export directories")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--prompts", help="prompt file (txt, CSV with a prompt column, TSV) or a shipped set: drawbench, partiprompts")
    which.add_argument("--classes", help="comma-separated class ids")
    parser.add_argument("--n-per-condition", type=int, default=1, help="images per prompt or class")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="base seed; each image's seed derives from it, its condition and its index")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N conditions")
    for flag, help_ in (
        ("sampler", "ddpm, ddim or dpmpp_2m"),
        ("steps", "denoising steps"),
        ("guidance", "classifier-free guidance scale (1 = plain conditional)"),
        ("dynamic-threshold", "dynamic-thresholding percentile, or 'off' for static clipping"),
        ("aug-level", "SR stages: noise-augmentation level s in [0, 1] of the low-res input"),
    ):
        parser.add_argument(f"--{flag}", default=None,
                            help=f"{help_}: one value, or one per stage (comma list); default: each stage's own")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2", help="one sub-folder per value (repeatable: cross product)")
    parser.add_argument("--keep-intermediate", action="store_true", help="also save every stage's lower-resolution output")
    parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK (or SLURM_LOCALID) when CUDA is available, else cpu")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def sample(argv: list[str]) -> int:
    """`cascade sample --stages ... --prompts ... --out DIR`."""
    args = build_parser().parse_args(argv)
    console = Console(stderr=True, soft_wrap=True)
    local_rank = os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
    device = args.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        rank, world_size = rank_and_world_size()
        conditions = read_conditions(args)
        flags = per_stage_flags(args, len(args.stages))
        sweeps = parse_sweeps(args.sweep)
        for path in args.stages:
            if not Path(path).exists():
                raise FileNotFoundError(f"--stages: {path} does not exist")
        variants = sweep_variants(Cascade.from_paths(args.stages, device=device), flags, sweeps, args.out)
    except (ValueError, FileNotFoundError) as error:
        console.print(f"[red]cascade sample: {error}[/red]")
        return 2
    job = FolderJob(args.n_per_condition, args.batch_size, args.seed, args.keep_intermediate, not args.no_progress)
    started = time.perf_counter()
    folders = []
    for folder, variant in variants:
        written = sample_folder(variant, conditions, job, folder, rank, world_size, console)
        console.print(f"rank {rank}: {folder}: wrote {written} images", markup=False)
        folders.append(folder)
    barrier_if_distributed(world_size)
    if rank == 0:
        for folder in folders:
            count = merge_metadata(folder)
            console.print(f"{folder}/metadata.jsonl: {count} images")
    console.print(f"rank {rank}: done in {time.perf_counter() - started:.1f} s", markup=False)
    return 0
