"""Typed settings of a stage (LightningCLI reads them from YAML) and their validation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


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


@dataclass(frozen=True)
class SamplingConfig:
    """Defaults of `generate` and of the sample grids logged during training.

    guidance_scale: classifier-free guidance scale (1 = conditional model, 0 = unconditional).
    dynamic_threshold: percentile of Imagen's dynamic thresholding, or None for static clipping.
    """

    sampler: str = "dpmpp_2m"
    steps: int = 25
    guidance_scale: float = 1.0
    dynamic_threshold: float | None = None


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
