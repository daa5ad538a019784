"""SlurmJob: the callback train.sbatch adds to every Trainer it starts."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Mapping

from lightning.pytorch import Callback


_forks_ignore_requeue_signal = False


def _ignore_requeue_signal_in_forks() -> None:
    """Make every process forked from this one from now on ignore SIGUSR1 (once per process)."""
    global _forks_ignore_requeue_signal
    if not _forks_ignore_requeue_signal:
        os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGUSR1, signal.SIG_IGN))
        _forks_ignore_requeue_signal = True


class SlurmJob(Callback):
    """What a training process under train.sbatch needs beyond Lightning's own Slurm support.

    1. SIGUSR1 stays with the training process. Slurm signals every process of a job step,
       DataLoader workers included, and a worker forked from the trainer inherits Lightning's
       requeue handler: it would save an hpc checkpoint from its stale copy of the trainer (the
       step its epoch began at) over the real one, and the requeued job would restart from
       there. From `setup` on, processes forked from the trainer ignore SIGUSR1 and keep
       feeding batches until the job ends. (Workers started with the spawn or forkserver
       method are fresh interpreters; SIGUSR1 would end them.)
    2. Readable lines in the job's output file, where a progress bar is a mess of carriage
       returns: every rank prints its global rank, node rank, local rank, host and the step it
       starts from (0, or the step of the checkpoint it resumed); rank 0 prints the global step
       and loss every `trainer.log_every_n_steps` optimiser steps, and a line when training ends.
    """

    def __init__(self) -> None:
        self._last_step = -1

    def setup(self, trainer, pl_module, stage: str) -> None:
        # Lightning installs its handler later, in fit; workers fork later still.
        _ignore_requeue_signal_in_forks()

    def on_train_start(self, trainer, pl_module) -> None:
        print(
            f"rank {trainer.global_rank}/{trainer.world_size} node_rank {trainer.node_rank} "
            f"local_rank {trainer.local_rank} host {socket.gethostname()}: "
            f"training from step {trainer.global_step}",
            flush=True,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # global_step counts optimiser steps: with gradient accumulation, or a skipped step,
        # several batches end on the same step; print it once.
        step = trainer.global_step
        if not trainer.is_global_zero or step == self._last_step or step % trainer.log_every_n_steps:
            return
        self._last_step = step
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        print(f"step {step}" + ("" if loss is None else f" loss {float(loss):.4f}"), flush=True)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            print(f"training ended at step {trainer.global_step}", flush=True)
