"""AdamW with linear warm-up and a cosine or constant learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LR_SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW (Loshchilov & Hutter 2019) settings and the learning-rate schedule.

    lr: peak learning rate, reached after `warmup_steps` optimiser steps of linear warm-up.
    schedule: "cosine" decays to `min_lr_ratio * lr` at `total_steps` (None: the trainer's
      max_steps); "constant" stays at `lr` after warm-up.
    weight_decay: applied to weight matrices and kernels only (not biases, norms, embeddings' 1-D
      parameters).
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 1000
    schedule: str = "constant"
    min_lr_ratio: float = 0.0
    total_steps: int | None = None


def check_optimizer_config(config: OptimizerConfig) -> list[tuple[str, str]]:
    """Problems as (key, message) pairs; empty when the config is valid."""
    problems = []
    if not config.lr > 0:
        problems.append(("optimizer.lr", f"must be > 0, got {config.lr}"))
    if config.warmup_steps < 0:
        problems.append(("optimizer.warmup_steps", f"must be >= 0, got {config.warmup_steps}"))
    if config.schedule not in LR_SCHEDULES:
        problems.append(("optimizer.schedule", f"must be one of {LR_SCHEDULES}, got {config.schedule!r}"))
    if not 0.0 <= config.min_lr_ratio <= 1.0:
        problems.append(("optimizer.min_lr_ratio", f"must be in [0, 1], got {config.min_lr_ratio}"))
    if config.total_steps is not None and config.total_steps < 1:
        problems.append(("optimizer.total_steps", f"must be >= 1 or null, got {config.total_steps}"))
    if config.weight_decay < 0:
        problems.append(("optimizer.weight_decay", f"must be >= 0, got {config.weight_decay}"))
    return problems


def lr_multiplier(step: int, warmup_steps: int, schedule: str, total_steps: int | None, min_lr_ratio: float) -> float:
    """The factor on the peak learning rate after `step` optimiser steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps is None or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_adamw(named_parameters: list[tuple[str, torch.nn.Parameter]], config: OptimizerConfig) -> torch.optim.AdamW:
    """Fused AdamW with two parameter groups: decayed (>= 2-D tensors) and not decayed (the rest).

    Fused on every device: one kernel per step, and it honours `optimizer.found_inf`, which
    `DiffusionStage` sets to skip a non-finite step without a host sync."""
    decayed = [p for _, p in named_parameters if p.requires_grad and p.ndim >= 2]
    not_decayed = [p for _, p in named_parameters if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decayed, "weight_decay": config.weight_decay},
        {"params": not_decayed, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=config.lr,
        betas=tuple(config.betas),
        eps=config.eps,
        fused=True,
    )


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimizerConfig, total_steps: int | None
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LambdaLR following `lr_multiplier`; its state (last step) is checkpointed."""

    def multiplier(step: int) -> float:
        return lr_multiplier(step, config.warmup_steps, config.schedule, total_steps, config.min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
