"""`Cascade`: the stages chained at inference, base -> SR -> SR.

Each stage samples with its own `SamplingSettings` (sampler, steps, guidance scale, dynamic
thresholding, and for SR stages the noise-augmentation level s of its low-res input, Ho et al.
2022 "Cascaded Diffusion Models", sec. 4.3); by default the stage's own `sampling` settings.
Prompts are encoded once per distinct text encoder and shared by every stage that uses it.
Every image has its own seed: its starting noise, sampler noise and augmentation noise come
from generators seeded by it, so an image does not depend on the batch it was generated in.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..diffusion.samplers import randn
from ..stages.conditioning import Condition
from ..stages.config import SamplingSettings
from ..stages.diffusion_stage import DiffusionStage
from ..stages.export import load_stage
from ..stages.super_res import SuperResStage

StageEnd = Callable[[int, torch.Tensor], None]


class Cascade:
    """A base stage followed by any number of super-resolution stages, each with its sampling
    settings (None: every stage's own `sampling`)."""

    def __init__(
        self,
        stages: list[DiffusionStage],
        settings: list[SamplingSettings] | None = None,
        sources: list[str] | None = None,
    ):
        if not stages:
            raise ValueError("a cascade needs at least one stage")
        if isinstance(stages[0], SuperResStage):
            raise ValueError("the first stage of a cascade must be a base stage, got a SuperResStage")
        for index, stage in enumerate(stages[1:], start=1):
            if not isinstance(stage, SuperResStage):
                raise ValueError(f"stage {index} must be a SuperResStage, got {type(stage).__name__}")
            previous_size = stages[index - 1].image_size
            if stage.lowres_size != previous_size:
                raise ValueError(
                    f"stage {index} takes {stage.lowres_size}x{stage.lowres_size} inputs but stage {index - 1} "
                    f"makes {previous_size}x{previous_size} images"
                )
        settings = [stage.sampling for stage in stages] if settings is None else list(settings)
        if len(settings) != len(stages):
            raise ValueError(f"got {len(settings)} stage settings for {len(stages)} stages")
        for index, setting in enumerate(settings):
            if not isinstance(setting, SamplingSettings):
                raise TypeError(f"stage {index}: settings must be SamplingSettings, got {type(setting).__name__}")
        self.stages = stages
        self.settings = settings
        self.sources = sources or [""] * len(stages)

    @classmethod
    def from_paths(
        cls,
        paths: list[str | Path],
        settings: list[SamplingSettings] | None = None,
        device: str | torch.device = "cpu",
    ) -> "Cascade":
        """Load each stage from a Lightning .ckpt or an export directory (`cascade export`)."""
        stages = [load_stage(path).to(device).eval() for path in paths]
        return cls(stages, settings, [str(path) for path in paths])

    @property
    def conditioning(self) -> str:
        return self.stages[0].conditioning

    def with_settings(self, settings: list[SamplingSettings]) -> "Cascade":
        return Cascade(self.stages, settings, self.sources)

    def updated(self, stage_index: int | None, **changes: Any) -> "Cascade":
        """A copy with `changes` applied to one stage's settings (or every stage's, index None);
        `aug_level` only reaches super-resolution stages. Bad values raise `StageConfigError`."""
        settings = []
        for index, setting in enumerate(self.settings):
            applicable = {k: v for k, v in changes.items() if k != "aug_level" or index > 0}
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
    ) -> list[torch.Tensor]:
        """Images in [-1, 1] for one batch: the final stage's output, or every stage's output
        (low to high resolution) with keep_intermediate.

        The condition comes from `prompts` (text cascades) or `class_labels` (class cascades), or
        ready-made from `conditions`, one per stage (e.g. precomputed text encodings).
        `on_stage_end(index, images)` is called as each stage finishes (the benchmark times
        the stages with it).
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
        encodings: dict = {}
        outputs = []
        images = None
        for index, (stage, setting) in enumerate(zip(self.stages, self.settings)):
            if conditions is not None:
                condition = conditions[index]
            else:
                condition = self._condition(stage, prompts, class_labels, encodings)
            generators = [torch.Generator(stage.device).manual_seed(seed + 7919 * index) for seed in seeds]
            shape = stage.output_shape(len(seeds), images)
            images = stage.generate(
                condition=condition,
                num_samples=len(seeds),
                lowres=images,
                settings=setting,
                generator=generators,
                x_T=randn(shape, generators, device=stage.device),
                progress=progress,
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
