"""`cascade eval metrics | sr | stats | benchmark | report`: FID / IS / precision-recall / KID,
feature-extraction speed and reports from the command line.

    cascade eval metrics --real DIR|SHARDS|STATS.npz --fake DIR [--extractor inception]
                         [--metrics fid,is,pr,kid] [--inception-weights FILE] [--out FILE.json]
    cascade eval sr      --sr DIR --lowres DIR --real DIR|SHARDS|STATS.npz [--metrics fid]
    cascade eval stats   --real DIR|SHARDS [--resolution N] [--out FILE.npz]

`--fake` / `--sr` may be a sweep folder from ``cascade sample --sweep`` (sub-folders such
as ``guidance=3/``): every setting is evaluated. A sample folder's final images are scored;
the lower stages `--keep-intermediate` keeps under ``intermediate/`` only when one is asked for
with `--stage` (``stage0_32px`` or its index, 0). Images of several sizes in one set are an
error. Results print as a table and are written as JSON (read by ``cascade eval report``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from ..eval.benchmark import extraction_throughput, fid_from_cached_statistics_seconds
from ..eval.evaluate import evaluate_super_resolution, evaluate_sweep
from ..eval.extractors import EXTRACTOR_NAMES, build_extractor
from ..eval.features import reference_statistics
from ..eval.report import build_evaluation_report
from ..eval.results import EvaluationResult, load_results, save_results
from ..eval.weights import INCEPTION_WEIGHTS_ENV, InceptionWeightsNotFound

METRIC_COLUMNS = (
    ("fid", "FID"), ("is_mean", "IS"), ("precision", "precision"), ("recall", "recall"),
    ("kid_mean", "KID"), ("clip_score", "CLIP score"), ("lowres_psnr", "low-res PSNR (dB)"),
)


def _add_extractor_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("feature space")
    group.add_argument("--extractor", choices=EXTRACTOR_NAMES, default="inception",
                       help="inception: standard FID protocol (torch-fidelity); clean: clean-fid resize; "
                            "random-inception: no weights needed, NOT comparable to published numbers; "
                            "dinov2: FD_DINOv2 (needs --dinov2-weights)")
    group.add_argument("--inception-weights", type=Path,
                       help=f"FID Inception weights file (else ${INCEPTION_WEIGHTS_ENV}, else the torch hub cache)")
    group.add_argument("--dinov2-weights", type=Path, help="local DINOv2 weights file (timm / safetensors)")
    group.add_argument("--dinov2-model", default="vit_large_patch14_dinov2", help="timm model name for --dinov2-weights")
    group.add_argument("--random-size", type=int, default=299,
                       help="random-inception only: input size (>= 75; smaller is faster on CPU)")
    group.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")


def _add_loading_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("loading")
    group.add_argument("--resolution", type=int,
                       help="center-crop and resize images to this size first (needed for real sets of mixed sizes)")
    group.add_argument("--max-real", type=int, help="use only the first N reference images")
    group.add_argument("--dataset", help="name of the reference set in the statistics cache (default: from the path)")
    group.add_argument("--stats-dir", type=Path, help="reference statistics cache (default: $CASCADE_STATS_DIR or "
                                                      "~/.cache/cascade/reference-stats)")
    group.add_argument("--batch-size", type=int, default=32)
    group.add_argument("--num-workers", type=int, default=0, help="image decoding workers")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_stage_option(parser: argparse.ArgumentParser, flag: str) -> None:
    parser.add_argument("--stage", help=f"score this lower stage of each sample folder in {flag} instead of its final "
                                        "images: the name of its intermediate/ folder (stage0_32px) or its index (0)")


def _add_metric_options(parser: argparse.ArgumentParser, default: str) -> None:
    group = parser.add_argument_group("metrics")
    group.add_argument("--metrics", default=default, help=f"comma-separated subset of fid,is,pr,kid (default {default})")
    group.add_argument("--pr-k", type=int, default=3, help="precision/recall neighbourhood size")
    group.add_argument("--kid-subsets", type=int, default=100)
    group.add_argument("--kid-subset-size", type=int, default=1000)


def _extractor(args: argparse.Namespace):  # noqa: ANN202 - FeatureExtractor
    return build_extractor(args.extractor, inception_weights=args.inception_weights,
                           dinov2_weights=args.dinov2_weights, dinov2_model=args.dinov2_model,
                           random_input_size=args.random_size, device=args.device)


def print_results(results: list[EvaluationResult], console: Console | None = None) -> None:
    """The metrics as a table, one row per setting, and the protocol underneath."""
    console = console or Console()
    columns = [(key, title) for key, title in METRIC_COLUMNS if any(key in r.metrics for r in results)]
    table = Table(title="evaluation")
    table.add_column("setting")
    table.add_column("samples", justify="right")
    for _, title in columns:
        table.add_column(title, justify="right")
    for result in results:
        cells = [f"{result.metrics[key]:.4f}" if key in result.metrics else "-" for key, _ in columns]
        table.add_row(result.label, str(result.protocol.get("num_samples", "")), *cells)
    console.print(table)
    protocol = results[0].protocol
    console.print(f"reference: {protocol.get('reference')} ({protocol.get('num_reference')} images); "
                  f"extractor: {protocol.get('extractor')} (weights sha256 {protocol.get('weights_hash')}); "
                  f"{protocol.get('preprocessing')}", highlight=False)


def _run(command: str, argv: list[str], parser: argparse.ArgumentParser) -> int:
    args = parser.parse_args(argv)
    try:
        extractor = _extractor(args)
        options = dict(pr_k=args.pr_k, kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size)
        common = dict(resolution=args.resolution, stats_dir=args.stats_dir, max_real=args.max_real,
                      batch_size=args.batch_size, num_workers=args.num_workers, progress=not args.no_progress)
        if command == "metrics":
            results = evaluate_sweep(args.real, args.fake, extractor, args.metrics, dataset=args.dataset,
                                     clip_model=args.clip_model, max_images=args.max_fake, stage=args.stage,
                                     **common, **options)
            out = args.out or Path(args.fake) / f"metrics-{extractor.name}.json"
        else:
            results = evaluate_super_resolution(args.sr, args.lowres, args.real, extractor, args.metrics,
                                                dataset=args.dataset, stage=args.stage, **common, **options)
            out = args.out or Path(args.sr) / f"sr-metrics-{extractor.name}.json"
    except (InceptionWeightsNotFound, FileNotFoundError, ValueError) as error:
        print(f"cascade eval {command}: {error}", file=sys.stderr)
        return 1
    print_results(results)
    save_results(out, results, command=["cascade", "eval", command, *argv])
    print(f"wrote {out}")
    return 0


def metrics(argv: list[str]) -> int:
    """`cascade eval metrics`."""
    parser = argparse.ArgumentParser(prog="cascade eval metrics", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", required=True, help="reference images: folder, shards (.tar, {a..b} pattern, "
                                                      "folder of .tar) or a statistics .npz from `cascade eval stats`")
    parser.add_argument("--fake", required=True, type=Path, help="generated images: a folder or a sweep folder")
    parser.add_argument("--clip-model", type=Path, help="local CLIP folder: adds the CLIP score from metadata.jsonl prompts")
    parser.add_argument("--max-fake", type=int, help="use only the first N generated images of each set")
    parser.add_argument("--out", type=Path, help="JSON results (default: <fake>/metrics-<extractor>.json)")
    _add_stage_option(parser, "--fake")
    _add_extractor_options(parser)
    _add_loading_options(parser)
    _add_metric_options(parser, "fid,pr")
    return _run("metrics", argv, parser)


def super_resolution(argv: list[str]) -> int:
    """`cascade eval sr`."""
    parser = argparse.ArgumentParser(
        prog="cascade eval sr",
        description="Per-stage super-resolution evaluation: FID of the SR outputs against the real high-res set, "
                    "and low-res consistency (PSNR of the downsampled output against its low-res input).")
    parser.add_argument("--sr", required=True, type=Path, help="SR outputs: a folder or a sweep folder (aug_level=0.1/)")
    parser.add_argument("--lowres", required=True, type=Path,
                        help="the low-res inputs, same file names as the outputs (of a sample folder: its final "
                             "images; a kept stage's are in its intermediate/stage{i}_{size}px folder)")
    parser.add_argument("--real", required=True, help="real high-res images (folder, shards or statistics .npz)")
    parser.add_argument("--out", type=Path, help="JSON results (default: <sr>/sr-metrics-<extractor>.json)")
    _add_stage_option(parser, "--sr")
    _add_extractor_options(parser)
    _add_loading_options(parser)
    _add_metric_options(parser, "fid")
    return _run("sr", argv, parser)


def stats(argv: list[str]) -> int:
    """`cascade eval stats`: compute (or find cached) reference statistics."""
    parser = argparse.ArgumentParser(prog="cascade eval stats",
                                     description="Compute and cache reference statistics (mu, sigma, features).")
    parser.add_argument("--real", required=True, help="reference images: folder or shards")
    parser.add_argument("--out", type=Path, help="also write the statistics to this .npz")
    parser.add_argument("--no-features", action="store_true", help="keep only mu/sigma (no precision/recall, KID)")
    _add_extractor_options(parser)
    _add_loading_options(parser)
    args = parser.parse_args(argv)
    try:
        statistics, path = reference_statistics(
            args.real, _extractor(args), resolution=args.resolution, dataset=args.dataset, cache_dir=args.stats_dir,
            need_features=not args.no_features, max_images=args.max_real, batch_size=args.batch_size,
            num_workers=args.num_workers, progress=not args.no_progress)
    except (InceptionWeightsNotFound, FileNotFoundError, ValueError) as error:
        print(f"cascade eval stats: {error}", file=sys.stderr)
        return 1
    if args.out is not None:
        if args.no_features:
            statistics.features = None
        statistics.save(args.out)
        path = args.out
    print(f"{statistics.num_images} images, {statistics.mu.shape[0]}-d features -> {os.fspath(path)}")
    return 0


def benchmark(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cascade eval benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extractor", choices=EXTRACTOR_NAMES, default="random-inception")
    parser.add_argument("--inception-weights", help="for --extractor inception / clean")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=3, help="timed batches")
    parser.add_argument("--image-size", type=int, default=64, help="input image size (resized to 299 inside)")
    parser.add_argument("--fake-features", type=int, default=10_000)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    extractor = build_extractor(args.extractor, inception_weights=args.inception_weights, device=args.device)
    rate, rate_cpu = extraction_throughput(extractor, args.batch_size, args.batches, args.image_size)
    fid = fid_from_cached_statistics_seconds(args.fake_features)
    print(f"feature extraction ({extractor.name}, {args.device}, {args.threads} threads, batch {args.batch_size}, "
          f"{args.image_size}px -> 299): {rate:.2f} images/s wall-clock, {rate_cpu:.2f} images per CPU-second")
    print(f"FID from cached reference statistics, {args.fake_features} fake features (2048-d): "
          f"mean/covariance {fid['statistics']:.2f} s + Fréchet distance {fid['distance']:.2f} s "
          f"({fid['distance_cached_sqrt']:.2f} s with the reference sqrt cached) wall-clock; CPU "
          f"{fid['statistics_cpu']:.2f} s + {fid['distance_cpu']:.2f} s ({fid['distance_cached_sqrt_cpu']:.2f} s)")
    return 0


def report(argv: list[str]) -> int:
    """`cascade eval report`."""
    parser = argparse.ArgumentParser(prog="cascade eval report",
                                     description="HTML + Markdown report of an evaluation run.")
    parser.add_argument("--metrics", type=Path, nargs="*", default=[],
                        help="JSON files written by `cascade eval metrics` / `cascade eval sr`")
    parser.add_argument("--human-eval", type=Path, help="JSON written by `cascade eval sheets ingest`")
    parser.add_argument("--out", type=Path, default=Path("eval_report"), help="output folder (default eval_report/)")
    parser.add_argument("--title", default="Evaluation report")
    parser.add_argument("--grid-images", type=int, default=16, help="samples shown per setting")
    args = parser.parse_args(argv)
    if not args.metrics and args.human_eval is None:
        parser.error("give --metrics and/or --human-eval")
    try:
        results = [result for path in args.metrics for result in load_results(path)]
        files = build_evaluation_report(args.out, results, human_eval=args.human_eval, title=args.title,
                                        images_per_setting=args.grid_images)
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"cascade eval report: {error}", file=sys.stderr)
        return 1
    print(f"wrote {files.html} and {files.markdown}")
    return 0
