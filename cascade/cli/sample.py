"""`cascade sample`: images for a prompt set or a class list, through the whole cascade, to disk.

    cascade sample --stages base.ckpt sr1/ sr2/ --prompts drawbench --n-per-condition 4 \\
        --out samples/ --guidance 5,1,1 --aug-level 0.1 --sweep base.guidance=1,3,5

Per-stage settings (`SamplingSettings`) take one value for every stage or a comma list with one
per stage; a setting not given keeps each stage's own (its `sampling:` section). Each
`--sweep [STAGE.]KEY=v1,v2` multiplies the settings; every combination goes to its own
sub-folder (`base.guidance=3.0,sr1.aug_level=0.1/`). STAGE is `base` (stage 0), `sr1`, `sr2`, ...
(or the index); a plain KEY sweeps every stage and cannot be combined with that setting's flag.
Settings and the order of the stages are checked before any checkpoint is loaded. Rerunning the
same command resumes: finished images are skipped. Under torchrun or srun the work is split by
rank with no overlap and no gaps.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from ..data.prompt_sets import read_prompt_set
from ..files.sample_folder import merge_metadata, rank_and_world_size
from ..pipeline import Cascade, StageShape, check_stage_order
from ..pipeline.sweep import SETTING_TYPES, SweepAxis, stage_name, sweep_points, variant
from ..pipeline.to_folder import FolderJob, barrier_if_distributed, sample_folder
from ..stages.config import SamplingSettings, StageConfigError


def flag_name(key: str) -> str:
    """The command-line flag of a setting: aug_level -> --aug-level."""
    return f"--{key.replace('_', '-')}"


def checked_value(key: str, value: object, source: str) -> object:
    """`value` when `SamplingSettings` accepts it as `key` (a known sampler, steps >= 1, ...), so bad
    settings fail before any checkpoint is loaded; else ValueError naming `source`."""
    try:
        SamplingSettings().updated(**{key: value})
    except StageConfigError as error:
        raise ValueError(f"{source}: {'; '.join(message for _, message in error.problems)}") from None
    return value


def parse_per_stage(flag: str, text: str | None, num_stages: int) -> list | None:
    """'3' -> [3, 3, 3]; '5,3,1' -> [5, 3, 1]; None -> None (each stage keeps its own). Each value
    is checked (`checked_value`)."""
    if text is None:
        return None
    parse = SETTING_TYPES[flag]
    try:
        values = [parse(part.strip()) for part in text.split(",")]
    except ValueError as error:
        raise ValueError(f"{flag_name(flag)}: cannot read {text!r}: {error}") from None
    if len(values) == 1:
        values = values * num_stages
    if len(values) != num_stages:
        raise ValueError(f"{flag_name(flag)}: give one value or {num_stages} (one per stage), got {text!r}")
    return [checked_value(flag, value, f"{flag_name(flag)}: stage {index}") for index, value in enumerate(values)]


def parse_sweeps(sweeps: list[str], num_stages: int, flags: dict[str, list] | None = None) -> list[SweepAxis]:
    """['base.guidance=1,3', 'aug_level=0,0.1'] -> a `SweepAxis` each, its values checked.

    A key names a stage (`base.guidance`, `sr1.aug_level`, or by index `0.guidance`) or, plain,
    every stage. A plain key for a setting a flag also gives (`--guidance 5,1,1`) would drop the
    flag's values, a key naming a stage the cascade does not have or a base augmentation level
    would change nothing, and two sweeps of one stage's setting would overlap: each is an error
    naming the flag."""
    names = [stage_name(index) for index in range(num_stages)]
    parsed: list[SweepAxis] = []
    for sweep in sweeps:
        key, separator, values = sweep.partition("=")
        stage_text, dot, key = key.strip().replace("-", "_").rpartition(".")
        if not separator or key not in SETTING_TYPES or not values or (dot and not stage_text):
            raise ValueError(f"--sweep {sweep!r}: expected [STAGE.]KEY=V1,V2,... with KEY one of {sorted(SETTING_TYPES)} "
                             f"and STAGE one of {', '.join(names)} (or its index); no STAGE: every stage")
        stage = _sweep_stage(sweep, stage_text, key, names) if dot else None
        name = key if stage is None else f"{names[stage]}.{key}"
        for other in parsed:
            if other.key == key and (other.stage is None or stage is None or other.stage == stage):
                raise ValueError(f"--sweep {sweep!r}: --sweep {other.name}=... already sweeps {key} of "
                                 f"{'every stage' if None in (stage, other.stage) else names[stage]}; "
                                 "give one sweep per setting and stage")
        if stage is None and key in (flags or {}):
            example = f"{'sr1' if key == 'aug_level' else 'base'}.{key}"
            raise ValueError(f"--sweep {sweep!r}: {flag_name(key)} also sets {key}, and a plain sweep key sets every "
                             f"stage's; sweep one stage's (--sweep {example}=...) or drop {flag_name(key)}")
        try:
            parsed_values = [SETTING_TYPES[key](value.strip()) for value in values.split(",")]
        except ValueError as error:
            raise ValueError(f"--sweep {sweep!r}: {error}") from None
        checked = [checked_value(key, value, f"--sweep {name}={value}") for value in parsed_values]
        parsed.append(SweepAxis(key, tuple(checked), stage))
    return parsed


def _sweep_stage(sweep: str, stage_text: str, key: str, names: list[str]) -> int:
    """The index of the stage a sweep key names (`sr1` or `1`); ValueError naming the sweep for a
    stage the cascade does not have, or for the base stage's augmentation level (it has none)."""
    stage = int(stage_text) if stage_text.isdigit() else names.index(stage_text) if stage_text in names else -1
    if not 0 <= stage < len(names):
        raise ValueError(f"--sweep {sweep!r}: the cascade has no stage {stage_text!r} "
                         f"(its {len(names)} stages: {', '.join(names)})")
    if stage == 0 and key == "aug_level":
        raise ValueError(f"--sweep {sweep!r}: the base stage has no noise-augmentation level; sweep an SR stage's "
                         "(sr1.aug_level=...) or every SR stage's (aug_level=...)")
    return stage


def per_stage_flags(args: argparse.Namespace, num_stages: int) -> dict[str, list]:
    """{setting: one value per stage} for the setting flags given on the command line."""
    flags = {key: parse_per_stage(key, getattr(args, key), num_stages) for key in SETTING_TYPES}
    return {key: values for key, values in flags.items() if values is not None}


def sweep_variants(cascade: Cascade, flags: dict[str, list], sweeps: list[SweepAxis],
                   out: Path) -> list[tuple[Path, Cascade]]:
    """(folder, cascade) for every combination of the sweeps, the flags applied to each first
    (a stage's sweep then replaces that stage's flag value). A combination's folder is named by
    its sweeps, `base.guidance=3.0,sr1.aug_level=0.1/` (`sweep_points`); `out` itself without sweeps."""
    for key, values in flags.items():
        for index, value in enumerate(values):
            cascade = cascade.updated(index, **{key: value})
    return [(point.folder, variant(cascade, sweeps, point.setting)) for point in sweep_points(sweeps, out)]


def read_conditions(args: argparse.Namespace) -> tuple[list[tuple[str | int, str | None]], tuple[str | None, ...] | None]:
    """The conditions (prompt or class, category) and the prompts' negative prompts (a prompt file's
    ``negative_prompt`` column; None when it has none)."""
    negatives = None
    if args.prompts:
        records = read_prompt_set(args.prompts)[: args.limit]
        conditions = [(record.prompt, record.category) for record in records]
        if any(record.negative_prompt for record in records):
            negatives = tuple(record.negative_prompt for record in records)
    else:
        try:
            conditions = [(int(value), None) for value in args.classes.split(",") if value.strip()]
        except ValueError:
            raise ValueError(f"--classes must be comma-separated integers, got {args.classes!r}") from None
    if args.limit is not None:
        conditions = conditions[: args.limit]
    if not conditions:
        raise ValueError("no conditions to sample: the prompt file or class list is empty")
    return conditions, negatives


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascade sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", required=True, help="base then SR stages: .ckpt files or export directories")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--prompts", help="prompt file (txt, CSV with a prompt column, TSV) or a shipped set: drawbench, partiprompts; "
                       "a negative_prompt column guides each prompt away from its negative")
    which.add_argument("--classes", help="comma-separated class ids")
    parser.add_argument("--n-per-condition", type=int, default=1, help="images per prompt or class")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="base seed; each image's seed derives from it, its condition and its index")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N conditions")
    for flag, help_ in (
        ("sampler", "ddpm, ddim, dpmpp_2m, heun or dpmpp_3m_sde"),
        ("time-grid", "uniform_t, log_snr or karras, or 'off' (the sampler's default)"),
        ("steps", "denoising steps"),
        ("guidance", "classifier-free guidance scale (1 = plain conditional)"),
        ("dynamic-threshold", "dynamic-thresholding percentile, or 'off' for static clipping"),
        ("aug-level", "SR stages: noise-augmentation level s in [0, 1] of the low-res input"),
        ("guidance-interval", ("log-SNR interval LO:HI in which guidance is applied (write "
                               "--guidance-interval=-2:3), or 'off' (every step)")),
        ("guide", ("autoguidance: a weaker model of the stage (.ckpt or export dir) in place of the "
                   "unconditional prediction, or 'off'")),
        ("start-log-snr", ("SR stages: start from the upsampled low-res noised to this log-SNR (SDEdit), "
                           "or 'off' (pure noise)")),
    ):
        parser.add_argument(f"--{flag}", default=None,
                            help=f"{help_}: one value, or one per stage (comma list); default: each stage's own")
    parser.add_argument("--sweep", action="append", default=[], metavar="[STAGE.]KEY=V1,V2",
                        help="one sub-folder per value (repeatable: cross product); STAGE: base, sr1, sr2, ... "
                             "(default: every stage)")
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
        conditions, negatives = read_conditions(args)
        flags = per_stage_flags(args, len(args.stages))
        sweeps = parse_sweeps(args.sweep, len(args.stages), flags)
        for path in args.stages:
            if not Path(path).exists():
                raise FileNotFoundError(f"--stages: {path} does not exist")
        given_guides = flags.get("guide", []) + [value for sweep in sweeps if sweep.key == "guide" for value in sweep.values]
        for path in given_guides:
            if path is not None and not Path(path).exists():
                raise FileNotFoundError(f"--guide: {path} does not exist")
        try:  # the order and sizes of the stages, from their configs, before any weights are loaded
            check_stage_order([StageShape.read(path) for path in args.stages])
        except ValueError as error:
            raise ValueError(f"--stages: {error}") from None
        variants = sweep_variants(Cascade.from_paths(args.stages, device=device), flags, sweeps, args.out)
    except (ValueError, FileNotFoundError) as error:  # StageConfigError is a ValueError
        console.print(f"[red]cascade sample: {escape(str(error))}[/red]")  # messages hold [lo, hi]
        return 2
    job = FolderJob(args.n_per_condition, args.batch_size, args.seed, args.keep_intermediate, not args.no_progress, negatives)
    started = time.perf_counter()
    folders = []
    for folder, swept in variants:
        written = sample_folder(swept, conditions, job, folder, rank, world_size, console)
        console.print(f"rank {rank}: {folder}: wrote {written} images", markup=False)
        folders.append(folder)
    barrier_if_distributed(world_size)
    if rank == 0:
        for folder in folders:
            count = merge_metadata(folder)
            console.print(f"{folder}/metadata.jsonl: {count} images")
    console.print(f"rank {rank}: done in {time.perf_counter() - started:.1f} s", markup=False)
    return 0
