"""`cascade fit` end to end on micro configs: outputs, exact resume, NaN/inf handling."""

from __future__ import annotations

import csv
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from lightning.pytorch import Callback

from cascade.stages import diffusion_stage
from cascade.cli.stage import fit as fit_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def read_metrics(run_dir: Path, version: int = 0) -> list[dict[str, float]]:
    """The CSVLogger rows of one run (empty cells dropped)."""
    path = run_dir / "csv" / f"version_{version}" / "metrics.csv"
    with open(path) as handle:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


def series(rows: list[dict[str, float]], key: str) -> dict[int, float]:
    """{step: value} of one logged metric."""
    return {int(row["step"]): row[key] for row in rows if key in row}


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_fit_writes_checkpoints_logs_and_sample_grid(write_stage_config, tmp_path):
    config, run_dir = write_stage_config(max_steps=4, val_every=2)
    grid = ["--sample_grid=cascade.stages.SampleGrid", "--sample_grid.every_n_steps=2",
            "--sample_grid.class_labels=[0, 4]", "--sample_grid.steps=2"]
    assert fit_main(["-c", str(config), *grid]) == 0

    checkpoint = load(run_dir / "checkpoints" / "last.ckpt")  # weights_only: no pickled objects inside
    assert checkpoint["global_step"] == 4
    assert checkpoint["cascade_stage"]["class_path"] == "cascade.stages.base_stage.BaseStage"
    assert checkpoint["cascade_stage"]["init_args"]["unet"]["base_channels"] == 8
    assert {"current_model_state", "averaging_state"} <= set(checkpoint)  # EMA weights + live weights
    assert all(name.startswith("unet.") for name in checkpoint["state_dict"])
    assert list(run_dir.glob("checkpoints/best-*.ckpt"))
    assert sorted(p.name for p in (run_dir / "samples").glob("*.png")) == ["step_0000002.png", "step_0000004.png"]

    rows = read_metrics(run_dir)
    keys = set().union(*rows)
    buckets = {f"val/loss_t{k / 5:.1f}-{(k + 1) / 5:.1f}" for k in range(5)}
    assert {"train/loss", "val/loss", "train/grad_norm", "ema/decay", "data/skipped", "lr-AdamW/pg1"} | buckets <= keys
    assert len(series(rows, "train/loss")) == 4
    decays = list(series(rows, "ema/decay").values())
    assert decays == sorted(decays) and decays[0] < 0.99  # warm-up towards the configured decay


class RecordClippedNorms(Callback):
    """After each optimiser step, the total norm of the gradients the step used (Lightning zeroes
    them only before the next backward), beside the unclipped norm the stage logged."""

    norms: ClassVar[list[float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        RecordClippedNorms.norms.append(float(torch.nn.utils.get_total_norm(grads)))


def test_bf16_mixed_clips_the_fused_adamw_gradients_to_gradient_clip_val(write_stage_config):
    # Lightning's MixedPrecision refuses to clip for the fused AdamW (it unscales by itself); with
    # bf16 there is no scaler, and DiffusionStage.configure_gradient_clipping clips.
    clip = 1e-3
    config, run_dir = write_stage_config(max_steps=2, val_every=2)
    callback = f"--trainer.callbacks+={__name__}.RecordClippedNorms"
    RecordClippedNorms.norms = []
    assert fit_main(["-c", str(config), "--trainer.precision=bf16-mixed", f"--trainer.gradient_clip_val={clip}",
                     callback]) == 0
    unclipped = list(series(read_metrics(run_dir), "train/grad_norm").values())
    assert len(unclipped) == len(RecordClippedNorms.norms) == 2 and min(unclipped) > 10 * clip
    # clip_grad_norm_ scales by clip / (norm + 1e-6): the norm after it is clip up to float32 rounding.
    assert RecordClippedNorms.norms == pytest.approx([clip] * 2, rel=1e-4)


class RecordStartWeights(Callback):
    """Keeps the live weights of the module when training starts (added through the CLI)."""

    weights: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module):
        RecordStartWeights.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


class RecordStartMomentum(Callback):
    """Keeps the optimiser's momentum buffers when training starts (added through the CLI)."""

    buffers: list[torch.Tensor] = []

    def on_train_start(self, trainer, pl_module):
        state = trainer.optimizers[0].state.values()
        RecordStartMomentum.buffers = [s["momentum_buffer"].clone() for s in state if "momentum_buffer" in s]


def test_resume_from_last_continues_exactly(write_stage_config):
    steps = 4
    straight, straight_dir = write_stage_config("straight", max_steps=2 * steps, val_every=steps)
    assert fit_main(["-c", str(straight)]) == 0

    split, split_dir = write_stage_config("split", max_steps=2 * steps, val_every=steps)
    assert fit_main(["-c", str(split), "--trainer.max_steps", str(steps)]) == 0
    first_half = load(split_dir / "checkpoints" / "last.ckpt")
    assert first_half["global_step"] == steps

    record = f"--trainer.callbacks+={__name__}.RecordStartWeights"
    assert fit_main(["-c", str(split), "--ckpt_path", "last", record]) == 0

    # The resumed run started from the live (not the EMA) weights of the checkpoint.
    for name, value in first_half["current_model_state"].items():
        assert torch.equal(RecordStartWeights.weights[name], value), name

    a, b = load(straight_dir / "checkpoints" / "last.ckpt"), load(split_dir / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 2 * steps
    state_a, state_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert state_a.keys() == state_b.keys()
    for index in state_a:
        for key in ("exp_avg", "exp_avg_sq"):
            assert state_a[index][key].shape == state_b[index][key].shape
        assert float(state_a[index]["step"]) == float(state_b[index]["step"]) == 2 * steps
    assert int(a["averaging_state"]["n_averaged"]) == int(b["averaging_state"]["n_averaged"]) == 2 * steps
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"] == 2 * steps

    # Learning rate and EMA decay after the resume follow the uninterrupted run step by step.
    straight_rows, resumed_rows = read_metrics(straight_dir), read_metrics(split_dir, version=1)
    for key in ("lr-AdamW/pg1", "ema/decay"):
        resumed = series(resumed_rows, key)
        assert sorted(resumed) == list(range(steps, 2 * steps))
        expected = series(straight_rows, key)
        assert all(math.isclose(resumed[s], expected[s], rel_tol=1e-6) for s in resumed), key
    # The validation loss (fixed seeds) keeps falling after the resume and ends where the
    # uninterrupted run ends; a run restarted from scratch would be back at the step-N level.
    val_first_half = series(read_metrics(split_dir, version=0), "val/loss")[steps - 1]
    val_resumed = series(resumed_rows, "val/loss")[2 * steps - 1]
    val_straight = series(straight_rows, "val/loss")[2 * steps - 1]
    assert val_resumed < val_first_half
    assert math.isclose(val_resumed, val_straight, rel_tol=0.02)


def test_a_rerun_in_the_same_run_dir_resumes_from_its_one_last_checkpoint(write_stage_config, tmp_path, capsys):
    config, run_dir = write_stage_config(max_steps=2, val_every=2)
    checkpoints, lines = run_dir / "checkpoints", "--trainer.callbacks+=cascade.stages.ProgressLines"
    assert fit_main(["-c", str(config), lines]) == 0
    shutil.copy(checkpoints / "last.ckpt", tmp_path / "step2.ckpt")
    capsys.readouterr()

    # No --ckpt_path: the run goes on from its last.ckpt, and says so; last.ckpt is overwritten.
    assert fit_main(["-c", str(config), lines, "--trainer.max_steps", "4"]) == 0
    out = capsys.readouterr()
    assert f"cascade fit: resuming from {checkpoints / 'last.ckpt'}" in out.err
    assert "training from step 2" in out.out
    assert sorted(p.name for p in checkpoints.glob("last*")) == ["last.ckpt"]
    assert load(checkpoints / "last.ckpt")["global_step"] == 4

    # --ckpt_path last is the run's last.ckpt, even beside a newer last-v1.ckpt (an older cascade's
    # restart from step 0 in the same run_dir).
    shutil.copy(tmp_path / "step2.ckpt", checkpoints / "last-v1.ckpt")
    assert fit_main(["-c", str(config), lines, "--trainer.max_steps", "6", "--ckpt_path", "last"]) == 0
    assert "training from step 4" in capsys.readouterr().out
    assert load(checkpoints / "last.ckpt")["global_step"] == 6
    (checkpoints / "last-v1.ckpt").unlink()

    # --ckpt_path none starts over, overwriting the run's last.ckpt.
    assert fit_main(["-c", str(config), lines, "--ckpt_path", "none"]) == 0
    assert "training from step 0" in capsys.readouterr().out
    assert sorted(p.name for p in checkpoints.glob("last*")) == ["last.ckpt"]
    assert load(checkpoints / "last.ckpt")["global_step"] == 2


def test_a_save_killed_halfway_leaves_the_previous_last_checkpoint_whole(write_stage_config, monkeypatch):
    from lightning.fabric.plugins.io import torch_io

    config, run_dir = write_stage_config(max_steps=2, val_every=2)
    assert fit_main(["-c", str(config)]) == 0

    write = torch_io._atomic_save

    def killed_writing_last(checkpoint: dict, path) -> None:  # (the best-<step> one is written first)
        if "last.ckpt" not in Path(path).name:
            return write(checkpoint, path)
        Path(path).write_bytes(b"the first half of a checkpoint")
        raise OSError("killed while writing")

    monkeypatch.setattr(torch_io, "_atomic_save", killed_writing_last)
    with pytest.raises(OSError, match="killed while writing"):
        fit_main(["-c", str(config), "--trainer.max_steps", "4", "--ckpt_path", "last"])
    assert load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert not [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_ctrl_c_saves_the_steps_done_and_prints_the_command_that_resumes_them(write_stage_config, capsys):
    config, run_dir = write_stage_config(max_steps=1000, val_every=1000)  # no checkpoint before the end
    lines = "--trainer.callbacks+=cascade.stages.ProgressLines"
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    env["OMP_NUM_THREADS"] = "1"
    process = subprocess.Popen([sys.executable, "-m", "cascade", "fit", "-c", str(config), lines], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    try:
        for line in process.stdout:
            output.append(line)
            if line.startswith("step 3/"):
                process.send_signal(signal.SIGINT)
                break
        output.append(process.communicate(timeout=120)[0])
    finally:
        if process.poll() is None:
            process.kill()
    text = "".join(output)
    assert process.returncode == 128 + signal.SIGINT, text[-3000:]

    saved = re.search(r"^cascade fit: SIGINT: saved (\S+) at step (\d+); resume with: (.+)$", text, re.MULTILINE)
    assert saved, text[-3000:]
    path, step, resume = Path(saved[1]), int(saved[2]), shlex.split(saved[3])
    assert path == run_dir / "checkpoints" / "last.ckpt"
    assert load(path)["global_step"] == step
    assert step == max(int(n) for n in re.findall(r"^step (\d+)/", text, re.MULTILINE))  # no step done is lost
    assert resume == ["cascade", "fit", "-c", str(config), lines, "--run-dir", str(run_dir), "--ckpt_path", "last"]

    capsys.readouterr()
    assert fit_main([*resume[2:], "--trainer.max_steps", str(step + 2)]) == 0
    assert f"training from step {step}" in capsys.readouterr().out
    assert load(path)["global_step"] == step + 2


class RecordTrainProgress(Callback):
    """(completed, total) of the progress bar's training task after every batch (added through the CLI)."""

    shown: list[tuple[float, float | None]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bar = trainer.progress_bar_callback
        task = next(task for task in bar.progress.tasks if task.id == bar.train_progress_bar_id)
        RecordTrainProgress.shown.append((task.completed, task.total))


def test_the_progress_bar_of_a_resumed_run_counts_its_steps_against_max_steps(write_stage_config):
    config, _ = write_stage_config(max_steps=2, val_every=2)
    assert fit_main(["-c", str(config)]) == 0
    RecordTrainProgress.shown = []
    assert fit_main(["-c", str(config), "--ckpt_path", "last", "--trainer.max_steps", "4",
                     "--trainer.enable_progress_bar", "true", f"--trainer.callbacks+={__name__}.RecordTrainProgress"]) == 0
    assert RecordTrainProgress.shown == [(3, 4), (4, 4)]


def nan_loss_at(steps: set[int] | None):
    """A stand-in for `diffusion_loss` that turns the loss NaN at the given global steps (None: always)."""
    real_loss = diffusion_stage.diffusion_loss
    calls = {"step": 0}

    def loss(*args, **kwargs):
        value = real_loss(*args, **kwargs)
        if args[0].requires_grad:  # training forward (validation runs under no_grad)
            step = calls["step"]
            calls["step"] += 1
            if steps is None or step in steps:
                return value * float("nan")
        return value

    return loss


def test_nonfinite_step_is_skipped_and_counted(write_stage_config, monkeypatch):
    monkeypatch.setattr(diffusion_stage, "diffusion_loss", nan_loss_at({1}))
    config, run_dir = write_stage_config(max_steps=4, val_every=4)
    assert fit_main(["-c", str(config)]) == 0

    checkpoint = load(run_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 4
    assert checkpoint["cascade_nonfinite"] == {"total": 1, "in_a_row": 0}
    assert all(torch.isfinite(v).all() for v in checkpoint["current_model_state"].values())
    # The bad step updated nothing: AdamW moved every parameter 3 times, not 4.
    assert {float(s["step"]) for s in checkpoint["optimizer_states"][0]["state"].values()} == {3.0}
    counts = series(read_metrics(run_dir), "train/nonfinite_steps")
    assert counts[0] == 0 and counts[3] == 1


def test_resumed_unfused_optimizer_is_fused_again_and_still_skips(write_stage_config, monkeypatch):
    """A checkpoint whose AdamW was not fused (an older run): resuming loads its param-group
    settings, which would switch off fusing and with it the on-device skip."""
    config, run_dir = write_stage_config(max_steps=2, val_every=2)
    assert fit_main(["-c", str(config)]) == 0
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = load(last)
    for group in checkpoint["optimizer_states"][0]["param_groups"]:
        group.update(fused=None, foreach=None)
    torch.save(checkpoint, last)

    monkeypatch.setattr(diffusion_stage, "diffusion_loss", nan_loss_at({0}))  # the first step resumed
    assert fit_main(["-c", str(config), "--trainer.max_steps", "4", "--ckpt_path", str(last)]) == 0
    checkpoint = load(last)
    assert checkpoint["global_step"] == 4
    assert checkpoint["cascade_nonfinite"] == {"total": 1, "in_a_row": 0}
    assert {float(s["step"]) for s in checkpoint["optimizer_states"][0]["state"].values()} == {3.0}
    assert all(group["fused"] for group in checkpoint["optimizer_states"][0]["param_groups"])


def test_consecutive_nonfinite_steps_stop_with_checkpoint(write_stage_config, monkeypatch, capsys):
    monkeypatch.setattr(diffusion_stage, "diffusion_loss", nan_loss_at(set(range(1, 100))))
    config, run_dir = write_stage_config(max_steps=20, val_every=20, max_consecutive_nonfinite=3)
    assert fit_main(["-c", str(config)]) == 1
    assert "3 consecutive optimiser steps had a NaN/inf loss" in capsys.readouterr().err

    checkpoint = load(run_dir / "checkpoints" / "nonfinite-stop.ckpt")
    assert checkpoint["global_step"] == 4  # one good step, then three bad ones
    assert checkpoint["cascade_nonfinite"] == {"total": 3, "in_a_row": 3}
    assert all(torch.isfinite(v).all() for v in checkpoint["current_model_state"].values())


@pytest.mark.slow
def test_validation_loss_falls_on_the_synthetic_dataset(write_stage_config):
    config, run_dir = write_stage_config(max_steps=150, val_every=50)
    assert fit_main(["-c", str(config), "--trainer.limit_val_batches", "2"]) == 0
    val = series(read_metrics(run_dir), "val/loss")
    losses = [val[s] for s in sorted(val)]
    assert losses[-1] < 0.75 * losses[0], losses


@pytest.mark.slow
def test_compiled_unet_trains_and_checkpoints_like_eager(write_stage_config, monkeypatch):
    """compile_unet: the UNet is torch.compile'd in place; training runs through the compiled
    forward and backward and the checkpoint has the eager model's keys, so it loads into an
    uncompiled stage. The compiler here is AOTAutograd without inductor's code generation (what this
    test proves is the stage's wiring; inductor's kernels cost ~7 minutes of C++ compiling on a
    2-core CPU): tests/test_nn_unet.py compiles the UNet with inductor and compares it with eager."""
    compiled: list[dict] = []
    original = torch.nn.Module.compile

    def compile_with_aot_eager(module, *args, **kwargs):
        compiled.append(kwargs)
        return original(module, *args, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(torch.nn.Module, "compile", compile_with_aot_eager)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    config, run_dir = write_stage_config(max_steps=3, val_every=3, compile_unet="default")
    assert fit_main(["-c", str(config)]) == 0
    assert compiled == [{"mode": None, "dynamic": False}]  # compile_static, once, on the stage's UNet
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the steps ran the compiled graph
    checkpoint = load(run_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 3
    assert checkpoint["cascade_stage"]["init_args"]["compile_unet"] == "default"
    assert not any("_orig_mod" in key for key in checkpoint["state_dict"])
    eager_config, _ = write_stage_config(name="eager", max_steps=3, val_every=3)
    eager_keys = set(diffusion_stage_keys(eager_config))
    assert set(checkpoint["state_dict"]) == eager_keys


def diffusion_stage_keys(config: Path) -> list[str]:
    from cascade.bench.stage_inputs import read_stage_config
    from cascade.stages.export import build_stage

    return list(build_stage(read_stage_config(config)).state_dict())


def test_compile_unet_setting_is_checked(write_stage_config, capsys):
    config, _ = write_stage_config(max_steps=1, val_every=1, compile_unet="fastest")
    assert fit_main(["-c", str(config)]) == 2
    assert "compile_unet" in capsys.readouterr().err


def test_a_sigmoid_weighted_stage_trains_on_sigmoid_of_bias_minus_log_snr_times_the_eps_error():
    """`loss_weighting: sigmoid` with `sigmoid_bias` b: the stage's per-sample loss on a v-predicting
    network is sigmoid(b - lambda) (-dlambda/dt) ||eps - eps_hat||^2 (Kingma & Gao 2023), eps_hat the
    network's eps estimate; a bias that is not a finite number is refused naming the key."""
    from cascade.diffusion import eps_from_v, q_sample
    from cascade.stages import BaseStage, Condition, StageConfigError

    unet = {"image_size": 8, "base_channels": 8, "channel_mults": [1], "num_res_blocks": 1,
            "attention_resolutions": [], "norm_groups": 4}  # fmt: skip
    stage = BaseStage(unet=unet, image_size=8, conditioning="none", loss_weighting="sigmoid", sigmoid_bias=-1.0)
    torch.manual_seed(0)
    for parameter in stage.unet.parameters():
        parameter.data.normal_(0, 0.2)
    x0, noise, t = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8), torch.tensor([0.1, 0.4, 0.6, 0.9])
    with torch.no_grad():
        loss = stage.per_sample_loss(x0, t, noise, Condition(), {})
        x_t = q_sample(x0, t, stage.schedule, noise)
        alpha, sigma = stage.schedule.alpha_sigma(t)
        eps_hat = eps_from_v(x_t, stage(x_t, t, Condition()), alpha, sigma)
    log_snr = stage.schedule.log_snr(t)
    expected = torch.sigmoid(-1.0 - log_snr) * -stage.schedule.d_log_snr_dt(t) * (noise - eps_hat).pow(2).mean((1, 2, 3))
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=0)
    for bad in (float("nan"), float("inf"), "high"):
        with pytest.raises(StageConfigError, match="^sigmoid_bias: must be a finite number"):
            BaseStage(unet=unet, image_size=8, conditioning="none", loss_weighting="sigmoid", sigmoid_bias=bad)


def test_a_muon_stage_resumes_its_momentum_and_skips_a_nonfinite_step(write_stage_config, monkeypatch):
    """`optimizer.algorithm: muon`: its momentum buffers are checkpointed and resumed (two steps and
    two more end where four straight end), and a NaN step changes no weight or moment."""
    muon = ["--model.init_args.optimizer.algorithm", "muon"]
    straight, straight_dir = write_stage_config("straight", max_steps=4, val_every=2)
    assert fit_main(["-c", str(straight), *muon]) == 0
    split, split_dir = write_stage_config("split", max_steps=4, val_every=2)
    assert fit_main(["-c", str(split), *muon, "--trainer.max_steps", "2"]) == 0
    first_half = load(split_dir / "checkpoints" / "last.ckpt")["optimizer_states"][0]["state"]
    record = f"--trainer.callbacks+={__name__}.RecordStartMomentum"
    assert fit_main(["-c", str(split), *muon, "--ckpt_path", "last", record]) == 0
    saved = [s["momentum_buffer"] for s in first_half.values() if "momentum_buffer" in s]
    assert len(saved) == len(RecordStartMomentum.buffers) > 0
    assert all(torch.equal(x, y) for x, y in zip(saved, RecordStartMomentum.buffers))
    assert sum(bool(x.any()) for x in saved) >= 10  # not a fresh (zero) buffer
    a, b = load(straight_dir / "checkpoints" / "last.ckpt"), load(split_dir / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 4
    groups = a["optimizer_states"][0]["param_groups"]
    assert [group["muon"] for group in groups] == [True, False, False]
    muon_state = a["optimizer_states"][0]["state"][groups[0]["params"][0]]
    assert set(muon_state) == {"momentum_buffer"}
    assert set(a["optimizer_states"][0]["state"]) == set(b["optimizer_states"][0]["state"])
    # the resumed stream of training images is not the straight run's (as for AdamW, above)
    resumed_rows = read_metrics(split_dir, version=1)
    val_resumed, val_straight = series(resumed_rows, "val/loss")[3], series(read_metrics(straight_dir), "val/loss")[3]
    assert math.isclose(val_resumed, val_straight, rel_tol=0.02)
    assert sorted(series(resumed_rows, "lr-Muon/pg1")) == [2, 3]  # one optimiser, three groups
    assert series(resumed_rows, "lr-Muon/pg1") == series(resumed_rows, "lr-Muon/pg3")

    monkeypatch.setattr(diffusion_stage, "diffusion_loss", nan_loss_at({1}))
    skipped, skipped_dir = write_stage_config("skipped", max_steps=2, val_every=2)
    assert fit_main(["-c", str(skipped), *muon]) == 0
    checkpoint = load(skipped_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["cascade_nonfinite"] == {"total": 1, "in_a_row": 1}
    assert all(torch.isfinite(v).all() for v in checkpoint["current_model_state"].values())
    assert {float(s["step"]) for s in checkpoint["optimizer_states"][0]["state"].values() if "step" in s} == {1.0}


def test_a_training_takes_the_threads_its_grant_file_names_and_ignores_a_bad_one(tmp_path, capsys):
    from types import SimpleNamespace

    from cascade.stages import ThreadGrant

    grant = ThreadGrant(tmp_path / "threads", every_n_steps=5)
    at = lambda step: grant.on_train_batch_start(SimpleNamespace(global_step=step), None, None, 0)  # noqa: E731
    at(0)  # no file yet: unchanged
    assert torch.get_num_threads() == 1
    (tmp_path / "threads").write_text("2\n")
    at(3)  # read every 5 steps only
    assert torch.get_num_threads() == 1
    at(5)
    assert torch.get_num_threads() == 2
    assert f"step 5: 2 torch threads (granted by {tmp_path / 'threads'})" in capsys.readouterr().out
    for bad in ("two", "two", "0"):
        (tmp_path / "threads").write_text(bad)
        at(10)
        assert torch.get_num_threads() == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"ThreadGrant: {tmp_path / 'threads'} holds 'two', not a positive number of threads; ignored",
                     f"ThreadGrant: {tmp_path / 'threads'} holds '0', not a positive number of threads; ignored"]
    with pytest.raises(ValueError, match="every_n_steps must be >= 1"):
        ThreadGrant(tmp_path / "threads", every_n_steps=0)
