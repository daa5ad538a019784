"""`cascade data write-shards | precompute-text`: webdataset shards and their text embeddings.

    cascade data write-shards --source synthetic --count 5000 --resolution 64 --out shards/train
    cascade data write-shards --source folder:/data/imagenet/train --resize 512 --out shards/in1k --workers 8
    cascade data write-shards --source list:captions.jsonl --format jpg --out shards/captioned
    cascade data precompute-text --shards shards/train --encoder minilm --out shards/train-minilm

The loader benchmark is `cascade bench loader`.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from "1073741824", "512MB", "1GiB", "1g" (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 500MB, 1GiB, 1048576)")
    unit = (match.group(2) or "").lower()[:1]
    return int(float(match.group(1)) * _UNITS[unit])


def _run(command: str, action) -> int:  # noqa: ANN001 - action: () -> None
    """Run `action`; bad input (a flag's value, a missing file) prints one line and returns 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        action()
    except (ValueError, FileNotFoundError) as error:
        print(f"cascade data {command}: error: {error}", file=sys.stderr)
        return 2
    return 0


def write_shards(argv: list[str]) -> int:
    """`cascade data write-shards --source ... --out DIR`."""
    parser = argparse.ArgumentParser(prog="cascade data write-shards",
                                     description="Write WebDataset shards (atomic, resumable).")
    parser.add_argument(
        "--source", required=True, help="folder:PATH (ImageNet layout), list:FILE.jsonl|.csv, or synthetic"
    )
    parser.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    parser.add_argument("--max-samples", type=int, default=10_000, help="samples per shard at most (default 10000)")
    parser.add_argument("--max-bytes", type=parse_size, default="1GiB", help="bytes per shard at most (default 1GiB)")
    parser.add_argument(
        "--format",
        choices=["keep", "jpg", "png", "webp"],
        help="stored image format (default: keep for files, png for synthetic)",
    )
    parser.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default 95)")
    parser.add_argument("--resize", type=int, help="downsize images whose short side is larger to this short side")
    parser.add_argument(
        "--max-pixels", type=int,
        help="skip (and count) images whose header declares more pixels, without decoding them (default 64000000)",
    )
    parser.add_argument("--shuffle-seed", type=int, default=0, help="seed of the sample order shuffle for file sources")
    parser.add_argument("--no-shuffle", action="store_true", help="keep the file order of file sources")
    parser.add_argument("--count", type=int, default=10_000, help="synthetic: number of samples")
    parser.add_argument("--resolution", type=int, default=64, help="synthetic: rendered resolution")
    parser.add_argument("--seed", type=int, default=0, help="synthetic: dataset seed")
    parser.add_argument("--split", choices=["train", "heldout"], default="train", help="synthetic: caption split")
    parser.add_argument("--workers", type=int, default=0, help="processes that encode images (default 0: in-process)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def write() -> None:
        from ..data.image_io import DEFAULT_MAX_PIXELS, ImageEncoding
        from ..data.sources import CaptionListSource, FolderSource, SyntheticSource
        from ..data.writer import write_shards as write_all

        kind, _, location = args.source.partition(":")
        shuffle_seed = None if args.no_shuffle else args.shuffle_seed
        max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels
        settings = {"quality": args.quality, "resize": args.resize, "max_pixels": max_pixels}
        if kind == "synthetic":
            encoding = ImageEncoding(format=args.format or "png", **settings)
            source = SyntheticSource(args.count, args.resolution, seed=args.seed, split=args.split, encoding=encoding)
        elif kind in ("folder", "list") and location:
            encoding = ImageEncoding(format=args.format or "keep", **settings)
            source_class = FolderSource if kind == "folder" else CaptionListSource
            source = source_class(location, encoding=encoding, shuffle_seed=shuffle_seed)
        else:
            raise ValueError(f"--source must be folder:PATH, list:FILE or synthetic, got {args.source!r}")
        summary = write_all(
            source, args.out, args.max_samples, args.max_bytes, workers=args.workers, progress=not args.no_progress
        )
        print(
            f"{summary.samples} samples in {len(summary.shards)} shards in {summary.out_dir} "
            f"({summary.resumed_shards} kept from an earlier run, {summary.unreadable} unreadable inputs skipped)"
        )

    return _run("write-shards", write)


def precompute_text(argv: list[str]) -> int:
    """`cascade data precompute-text --shards SPEC --out DIR [--encoder minilm|t5|clip]`."""
    parser = argparse.ArgumentParser(prog="cascade data precompute-text",
                                     description="Add precomputed text embeddings to shards.")
    parser.add_argument("--shards", required=True, help="input shards: folder, glob or brace pattern")
    parser.add_argument("--out", required=True, help="output folder for the shards with embeddings")
    parser.add_argument("--encoder", default="minilm", choices=["minilm", "t5", "clip"], help="text encoder kind")
    parser.add_argument("--encoder-path", help="local weights folder (default: see cascade.nn.text)")
    parser.add_argument("--max-length", type=int, help="tokens per caption (default: the encoder's)")
    parser.add_argument("--layer", type=int, help="the hidden states to store: layer k's output (0 = the input "
                        "embeddings); default: the last output; the stage's text_encoder.layer must match")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def embed() -> None:
        from ..data.text_embeddings import precompute_text as embed_shards
        from ..nn import TextEncoder

        encoder = TextEncoder.from_config(
            kind=args.encoder, path=args.encoder_path, max_length=args.max_length, dtype=args.dtype, cache_size=8192,
            layer=args.layer,
        )
        encoder.to(args.device)
        outputs = embed_shards(args.shards, args.out, encoder, batch_size=args.batch_size,
                               progress=not args.no_progress)
        print(f"{len(outputs)} shards with {args.encoder} embeddings in {args.out}")

    return _run("precompute-text", embed)
