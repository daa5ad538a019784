"""SlurmJob: the callback train.sbatch adds to every Trainer it starts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from lightning.pytorch import Callback

from ..stages.checkpointing import SignalAgreement


class SlurmJob(Callback):
    """Preemption of a training job that cannot deadlock DDP (train.sbatch adds this callback).

    Slurm sends SIGUSR1 to every task of the job (before the time limit, or `scancel
    --signal=USR1`). Lightning's own handler saves a checkpoint inside the signal handler, and
    that save has a barrier: a rank interrupted in its forward pass waits in the barrier while
    another rank, whose signal arrives a moment later, waits in the backward all-reduce for the
    first one's gradients, and the job hangs until its time limit. Here the handler only notes
    the signal, and the ranks agree on a step as `cascade.stages.checkpointing.SignalAgreement`
    says (one batch after the signal, all ranks at the same step). There they save
    RUN_DIR/hpc_ckpt_N.ckpt together and rank 0 runs `scontrol requeue`; training goes on until
    Slurm ends the job (stopping the Trainer would first run a validation, eating into the
    grace time; the SIGTERM that ends it saves last.ckpt, see `SaveOnInterrupt`), and the
    requeued job resumes from the newest checkpoint: that file, or one written after it. If the
    requeue fails (or the process is not in a Slurm job), the checkpoint is there and training
    simply goes on. Installing the handler in `setup` keeps Lightning from installing its own
    (it skips a signal that already has one). DataLoader workers forked later inherit the
    handler, which only sets a flag in their copy.

    train.sbatch also adds `cascade.stages.ProgressLines`, for readable lines in the job's log.
    """

    def __init__(self) -> None:
        self._agreement = SignalAgreement()

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            # Lightning registers its handlers after `setup`, and not for a signal that has one.
            signal.signal(signal.SIGUSR1, self._agreement.note)

    def on_train_start(self, trainer, pl_module) -> None:
        self._agreement.start(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._agreement.agreed():
            self._save_and_requeue(trainer)

    def _save_and_requeue(self, trainer) -> None:
        step = trainer.global_step
        # Every rank is here at the same step, so the save's collectives line up.
        path = trainer.strategy.broadcast(str(next_hpc_checkpoint(Path(trainer.default_root_dir))), src=0)
        trainer.save_checkpoint(path, weights_only=False)
        if trainer.is_global_zero:
            requeue_job(path, step)

    def on_train_end(self, trainer, pl_module) -> None:
        self._agreement.finish()


def next_hpc_checkpoint(directory: Path) -> Path:
    """directory/hpc_ckpt_<N+1>.ckpt after the highest N there (Lightning's naming)."""
    numbers = [int(m.group(1)) for p in directory.glob("hpc_ckpt_*.ckpt") if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name))]
    return directory / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"


def requeue_job(checkpoint: str, step: int) -> None:
    """`scontrol requeue` this job (an array task as ARRAYJOB_TASK); prints what happened."""
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not job:
        print(f"SIGUSR1: saved {checkpoint} at step {step}; not in a Slurm job, so training goes on", flush=True)
        return
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    except FileNotFoundError:
        print(f"SIGUSR1: saved {checkpoint} at step {step}; scontrol not found, training goes on", flush=True)
        return
    if result.returncode != 0:
        print(f"SIGUSR1: saved {checkpoint} at step {step}; `scontrol requeue {job}` failed "
              f"({result.stderr.strip() or result.returncode}), training goes on", flush=True)
    else:
        print(f"SIGUSR1: saved {checkpoint} at step {step}; job {job} requeued", flush=True)
