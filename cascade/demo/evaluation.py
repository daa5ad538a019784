"""The demo's evaluation: caption alignment from the dataset's detector, and FID / precision /
recall in the offline (random-weight Inception) feature space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from ..data.image_io import open_image
from ..eval.alignment import aggregate, score
from ..eval.evaluate import evaluate_samples
from ..eval.extractors import build_extractor
from ..eval.features import reference_statistics
from ..files.sample_folder import intermediate_dirs, read_metadata

ALIGNMENT_CHECKS = ("colour", "shape", "count", "exact", "relation")
FEATURE_INPUT_SIZE = 128  # the random-weight extractor runs at the demo's final resolution


def alignment_of_folder(folder: Path, scenes: list[dict], images: Path | None = None) -> dict[str, float]:
    """Detector accuracy of a sample folder's images (or of the same names in `images`, e.g. an
    intermediate stage's folder) against the scenes their captions came from."""
    images = images or folder
    scores = [
        score(np.asarray(open_image(images / entry["file"]).convert("RGB")), scenes[entry["condition_index"]])
        for entry in read_metadata(folder)
    ]
    return aggregate(scores)


def alignment_of_reference(reference_dir: Path, scenes: list[dict]) -> dict[str, float]:
    """The detector on the real renders of the same captions: how far it can be trusted."""
    return aggregate(
        score(np.asarray(open_image(reference_dir / f"{index:05d}.png").convert("RGB")), scene)
        for index, scene in enumerate(scenes)
    )


def evaluate_demo(folders: dict[float, Path], reference_dir: Path, scenes: list[dict], console: Console) -> dict:
    """{"alignment": {label: accuracies}, "metrics": [EvaluationResult], "extractor": name}."""
    alignment = {"real renders": alignment_of_reference(reference_dir, scenes)}
    for guidance, folder in folders.items():
        # Each stage's output, so the table shows where a caption's content is won or lost.
        for size, stage_dir in intermediate_dirs(folder):
            alignment[f"guidance {guidance:g}, {size}px stage"] = alignment_of_folder(folder, scenes, stage_dir)
        alignment[f"guidance {guidance:g}"] = alignment_of_folder(folder, scenes)
    extractor = build_extractor("random-inception", random_input_size=FEATURE_INPUT_SIZE, device="cpu")
    reference, _ = reference_statistics(str(reference_dir), extractor, cache_dir=reference_dir.parent / "stats",
                                        progress=False)
    metrics = [  # each sample folder's final images (the stages it keeps are not scored)
        evaluate_samples(folder, reference, extractor, metrics=("fid", "pr"), setting={"guidance": guidance},
                         progress=False)
        for guidance, folder in folders.items()
    ]
    table = Table(title="Caption alignment on held-out captions (detector accuracy)")
    for column in ("images", "n") + ALIGNMENT_CHECKS:
        table.add_column(column)
    for label, values in alignment.items():
        table.add_row(label, f"{values['n']:.0f}", *[f"{values[c]:.2f}" for c in ALIGNMENT_CHECKS])
    console.print(table)
    for result in metrics:
        console.print(f"{result.label}: " + ", ".join(f"{k}={v:.3f}" for k, v in result.metrics.items()))
    return {"alignment": alignment, "metrics": metrics, "extractor": extractor.name}
