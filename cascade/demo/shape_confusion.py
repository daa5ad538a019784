"""Where the demo's shape score fails: each true shape against what the detector reads.

    python -m cascade.demo.shape_confusion runs/demo

For every object whose colour is unique in its caption (`cascade.eval.alignment.shape_readings`),
over a demo run's held-out samples (each `samples/guidance=*/` folder: its final images and its
intermediate stages) and over the real renders of the same captions (`reference/`, also
box-averaged to the base's size): the fraction read as circle / square / triangle, or whose colour
was found 0 or 2+ times, and the median fill ratio (area / bounding box; the detector reads a
square above 0.89, a circle above 0.64). docs/benchmarks.md, "Tenth session", reads one run.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..eval.alignment import shape_confusion, shape_readings
from ..eval.heldout import folder_images

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cascade.demo.shape_confusion", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a `cascade demo --out` folder")
    args = parser.parse_args(argv)
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
