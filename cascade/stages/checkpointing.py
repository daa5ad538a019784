"""Keeping a run's work: checkpoint files that are never half written, and a checkpoint when the
run is stopped by a signal.

- `AtomicCheckpointIO` is the checkpoint writer `cascade fit` gives every Trainer: each checkpoint
  (last.ckpt, best-<step>.ckpt, an hpc or interrupt checkpoint) goes to a temporary file next to
  it and is renamed over the target (`cascade.files.atomic`), so a run killed while saving keeps
  the previous last.ckpt whole.
- `SignalAgreement` lets every DDP rank act on a signal at the same training batch without a
  collective in the signal handler; `SaveOnInterrupt` (Ctrl-C, SIGTERM) and
  `cascade.slurm.callback.SlurmJob` (SIGUSR1) are built on it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..files.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint writer, publishing each local file atomically (temporary file,
    fsync, rename); remote paths (`s3://...`) are written as Lightning writes them."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class SignalAgreement:
    """A signal noted by one process, acted on by every DDP rank at the same training batch.

    Acting inside a signal handler can deadlock DDP: a save has a barrier, and a rank
    interrupted in its forward pass waits in it while another rank, whose signal arrives a
    moment later (or never), waits in the backward all-reduce for the first one's gradients.
    So the handler only calls `note`. At the end of every training batch the ranks combine
    their notes with an asynchronous all-reduce (MAX, on a gloo group of its own, so no GPU
    sync) and read the result one batch later, when it is long complete: `agreed` returns the
    same signal number on every rank at the same batch, one batch after any rank got it.
    In a one-process run it returns the signal at the end of the batch it arrived in.

    Use: `note` as (or from) the signal handler; `start(trainer)` in `on_train_start` on every
    rank (it creates the group, a collective); `agreed()` in every `on_train_batch_end`;
    `finish()` in `on_train_end`.
    """

    def __init__(self) -> None:
        self.signalled = 0  # the highest signal number this process got since the last agreement
        self._group = None  # gloo group for the agreement; None in a one-process run
        self._flag: torch.Tensor | None = None
        self._pending = None  # the all-reduce of _flag posted at the previous batch

    def note(self, signum: int, frame: FrameType | None = None) -> None:
        self.signalled = max(self.signalled, int(signum))

    def start(self, trainer: pl.Trainer) -> None:
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            self._group = dist.new_group(backend="gloo")  # every rank calls this, in the same order

    def agreed(self) -> int:
        """The signal all ranks act on now (the highest any rank noted), or 0; clears the note."""
        if self._group is None:
            agreed, self.signalled = self.signalled, 0
            return agreed
        agreed = 0
        if self._pending is not None:
            self._pending.wait()
            agreed = int(self._flag.item())
            self._pending = None
        if agreed:
            self.signalled = 0
        else:
            self._flag = torch.tensor([self.signalled], dtype=torch.int32)
            self._pending = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        return agreed

    def finish(self) -> None:
        if self._pending is not None:
            self._pending.wait()
            self._pending = None


class TrainingInterrupted(Exception):
    """Training stopped on a signal after every rank saved `checkpoint` at `step`; `hint` says
    how to resume, `report` is True on the one process that should print it (global rank 0)."""

    def __init__(self, signum: int, checkpoint: Path, step: int, hint: str, report: bool) -> None:
        self.signum, self.checkpoint, self.step, self.hint, self.report = signum, checkpoint, step, hint, report
        saved = f"{signal.Signals(signum).name}: saved {checkpoint} at step {step}"
        super().__init__(f"{saved}; {hint}" if hint else saved)


class SaveOnInterrupt(pl.Callback):
    """Ctrl-C (SIGINT) or SIGTERM (`kill`, `scancel`, a time limit) during training saves a
    checkpoint and stops, instead of losing every step since the last one.

    From the start of training the signals are only noted; every rank then saves `path` at the
    same step (`SignalAgreement`: the end of the batch, one batch later under DDP) and training
    stops with `TrainingInterrupted`, carrying `hint` (e.g. the command that resumes). A second
    Ctrl-C before the save stops at once, without a checkpoint. The handlers replace Lightning's
    SIGTERM one (which acts at once, so under DDP a rank would stop before the agreed save);
    Lightning puts back the handlers of before the run when it ends. DataLoader workers, forked
    later, inherit the handler and ignore the signal: their process acts for them.
    """

    def __init__(self, path: str | Path, hint: str = "") -> None:
        self.path = Path(path)
        self.hint = hint
        self._agreement = SignalAgreement()
        self._pid = -1  # the training process; a signal to any other (a DataLoader worker) is ignored

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._agreement.start(trainer)
        self._pid = os.getpid()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._note)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return
        if signum == signal.SIGINT and self._agreement.signalled == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self._agreement.note(signum, frame)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        signum = self._agreement.agreed()
        if signum:
            # Every rank is here at the same step, so the save's collectives line up.
            trainer.save_checkpoint(self.path, weights_only=False)
            raise TrainingInterrupted(signum, self.path, trainer.global_step, self.hint, trainer.is_global_zero)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._agreement.finish()
