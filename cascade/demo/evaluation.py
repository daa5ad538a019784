"""The demo's evaluation: caption alignment from the dataset's detector on the stratified held-out
caption set (`cascade.eval.heldout`), with caption-bootstrap intervals per stratum and balanced over
the strata, and FID / precision / recall in the offline (random-weight Inception) feature space."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from ..data.image_io import open_image
from ..eval.alignment import CHECKS, aggregate, score
from ..eval.evaluate import evaluate_samples
from ..eval.extractors import FeatureExtractor, build_extractor
from ..eval.features import ReferenceStatistics, reference_statistics
from ..eval.heldout import (
    BALANCED,
    Interval,
    ScoredImage,
    heldout_captions_by_stratum,
    paired_difference,
    score_folder,
    stratified_alignment,
)
from ..eval.results import EvaluationResult
from ..eval.sources import ImageFolder
from ..files.sample_folder import intermediate_dirs, read_metadata
from ..pipeline.sweep import SweepPoint

ALIGNMENT_CHECKS = CHECKS
SR_EFFECT_CHECKS = ("exact", "shape", "count", "relation")  # final stage minus base stage, balanced
FEATURE_INPUT_SIZE = 128  # the random-weight extractor runs at the demo's final resolution
SWEEP_CHECKS = ("exact", "shape", "count", "relation")  # balanced over the strata, per sweep setting
PR_K = 3  # precision / recall neighbourhood (Kynkaanniemi et al. 2019): needs more than PR_K images


def score_reference(reference_dir: Path, scenes: list[dict]) -> list[ScoredImage]:
    """The detector on the real renders of the same captions (`{index:05d}.png`): how far it can be trusted."""
    scored = []
    for index, scene in enumerate(scenes):
        name = f"{index:05d}.png"
        pixels = np.asarray(open_image(reference_dir / name).convert("RGB"))
        scored.append(ScoredImage(name, scene, score(pixels, scene)))
    return scored


def format_interval(value: Interval) -> str:
    """ "0.52 [0.40, 0.63]"; the estimate alone when it has no interval; "-" when it is undefined."""
    estimate, low, high = value
    if math.isnan(estimate):
        return "-"
    return f"{estimate:.2f}" if math.isnan(low) else f"{estimate:.2f} [{low:.2f}, {high:.2f}]"


def format_difference(value: Interval) -> str:
    """ "-0.05 [-0.12, +0.02]" (signed); "-" when undefined."""
    estimate, low, high = value
    if math.isnan(estimate):
        return "-"
    return f"{estimate:+.2f}" if math.isnan(low) else f"{estimate:+.2f} [{low:+.2f}, {high:+.2f}]"


def first_entries(folder: Path, per_caption: int) -> list[dict]:
    """The metadata of a sample folder's images with sample index below `per_caption` (every
    caption's first ones; a caption of a small stratum has more), in file order."""
    return [entry for entry in read_metadata(folder) if entry.get("index", 0) < per_caption]


def first_images(folder: Path, per_caption: int) -> ImageFolder:
    """The final images of `first_entries`, in file order."""
    return ImageFolder(folder, files=sorted(folder / entry["file"] for entry in first_entries(folder, per_caption)))


def feature_space(reference_dir: Path) -> tuple[FeatureExtractor, ReferenceStatistics]:
    """The offline (random-weight Inception) extractor and the real renders' statistics in it (cached)."""
    extractor = build_extractor("random-inception", random_input_size=FEATURE_INPUT_SIZE, device="cpu")
    reference, _ = reference_statistics(str(reference_dir), extractor, cache_dir=reference_dir.parent / "stats",
                                        progress=False)
    return extractor, reference


def evaluate_demo(folders: dict[float, Path], reference_dir: Path, scenes: list[dict], console: Console,
                  per_caption: int | None = None) -> dict:
    """{"alignment": {label: accuracies}, "stratified": {label: `stratified_alignment`},
    "sr_effect": {label: {check: final minus base, balanced, with a paired interval}},
    "strata_available": {stratum: distinct held-out captions}, "metrics": [EvaluationResult], "extractor": name}.

    `per_caption`: FID / precision / recall read each caption's first `per_caption` images only, so
    the generated set weighs the captions as the reference (one real render each) does; a caption
    of a small stratum has more images for the detector (`images_per_caption`). None: every image."""
    scored = {"real renders": score_reference(reference_dir, scenes)}
    sr_effect = {}
    for guidance, folder in folders.items():
        # Each stage's output, so the tables show where a caption's content is won or lost.
        stages = [(f"guidance {guidance:g}, {size}px stage", score_folder(folder, scenes, stage_dir))
                  for size, stage_dir in intermediate_dirs(folder)]
        stages.append((f"guidance {guidance:g}", score_folder(folder, scenes)))
        scored.update(stages)
        if len(stages) > 1:
            difference = paired_difference(stages[0][1], stages[-1][1])
            sr_effect[f"guidance {guidance:g}"] = {check: difference[check] for check in SR_EFFECT_CHECKS}
    alignment = {label: aggregate(image.scores for image in images) for label, images in scored.items()}
    stratified = {label: stratified_alignment(images) for label, images in scored.items()}
    extractor, reference = feature_space(reference_dir)
    metrics = [  # each sample folder's final images (the stages it keeps are not scored)
        evaluate_samples(folder if per_caption is None else first_images(folder, per_caption), reference, extractor,
                         metrics=("fid", "pr"), setting={"guidance": guidance}, progress=False)
        for guidance, folder in folders.items()
    ]
    table = Table(title="Caption alignment on held-out captions (detector accuracy; balanced: mean of the strata, "
                        "95% caption-bootstrap interval)")
    for column in ("images", "n", "captions") + tuple(f"{check} (balanced)" for check in ALIGNMENT_CHECKS):
        table.add_column(column)
    for label, values in stratified.items():
        balanced = values[BALANCED]
        table.add_row(label, str(balanced["n_images"]), str(balanced["n_captions"]),
                      *[format_interval(balanced[check]) for check in ALIGNMENT_CHECKS])
    console.print(table)
    for label, difference in sr_effect.items():
        console.print(f"{label}: final minus base stage, balanced: "
                      + ", ".join(f"{check} {format_difference(value)}" for check, value in difference.items()))
    for result in metrics:
        console.print(f"{result.label}: " + ", ".join(f"{k}={v:.3f}" for k, v in result.metrics.items()))
    return {"alignment": alignment, "stratified": stratified, "sr_effect": sr_effect,
            "strata_available": {stratum: len(c) for stratum, c in heldout_captions_by_stratum().items()},
            "metrics": metrics, "extractor": extractor.name}


@dataclass(frozen=True)
class SweepResult:
    """One sweep setting's scores: `alignment` is `stratified_alignment`'s balanced row
    ({check: (mean, low, high), "n_images", "n_captions"}), `metrics` FID (and precision / recall
    when the setting has more than `PR_K` images) against all the real renders."""

    setting: dict[str, Any]
    folder: Path
    alignment: dict[str, Any]
    metrics: EvaluationResult


def evaluate_sweep(points: list[SweepPoint], reference_dir: Path, scenes: list[dict],
                   console: Console) -> list[SweepResult]:
    """Every sweep setting's final images: detector accuracy balanced over the strata with caption-bootstrap
    intervals (`cascade.eval.heldout.stratified_alignment`) and FID / precision / recall as `evaluate_demo`
    computes them; `scenes` are the captions the sweep sampled, in order."""
    extractor, reference = feature_space(reference_dir)
    results = []
    for point in points:
        balanced = stratified_alignment(score_folder(point.folder, scenes))[BALANCED]
        images = balanced["n_images"]
        metrics = evaluate_samples(point.folder, reference, extractor, metrics=("fid", "pr") if images > PR_K else ("fid",),
                                   setting=dict(point.setting), progress=False, pr_k=PR_K)
        results.append(SweepResult(dict(point.setting), point.folder, balanced, metrics))
    table = Table(title=f"Settings sweep: {len(scenes)} held-out captions per setting (balanced detector accuracy, "
                        "95% caption-bootstrap interval; FID against all real renders)")
    keys = list(points[0].setting) if points else []
    for column in (*keys, *SWEEP_CHECKS, "FID"):
        table.add_column(column)
    for result in results:
        table.add_row(*[str(value) for value in result.setting.values()],
                      *[format_interval(result.alignment[check]) for check in SWEEP_CHECKS],
                      f"{result.metrics.metrics.get('fid', math.nan):.2f}")
    console.print(table)
    return results
