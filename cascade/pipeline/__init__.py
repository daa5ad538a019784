"""`Cascade`: the stages chained at inference, base -> SR -> SR.

Each stage samples with its own settings (`StageSettings`: sampler, steps, guidance scale,
dynamic thresholding, and for SR stages the noise-augmentation level s of its low-res input,
Ho et al. 2022 "Cascaded Diffusion Models", sec. 4.3). Prompts are encoded once per distinct
text encoder and shared by every stage that uses it. Every image has its own seed: its
starting noise, sampler noise and augmentation noise come from generators seeded by it, so an
image does not depend on the batch it was generated in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..diffusion import SAMPLERS
from ..diffusion.samplers import randn
from ..stages.conditioning import Condition
from ..stages.diffusion_stage import DiffusionStage
from ..stages.export import load_stage
from ..stages.super_res import SuperResStage


@dataclass(frozen=True)
class StageSettings:
    """How one stage samples. dynamic_threshold: a percentile (e.g. 0.995) or None for static
    clipping to [-1, 1]; aug_level: SR only, the level s in [0, 1] the low-res input is noised to."""

    sampler: str = "dpmpp_2m"
    steps: int = 25
    guidance: float = 3.0
    dynamic_threshold: float | None = 0.995
    aug_level: float = 0.0

    def check(self, stage_name: str) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"{stage_name}: sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.steps < 1:
            raise ValueError(f"{stage_name}: steps must be >= 1, got {self.steps}")
        if self.guidance < 0:
            raise ValueError(f"{stage_name}: guidance must be >= 0, got {self.guidance}")
        if self.dynamic_threshold is not None and not 0 < self.dynamic_threshold <= 1:
            raise ValueError(f"{stage_name}: dynamic_threshold must be in (0, 1] or off, got {self.dynamic_threshold}")
        if not 0 <= self.aug_level <= 1:
            raise ValueError(f"{stage_name}: aug_level must be in [0, 1], got {self.aug_level}")

    def as_dict(self) -> dict:
        return asdict(self)


class Cascade:
    """A base stage followed by any number of super-resolution stages."""

    def __init__(self, stages: list[DiffusionStage], settings: list[StageSettings], sources: list[str] | None = None):
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
        if len(settings) != len(stages):
            raise ValueError(f"got {len(settings)} stage settings for {len(stages)} stages")
        for index, setting in enumerate(settings):
            setting.check(f"stage {index}")
        self.stages = stages
        self.settings = settings
        self.sources = sources or [""] * len(stages)

    @classmethod
    def from_paths(
        cls, paths: list[str | Path], settings: list[StageSettings], device: str | torch.device = "cpu"
    ) -> "Cascade":
        """Load each stage from a Lightning .ckpt or an export directory (`cascade export`)."""
        stages = [load_stage(path).to(device).eval() for path in paths]
        return cls(stages, settings, [str(path) for path in paths])

    @property
    def conditioning(self) -> str:
        return self.stages[0].conditioning

    def with_settings(self, settings: list[StageSettings]) -> "Cascade":
        return Cascade(self.stages, settings, self.sources)

    def updated(self, stage_index: int | None, **changes) -> "Cascade":
        """A copy with `changes` applied to one stage's settings (or every stage's, index None);
        `aug_level` only reaches super-resolution stages."""
        settings = []
        for index, setting in enumerate(self.settings):
            applicable = {k: v for k, v in changes.items() if k != "aug_level" or index > 0}
            settings.append(replace(setting, **applicable) if stage_index in (None, index) else setting)
        return self.with_settings(settings)

    @torch.no_grad()
    def generate(
        self,
        seeds: list[int],
        prompts: list[str] | None = None,
        class_labels: list[int] | None = None,
        keep_intermediate: bool = False,
        progress: bool = False,
    ) -> list[torch.Tensor]:
        """Images in [-1, 1] for one batch: the final stage's output, or every stage's output
        (low to high resolution) with keep_intermediate."""
        if prompts is not None and len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts for {len(seeds)} seeds")
        if class_labels is not None and len(class_labels) != len(seeds):
            raise ValueError(f"got {len(class_labels)} class labels for {len(seeds)} seeds")
        encodings: dict = {}
        outputs = []
        images = None
        for index, (stage, setting) in enumerate(zip(self.stages, self.settings)):
            condition = self._condition(stage, prompts, class_labels, encodings)
            generators = [torch.Generator(stage.device).manual_seed(seed + 7919 * index) for seed in seeds]
            shape = stage.output_shape(len(seeds), images)
            images = stage.generate(
                condition=condition,
                num_samples=len(seeds),
                guidance_scale=setting.guidance,
                lowres=images,
                aug_level=setting.aug_level if index > 0 else None,
                dynamic_threshold=setting.dynamic_threshold,
                sampler=setting.sampler,
                steps=setting.steps,
                generator=generators,
                x_T=randn(shape, generators, device=stage.device),
                progress=progress,
            )
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
