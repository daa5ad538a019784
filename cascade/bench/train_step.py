"""Train-step benchmark of one stage config: ms/step, images/s, peak memory, FLOPs and MFU.

One step is what Lightning's automatic optimisation runs for a stage, called directly so no
Trainer overhead is timed: zero the gradients, `training_step` (CFG dropout, t and noise,
q_sample, UNet, weighted loss) under the precision's autocast, backward, the stage's
`on_before_optimizer_step` (the NaN/inf guard), and the stage's optimiser step (`optimizer.algorithm`).
Gradient clipping and EMA (trainer settings) are not part of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..nn import count_parameters
from ..stages.diffusion_stage import DiffusionStage
from ..stages.optim import build_optimizer
from .flops import count_flops, device_peak, mfu
from .harness import Timing, measure, peak_memory, reset_peak_memory
from .kernels import attention_kernels
from .records import device_name
from .stage_inputs import (
    SpeedSettings,
    load_stage,
    training_batch,
    without_trainer_warnings,
)


@dataclass
class TrainStep:
    """A stage ready to train on one synthetic batch; `step()` runs one optimiser step."""

    stage: DiffusionStage
    batch: dict
    optimizer: torch.optim.Optimizer
    settings: SpeedSettings

    def step(self) -> torch.Tensor:
        device = self.stage.device
        self.optimizer.zero_grad(set_to_none=True)
        with without_trainer_warnings():
            with self.settings.autocast(device):
                loss = self.stage.training_step(self.batch, 0)
            loss.backward()
            self.stage.on_before_optimizer_step(self.optimizer)
        self.optimizer.step()
        return loss.detach()


def prepare_train_step(
    stage: DiffusionStage, batch_size: int, resolution: int | None, settings: SpeedSettings, seed: int = 0
) -> TrainStep:
    """The stage in training mode in the settings' memory format, its optimiser and a batch."""
    stage.train()
    settings.apply_memory_format(stage.unet)
    optimizer = build_optimizer(stage.unet, stage.optimizer_config)
    return TrainStep(stage, training_batch(stage, batch_size, resolution, settings, seed), optimizer, settings)


def step_statistics(step: Callable[[], object]) -> dict:
    """FLOPs and attention kernels of one eager call of `step` (run twice, untimed)."""
    return {"flops_per_step": count_flops(step), "attention_kernels": attention_kernels(step)}


def throughput_fields(timing: Timing, batch_size: int, flops: int, device: torch.device) -> dict:
    """ms/step, images/s, achieved TFLOP/s and, on a GPU of known peak, MFU."""
    ms = timing.median_ms
    peak = device_peak(device)
    return {
        "ms_per_step": ms,
        "ms_per_step_all": [round(t, 3) for t in timing.times_ms],
        "first_call_ms": timing.first_call_ms,
        "images_per_s": batch_size / (ms / 1000.0),
        "achieved_tflops": flops / (ms / 1000.0) / 1e12,
        "peak_bf16_tflops": None if peak is None else peak[1],
        "mfu": None if peak is None else mfu(flops, ms, peak[1]),
        "mfu_note": f"against the {peak[0]} dense bf16 peak" if peak else (
            f"MFU omitted: no dense bf16 peak known for {device_name(device)} (cascade.bench.flops.BF16_PEAK_TFLOPS)"),
    }


def run_train_benchmark(
    config: str | Path,
    device: torch.device,
    settings: SpeedSettings,
    batch_size: int,
    resolution: int | None,
    warmup: int,
    iters: int,
    seed: int = 0,
) -> dict:
    """Time the train step of one stage config (built on `device`) and return its record; FLOPs
    and attention kernels are counted on an eager step before any torch.compile."""
    stage = load_stage(config, device, seed)
    device = stage.device  # as the stage reports it ("cuda" -> "cuda:0")
    train = prepare_train_step(stage, batch_size, resolution, settings, seed)
    statistics = step_statistics(train.step)
    settings.apply_compile(stage.unet)
    reset_peak_memory(device)
    timing = measure(train.step, device, warmup, iters)
    memory, memory_kind = peak_memory(device)
    return {
        "benchmark": "train_step",
        "config": str(config),
        "stage": type(stage).__name__,
        "parameters_m": count_parameters(stage.unet) / 1e6,
        "batch": batch_size,
        "resolution": resolution or stage.image_size,
        **settings.describe(),
        **throughput_fields(timing, batch_size, statistics["flops_per_step"], device),
        "gflops_per_step": statistics["flops_per_step"] / 1e9,
        "flops_per_step": statistics["flops_per_step"],
        "attention_kernels": statistics["attention_kernels"],
        "peak_memory_mib": memory,
        "peak_memory_kind": memory_kind,
        "warmup": warmup,
        "iters": iters,
    }
