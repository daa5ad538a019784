"""Typed settings of a stage (LightningCLI reads them from YAML) and their validation, and the
one sampling-settings type (`SamplingSettings`) of stages, the pipeline, the CLI and the benchmarks."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..diffusion import GRIDS, SAMPLERS


class StageConfigError(ValueError):
    """A stage setting is invalid. `problems` holds (key, message) pairs; the key is relative to
    the stage's init_args (e.g. "lowres_size"), so the CLI can name `model.init_args.<key>`."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__("; ".join(f"{key}: {message}" for key, message in self.problems))


@dataclass(frozen=True)
class ScheduleConfig:
    """The noise schedule: a `cascade.diffusion.NoiseSchedule.from_config` name and its parameters,
    e.g. {name: shifted_cosine, params: {shift: 0.25}}."""

    name: str = "cosine"
    params: dict[str, int | float] = field(default_factory=dict)


@dataclass(frozen=True)
class ValidationConfig:
    """Validation loss in `num_t_buckets` equal slices of t in [0, 1].

    Every validation image is scored once per bucket, at a t and noise drawn from a generator
    seeded by (`seed`, batch index, bucket), so the numbers are comparable across runs.
    """

    num_t_buckets: int = 5
    seed: int = 0


@dataclass
class LayoutPretrainingConfig:
    """Fit the text layout path alone before the denoiser's first step (`unet.text_layout_head`).

    The path (`unet.text_conditioning`, `unet.text_layout`, `unet.layout_head`) is trained by Adam
    on the layout loss (`UNet.layout_prediction` against the target averaged to r x r) over the
    first `images` training images, held in memory, for `steps` steps of `batch_size`, drawn by a
    generator seeded by `seed` (null: torch's initial seed, which `seed_everything` sets). Under DDP every rank fits it on its own images and rank 0's result
    is broadcast. Runs once: not when a run resumes.

    Why: which object of "A left of B" goes left is learnt by this path within 1,500 steps of 64
    captions (`python -m cascade.demo.layout_probe`), but not inside the denoiser's training at
    batch 16 within 2,240 steps (docs/benchmarks.md, "A layout path").
    """

    steps: int = 0
    batch_size: int = 64
    lr: float = 1.0e-3
    images: int = 5000
    seed: int | None = None


# Older names of sampling settings, read from checkpoints, exports and configs written before
# the settings were one type: {old key: current key}.
RENAMED_SAMPLING_KEYS = {"guidance_scale": "guidance"}


@dataclass(frozen=True)
class SamplingSettings:
    """How a stage samples: a stage's defaults (its YAML `sampling:` section), each stage of a
    `cascade.pipeline.Cascade`, `cascade sample`'s flags, the `SampleGrid` callback and the
    benchmarks all use this one type. It checks itself when built; a bad value raises a
    `StageConfigError` naming the key (`sampling.steps: must be >= 1, got 0`).

    sampler: a `cascade.diffusion.SAMPLERS` name.
    steps: denoising steps.
    guidance: classifier-free guidance scale (1 = the conditional model, 0 = unconditional).
    dynamic_threshold: percentile of Imagen's dynamic thresholding, or None for static clipping
        of x0 to [-1, 1].
    aug_level: super-resolution stages only: the level s in [0, 1] the low-res input is noised
        to (Ho et al. 2022, "Cascaded Diffusion Models", sec. 4.3); base stages ignore it.
    time_grid: a `cascade.diffusion.GRIDS` name, or None for the sampler's default
        (`cascade.diffusion.DEFAULT_GRIDS`); settings stored without the key take None.
    guidance_interval: [lambda_lo, lambda_hi] in log-SNR, or None (guide at every step): guidance
        is applied only at the steps whose log-SNR lambda(t) lies in the closed interval; the
        other steps use the plain conditional prediction, one forward pass (Kynkaenniemi et al.
        2024, "Applying Guidance in a Limited Interval Improves Sample and Distribution Quality
        in Diffusion Models"). The paper states its interval in EDM's noise level sigma_EDM =
        sigma_t / alpha_t, guiding for sigma_EDM in (sigma_lo, sigma_hi]; here
        lambda = -2 log sigma_EDM, so [lambda_lo, lambda_hi] = [-2 log sigma_hi, -2 log sigma_lo]
        (their ImageNet-512 EDM2 interval (0.28, 2.9] is about [-2.13, 2.55]). Read from YAML as a
        list, held as a tuple of two floats.
    guide: autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of
        Itself"): the path of a weaker model of the same stage (a smaller network, an earlier
        checkpoint, a shorter EMA; a `.ckpt` or an export directory), or None. With a guide,
        `guidance` w combines D_guide(x|c) + w (D_main(x|c) - D_guide(x|c)) instead of the
        unconditional prediction; `guidance_interval` applies to it too. A `Cascade` loads it.
    start_log_snr: super-resolution stages only (base stages ignore it): start the reverse process
        at this log-SNR from the upsampled low-res input noised to it (SDEdit, Meng et al. 2022),
        instead of from pure noise at t = 1; the steps span the rest. An SR stage's x0 estimate
        at high noise can be worse than its own upsampled input (it is for the demo's stages,
        docs/benchmarks.md), and those steps are then skipped. None: from pure noise.
    """

    sampler: str = "dpmpp_2m"
    steps: int = 25
    guidance: float = 1.0
    dynamic_threshold: float | None = None
    aug_level: float = 0.0
    time_grid: str | None = None
    guidance_interval: tuple[float, float] | None = None
    guide: str | None = None
    start_log_snr: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.sampler not in SAMPLERS:
            problems.append(("sampler", f"must be one of {SAMPLERS}, got {self.sampler!r}"))
        if not _is_int(self.steps) or self.steps < 1:
            problems.append(("steps", f"must be an integer >= 1, got {self.steps!r}"))
        if not _is_number(self.guidance) or self.guidance < 0:
            problems.append(("guidance", f"must be a number >= 0, got {self.guidance!r}"))
        threshold = self.dynamic_threshold
        if threshold is not None and (not _is_number(threshold) or not 0.0 < threshold <= 1.0):
            problems.append(("dynamic_threshold", f"must be a percentile in (0, 1] or null (off), got {threshold!r}"))
        if not _is_number(self.aug_level) or not 0.0 <= self.aug_level <= 1.0:
            problems.append(("aug_level", f"must be in [0, 1], got {self.aug_level!r}"))
        if self.time_grid is not None and self.time_grid not in GRIDS:
            problems.append(("time_grid", f"must be one of {GRIDS} or null (the sampler's default), got {self.time_grid!r}"))
        interval = self.guidance_interval
        if interval is not None:
            if not (isinstance(interval, (list, tuple)) and len(interval) == 2
                    and all(_is_number(end) and not math.isnan(end) for end in interval)
                    and interval[0] < interval[1]):
                message = ("must be [lambda_lo, lambda_hi] (log-SNR) with lambda_lo < lambda_hi, or null "
                           f"(guide at every step), got {interval!r}")
                problems.append(("guidance_interval", message))
            else:
                object.__setattr__(self, "guidance_interval", (float(interval[0]), float(interval[1])))
        if self.guide is not None:
            if isinstance(self.guide, os.PathLike):
                object.__setattr__(self, "guide", os.fspath(self.guide))
            if not (isinstance(self.guide, str) and self.guide.strip()):
                problems.append(("guide", f"must be the path of the guide's checkpoint or export, or null, got {self.guide!r}"))
        start = self.start_log_snr
        if start is not None and not (_is_number(start) and math.isfinite(start)):
            problems.append(("start_log_snr", f"must be a finite log-SNR or null (from pure noise), got {start!r}"))
        if problems:
            raise StageConfigError([(f"sampling.{name}", message) for name, message in problems])

    def updated(self, **changes: Any) -> SamplingSettings:
        """A copy with `changes` (field name=value) applied and checked. The one place that reads
        older key names (`guidance_scale` -> `guidance`) and rejects unknown ones."""
        problems = []
        for old, new in RENAMED_SAMPLING_KEYS.items():
            if old in changes:
                if new in changes:
                    problems.append((f"sampling.{old}", f"is the older name of {new}; give only {new}"))
                changes[new] = changes.pop(old)
        names = {f.name for f in dataclasses.fields(self)}
        problems += [(f"sampling.{name}", "unknown key") for name in sorted(set(changes) - names)]
        if problems:
            raise StageConfigError(problems)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | SamplingSettings) -> SamplingSettings:
        """Settings from a mapping (a config section, a checkpoint's or an export's plain
        hyper-parameters); missing keys take the defaults. An instance passes through."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise StageConfigError([("sampling", f"expected a mapping of {cls.__name__} fields, got {type(data).__name__}")])
        return cls().updated(**{str(key): value for key, value in data.items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML- and JSON-safe data; `from_dict` reads it back."""
        return to_plain(self)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def to_plain(value: Any) -> Any:
    """Dataclasses, tuples and nested containers as plain dicts/lists (YAML- and weights_only-safe)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def as_dataclass(value: Any, cls: type, key: str):
    """`value` as an instance of dataclass `cls`: passes instances through and builds one from a
    mapping (a checkpoint's or an export's plain hyper-parameters)."""
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise StageConfigError([(f"{key}.{name}", "unknown key") for name in unknown])
        return cls(**value)
    raise StageConfigError([(key, f"expected a mapping of {cls.__name__} fields, got {type(value).__name__}")])
