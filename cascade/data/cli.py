"""`cascade data <command>`: write shards, precompute text embeddings, benchmark the loader.

    cascade data write-shards --source synthetic --count 5000 --resolution 64 --out shards/train
    cascade data write-shards --source folder:/data/imagenet/train --resize 512 --out shards/in1k --workers 8
    cascade data write-shards --source list:captions.jsonl --format jpg --out shards/captioned
    cascade data precompute-text --shards shards/train --encoder minilm --out shards/train-minilm
    cascade data bench-loader --workdir /tmp/cascade-bench
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from "1073741824", "512MB", "1GiB", "1g" (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 500MB, 1GiB, 1048576)")
    unit = (match.group(2) or "").lower()[:1]
    return int(float(match.group(1)) * _UNITS[unit])


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascade data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    write = commands.add_parser("write-shards", help="write WebDataset shards (atomic, resumable)")
    write.add_argument(
        "--source", required=True, help="folder:PATH (ImageNet layout), list:FILE.jsonl|.csv, or synthetic"
    )
    write.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    write.add_argument("--max-samples", type=int, default=10_000, help="samples per shard at most (default 10000)")
    write.add_argument("--max-bytes", type=parse_size, default="1GiB", help="bytes per shard at most (default 1GiB)")
    write.add_argument(
        "--format",
        choices=["keep", "jpg", "png", "webp"],
        help="stored image format (default: keep for files, png for synthetic)",
    )
    write.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default 95)")
    write.add_argument("--resize", type=int, help="downsize images whose short side is larger to this short side")
    write.add_argument("--shuffle-seed", type=int, default=0, help="seed of the sample order shuffle for file sources")
    write.add_argument("--no-shuffle", action="store_true", help="keep the file order of file sources")
    write.add_argument("--count", type=int, default=10_000, help="synthetic: number of samples")
    write.add_argument("--resolution", type=int, default=64, help="synthetic: rendered resolution")
    write.add_argument("--seed", type=int, default=0, help="synthetic: dataset seed")
    write.add_argument("--split", choices=["train", "heldout"], default="train", help="synthetic: caption split")
    write.add_argument("--workers", type=int, default=0, help="processes that encode images (default 0: in-process)")
    write.add_argument("--no-progress", action="store_true", help="no progress bar")

    text = commands.add_parser("precompute-text", help="add precomputed text embeddings to shards")
    text.add_argument("--shards", required=True, help="input shards: folder, glob or brace pattern")
    text.add_argument("--out", required=True, help="output folder for the shards with embeddings")
    text.add_argument("--encoder", default="minilm", choices=["minilm", "t5", "clip"], help="text encoder kind")
    text.add_argument("--encoder-path", help="local weights folder (default: see cascade.nn.text)")
    text.add_argument("--max-length", type=int, help="tokens per caption (default: the encoder's)")
    text.add_argument("--batch-size", type=int, default=256)
    text.add_argument("--device", default="cpu")
    text.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    text.add_argument("--no-progress", action="store_true", help="no progress bar")

    bench = commands.add_parser("bench-loader", help="decoded samples/s per worker for each stage")
    bench.add_argument("--workdir", help="where the benchmark shards are written and reused (default: a temp folder)")
    bench.add_argument("--datasets", default="synthetic,photos", help="comma-separated: synthetic, photos")
    bench.add_argument("--stages", default="base64,sr256,sr1024", help="comma-separated: base64, sr256, sr1024")
    bench.add_argument("--samples", type=int, default=512, help="samples timed for the base stage (SR: fewer)")
    return parser


def _write_shards(args: argparse.Namespace) -> None:
    from .image_io import ImageEncoding
    from .sources import CaptionListSource, FolderSource, SyntheticSource
    from .writer import write_shards

    kind, _, location = args.source.partition(":")
    shuffle_seed = None if args.no_shuffle else args.shuffle_seed
    if kind == "synthetic":
        encoding = ImageEncoding(format=args.format or "png", quality=args.quality, resize=args.resize)
        source = SyntheticSource(args.count, args.resolution, seed=args.seed, split=args.split, encoding=encoding)
    elif kind in ("folder", "list") and location:
        encoding = ImageEncoding(format=args.format or "keep", quality=args.quality, resize=args.resize)
        source_class = FolderSource if kind == "folder" else CaptionListSource
        source = source_class(location, encoding=encoding, shuffle_seed=shuffle_seed)
    else:
        raise ValueError(f"--source must be folder:PATH, list:FILE or synthetic, got {args.source!r}")
    summary = write_shards(
        source, args.out, args.max_samples, args.max_bytes, workers=args.workers, progress=not args.no_progress
    )
    print(
        f"{summary.samples} samples in {len(summary.shards)} shards in {summary.out_dir} "
        f"({summary.resumed_shards} kept from an earlier run, {summary.unreadable} unreadable inputs skipped)"
    )


def _precompute_text(args: argparse.Namespace) -> None:
    from .text_embeddings import precompute_text

    outputs = precompute_text(
        args.shards,
        args.out,
        kind=args.encoder,
        path=args.encoder_path,
        max_length=args.max_length,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        progress=not args.no_progress,
    )
    print(f"{len(outputs)} shards with {args.encoder} embeddings in {args.out}")


def _bench_loader(args: argparse.Namespace) -> None:
    from .bench import STAGES, markdown_table, run

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"--stages: unknown {unknown}; choose from {sorted(STAGES)}")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    with tempfile.TemporaryDirectory(prefix="cascade-bench-") as scratch:
        results = run(args.workdir or scratch, datasets, stages, args.samples)
    print(markdown_table(results))


_COMMANDS = {"write-shards": _write_shards, "precompute-text": _precompute_text, "bench-loader": _bench_loader}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `cascade data`; returns the exit status."""
    args = _build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        _COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as error:
        print(f"cascade data {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0
