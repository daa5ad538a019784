"""Post-hoc EMA (EDM2, Karras et al. 2024, Sec. 3 and App. C): the power-function profile and its
tracking, the closed-form inner products, the least-squares reconstruction from snapshots, the
`PostHocEMA` callback in a real fit with a resume, and `cascade ema reconstruct`."""

from __future__ import annotations

import math
import shutil
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from safetensors.torch import load_file
from scipy.integrate import quad

from cascade.cli import main as cascade_main
from cascade.pipeline import Cascade
from cascade.stages import PostHocEMA
from cascade.stages.posthoc_ema import (
    Snapshot,
    gamma_from_sigma_rel,
    list_snapshots,
    power_ema_beta,
    power_profile_weights,
    profile_inner_products,
    reconstruct,
    sigma_rel_from_gamma,
    snapshot_path,
    solve_posthoc_coefficients,
)


class Weights(torch.nn.Module):
    """A stand-in module: one float parameter vector and an integer buffer (a step counter)."""

    def __init__(self, size: int):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(size))
        self.register_buffer("counter", torch.zeros((), dtype=torch.long))


def random_walk(steps: int, size: int, seed: int = 0) -> torch.Tensor:
    """theta(1..steps): a drifting random walk, like weights in training (float64 rows)."""
    generator = torch.Generator().manual_seed(seed)
    drift = 0.05 * torch.sin(torch.arange(steps, dtype=torch.float64) / 40)[:, None]
    return (0.1 * torch.randn(steps, size, generator=generator, dtype=torch.float64) + drift).cumsum(0)


def track(callback: PostHocEMA, trajectory: torch.Tensor, start: int = 0, stop: int | None = None,
          rank_zero: bool = True) -> None:
    """Run the callback's hooks over optimiser steps start+1..stop of `trajectory` as a fit does
    (one `on_train_start`, then `on_train_batch_end` after each step), on global rank 0 or another."""
    module = Weights(trajectory.shape[1])
    trainer = SimpleNamespace(global_step=start, is_global_zero=rank_zero, default_root_dir="unused: dir is given")
    callback.on_train_start(trainer, module)
    for t in range(start + 1, (stop or len(trajectory)) + 1):
        with torch.no_grad():
            module.theta.copy_(trajectory[t - 1])
            module.counter.fill_(t)
        trainer.global_step = t
        callback.on_train_batch_end(trainer, module, None, None, t - 1)


def test_gamma_and_sigma_rel_round_trip_with_edm2_values():
    # EDM2 training/phema.py std_to_exp: sigma_rel 0.05 -> gamma 16.97, 0.10 -> 6.94 (the longer
    # average has the smaller exponent); a flat profile (gamma 0) has sigma_rel 1/sqrt(12).
    assert gamma_from_sigma_rel(0.05) == pytest.approx(16.9722, abs=1e-4)
    assert gamma_from_sigma_rel(0.10) == pytest.approx(6.9372, abs=1e-4)
    assert sigma_rel_from_gamma(0.0) == pytest.approx(1 / math.sqrt(12), rel=1e-12)
    for gamma in (-0.3, 0.0, 1.0, 6.94, 16.97, 100.0):
        assert gamma_from_sigma_rel(sigma_rel_from_gamma(gamma)) == pytest.approx(gamma, rel=1e-9, abs=1e-9)
    for sigma_rel in (0.01, 0.05, 0.07, 0.1, 0.2, 0.29):
        assert sigma_rel_from_gamma(gamma_from_sigma_rel(sigma_rel)) == pytest.approx(sigma_rel, rel=1e-12)


@pytest.mark.parametrize("sigma_rel", [0.05, 0.1])
def test_sigma_rel_is_the_relative_standard_deviation_of_the_profile(sigma_rel):
    gamma, t = gamma_from_sigma_rel(sigma_rel), 3.0
    density = lambda tau: (gamma + 1) * tau**gamma / t ** (gamma + 1)
    mean = quad(lambda tau: tau * density(tau), 0, t)[0]
    variance = quad(lambda tau: (tau - mean) ** 2 * density(tau), 0, t)[0]
    assert quad(density, 0, t)[0] == pytest.approx(1.0, rel=1e-10)
    assert math.sqrt(variance) / t == pytest.approx(sigma_rel, rel=1e-8)


@pytest.mark.parametrize(("t", "gamma"), [(1, 6.94), (7, 0.0), (50, 6.94), (50, 16.97)])
def test_power_profile_weights_are_the_products_of_the_updates_decays(t, gamma):
    # w_i = (1 - beta(i)) prod_{j > i} beta(j), beta(j) = (1 - 1/j)^(gamma + 1)  (EDM2 Eq. 127)
    betas = [power_ema_beta(j, gamma) for j in range(1, t + 1)]
    expected = [(1 - betas[i - 1]) * math.prod(betas[i:]) for i in range(1, t + 1)]
    np.testing.assert_allclose(power_profile_weights(t, gamma), expected, rtol=1e-10, atol=1e-300)
    assert power_profile_weights(t, gamma).sum() == pytest.approx(1.0, rel=1e-12)
    assert betas[0] == 0.0


def test_tracked_power_ema_equals_the_profile_weighted_average_of_the_trajectory(tmp_path):
    trajectory = random_walk(60, 5)
    callback = PostHocEMA(sigma_rels=(0.05, 0.10, 0.25), dir=str(tmp_path))
    track(callback, trajectory)
    for gamma, profile in zip(callback.gammas, callback.profiles):
        weights = torch.from_numpy(power_profile_weights(60, gamma))
        expected = (weights[:, None] * trajectory).sum(0)
        torch.testing.assert_close(profile["theta"].double(), expected, rtol=1e-5, atol=1e-5)
        assert int(profile["counter"]) == 60  # integer state: copied, not averaged


@pytest.mark.parametrize(("t_a", "gamma_a", "t_b", "gamma_b"),
                         [(10, 6.94, 10, 6.94), (4, 16.97, 10, 6.94), (10, 6.94, 4, 16.97), (3, 0.5, 7, 2.0)])
def test_profile_inner_products_are_the_integral_of_the_product_of_the_profiles(t_a, gamma_a, t_b, gamma_b):
    profile = lambda tau, t, g: (g + 1) * tau**g / t ** (g + 1) if tau < t else 0.0
    integral = quad(lambda tau: profile(tau, t_a, gamma_a) * profile(tau, t_b, gamma_b), 0, min(t_a, t_b),
                    epsabs=0, epsrel=1e-12)[0]
    assert float(profile_inner_products(t_a, gamma_a, t_b, gamma_b)) == pytest.approx(integral, rel=1e-9)


def test_reconstructing_a_tracked_sigma_rel_from_its_own_snapshots_returns_its_weights(tmp_path):
    trajectory = random_walk(100, 16)
    callback = PostHocEMA(sigma_rels=(0.05, 0.10), snapshot_every_n_steps=10, dir=str(tmp_path))
    track(callback, trajectory)
    assert [s.step for s in list_snapshots(tmp_path)] == list(range(10, 101, 10))
    for index, sigma_rel in enumerate((0.05, 0.10)):
        for step in (50, 100):
            tracked = Snapshot.read(snapshot_path(tmp_path, step)).profiles()[index]
            weights = reconstruct(tmp_path, sigma_rel, step=step)
            assert weights.coefficients[(step, sigma_rel)] == pytest.approx(1.0, abs=1e-9)
            torch.testing.assert_close(weights.state_dict["theta"], tracked["theta"], rtol=0, atol=1e-6)
            assert torch.equal(weights.state_dict["counter"], tracked["counter"])


def test_reconstructing_an_intermediate_sigma_rel_matches_a_profile_tracked_at_it(tmp_path):
    steps, every = 400, 20
    trajectory = random_walk(steps, 64)
    snapshots = PostHocEMA(sigma_rels=(0.05, 0.10), snapshot_every_n_steps=every, dir=str(tmp_path))
    direct = PostHocEMA(sigma_rels=(0.07,), snapshot_every_n_steps=steps, dir=str(tmp_path / "direct"))
    track(snapshots, trajectory)
    track(direct, trajectory)
    target = direct.profiles[0]["theta"].double()
    rebuilt = reconstruct(tmp_path, 0.07).state_dict["theta"].double()
    error = (rebuilt - target).abs().max().item()
    nearest = min((profile["theta"].double() - target).abs().max().item() for profile in snapshots.profiles)
    assert error < 1e-3  # measured 2.5e-4 (float32 snapshots); the tracked profiles differ by 0.41 and 0.76
    assert error < nearest / 100
    # The same on the weights over the steps themselves (the trajectory-free statement): total variation.
    inputs = [(t, s) for t in range(every, steps + 1, every) for s in (0.05, 0.10)]
    coefficients = solve_posthoc_coefficients([t for t, _ in inputs], [s for _, s in inputs], [steps], [0.07])[:, 0]

    def profile_weights(t: int, sigma_rel: float) -> np.ndarray:
        return np.pad(power_profile_weights(t, gamma_from_sigma_rel(sigma_rel)), (0, steps - t))

    combined = sum(c * profile_weights(t, s) for c, (t, s) in zip(coefficients, inputs))
    target_weights = profile_weights(steps, 0.07)
    assert np.abs(combined - target_weights).sum() < 0.01  # measured 0.0023
    assert min(np.abs(profile_weights(steps, s) - target_weights).sum() for s in (0.05, 0.10)) > 0.25


def test_a_resumed_callback_writes_the_snapshots_of_an_uninterrupted_one(tmp_path):
    trajectory = random_walk(40, 8)
    straight = PostHocEMA(snapshot_every_n_steps=10, dir=str(tmp_path / "straight"))
    track(straight, trajectory)

    first = PostHocEMA(snapshot_every_n_steps=10, dir=str(tmp_path / "split"))
    track(first, trajectory, stop=25)  # interrupted after step 25, its checkpoint's step
    torch.save({"callback": first.state_dict()}, tmp_path / "last.ckpt")
    # A snapshot the interrupted run wrote after its checkpoint, and a killed write's temporary.
    shutil.copy(snapshot_path(tmp_path / "split", 20), snapshot_path(tmp_path / "split", 50))
    (tmp_path / "split" / ".snapshot-0000030.safetensors.abc123.tmp").write_bytes(b"half")
    resumed = PostHocEMA(snapshot_every_n_steps=10, dir=str(tmp_path / "split"))
    resumed.load_state_dict(torch.load(tmp_path / "last.ckpt", weights_only=True)["callback"])
    track(resumed, trajectory, start=25)

    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == sorted(
        p.name for p in (tmp_path / "straight").iterdir()
    )
    for step in (10, 20, 30, 40):
        a = load_file(snapshot_path(tmp_path / "straight", step))
        b = load_file(snapshot_path(tmp_path / "split", step))
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), step


def test_only_global_rank_zero_writes_snapshots(tmp_path):
    trajectory = random_walk(20, 4)
    other_rank = PostHocEMA(snapshot_every_n_steps=5, dir=str(tmp_path / "rank1"))
    track(other_rank, trajectory, rank_zero=False)
    rank_zero = PostHocEMA(snapshot_every_n_steps=5, dir=str(tmp_path / "rank0"))
    track(rank_zero, trajectory)
    assert not (tmp_path / "rank1").exists()
    assert [s.step for s in list_snapshots(tmp_path / "rank0")] == [5, 10, 15, 20]
    # Every rank still tracks the averages (its checkpoint state is the same as rank 0's).
    assert all(torch.equal(a["theta"], b["theta"]) for a, b in zip(other_rank.profiles, rank_zero.profiles))


def test_a_resume_with_other_profiles_is_refused():
    with pytest.raises(ValueError, match=r"^sigma_rels: \[0.05, 0.07\] differs from the \[0.05, 0.1\]"):
        PostHocEMA(sigma_rels=(0.05, 0.07)).load_state_dict({"step": 3, "sigma_rels": [0.05, 0.1], "profiles": None})


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"sigma_rels": (0.05, 0.4)}, "sigma_rels: 0.4 outside (0, 0.3)"),
        ({"sigma_rels": (0.0,)}, "sigma_rels: 0.0 outside (0, 0.3)"),
        ({"snapshot_every_n_steps": 0}, "snapshot_every_n_steps: 0 is not an integer >= 1"),
    ],
)
def test_bad_callback_values_raise_one_line_naming_the_key(arguments, message):
    with pytest.raises(ValueError) as error:
        PostHocEMA(**arguments)
    assert str(error.value) == message


class RecordSteps(Callback):
    """Keeps the module's live weights after every optimiser step, {step: state}, over a run and
    its resume (added through the CLI)."""

    weights: ClassVar[dict[int, dict[str, torch.Tensor]]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        RecordSteps.weights[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


@pytest.mark.usefixtures("one_torch_thread")
def test_fit_with_posthoc_ema_resumes_and_reconstructs_an_export_that_samples(write_stage_config, tmp_path, capsys):
    config, run_dir = write_stage_config(max_steps=4, val_every=2)
    # sigma_rel 0.25 (gamma 0.27) weighs the first steps enough that a restart of the averages at
    # the resume would show; 0.05 alone would not (the weight of step 1 at step 4 is 1.6e-5).
    section = ["--posthoc_ema.sigma_rels=[0.05, 0.25]", "--posthoc_ema.snapshot_every_n_steps=2",
               f"--trainer.callbacks+={__name__}.RecordSteps"]
    RecordSteps.weights = {}
    assert cascade_main(["fit", "-c", str(config), *section, "--trainer.max_steps", "2"]) == 0
    assert cascade_main(["fit", "-c", str(config), *section, "--ckpt_path", "last"]) == 0

    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["callbacks"]["PostHocEMA"]["step"] == 4
    snapshots = list_snapshots(run_dir)
    assert [s.step for s in snapshots] == [2, 4] and snapshots[0].path.parent == run_dir / "posthoc_ema"
    assert snapshots[-1].stage_config == checkpoint["cascade_stage"]
    # Each snapshot is the profile-weighted average of the live weights after steps 1..t, the
    # steps after the resume included: the resumed run continued the same averages.
    assert sorted(RecordSteps.weights) == [1, 2, 3, 4]
    for snapshot in snapshots:
        for sigma_rel, profile in zip(snapshot.sigma_rels, snapshot.profiles()):
            w = power_profile_weights(snapshot.step, gamma_from_sigma_rel(sigma_rel))
            for name, value in profile.items():
                if value.is_floating_point():
                    expected = sum(float(w[i - 1]) * RecordSteps.weights[i][name].double()
                                   for i in range(1, snapshot.step + 1))
                    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)

    out = tmp_path / "phema"
    assert cascade_main(["ema", "reconstruct", str(run_dir), "--sigma-rel", "0.05,0.07", "--out", str(out)]) == 0
    exact = load_file(out / "sigma_rel-0.050" / "model.safetensors")
    tracked = snapshots[-1].profiles()[0]
    for name, value in exact.items():  # the tracked sigma_rel comes back as its own profile
        torch.testing.assert_close(value, tracked[f"unet.{name}"], rtol=0, atol=1e-6)

    export = tmp_path / "export-0.07"
    assert cascade_main(["ema", "reconstruct", str(run_dir / "posthoc_ema"), "--sigma-rel", "0.07",
                         "--step", "4", "--out", str(export)]) == 0
    rebuilt = reconstruct(run_dir, 0.07).state_dict
    saved = load_file(export / "model.safetensors")
    assert all(torch.equal(saved[name], rebuilt[f"unet.{name}"]) for name in saved)
    cascade = Cascade.from_paths([export])
    images = cascade.with_settings([cascade.settings[0].updated(steps=2)]).generate([0, 1], class_labels=[0, 4])[0]
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    assert images.abs().max() <= 1.0


def test_reconstruct_command_names_the_flag_of_a_bad_value(tmp_path, capsys):
    track(PostHocEMA(snapshot_every_n_steps=5, dir=str(tmp_path)), random_walk(10, 4))
    for arguments, line in [
        (["--sigma-rel", "0.4"], "--sigma-rel: 0.4 outside (0, 0.3)"),
        (["--sigma-rel", "0.05,abc"], "--sigma-rel: 'abc' is not a number"),
        (["--sigma-rel", "0.07", "--step", "7"], f"--step: no snapshot at step 7 in {tmp_path} (snapshots at [5, 10])"),
    ]:
        assert cascade_main(["ema", "reconstruct", str(tmp_path), *arguments, "--out", str(tmp_path / "x")]) == 2
        assert capsys.readouterr().err.splitlines() == [f"cascade ema reconstruct: {line}"]
    assert not (tmp_path / "x").exists()


@pytest.mark.usefixtures("one_torch_thread")
def test_fit_names_the_posthoc_ema_key_of_a_bad_value(write_stage_config, capsys):
    config, run_dir = write_stage_config(max_steps=2)
    assert cascade_main(["fit", "-c", str(config), "--posthoc_ema.sigma_rels=[0.05, 0.4]"]) == 2
    error = capsys.readouterr().err.splitlines()
    assert error == ["cascade fit: config error: posthoc_ema.sigma_rels: 0.4 outside (0, 0.3)"]
    assert not (run_dir / "checkpoints").exists()
