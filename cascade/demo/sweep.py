"""The demo's settings sweep: a few held-out captions through the whole cascade for every
combination of some sampling settings (by default the base stage's classifier-free guidance
scale x the SR stages' noise-augmentation level s, Ho et al. 2022 "Cascaded Diffusion Models",
sec. 4.3).

Each swept setting is a `SweepAxis`: a `SamplingSettings` key, the stage it changes (or every
stage; `aug_level` then reaches the SR stages only, as `Cascade.updated` does) and its values, so
another setting (e.g. a guidance interval) is one more axis in the `DemoPlan`. Every combination
goes to its own resumable sample folder named like `cascade sample --sweep`'s
(`base.guidance=3,aug_level=0.1/`, readable by `cascade.eval.sweeps.discover_sample_sets`).
An image's seed depends only on its caption and sample index
(`cascade.files.sample_folder.WorkItem.seed`), so every setting starts from the same noise.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from rich.console import Console

from ..files.sample_folder import merge_metadata
from ..pipeline import Cascade
from ..pipeline.to_folder import FolderJob, sample_folder
from ..stages.config import SamplingSettings


def stage_name(index: int) -> str:
    """How a sweep names a stage, as `cascade sample --sweep` does: `base`, then `sr1`, `sr2`, ..."""
    return "base" if index == 0 else f"sr{index}"


def folder_value(value: object) -> str:
    """A swept value as written in a folder name: numbers with `:g`, an interval (lo, hi) as
    `lo:hi`, None as `off` (a folder name splits on ',' and '=', so neither may appear)."""
    if value is None:
        return "off"
    if isinstance(value, (tuple, list)):
        return ":".join(folder_value(end) for end in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class SweepAxis:
    """One swept setting: `Cascade.updated(stage, **{key: value})` for each of `values`.

    key: a `SamplingSettings` field; stage: the stage index it changes, or None for every stage
    (`aug_level`: every super-resolution stage). Each value is checked as `SamplingSettings`
    checks it, so a bad one raises `StageConfigError` naming `sampling.<key>`.
    """

    key: str
    values: tuple[Any, ...]
    stage: int | None = None

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError(f"sweep {self.name}: give at least one value")
        for value in self.values:
            SamplingSettings().updated(**{self.key: value})

    @property
    def name(self) -> str:
        """`guidance` (every stage) or `base.guidance` (one stage), as in `cascade sample --sweep`."""
        return self.key if self.stage is None else f"{stage_name(self.stage)}.{self.key}"


class SweepPoint(NamedTuple):
    """One combination of the sweep: {axis name: value} and the folder its samples go to."""

    setting: dict[str, Any]
    folder: Path


def sweep_points(axes: tuple[SweepAxis, ...], root: Path) -> list[SweepPoint]:
    """Every combination of the axes' values (the last axis varying fastest), each with its folder
    `root/<name>=<value>,<name>=<value>`."""
    points = []
    for values in itertools.product(*(axis.values for axis in axes)):
        setting = {axis.name: value for axis, value in zip(axes, values)}
        name = ",".join(f"{key}={folder_value(value)}" for key, value in setting.items())
        points.append(SweepPoint(setting, root / name))
    return points


def variant(cascade: Cascade, axes: tuple[SweepAxis, ...], setting: dict[str, Any]) -> Cascade:
    """The cascade with one combination's values applied (`Cascade.updated` per axis)."""
    for axis in axes:
        cascade = cascade.updated(axis.stage, **{axis.key: setting[axis.name]})
    return cascade


def sample_sweep(cascade: Cascade, axes: tuple[SweepAxis, ...], conditions: list[tuple[str | int, str | None]],
                 root: Path, job: FolderJob, console: Console) -> tuple[list[SweepPoint], int]:
    """Every combination's samples of `conditions` into its own folder under `root` (resuming what is
    there): the combinations, and how many images this call wrote (0: all were there)."""
    points, written = sweep_points(axes, root), 0
    for point in points:
        written += sample_folder(variant(cascade, axes, point.setting), conditions, job, point.folder, console=console)
        merge_metadata(point.folder)
    return points, written
