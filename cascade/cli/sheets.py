"""`cascade eval sheets make | ingest`: blinded DrawBench-style human evaluation.

    cascade eval sheets make --prompts drawbench --system-a base=runs/base/samples \\
        --system-b new=runs/new/samples --raters 3 --out runs/study [--seed 7] [--limit 50]
    cascade eval sheets ingest --key runs/study/key-<study>.json answers-*.csv \\
        --out runs/study/results.json [--bootstrap 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from ..data.prompt_sets import SHIPPED_PROMPT_SETS, PromptRecord, read_prompt_set, resolve_prompt_set
from ..files.atomic import write_text
from ..eval.sheets.errors import SheetError
from ..eval.sheets.images import IMAGE_FORMATS
from ..eval.sheets.ingest import collect_answers, load_study
from ..eval.sheets.make import write_study
from ..eval.sheets.results import print_results, summarise
from ..eval.sheets.samples import read_sample_folder
from ..eval.sheets.study import plan_study, unique_prompts


def make(argv: list[str]) -> int:
    """`cascade eval sheets make`: a key file plus an HTML sheet and a CSV template per rater."""
    parser = argparse.ArgumentParser(prog="cascade eval sheets make", description="Write a key file plus an HTML sheet and a CSV template per rater.")
    parser.add_argument(
        "--prompts",
        required=True,
        help=f"prompt set: a shipped one by name ({', '.join(SHIPPED_PROMPT_SETS)}), or a .csv / .tsv / .txt file",
    )
    parser.add_argument(
        "--system-a", required=True, metavar="NAME=DIR", help="first system: its name and `cascade sample` folder"
    )
    parser.add_argument("--system-b", required=True, metavar="NAME=DIR", help="second system, as --system-a")
    parser.add_argument(
        "--raters", type=int, default=3, help="number of raters, each with their own order and sides (default 3)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=None, help="fixes the study id, orders and sides (default: random)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts of the set")
    parser.add_argument("--index", type=int, default=0, help="which sample per prompt to show, by its index (default 0)")
    parser.add_argument(
        "--max-side",
        type=int,
        default=512,
        help="downscale larger images to this many pixels on the longer side; 0 keeps them (default 512)",
    )
    parser.add_argument(
        "--image-format",
        choices=IMAGE_FORMATS,
        default="jpeg",
        help="how images are embedded: jpeg (default; small sheets) or png (lossless; sheets ~10x larger)",
    )
    parser.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality for --image-format jpeg (default 95)")
    return _run("make", _make, parser.parse_args(argv))


def ingest(argv: list[str]) -> int:
    """`cascade eval sheets ingest`: validate filled answer sheets, un-blind them, summarise."""
    parser = argparse.ArgumentParser(prog="cascade eval sheets ingest", description="Validate filled answer sheets, un-blind them, compute the results.")
    parser.add_argument("--key", required=True, type=Path, help="the key file written by `sheets make`")
    parser.add_argument("sheets", nargs="+", type=Path, help="filled answer CSV files (any number, any raters)")
    parser.add_argument("--out", required=True, type=Path, help="where to write results.json")
    parser.add_argument(
        "--bootstrap", type=int, default=2000, help="bootstrap resamples for the 95%% intervals (default 2000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    return _run("ingest", _ingest, parser.parse_args(argv))


def _run(command: str, action, args: argparse.Namespace) -> int:  # noqa: ANN001 - action: Namespace -> int
    """Run one sheets command; bad input prints its problems and returns 1."""
    try:
        return action(args)
    except SheetError as error:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]cascade eval sheets {command}: {len(error.problems)} problem(s)[/]")
        print(error, file=sys.stderr)
        return 1


def _make(args: argparse.Namespace) -> int:
    console = Console(soft_wrap=True)
    records = unique_prompts(_read_prompts(args.prompts))
    if args.limit is not None:
        records = records[: max(args.limit, 0)]
    system_a = read_sample_folder(*_name_and_folder(args.system_a, "--system-a"))
    system_b = read_sample_folder(*_name_and_folder(args.system_b, "--system-b"))
    study = plan_study(
        records,
        system_a,
        system_b,
        raters=args.raters,
        prompt_set=str(resolve_prompt_set(args.prompts)),
        seed=args.seed,
        sample_index=args.index,
    )
    written = write_study(
        study, args.out, max_side=args.max_side, image_format=args.image_format, jpeg_quality=args.jpeg_quality
    )
    console.print(
        f"study [bold]{study.study_id}[/]: {len(study.pairs)} pairs, {len(study.raters)} rater(s), seed {study.seed}"
    )
    for rater_id, sheet in written.sheets.items():
        console.print(f"  {rater_id}: {sheet}  (spreadsheet template: {written.templates[rater_id].name})")
    console.print(f"key (keep it from the raters): {written.key}")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    if args.bootstrap < 1:
        raise SheetError(f"--bootstrap must be at least 1, got {args.bootstrap}")
    study = load_study(args.key)
    answers = collect_answers(study, args.sheets)
    results = summarise(study, answers, sheets=[str(s) for s in args.sheets], resamples=args.bootstrap, seed=args.seed)
    write_text(args.out, json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    console = Console()
    print_results(results, console)
    console.print(f"results: {args.out}")
    return 0


def _read_prompts(name_or_path: str) -> list[PromptRecord]:
    try:
        return read_prompt_set(name_or_path)
    except (OSError, ValueError) as error:
        raise SheetError(str(error)) from error


def _name_and_folder(value: str, flag: str) -> tuple[str, Path]:
    """Split ``NAME=DIR``; a bare ``DIR`` is named after its folder."""
    name, separator, folder = value.partition("=")
    if not separator:
        name, folder = Path(value).resolve().name, value
    if not name.strip() or not folder:
        raise SheetError(f"{flag} {value!r}: expected NAME=DIR")
    return name.strip(), Path(folder)

