"""Memory ESTIMATES for sizes that do not fit the machine at hand: fake tensors, no compute.

The UNet runs under `FakeTensorMode` (shapes and dtypes only, no data, no arithmetic) inside
torch's `MemTracker`, which follows every tensor's storage and reports the peak of live tensor
memory by kind (parameters, gradients, optimiser state, activations, temporaries). It runs on
the CPU in seconds for any size, also the 1024x1024 super-resolution stage.

What it is: the eager-mode peak of tensor memory, bf16 autocast with fp32 weights, the same code
path as training / sampling. What it leaves out: the CUDA context (~0.5 GiB), the caching
allocator's fragmentation and reserve, cuDNN / attention workspaces, and what torch.compile
fusion would save. Treat it as an estimate, to be confirmed on the GPU.

- "train": an AdamW step after a first one (so the optimiser state exists), as in a long run.
- "sample": one guided denoising step without gradients (2 x batch rows: CFG batched) when the
  stage is conditional, batch rows otherwise.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker

from ..stages.export import build_stage, read_stage_config

from .stage_inputs import text_length

GIB = 2**30


def estimate_peak(config: str | Path, mode: str, batch_size: int, resolution: int | None) -> dict:
    """The estimated peak tensor memory (GiB, by kind) of one train step or one sampling step."""
    if mode not in ("train", "sample"):
        raise ValueError(f"mode must be train or sample, got {mode!r}")
    with FakeTensorMode():
        stage = build_stage(read_stage_config(config))
        unet = stage.unet
        size = resolution or stage.image_size
        conditional = stage.conditioning != "none"
        rows = 2 * batch_size if mode == "sample" and conditional else batch_size
        inputs = _unet_inputs(stage, rows, size)
        tracker = MemTracker()
        if mode == "train":
            optimizer = torch.optim.AdamW(unet.parameters(), foreach=True)
            _train_step(unet, optimizer, inputs)  # creates the optimiser state, untracked
            tracker.track_external(unet, optimizer, *inputs.values())
            with tracker:
                _train_step(unet, optimizer, inputs)
        else:
            unet.eval()
            tracker.track_external(unet, *inputs.values())
            with tracker, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                unet(**inputs)
        peak = tracker.get_tracker_snapshot("peak")
    by_kind = {str(getattr(kind, "value", kind)).lower(): value / GIB
               for device_stats in peak.values() for kind, value in device_stats.items()}
    return {
        "benchmark": "memory_estimate",
        "config": str(config),
        "mode": mode,
        "batch": batch_size,
        "unet_rows": rows,
        "resolution": size,
        "gradient_checkpointing": unet.config.gradient_checkpointing,
        "estimated_peak_gib": by_kind.pop("total"),
        "by_kind_gib": by_kind,
    }


def _train_step(unet: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: dict) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = unet(**inputs)
    out.float().pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _unet_inputs(stage, rows: int, size: int) -> dict:
    """UNet keyword inputs of the right shapes (fake tensors under FakeTensorMode)."""
    config = stage.unet.config
    inputs = {"x_t": torch.randn(rows, config.in_channels, size, size), "noise_cond": torch.rand(rows)}
    if config.num_classes:
        inputs["class_labels"] = torch.zeros(rows, dtype=torch.long)
    if config.text_dim:
        length = text_length(stage)
        inputs["text_tokens"] = torch.randn(rows, length, config.text_dim)
        inputs["text_mask"] = torch.ones(rows, length, dtype=torch.bool)
    if config.lowres_channels:
        inputs["lowres"] = torch.randn(rows, config.lowres_channels, size, size)
    if config.use_aug_cond:
        inputs["aug_cond"] = torch.rand(rows)
    return inputs


def largest_batch(config: str | Path, mode: str, resolution: int | None, budget_gib: float) -> dict:
    """The largest batch whose estimated peak fits `budget_gib`: doubling, then bisection (the
    peak grows with the batch, but not affinely while the optimiser step dominates it)."""
    estimates: dict[int, dict] = {}

    def fits(batch: int) -> bool:
        estimates[batch] = estimate_peak(config, mode, batch, resolution)
        return estimates[batch]["estimated_peak_gib"] <= budget_gib

    if not fits(1):
        return {**estimates[1], "benchmark": "memory_largest_batch", "batch": 0, "budget_gib": budget_gib}
    low, high = 1, 2
    while fits(high):
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return {**estimates[low], "benchmark": "memory_largest_batch", "budget_gib": budget_gib,
            "next_batch_gib": estimates[high]["estimated_peak_gib"]}
