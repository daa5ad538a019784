"""SlurmJob's preemption handling under real 2-process DDP (gloo), without a Slurm cluster.

SIGUSR1 goes to rank 1 alone, in the middle of a step: the case that deadlocks Lightning's own
handler (one rank saving behind a barrier while the other waits in the gradient all-reduce).
Both ranks must save the same hpc checkpoint at the same step and go on (no Slurm job to
requeue), ending with identical weights. tests/test_slurm_cluster.py runs the requeue itself
on a real Slurm.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback

SIGNAL_STEP = 3


class SignalRankOne(Callback):
    """Sends SIGUSR1 to rank 1's own process before its forward pass at step SIGNAL_STEP; each
    rank saves its final weights to run_dir/rank<R>.pt."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == 1 and trainer.global_step == SIGNAL_STEP:
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_train_end(self, trainer, pl_module):
        weights = {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}
        torch.save(weights, Path(trainer.default_root_dir) / f"rank{trainer.global_rank}.pt")


def test_signal_to_one_rank_saves_once_on_all_ranks_without_deadlock(write_stage_config):
    steps = 8
    config, run_dir = write_stage_config(max_steps=steps, val_every=steps)
    command = [
        sys.executable, "-m", "cascade", "fit", "-c", str(config), "--trainer.devices=2",
        "--trainer.callbacks+=cascade.slurm.callback.SlurmJob", "--trainer.callbacks+=cascade.stages.ProgressLines",
        f"--trainer.callbacks+={Path(__file__).stem}.SignalRankOne",
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    env.update(PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]

    saved = re.findall(r"SIGUSR1: saved (\S+) at step (\d+); not in a Slurm job", output)
    assert len(saved) == 1, output[-4000:]  # rank 0 reports it, once
    path, step = Path(saved[0][0]), int(saved[0][1])
    assert path == run_dir / "hpc_ckpt_1.ckpt" and path.is_file()
    # The ranks agree one batch after the signal (the all-reduce is read a batch late).
    assert step == SIGNAL_STEP + 2
    assert torch.load(path, map_location="cpu", weights_only=False)["global_step"] == step
    # ProgressLines: rank 0's step lines (log_every_n_steps 1) go on through the save, no gap.
    assert [int(n) for n in re.findall(rf"^step (\d+)/{steps} loss", output, re.MULTILINE)] == list(range(1, steps + 1))
    assert f"training ended at step {steps}" in output

    rank0, rank1 = (torch.load(run_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between ranks"
