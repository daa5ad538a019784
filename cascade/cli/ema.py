"""`cascade ema reconstruct`: the weights of any EMA length after training, from the post-hoc EMA
snapshots a run saved (`posthoc_ema` section of `cascade fit`; EDM2 post-hoc EMA), as an export.

    cascade ema reconstruct runs/base --sigma-rel 0.07 --out runs/base/export-ema0.07
    cascade ema reconstruct runs/base/posthoc_ema --sigma-rel 0.05,0.07,0.1 --step 20000 --out runs/base/phema
        # several values: one export per value, OUT/sigma_rel-0.050, OUT/sigma_rel-0.070, ...

The export is the format `cascade export` writes (model.safetensors + config.yaml), for
`cascade sample --stages` and `cascade.pipeline.Cascade.from_paths`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..stages.export import CONFIG_FILE, WEIGHTS_FILE
from ..stages.posthoc_ema import check_sigma_rel, reconstruct_all, write_posthoc_export


def parse_sigma_rels(text: str) -> list[float]:
    """"0.05,0.07" -> [0.05, 0.07]; ValueError naming --sigma-rel for a value that is not a number
    or lies outside (0, 0.3)."""
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"--sigma-rel: {item.strip()!r} is not a number") from None
        values.append(check_sigma_rel(value, "--sigma-rel"))
    return values


def output_dirs(out: str, sigma_rels: list[float]) -> list[Path]:
    """OUT itself for one value; OUT/sigma_rel-0.070 for each of several."""
    if len(sigma_rels) == 1:
        return [Path(out)]
    return [Path(out) / f"sigma_rel-{sigma:.3f}" for sigma in sigma_rels]


def reconstruct(argv: list[str]) -> int:
    """`cascade ema reconstruct RUN_OR_SNAPSHOT_DIR --sigma-rel S[,S...] [--step N] --out EXPORT`."""
    parser = argparse.ArgumentParser(
        prog="cascade ema reconstruct", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", help="a run directory (with posthoc_ema/) or a folder of snapshots")
    parser.add_argument("--sigma-rel", required=True, help="relative EMA width(s) in (0, 0.3), comma-separated")
    parser.add_argument("--step", type=int, default=None, help="a snapshot's step (default: the last snapshot's)")
    parser.add_argument("--out", required=True, help="export directory (several --sigma-rel: one subfolder each)")
    args = parser.parse_args(argv)
    try:
        sigma_rels = parse_sigma_rels(args.sigma_rel)
        results = reconstruct_all(args.source, sigma_rels, args.step)
        for weights, out in zip(results, output_dirs(args.out, sigma_rels)):
            write_posthoc_export(weights, out)
            print(f"sigma_rel {weights.sigma_rel:g} at step {weights.step} -> {out / WEIGHTS_FILE}, {out / CONFIG_FILE}")
    except (FileNotFoundError, ValueError) as error:
        message = str(error)
        if message.startswith("step: "):
            message = "--step: " + message.removeprefix("step: ")
        print(f"cascade ema reconstruct: {message}", file=sys.stderr)
        return 2
    return 0
