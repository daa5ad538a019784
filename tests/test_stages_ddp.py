"""Real DDP: `cascade fit` with DDP, accelerator=cpu, devices=2 (gloo) in a subprocess.

- Rank 1 trains with every condition nulled (p_uncond = 1), so its whole batch takes the
  classifier-free-guidance null path while rank 0 does not: with find_unused_parameters=False
  the run only completes if every parameter gets a gradient on every rank.
- At one step rank 1 alone gets a NaN pixel, hence a NaN loss: both ranks must skip that step
  (or their weights would differ afterwards) and count it.
- SIGTERM to rank 1 alone, in the middle of a step: both ranks must save last.ckpt at the same
  step and stop, without a deadlock (a run of its own).
- Each rank reports its own data skip counts; the logged ones are their sum over ranks.

One run (`ddp_run`) serves the tests of the first, second and last points.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import micro_stage_config
from lightning.pytorch import Callback


NAN_STEP = 5


class RankOneNullAndNaN(Callback):
    """Rank 1 drops every condition and sees a NaN pixel at step NAN_STEP; after the last step
    each rank saves its live weights and non-finite step count to run_dir/rank<R>.pt."""

    def on_train_start(self, trainer, pl_module):
        if trainer.global_rank == 1:
            pl_module.p_uncond = 1.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == 1 and trainer.global_step == NAN_STEP:
            batch["image"][0, 0, 0, 0] = float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step < trainer.max_steps:
            return
        weights = {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}
        weights["nonfinite_steps"] = torch.tensor(pl_module.nonfinite_steps_total)
        torch.save(weights, Path(trainer.default_root_dir) / f"rank{trainer.global_rank}.pt")


class RankSkipCounts(Callback):
    """Rank r's batches report 10 * (r + 1) skipped samples and r + 1 shard errors (as a rank's
    loader does, cumulatively): the logged counts must be their sums, 30 and 3."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        batch["skipped"].fill_(10 * (trainer.global_rank + 1))
        batch["shard_errors"].fill_(trainer.global_rank + 1)


DDP_AS_IN_THE_REAL_CONFIGS = (
    '{"class_path": "lightning.pytorch.strategies.DDPStrategy",'
    ' "init_args": {"find_unused_parameters": false, "gradient_as_bucket_view": true}}'
)


STEPS = 12


@pytest.fixture(scope="module")
def ddp_run(synthetic_shards, tmp_path_factory) -> Path:
    """The run folder of one `cascade fit` of a micro stage on 2 gloo processes, with the callbacks above."""
    root = tmp_path_factory.mktemp("ddp")
    run_dir = root / "run"
    config = root / "config.yaml"
    stage_config = micro_stage_config(synthetic_shards, run_dir, max_steps=STEPS, val_every=STEPS // 3)
    config.write_text(yaml.safe_dump(stage_config, sort_keys=False))
    command = [
        sys.executable, "-m", "cascade", "fit", "-c", str(config),
        "--trainer.devices=2", f"--trainer.strategy={DDP_AS_IN_THE_REAL_CONFIGS}",
        f"--trainer.callbacks+={Path(__file__).stem}.RankOneNullAndNaN",
        f"--trainer.callbacks+={Path(__file__).stem}.RankSkipCounts",
    ]  # fmt: skip
    tests_dir = str(Path(__file__).parent)
    python_path = os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": python_path, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Starting with 2 processes" in result.stderr + result.stdout
    return run_dir


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_ddp_two_processes_train_identical_weights(ddp_run):
    rank0, rank1 = (torch.load(ddp_run / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert int(rank0["nonfinite_steps"]) == int(rank1["nonfinite_steps"]) == 1
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between ranks"

    # The loss falls: the validation loss (fixed seeds, averaged over both ranks) at every check.
    rows = _metrics(ddp_run)
    assert len([row for row in rows if row.get("train/loss")]) == STEPS
    val = [float(row["val/loss"]) for row in rows if row.get("val/loss")]
    assert len(val) == 3 and val[0] > val[1] > val[2], val


def test_data_skip_counts_are_summed_over_ranks(ddp_run):
    logged = [(row["data/skipped"], row["data/shard_errors"]) for row in _metrics(ddp_run) if row.get("data/skipped")]
    assert len(logged) == STEPS  # log_every_n_steps: 1
    assert set(logged) == {("30.0", "3.0")}


SIGTERM_STEP = 3


class SigtermRankOne(Callback):
    """Sends SIGTERM to rank 1's own process before its forward pass at step SIGTERM_STEP."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == 1 and trainer.global_step == SIGTERM_STEP:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_to_one_rank_saves_last_ckpt_on_all_ranks_at_one_step_and_stops(write_stage_config):
    steps = 20
    config, run_dir = write_stage_config(max_steps=steps, val_every=steps)
    command = [
        sys.executable, "-m", "cascade", "fit", "-c", str(config), "--trainer.devices=2",
        "--trainer.callbacks+=cascade.stages.ProgressLines", f"--trainer.callbacks+={Path(__file__).stem}.SigtermRankOne",
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    env.update(PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 128 + signal.SIGTERM, output[-4000:]

    saved = re.findall(r"^cascade fit: SIGTERM: saved (\S+) at step (\d+); resume with: .*--ckpt_path last$",
                       output, re.MULTILINE)
    last = run_dir / "checkpoints" / "last.ckpt"
    # Rank 0 reports it, once; the ranks agree one batch after the signal (the all-reduce is read a batch late).
    assert saved == [(str(last), str(SIGTERM_STEP + 2))], output[-4000:]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == SIGTERM_STEP + 2
    assert [int(n) for n in re.findall(rf"^step (\d+)/{steps} loss", output, re.MULTILINE)] == list(
        range(1, SIGTERM_STEP + 3)
    )
