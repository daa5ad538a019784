"""EMA of the weights, built on Lightning's `WeightAveraging` callback.

Lightning's callback keeps the averaged copy of the module, swaps it in for validation, saves it
as the checkpoint's `state_dict` (the live weights go to `current_model_state`, restored on
resume) and copies it into the module when training ends. This subclass adds what diffusion
training wants on top of `EMAWeightAveraging`:

- a decay warm-up, decay_n = min(decay, (1 + n) / (10 + n)) after n optimiser steps (the
  `num_updates` rule of TensorFlow's ExponentialMovingAverage, used by the DDPM and latent
  diffusion code bases), so short runs are not dominated by the initial weights;
- the averaging as one fused `torch._foreach_lerp_` per device and dtype, instead of a Python
  loop over parameters;
- the current decay logged as `ema/decay`;
- no host sync: `AveragedModel.update_parameters` reads its update count twice per update
  (`n_averaged == 0`, `n_averaged > 0`) to copy rather than average on the first update; here
  the host knows which update is the first, so a training step never waits for the GPU
  (`tests/test_host_syncs.py` counts this);
- training under FSDP2 (`cascade.stages.FSDP2Strategy`), which `WeightAveraging` does not
  support: its `setup` calls `configure_model` (which shards the module) and then deep-copies the
  module into an `AveragedModel`, and FSDP2 refuses to be copied ("AssertionError: FSDP does not
  support deepcopy. Please use state dict for serialization.", torch/distributed/fsdp/
  _fully_shard/_fully_shard.py:300). Here the copy is made before the module is sharded and is
  then sharded the same way, so each rank averages its own shard of every tensor with the
  matching shard of the live weights (the same elements: one average, held in pieces). In a
  checkpoint the average is gathered to its full state (`state_dict`, as without sharding), and
  on resume each rank takes its shards back from the full state.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import AveragedModel

from .sharding import (
    FSDP2Strategy,
    full_state_dict,
    is_sharded,
    load_full_state_dict,
    local_tensor,
)


class EMA(WeightAveraging):
    """Exponential moving average of the module's weights (Polyak averaging).

    Args:
        decay: the target decay (e.g. 0.9999 for long runs, 0.999 for short ones).
        warmup: use the (1 + n) / (10 + n) warm-up of the decay.
        update_every_n_steps: average after every n-th optimiser step.
        device: where the averaged copy lives (None: the module's device; "cpu" saves GPU memory).
    """

    def __init__(
        self,
        decay: float = 0.9999,
        warmup: bool = True,
        update_every_n_steps: int = 1,
        device: str | None = None,
    ):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if update_every_n_steps < 1:
            raise ValueError(f"EMA update_every_n_steps must be >= 1, got {update_every_n_steps}")
        super().__init__(device=device, use_buffers=True, multi_avg_fn=self._lerp_towards_current)
        self.decay = decay
        self.warmup = warmup
        self.update_every_n_steps = update_every_n_steps
        self._current_decay = decay

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """`WeightAveraging.setup` with the copy made before sharding: under `FSDP2Strategy` the
        averaged copy is then sharded like the module (see the module docstring). Lightning's own
        `setup` is not called: it would call the stage's `configure_model` (a no-op outside FSDP2)
        and warn that the stage overrides it, which is only news under sharding."""
        if stage != "fit":
            return
        self._average_model = AveragedModel(
            model=pl_module, device=self._device or pl_module.device, use_buffers=self._use_buffers, **self._kwargs
        )
        if isinstance(trainer.strategy, FSDP2Strategy):
            trainer.strategy.shard(self._average_model.module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        """As `WeightAveraging`: the average in `state_dict`, the live weights in
        `current_model_state`; a sharded average is first gathered to its full state (rank 0)."""
        average = self._average_model
        if average is None or not is_sharded(average.module):
            super().on_save_checkpoint(trainer, pl_module, checkpoint)
            return
        checkpoint["current_model_state"] = checkpoint["state_dict"]
        checkpoint["state_dict"] = full_state_dict(average.module)
        checkpoint["averaging_state"] = {"n_averaged": average.n_averaged.detach().cpu()}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        """As `WeightAveraging`, for a sharded module: `ModelParallelStrategy.load_checkpoint` has
        already loaded the checkpoint's `state_dict` (the average) into the module and removed it
        from `checkpoint`, so the average takes its shards from the module, then the module its
        live weights from `current_model_state` (every rank holds the full checkpoint)."""
        average = self._average_model
        if average is None or not is_sharded(average.module):
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
            return
        module_state = [local_tensor(t.detach()) for t in [*pl_module.parameters(), *pl_module.buffers()]]
        averaged = [local_tensor(t.detach()) for t in [*average.module.parameters(), *average.module.buffers()]]
        torch._foreach_copy_(averaged, module_state)
        if "current_model_state" in checkpoint:
            load_full_state_dict(pl_module, checkpoint["current_model_state"])
            average.n_averaged.copy_(checkpoint["averaging_state"]["n_averaged"])

    def decay_at(self, step: int) -> float:
        """The decay used for the update after `step` optimiser steps."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + step) / (10 + step))

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx % self.update_every_n_steps == 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # WeightAveraging.on_train_batch_end with the sync-free update below instead of
        # AveragedModel.update_parameters (same rule for when to update).
        self._current_decay = self.decay_at(trainer.global_step)
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=trainer.global_step - 1):
            self._update_average(pl_module)
            self._latest_update_step = trainer.global_step
        pl_module.log("ema/decay", self._current_decay)

    def _update_average(self, pl_module: pl.LightningModule) -> None:
        """One EMA update of the averaged copy towards `pl_module` (parameters and buffers). The
        first update copies; which one is first is known on the host (`_latest_update_step`, 0
        until the first update, is part of the callback's checkpointed state)."""
        average = self._average_model
        # Under FSDP2 both are sharded alike: each rank averages its own shards.
        averaged = [local_tensor(a.detach()) for a in [*average.module.parameters(), *average.module.buffers()]]
        current = [local_tensor(c.detach()) for c in [*pl_module.parameters(), *pl_module.buffers()]]
        current = [c.to(a.device) for a, c in zip(averaged, current)]
        if self._latest_update_step == 0:
            torch._foreach_copy_(averaged, current)
        else:
            self._lerp_towards_current(averaged, current, average.n_averaged)
        average.n_averaged += 1

    def _lerp_towards_current(
        self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor
    ) -> None:
        """averaged <- decay * averaged + (1 - decay) * current (`lerp_towards_current`)."""
        lerp_towards_current(averaged, current, 1.0 - self._current_decay)

    def averaged_module(self) -> pl.LightningModule | None:
        """The averaged copy of the module (None before fit has set it up)."""
        return None if self._average_model is None else self._average_model.module


@torch.no_grad()
def lerp_towards_current(averaged: list[torch.Tensor], current: list[torch.Tensor], weight: float) -> None:
    """averaged <- averaged + weight * (current - averaged) = (1 - weight) * averaged + weight * current,
    in place: one fused `torch._foreach_lerp_` over the floating-point tensors; the others (integer
    buffers such as step counters) are copied. The one averaging step of `EMA` (weight = 1 - decay)
    and `PostHocEMA` (weight = 1 - beta_gamma(t))."""
    floating = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
    others = [(a, c) for a, c in zip(averaged, current) if not a.is_floating_point()]
    if floating:
        torch._foreach_lerp_([a for a, _ in floating], [c for _, c in floating], weight)
    for a, c in others:
        a.copy_(c)
