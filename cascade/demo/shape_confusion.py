"""Where the demo's shape score fails: each true shape against what the detector reads.

    python -m cascade.demo.shape_confusion runs/demo

For every object whose colour is unique in its caption (`cascade.eval.alignment.shape_readings`),
over a demo run's held-out samples (each `samples/guidance=*/` folder: its final images and its
intermediate stages) and over the real renders of the same captions (`reference/`, also
box-averaged to the base's size): the fraction read as circle / square / triangle, or whose colour
was found 0 or 2+ times, and the median fill ratio (area / bounding box; the detector reads a
square above 0.89, a circle above 0.64). docs/benchmarks.md, "Tenth session", reads one run.

    python -m cascade.demo.shape_confusion --blur 0.5,1,1.5,2

The same table for the real renders of the demo's held-out captions box-averaged to 32 px and then
blurred by a Gaussian of each standard deviation (in 32-px pixels; the SR stages' blur augmentation,
`cascade.stages.super_res.blur_randomly`): what a base that draws the right shapes unsharply would
give (docs/benchmarks.md, "Which shape goes with which colour").
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..eval.alignment import shape_confusion, shape_readings
from ..eval.heldout import folder_images, heldout_caption_set

__all__ = ["folder_readings", "main"]
READINGS = ("circle", "square", "triangle", "none", "several")


def folder_readings(folder: Path, scenes: list[dict[str, Any]], images: Path | None = None) -> list[tuple[str, str, float | None]]:
    """`shape_readings` of every image of a sample folder (or of the same files in `images`) against
    the scene of its condition (`cascade.eval.heldout.folder_images`)."""
    return [reading for _, scene, pixels in folder_images(folder, scenes, images) for reading in shape_readings(pixels, scene)]


def _table(label: str, readings: Iterable[tuple[str, str, float | None]]) -> str:
    lines = [f"{label}", f"  {'true shape':10s} {'n':>4s} " + " ".join(f"{r:>8s}" for r in READINGS) + "  median fill"]
    for true, row in shape_confusion(readings).items():
        lines.append(f"  {true:10s} {int(row['n']):4d} " + " ".join(f"{row.get(r, 0.0):8.2f}" for r in READINGS)
                     + f"  {row['median fill']:.2f}")
    return "\n".join(lines)


def blurred_render_readings(scenes: list[dict[str, Any]], size: int, sigma: float) -> list[tuple[str, str, float | None]]:
    """`shape_readings` of the scenes' real renders box-averaged to `size` px and blurred by a Gaussian
    of standard deviation `sigma` pixels (0: not blurred), as the SR stages' blur augmentation blurs."""
    import torch

    from ..data.synthetic import render
    from ..stages.super_res import BlurConfig, blur_randomly

    small = np.stack([np.asarray(Image.fromarray(render(scene, 128)).resize((size, size), Image.BOX)) for scene in scenes])
    images = torch.from_numpy(small).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if sigma > 0:
        config = BlurConfig(probability=1.0, sigma_min=sigma, sigma_max=sigma, kernel_size=2 * math.ceil(3 * sigma) + 1)
        images = blur_randomly(images, config, None)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [reading for image, scene in zip(pixels, scenes) for reading in shape_readings(image, scene)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cascade.demo.shape_confusion", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, nargs="?", help="a `cascade demo --out` folder")
    parser.add_argument("--blur", default=None, metavar="SIGMAS",
                        help="instead: the demo's held-out renders at 32 px blurred by each of these comma-separated "
                             "standard deviations (32-px pixels)")
    parser.add_argument("--captions", type=int, default=128, help="with --blur: distinct held-out captions (default 128)")
    args = parser.parse_args(argv)
    if args.blur is not None:
        try:
            sigmas = [float(value) for value in args.blur.split(",")]
        except ValueError:
            parser.error(f"--blur: expected comma-separated numbers, got {args.blur!r}")
        if any(sigma < 0 for sigma in sigmas):
            parser.error(f"--blur: standard deviations must be >= 0, got {args.blur!r}")
        scenes = heldout_caption_set(args.captions)
        for sigma in [0.0, *sigmas]:
            print(_table(f"real renders at 32 px, blurred by sigma {sigma:g} px", blurred_render_readings(scenes, 32, sigma)))
        return 0
    if args.run is None:
        parser.error("give a `cascade demo --out` folder, or --blur")
    listing = args.run / "reference" / "scenes.json"
    if not listing.is_file():
        parser.error(f"{listing}: not found (the folder of a finished `cascade demo` run holds it)")
    scenes = json.loads(listing.read_text())
    folders = sorted(p for p in (args.run / "samples").glob("guidance=*") if (p / "metadata.jsonl").is_file())
    base_size = None
    for folder in folders:
        for stage in sorted((folder / "intermediate").glob("*")):
            print(_table(f"{folder.name}, {stage.name}", folder_readings(folder, scenes, stage)))
            base_size = base_size or Image.open(next(stage.glob("*.png"))).size[0]
        print(_table(f"{folder.name}, final", folder_readings(folder, scenes)))
    references = [np.asarray(Image.open(args.run / "reference" / f"{i:05d}.png").convert("RGB")) for i in range(len(scenes))]
    print(_table("real renders", [r for image, scene in zip(references, scenes) for r in shape_readings(image, scene)]))
    if base_size:
        small = [np.asarray(Image.fromarray(image).resize((base_size, base_size), Image.BOX)) for image in references]
        print(_table(f"real renders box-averaged to {base_size} px",
                     [r for image, scene in zip(small, scenes) for r in shape_readings(image, scene)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
