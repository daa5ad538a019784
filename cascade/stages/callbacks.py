"""Training callbacks: sample grids from fixed seeds and conditions, training speed, progress lines,
threads granted while training and the progress bar."""

from __future__ import annotations

import socket
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image

from .conditioning import Condition
from .config import SamplingSettings, StageConfigError
from .diffusion_stage import DiffusionStage
from .ema import EMA
from .super_res import SuperResStage


class SampleGrid(pl.Callback):
    """Every `every_n_steps` optimiser steps (and when training ends), sample a grid with the EMA
    weights (the live weights when there is no `EMA` callback), from fixed seeds and conditions.

    Conditions: `prompts` (text stages) or `class_labels` (class stages); left empty, they are
    taken from the first validation batch. SR stages always take their low-res inputs from the
    first validation batch, and the grid shows three rows: low-res input | sample | target.
    The grid goes to TensorBoard (`samples`) and to <run dir>/samples/step_NNNNNNN.png.

    Args:
        every_n_steps: how often (0: only at the end of training).
        num_samples: images per grid.
        prompts / class_labels: fixed conditions (cycled to num_samples).
        sampler / steps / guidance / dynamic_threshold / aug_level: `SamplingSettings` values
            that replace the stage's own `sampling` ones for the grids (None: the stage's).
            Checked when the callback is built, not at the first grid. The grids sample without
            the stage's autoguidance `guide` (a separate model, loaded by a `Cascade` at inference).
        seed: seed of the starting noise.
        scale: nearest-neighbour magnification of the saved grid (tiny images are hard to see).
        guidance_scale: the older name of `guidance`, read so that older configs still work.
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        num_samples: int = 8,
        prompts: list[str] | None = None,
        class_labels: list[int] | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        dynamic_threshold: float | None = None,
        aug_level: float | None = None,
        seed: int = 0,
        scale: int = 1,
        guidance_scale: float | None = None,
    ):
        if every_n_steps < 0 or num_samples < 1 or scale < 1:
            raise ValueError("SampleGrid needs every_n_steps >= 0, num_samples >= 1 and scale >= 1")
        given = {"sampler": sampler, "steps": steps, "guidance": guidance, "dynamic_threshold": dynamic_threshold,
                 "aug_level": aug_level, "guidance_scale": guidance_scale}
        self.sampling_changes = {key: value for key, value in given.items() if value is not None}
        try:
            SamplingSettings().updated(**self.sampling_changes)
        except StageConfigError as error:
            problems = "; ".join(f"{key.removeprefix('sampling.')}: {message}" for key, message in error.problems)
            raise ValueError(f"SampleGrid {problems}") from None
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.prompts = list(prompts) if prompts else None
        self.class_labels = list(class_labels) if class_labels else None
        self.seed = seed
        self.scale = scale
        self._reference: dict[str, Any] | None = None
        self._last_step = -1

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._reference is None and batch_idx == 0 and dataloader_idx == 0:
            self._reference = _first_rows(batch, self.num_samples)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            self._write_grid(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self._write_grid(trainer, pl_module)

    @rank_zero_only
    def _write_grid(self, trainer: pl.Trainer, pl_module: DiffusionStage) -> None:
        self._last_step = trainer.global_step
        stage = _ema_copy(trainer) or pl_module
        rows = self._grid_rows(stage)
        if rows is None:
            return
        grid = make_grid(torch.cat(rows).float().cpu().add(1).div(2).clamp(0, 1), nrow=rows[0].shape[0], padding=1)
        if self.scale > 1:
            grid = F.interpolate(grid[None], scale_factor=self.scale, mode="nearest")[0]
        path = Path(trainer.default_root_dir) / "samples" / f"step_{trainer.global_step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image("samples", grid, global_step=trainer.global_step)

    def _grid_rows(self, stage: DiffusionStage) -> list[torch.Tensor] | None:
        reference = self._reference
        lowres = None
        if isinstance(stage, SuperResStage):
            if reference is None or "lowres" not in reference:
                return None
            lowres = reference["lowres"].to(stage.device)
        count = self.num_samples if lowres is None else lowres.shape[0]
        condition = self._condition(stage, reference, count)
        if condition is None:
            return None
        generator = torch.Generator(device=stage.device).manual_seed(self.seed)
        samples = stage.generate(
            condition,
            num_samples=count,
            lowres=lowres,
            settings=self.settings_for(stage),
            generator=generator,
        )
        if lowres is None:
            return [samples]
        shown_lowres = F.interpolate(lowres.float(), size=samples.shape[-2:], mode="nearest")
        return [shown_lowres, samples, reference["image"].to(samples.device, samples.dtype)]

    def settings_for(self, stage: DiffusionStage) -> SamplingSettings:
        """The stage's own sampling settings with this callback's changes, without a guide."""
        return stage.sampling.updated(guide=None, **self.sampling_changes)

    def _condition(self, stage: DiffusionStage, reference: dict[str, Any] | None, count: int) -> Condition | None:
        if stage.conditioning == "none":
            return Condition()
        if stage.conditioning == "class":
            labels = self.class_labels or (reference or {}).get("class_label")
            if labels is None:
                return None
            return stage.make_condition(class_labels=_cycle(list(labels), count))
        if self.prompts:
            return stage.make_condition(prompts=_cycle(self.prompts, count))
        if reference is None:
            return None
        if "text_tokens" in reference:
            return stage.make_condition(text_tokens=reference["text_tokens"], text_mask=reference.get("text_mask"))
        return stage.make_condition(prompts=reference["caption"])


def _ema_copy(trainer: pl.Trainer) -> DiffusionStage | None:
    for callback in trainer.callbacks:
        if isinstance(callback, EMA):
            return callback.averaged_module()
    return None


def _cycle(values: list, length: int) -> list:
    return [values[i % len(values)] for i in range(length)]


def _first_rows(batch: dict, count: int) -> dict[str, Any]:
    """The first `count` rows of every field of a batch, tensors detached on the CPU."""
    rows = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            rows[key] = value[:count].detach().cpu()
        elif isinstance(value, (list, tuple)):
            rows[key] = list(value[:count])
    return rows


class TrainingSpeed(pl.Callback):
    """Logs `speed/steps_per_sec` and `speed/samples_per_sec` (this rank's batches) after every
    step, averaged over the last `window` steps, data loading included. The window empties at
    each validation, so the figure is the training loop alone.
    """

    def __init__(self, window: int = 20):
        if window < 1:
            raise ValueError(f"TrainingSpeed window must be >= 1, got {window}")
        self.window = window
        self._ends: deque[tuple[float, int]] = deque(maxlen=window + 1)  # (time, batch size) per step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ends.clear()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ends.clear()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        size = len(batch["image"]) if isinstance(batch, dict) and "image" in batch else 0
        self._ends.append((time.perf_counter(), size))
        if len(self._ends) < 2:
            return
        elapsed = self._ends[-1][0] - self._ends[0][0]
        steps = len(self._ends) - 1
        pl_module.log("speed/steps_per_sec", steps / elapsed)
        if size:
            samples = sum(batch_size for _, batch_size in list(self._ends)[1:])
            pl_module.log("speed/samples_per_sec", samples / elapsed)


class ProgressLines(pl.Callback):
    """Plain progress lines for logs and for programs that watch a training run, where a
    progress bar is a mess of carriage returns.

    Every rank prints its global rank, node rank, local rank, host and the step it starts from
    (0, or the step of the checkpoint it resumed); rank 0 prints `step N/MAX loss L` every
    `trainer.log_every_n_steps` optimiser steps and `training ended at step N` at the end.
    """

    def __init__(self) -> None:
        self._last_step = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        print(
            f"rank {trainer.global_rank}/{trainer.world_size} node_rank {trainer.node_rank} "
            f"local_rank {trainer.local_rank} host {socket.gethostname()}: "
            f"training from step {trainer.global_step}",
            flush=True,
        )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # global_step counts optimiser steps: with gradient accumulation, or a skipped step,
        # several batches end on the same step; print it once.
        step = trainer.global_step
        if not trainer.is_global_zero or step == self._last_step or step % trainer.log_every_n_steps:
            return
        self._last_step = step
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        print(f"step {step}/{trainer.max_steps}" + ("" if loss is None else f" loss {float(loss):.4f}"), flush=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            print(f"training ended at step {trainer.global_step}", flush=True)


class ThreadGrant(pl.Callback):
    """Takes the number of torch threads a file grants, read every `every_n_steps` optimiser steps:
    a training that shares a machine with others takes their cores when they finish (`cascade demo`
    trains the base beside the SR stages, one thread each, and hands the base the SR lane's thread
    when that lane is done: `cascade.demo.training.train_concurrently`).

    The file holds one positive integer and is replaced whole (written beside it, then renamed), so
    a reading is never partial; while it is missing the threads stay as they are. Anything else it
    holds is ignored, named in one line (once until it changes): the training goes on."""

    def __init__(self, path: str | Path, every_n_steps: int = 10) -> None:
        if every_n_steps < 1:
            raise ValueError(f"ThreadGrant every_n_steps must be >= 1, got {every_n_steps}")
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self._refused: str | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return
        granted = int(text) if text.isdigit() else 0
        if granted < 1:
            if text != self._refused:
                self._refused = text
                print(f"ThreadGrant: {self.path} holds {text!r}, not a positive number of threads; ignored",
                      flush=True)
            return
        if granted != torch.get_num_threads():
            torch.set_num_threads(granted)
            print(f"step {trainer.global_step}: {granted} torch threads (granted by {self.path})", flush=True)


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, counting optimiser steps against trainer.max_steps when the
    run is bounded by it (`cascade fit`'s bar).

    Lightning's own bar counts the batches of the current epoch against the steps that were left
    when the epoch started: on an endless stream the whole run is one epoch, so a run resumed at
    step 151 of 200 read `200/49` by its end.

    The bar shows `train/loss` (logged without `prog_bar=True`: Lightning turns every progress-bar
    value into a Python number after every batch, a host sync per step that stalls the GPU's
    queue), read from the device only on the steps the loggers record (every
    `trainer.log_every_n_steps`) and outside training; between them it shows the last value read.
    """

    SHOWN_TRAINING_METRICS = ("train/loss",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shown_metrics: dict[str, Any] = {}

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        every = trainer.log_every_n_steps
        if not trainer.training or (every > 0 and trainer.global_step % every == 0):
            shown = super().get_metrics(trainer, pl_module)
            logged = trainer.callback_metrics
            for key in self.SHOWN_TRAINING_METRICS:
                if key in logged:
                    shown[key] = float(logged[key])
            self._shown_metrics = shown
        return self._shown_metrics

    @property
    def total_train_batches(self) -> int | float:
        if self.trainer.max_steps > 0:
            return self.trainer.max_steps
        return super().total_train_batches

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # The bar shows batch_idx + 1 of total_train_batches; count steps instead.
        shown = trainer.global_step - 1 if trainer.max_steps > 0 else batch_idx
        super().on_train_batch_end(trainer, pl_module, outputs, batch, shown)
