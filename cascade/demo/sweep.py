"""The demo's settings sweep: a few held-out captions through the whole cascade for every
combination of some sampling settings (by default the base stage's classifier-free guidance
scale x the SR stages' noise-augmentation level s, Ho et al. 2022 "Cascaded Diffusion Models",
sec. 4.3).

Each swept setting is a `cascade.pipeline.sweep.SweepAxis` (the type `cascade sample --sweep`
parses into): a `SamplingSettings` key, the stage it changes (or every stage; `aug_level` then
reaches the SR stages only, as `Cascade.updated` does) and its values, so another setting (e.g. a
guidance interval) is one more axis in the `DemoPlan`. Every combination goes to its own
resumable sample folder named like `cascade sample --sweep`'s, with short numbers
(`base.guidance=3,aug_level=0.1/`, readable by `cascade.eval.sweeps.discover_sample_sets`).
An image's seed depends only on its caption and sample index
(`cascade.files.sample_folder.WorkItem.seed`), so every setting starts from the same noise.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..files.sample_folder import merge_metadata
from ..pipeline import Cascade
from ..pipeline.sweep import SweepAxis, SweepPoint, sweep_points, variant
from ..pipeline.to_folder import FolderJob, LocalRanks


def sample_sweep(cascade: Cascade, axes: tuple[SweepAxis, ...], conditions: list[tuple[str | int, str | None]],
                 root: Path, job: FolderJob, console: Console,
                 ranks: LocalRanks | None = None) -> tuple[list[SweepPoint], int]:
    """Every combination's samples of `conditions` into its own folder under `root` (resuming what is
    there; folder names with short numbers, `sweep_points(..., short=True)`): the combinations, and
    how many images this call wrote (0: all were there). `ranks`: the processes that sample (None:
    this one)."""
    points, written = sweep_points(axes, root, short=True), 0
    ranks = ranks or LocalRanks(1)
    for point in points:
        written += ranks.fill(variant(cascade, axes, point.setting), conditions, job, point.folder, console)
        merge_metadata(point.folder)
    return points, written
