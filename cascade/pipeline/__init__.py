"""`Cascade`: the stages chained at inference, base -> SR -> SR.

Each stage samples with its own `SamplingSettings` (sampler, steps, guidance scale, dynamic
thresholding, and for SR stages the noise-augmentation level s of its low-res input, Ho et al.
2022 "Cascaded Diffusion Models", sec. 4.3); by default the stage's own `sampling` settings.
A stage whose settings name an autoguidance `guide` (Karras et al. 2024) samples against that
weaker model of itself, loaded once per path and checked against the stage it guides.
Prompts are encoded once per distinct text encoder and shared by every stage that uses it.
Every image has its own seed: its starting noise, sampler noise and augmentation noise come
from generators seeded by it, so an image does not depend on the batch it was generated in.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..diffusion.samplers import randn
from ..stages.conditioning import Condition
from ..stages.config import SamplingSettings, StageConfigError
from ..stages.diffusion_stage import DiffusionStage
from ..stages.export import load_stage, resolve_stage_class, stored_stage_config
from ..stages.super_res import SuperResStage

StageEnd = Callable[[int, torch.Tensor], None]


@dataclass(frozen=True)
class StageShape:
    """What the order of a cascade's stages depends on: whether a stage is a super-resolution
    stage, the size it makes and (SR stages) the size it takes; `source` (its file) names it."""

    source: str
    super_res: bool
    image_size: int
    lowres_size: int | None = None

    @classmethod
    def of(cls, stage: DiffusionStage, source: str = "") -> StageShape:
        super_res = isinstance(stage, SuperResStage)
        return cls(source, super_res, stage.image_size, stage.lowres_size if super_res else None)

    @classmethod
    def read(cls, path: str | Path) -> StageShape:
        """The shape of the stage in an export directory (its config.yaml) or a `.ckpt` (its
        `cascade_stage` entry, memory-mapped), read by `cascade.stages.export.stored_stage_config`:
        no weights are read and no network is built, so a wrong order is found before anything is
        loaded. ValueError naming the file when it holds no cascade stage."""
        config = stored_stage_config(path)
        try:
            stage_class, init_args = resolve_stage_class(config["class_path"]), config["init_args"]
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        defaults = inspect.signature(stage_class).parameters

        def init_arg(name: str) -> int:
            return int(init_args.get(name, defaults[name].default))

        super_res = issubclass(stage_class, SuperResStage)
        return cls(str(path), super_res, init_arg("image_size"), init_arg("lowres_size") if super_res else None)

    def name(self, index: int) -> str:
        return f"stage {index} ({self.source})" if self.source else f"stage {index}"


def check_stage_order(shapes: list[StageShape]) -> None:
    """ValueError naming the offending stages unless the first is a base stage and every later one
    a super-resolution stage taking the size the one before it makes."""
    if not shapes:
        raise ValueError("a cascade needs at least one stage")
    if shapes[0].super_res:
        raise ValueError(f"the first stage must be a base stage, but {shapes[0].name(0)} is a super-resolution stage")
    for index, (previous, shape) in enumerate(itertools.pairwise(shapes), start=1):
        if not shape.super_res:
            raise ValueError(f"{shape.name(index)} is a base stage; every stage after the first must be a "
                             "super-resolution stage")
        if shape.lowres_size != previous.image_size:
            raise ValueError(f"{shape.name(index)} takes {shape.lowres_size}x{shape.lowres_size} inputs but "
                             f"{previous.name(index - 1)} makes {previous.image_size}x{previous.image_size} images")


# Settings that only super-resolution stages read; `Cascade.updated` leaves the base's alone.
SR_ONLY_SETTINGS = ("aug_level", "start_log_snr")


class Cascade:
    """A base stage followed by any number of super-resolution stages, each with its sampling
    settings (None: every stage's own `sampling`).

    `guides`: autoguidance models already loaded, by the path a setting's `guide` names; a
    `guide` path not in it is loaded (`load_stage`, onto its stage's device) and kept there, so
    copies made by `updated` / `with_settings` share them. Each guide is checked against the
    stage it guides: a guide of another stage kind, image size, low-res size, conditioning or
    text encoder (`DiffusionStage.guide_mismatch`) raises a one-line `StageConfigError` naming
    `sampling.guide` and what differs.
    """

    def __init__(
        self,
        stages: list[DiffusionStage],
        settings: list[SamplingSettings] | None = None,
        sources: list[str] | None = None,
        guides: dict[str, DiffusionStage] | None = None,
    ):
        check_stage_order([StageShape.of(stage, source) for stage, source in zip(stages, sources or [""] * len(stages))])
        settings = [stage.sampling for stage in stages] if settings is None else list(settings)
        if len(settings) != len(stages):
            raise ValueError(f"got {len(settings)} stage settings for {len(stages)} stages")
        for index, setting in enumerate(settings):
            if not isinstance(setting, SamplingSettings):
                raise TypeError(f"stage {index}: settings must be SamplingSettings, got {type(setting).__name__}")
        self.stages = stages
        self.settings = settings
        self.sources = sources or [""] * len(stages)
        self.guides = {} if guides is None else guides
        for index, (stage, setting) in enumerate(zip(stages, settings)):
            if setting.guide is not None:
                self._check_guide(index, stage, setting.guide)

    def _check_guide(self, index: int, stage: DiffusionStage, path: str) -> None:
        """Load the guide at `path` unless `guides` holds it, then check it against `stage`."""
        if path not in self.guides:
            try:
                self.guides[path] = load_stage(path).to(stage.device).eval()
            except (OSError, ValueError) as error:
                raise StageConfigError([("sampling.guide", f"stage {index}: cannot load {path}: {error}")]) from None
        mismatch = stage.guide_mismatch(self.guides[path])
        if mismatch is not None:
            raise StageConfigError([("sampling.guide", f"stage {index}: {path}: {mismatch}")])

    def guide_of(self, index: int) -> DiffusionStage | None:
        """The loaded autoguidance model of stage `index`, or None."""
        path = self.settings[index].guide
        return None if path is None else self.guides[path]

    @classmethod
    def from_paths(
        cls,
        paths: list[str | Path],
        settings: list[SamplingSettings] | None = None,
        device: str | torch.device = "cpu",
    ) -> Cascade:
        """Load each stage from a Lightning .ckpt or an export directory (`cascade export`), and
        each stage's autoguidance `guide` (its settings', or its own `sampling.guide`)."""
        stages = [load_stage(path).to(device).eval() for path in paths]
        return cls(stages, settings, [str(path) for path in paths])

    @property
    def conditioning(self) -> str:
        return self.stages[0].conditioning

    def with_settings(self, settings: list[SamplingSettings]) -> Cascade:
        return Cascade(self.stages, settings, self.sources, self.guides)

    def updated(self, stage_index: int | None, **changes: Any) -> Cascade:
        """A copy with `changes` applied to one stage's settings (or every stage's, index None);
        `aug_level` and `start_log_snr` only reach super-resolution stages; `guide=PATH` loads that guide (once per
        path). Bad values, and guides that do not fit their stage, raise `StageConfigError`."""
        settings = []
        for index, setting in enumerate(self.settings):
            applicable = {k: v for k, v in changes.items() if k not in SR_ONLY_SETTINGS or index > 0}
            settings.append(setting.updated(**applicable) if stage_index in (None, index) else setting)
        return self.with_settings(settings)

    @torch.no_grad()
    def generate(
        self,
        seeds: list[int],
        prompts: list[str] | None = None,
        class_labels: list[int] | None = None,
        conditions: list[Condition] | None = None,
        keep_intermediate: bool = False,
        progress: bool = False,
        on_stage_end: StageEnd | None = None,
        negative_prompts: list[str | None] | None = None,
    ) -> list[torch.Tensor]:
        """Images in [-1, 1] for one batch: the final stage's output, or every stage's output
        (low to high resolution) with keep_intermediate.

        The condition comes from `prompts` (text cascades) or `class_labels` (class cascades), or
        ready-made from `conditions`, one per stage (e.g. precomputed text encodings).
        `on_stage_end(index, images)` is called as each stage finishes (the benchmark times
        the stages with it). `negative_prompts` (text cascades; one per seed, None for none) take
        the unconditional prediction's place wherever a stage is guided by classifier-free guidance
        (`make_denoiser`; a stage with an autoguidance guide keeps its guide).
        """
        if prompts is not None and len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts for {len(seeds)} seeds")
        if class_labels is not None and len(class_labels) != len(seeds):
            raise ValueError(f"got {len(class_labels)} class labels for {len(seeds)} seeds")
        if conditions is not None:
            if prompts is not None or class_labels is not None:
                raise ValueError("give prompts, class labels or conditions, not several")
            if len(conditions) != len(self.stages):
                raise ValueError(f"got {len(conditions)} conditions for {len(self.stages)} stages")
            for index, condition in enumerate(conditions):
                if condition.batch_size not in (None, len(seeds)):
                    raise ValueError(f"the condition of stage {index} has {condition.batch_size} rows for {len(seeds)} seeds")
        if negative_prompts is not None:
            if prompts is None:
                raise ValueError("negative prompts need prompts (a text cascade)")
            if len(negative_prompts) != len(seeds):
                raise ValueError(f"got {len(negative_prompts)} negative prompts for {len(seeds)} seeds")
            if not any(negative_prompts):
                negative_prompts = None
        encodings: dict = {}
        negative_encodings: dict = {}
        outputs = []
        images = None
        for index, (stage, setting) in enumerate(zip(self.stages, self.settings)):
            if conditions is not None:
                condition = conditions[index]
            else:
                condition = self._condition(stage, prompts, class_labels, encodings)
            generators = [torch.Generator(stage.device).manual_seed(seed + 7919 * index) for seed in seeds]
            negative = None
            if negative_prompts is not None and stage.conditioning == "text" and setting.guidance != 1.0 \
                    and self.guide_of(index) is None:
                # rows without a negative prompt encode their own prompt and are marked null
                texts = [negative or prompt for negative, prompt in zip(negative_prompts, prompts)]
                negative = self._condition(stage, texts, None, negative_encodings).with_null(
                    torch.tensor([not text for text in negative_prompts], device=stage.device))
            shape = stage.output_shape(len(seeds), images)
            images = stage.generate(
                condition=condition,
                num_samples=len(seeds),
                lowres=images,
                settings=setting,
                generator=generators,
                x_T=randn(shape, generators, device=stage.device),
                progress=progress,
                guide=self.guide_of(index),
                negative=negative,
            )
            if on_stage_end is not None:
                on_stage_end(index, images)
            outputs.append(images)
        return outputs if keep_intermediate else outputs[-1:]

    @staticmethod
    def _condition(stage: DiffusionStage, prompts, class_labels, encodings: dict) -> Condition:
        """The stage's condition; prompts are encoded once per distinct text encoder."""
        if stage.conditioning == "text":
            if prompts is None:
                raise ValueError("this cascade is text-conditional: give prompts")
            key = stage.text_encoder.config
            if key not in encodings:
                encodings[key] = stage.text_encoder.encode(list(prompts), stage.device)
            tokens, mask = encodings[key]
            return stage.make_condition(text_tokens=tokens, text_mask=mask)
        if stage.conditioning == "class":
            if class_labels is None:
                raise ValueError("this cascade is class-conditional: give class labels")
            return stage.make_condition(class_labels=class_labels)
        return Condition()
