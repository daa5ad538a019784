"""Per-stage sampling settings by name, and sweeps over them: the one home of what `cascade
sample`'s setting flags and `--sweep`, `cascade sr-check`'s settings and the demo's settings
sweep read and name.

A setting is a `SamplingSettings` field (`SETTING_TYPES` reads each from text) of one stage,
named `base.guidance` (stage 0), `sr1.aug_level` (stage 1), ..., or of every stage, named by
the plain key (`guidance`; `aug_level` and `start_log_snr` then reach the super-resolution
stages only, as `Cascade.updated` does). A sweep is one `SweepAxis` per swept setting; every
combination of their values goes to its own folder `<name>=<value>,<name>=<value>`
(`base.guidance=3.0,sr1.aug_level=0.1/`), the names `cascade.eval.sweeps.parse_setting` reads.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..stages.config import SamplingSettings
from . import Cascade

# How "no value" is written for a setting that may be None (case-insensitive).
OFF = ("off", "none")


def read_interval(text: str) -> tuple[float, float] | None:
    """A guidance interval from text: 'LO:HI' (log-SNR) -> (LO, HI); 'off' -> None."""
    if text.lower() in OFF:
        return None
    low, separator, high = text.partition(":")
    if not separator:
        raise ValueError(f"expected LO:HI (log-SNR) or off, got {text!r}")
    return (float(low), float(high))


# The `SamplingSettings` fields a flag or a sweep sets, and how each is read from text.
SETTING_TYPES = {
    "sampler": str,
    "steps": int,
    "guidance": float,
    "dynamic_threshold": lambda text: None if text.lower() in OFF else float(text),
    "aug_level": float,
    "guidance_interval": read_interval,
    "guide": lambda text: None if text.lower() in OFF else text,
    "start_log_snr": lambda text: None if text.lower() in OFF else float(text),
    "time_grid": lambda text: None if text.lower() in OFF else text,
}


def stage_name(index: int) -> str:
    """How a setting names a stage: `base` for stage 0, then `sr1`, `sr2`, ..."""
    return "base" if index == 0 else f"sr{index}"


def folder_value(value: object, short: bool = False) -> str:
    """A swept value as written in a folder name: an interval (lo, hi) as `lo:hi`; a string (a
    guide's path) with '/', ',' and '=' as '_' (a folder name holds no path and splits on ','
    and '='); anything else as Python's `str` (`3.0`, `None`), as `cascade sample --sweep`
    names its folders. `short`: numbers with `:g` (`3`) and None as `off`, as the demo's sweep
    names its folders. The two spellings stay apart so that folders already written resume."""
    if isinstance(value, (tuple, list)):
        return ":".join(folder_value(end, short) for end in value)
    if isinstance(value, str):
        return value.strip("/").replace("/", "_").replace(",", "_").replace("=", "_")
    if short and value is None:
        return "off"
    if short and isinstance(value, float):
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
        """`guidance` (every stage) or `base.guidance` (one stage)."""
        return self.key if self.stage is None else f"{stage_name(self.stage)}.{self.key}"


class SweepPoint(NamedTuple):
    """One combination of the sweep: {axis name: value} and the folder its samples go to."""

    setting: dict[str, Any]
    folder: Path


def sweep_points(axes: tuple[SweepAxis, ...] | list[SweepAxis], root: Path, short: bool = False) -> list[SweepPoint]:
    """Every combination of the axes' values (the last axis varying fastest), each with its folder
    `root/<name>=<value>,<name>=<value>` (`folder_value(value, short)`); no axes: `root` itself."""
    points = []
    for values in itertools.product(*(axis.values for axis in axes)):
        setting = {axis.name: value for axis, value in zip(axes, values)}
        name = ",".join(f"{key}={folder_value(value, short)}" for key, value in setting.items())
        points.append(SweepPoint(setting, root / name if name else root))
    return points


def variant(cascade: Cascade, axes: tuple[SweepAxis, ...] | list[SweepAxis], setting: dict[str, Any]) -> Cascade:
    """The cascade with one combination's values applied (`Cascade.updated` per axis, in order)."""
    for axis in axes:
        cascade = cascade.updated(axis.stage, **{axis.key: setting[axis.name]})
    return cascade
