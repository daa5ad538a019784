"""Sampling benchmarks: one guided denoising step of a stage, and the whole cascade per image.

- `run_step_benchmark`: ms per denoising step with classifier-free guidance at a given size,
  through the stage's own `make_denoiser` (the conditional and null rows in one batched
  forward pass; the record counts the UNet calls per step to show it).
- `run_cascade_benchmark`: seconds per final image of base -> SR -> SR for each sampler and
  step counts: `Cascade.generate` itself, timed per stage through its `on_stage_end` hook.

Stages carry random weights (speed does not depend on them) and random text tokens stand in
for prompt encodings (encoded once per prompt and shared by the stages in real use), handed
to `Cascade.generate` as ready-made conditions, so no text encoder is loaded.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from ..diffusion import SAMPLERS
from ..pipeline import Cascade
from ..stages.config import SamplingSettings
from ..stages.diffusion_stage import DiffusionStage
from ..stages.super_res import SuperResStage

from .flops import count_flops
from .harness import measure, peak_memory, reset_peak_memory, synchronize
from .stage_inputs import SpeedSettings, load_stage, random_condition


class ForwardCounter:
    """Counts the UNet's forward calls and the rows they carried (a forward pre-hook)."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.rows = 0
        self._handle = module.register_forward_pre_hook(self._count)

    def _count(self, module, args) -> None:
        self.calls += 1
        self.rows += args[0].shape[0]

    def remove(self) -> None:
        self._handle.remove()


def lowres_input(stage: DiffusionStage, batch_size: int, size: int, generator: torch.Generator) -> torch.Tensor | None:
    """A random low-res image for an SR stage sampling at `size` (None for a base stage)."""
    if not isinstance(stage, SuperResStage):
        return None
    low = size // stage.scale_factor
    return (torch.rand(batch_size, 3, low, low, generator=generator) * 2 - 1).to(stage.device)


def run_step_benchmark(
    config: str | Path,
    device: torch.device,
    settings: SpeedSettings,
    batch_size: int,
    resolution: int | None,
    guidance: float,
    warmup: int,
    iters: int,
    seed: int = 0,
) -> dict:
    """Time one guided denoising step of the stage at `resolution` (None: its image_size)."""
    stage = load_stage(config, device, seed).eval()
    settings.apply_memory_format(stage.unet)
    generator = torch.Generator().manual_seed(seed)
    size = resolution or stage.image_size
    condition = random_condition(stage, batch_size, generator)
    lowres = lowres_input(stage, batch_size, size, generator)
    denoise = stage.make_denoiser(condition, guidance=guidance, lowres=lowres, aug_level=0.0)
    x_t = settings.image(torch.randn(batch_size, 3, size, size, generator=generator).to(device))
    t = torch.full((batch_size,), 0.5, device=device)

    def step() -> torch.Tensor:
        with settings.autocast(device):
            return denoise(x_t, t)

    counter = ForwardCounter(stage.unet)
    flops = count_flops(step)
    calls, rows = counter.calls, counter.rows
    counter.remove()
    settings.apply_compile(stage.unet)
    reset_peak_memory(device)
    timing = measure(step, device, warmup, iters)
    memory, memory_kind = peak_memory(device)
    return {
        "benchmark": "sampling_step",
        "config": str(config),
        "stage": type(stage).__name__,
        "batch": batch_size,
        "resolution": size,
        "guidance": guidance,
        **settings.describe(),
        "ms_per_step": timing.median_ms,
        "ms_per_step_all": [round(t, 3) for t in timing.times_ms],
        "first_call_ms": timing.first_call_ms,
        "unet_calls_per_step": calls,
        "unet_rows_per_call": rows / max(calls, 1),
        "gflops_per_step": flops / 1e9,
        "peak_memory_mib": memory,
        "peak_memory_kind": memory_kind,
    }


def sample_cascade(
    cascade: Cascade,
    batch_size: int,
    speed: SpeedSettings,
    seed: int,
    stage_ms: list[list[float]] | None = None,
) -> torch.Tensor:
    """One batch through `Cascade.generate` (seeds seed .. seed + batch_size - 1, random
    conditions from `seed`); appends each stage's milliseconds, device work included, to
    `stage_ms[i]` if given. Returns the final images."""
    generator = torch.Generator().manual_seed(seed)
    conditions = [random_condition(stage, batch_size, generator) for stage in cascade.stages]
    device = cascade.stages[0].device
    ends: list[float] = []

    def stage_end(index: int, images: torch.Tensor) -> None:
        synchronize(device)
        ends.append(time.perf_counter())

    synchronize(device)
    start = time.perf_counter()
    with speed.autocast(device):
        (images,) = cascade.generate(list(range(seed, seed + batch_size)), conditions=conditions, on_stage_end=stage_end)
    if stage_ms is not None:
        for index, (begun, ended) in enumerate(zip([start, *ends], ends)):
            stage_ms[index].append((ended - begun) * 1000.0)
    return images


def run_cascade_benchmark(
    configs: list[str | Path],
    device: torch.device,
    speed: SpeedSettings,
    batch_size: int,
    samplers: list[str],
    steps: list[int],
    guidance: float,
    iters: int,
    seed: int = 0,
) -> list[dict]:
    """Seconds per final image of the cascade for each sampler (one record per sampler)."""
    if len(steps) != len(configs):
        raise ValueError(f"give one step count per stage: {len(configs)} configs but steps {steps}")
    unknown = sorted(set(samplers) - set(SAMPLERS))
    if unknown:
        raise ValueError(f"unknown samplers {unknown}; choose from {SAMPLERS}")
    stages = [load_stage(config, device, seed + index).eval() for index, config in enumerate(configs)]
    for stage in stages:
        speed.apply_memory_format(stage.unet)
        speed.apply_compile(stage.unet)
    records = []
    for sampler in samplers:
        settings = [
            SamplingSettings(sampler=sampler, steps=count, guidance=guidance, dynamic_threshold=0.995 if i == 0 else None)
            for i, count in enumerate(steps)
        ]
        warm = Cascade(stages, [setting.updated(steps=1) for setting in settings])
        sample_cascade(warm, batch_size, speed, seed)  # kernels, allocator, compilation
        reset_peak_memory(device)
        cascade = Cascade(stages, settings)
        stage_ms: list[list[float]] = [[] for _ in stages]
        for _ in range(iters):
            sample_cascade(cascade, batch_size, speed, seed, stage_ms)
        memory, memory_kind = peak_memory(device)
        total_ms = [sum(parts) for parts in zip(*stage_ms)]
        records.append(
            {
                "benchmark": "cascade_sampling",
                "config": " -> ".join(str(c) for c in configs),
                "sizes": " -> ".join(str(stage.image_size) for stage in stages),
                "sampler": sampler,
                "steps": "/".join(str(s) for s in steps),
                "guidance": guidance,
                "batch": batch_size,
                **speed.describe(),
                "seconds_per_image": statistics.median(total_ms) / 1000.0 / batch_size,
                "seconds_per_batch": statistics.median(total_ms) / 1000.0,
                "stage_seconds": [round(statistics.median(ms) / 1000.0, 4) for ms in stage_ms],
                "peak_memory_mib": memory,
                "peak_memory_kind": memory_kind,
                "iters": iters,
            }
        )
    return records
