"""Schedules, parameterisations, the loss and guidance helpers."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade.diffusion import (
    NoiseSchedule,
    cfg_combine,
    diffusion_loss,
    dynamic_threshold,
    eps_from_v,
    eps_from_x0,
    loss_weight,
    predicted_x0,
    q_sample,
    static_threshold,
    training_target,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)

SCHEDULES = [
    NoiseSchedule.cosine(),
    NoiseSchedule.shifted_cosine(0.25),
    NoiseSchedule.shifted_cosine(2.0),
    NoiseSchedule.linear(1e-4, 0.02, 1000),
    NoiseSchedule.linear(0.1, 0.8, 10),
]
GRID = torch.linspace(0, 1, 2001)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_alpha_squared_plus_sigma_squared_is_one(schedule):
    alpha, sigma = schedule.alpha_sigma(GRID)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(GRID), atol=1e-6, rtol=0)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_log_snr_strictly_decreasing(schedule):
    log_snr = schedule.log_snr(GRID)
    assert (log_snr[1:] < log_snr[:-1]).all()


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_endpoints_are_clean_data_and_pure_noise(schedule):
    alpha, sigma = schedule.alpha_sigma(torch.tensor([0.0, 1.0]))
    assert alpha[0] > 0.999 and sigma[0] < 1e-3
    assert alpha[1] < 0.05 and sigma[1] > 0.998


def test_cosine_matches_its_definition_inside_the_truncation():
    t = torch.linspace(0.05, 0.95, 19)
    alpha = NoiseSchedule.cosine().alpha(t)
    torch.testing.assert_close(alpha, torch.cos(math.pi * t / 2), atol=1e-4, rtol=0)


def test_shifted_cosine_adds_two_log_shift():
    t = torch.linspace(0.1, 0.9, 9)
    shifted = NoiseSchedule.shifted_cosine(0.25).log_snr(t)
    torch.testing.assert_close(shifted, NoiseSchedule.cosine().log_snr(t) + 2 * math.log(0.25))


def test_linear_schedule_hits_the_ddpm_alpha_bars_at_the_knots():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, 1001, dtype=torch.float32) / 1000
    alpha = NoiseSchedule.linear(1e-4, 0.02, 1000).alpha(t)
    torch.testing.assert_close(alpha.double() ** 2, alpha_bar, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("bad", [torch.tensor([-0.1]), torch.tensor([1.5]), torch.tensor([float("nan")])])
def test_time_outside_unit_interval_raises_naming_t(bad):
    with pytest.raises(ValueError, match=r"\bt\b"):
        NoiseSchedule.cosine().log_snr(bad)


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: NoiseSchedule.shifted_cosine(0.0), "shift"),
        (lambda: NoiseSchedule.linear(0.02, 1e-4, 1000), "beta_start"),
        (lambda: NoiseSchedule.linear(1e-4, 0.02, 0), "num_steps"),
        (lambda: NoiseSchedule.cosine(5.0, -5.0), "log_snr_min"),
        (lambda: NoiseSchedule.from_config("sigmoid"), "schedule name"),
    ],
)
def test_bad_schedule_arguments_name_the_argument(build, name):
    with pytest.raises(ValueError, match=name):
        build()


finite = st.floats(-3, 3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(x0=st.lists(finite, min_size=4, max_size=4), eps=st.lists(finite, min_size=4, max_size=4),
       t=st.floats(0.02, 0.98))
def test_parameterisations_round_trip(x0, eps, t):
    x0, eps = torch.tensor([x0]), torch.tensor([eps])
    schedule = NoiseSchedule.cosine()
    alpha, sigma = schedule.alpha_sigma(torch.tensor([t]))
    x_t = q_sample(x0, torch.tensor([t]), schedule, eps)
    v = v_from_x0_eps(x0, eps, alpha, sigma)
    torch.testing.assert_close(x0_from_eps(x_t, eps, alpha, sigma), x0, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(eps_from_x0(x_t, x0, alpha, sigma), eps, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(x0_from_v(x_t, v, alpha, sigma), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eps_from_v(x_t, v, alpha, sigma), eps, atol=1e-4, rtol=1e-4)
    for target in ("eps", "v", "x0"):
        prediction = training_target(x0, eps, alpha, sigma, target)
        torch.testing.assert_close(predicted_x0(prediction, x_t, torch.tensor([t]), schedule, target), x0,
                                   atol=1e-3, rtol=1e-3)


def test_perfect_prediction_has_zero_loss_and_errors_are_weighted():
    schedule = NoiseSchedule.cosine()
    x0, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0.1, 0.3, 0.6, 0.9])
    alpha, sigma = schedule.alpha_sigma(t)
    for target in ("eps", "v", "x0"):
        perfect = training_target(x0, eps, alpha, sigma, target)
        assert diffusion_loss(perfect, x0, eps, t, schedule, target).abs().max() < 1e-10
        off_by_one = perfect + 1
        uniform = diffusion_loss(off_by_one, x0, eps, t, schedule, target, "uniform")
        torch.testing.assert_close(uniform, torch.ones(4))
        weighted = diffusion_loss(off_by_one, x0, eps, t, schedule, target, "min_snr", gamma=5.0)
        torch.testing.assert_close(weighted, loss_weight(schedule.log_snr(t), target, "min_snr", 5.0))


def test_min_snr_weight_is_min_snr_gamma_in_x0_space():
    """Hang et al. 2023: the weight in x0-MSE units is min(SNR, gamma) for every target."""
    log_snr = torch.linspace(-6, 6, 25)
    snr = log_snr.exp()
    expected = snr.clamp(max=5.0)
    # x0-MSE = eps-MSE / SNR = v-MSE / (SNR + 1): convert each target's weight back to x0 units.
    torch.testing.assert_close(loss_weight(log_snr, "x0", "min_snr"), expected)
    torch.testing.assert_close(loss_weight(log_snr, "eps", "min_snr") * snr, expected)
    torch.testing.assert_close(loss_weight(log_snr, "v", "min_snr") * (snr + 1), expected)


def test_unknown_target_and_weighting_are_named():
    with pytest.raises(ValueError, match="target"):
        loss_weight(torch.zeros(2), "score", "uniform")
    with pytest.raises(ValueError, match="weighting"):
        loss_weight(torch.zeros(2), "eps", "p2")


def test_cfg_scale_one_is_conditional_and_zero_is_unconditional():
    cond, uncond = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(cfg_combine(cond, uncond, 1.0), cond)
    torch.testing.assert_close(cfg_combine(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(cfg_combine(cond, uncond, 3.0), uncond + 3 * (cond - uncond))


def test_dynamic_threshold_matches_its_definition_on_hand_made_input():
    # Sample 0: |x| quantile 0.5 of {0.5, 1, 2, 4} is 1.5 -> clip to [-1.5, 1.5] and divide by 1.5.
    # Sample 1: everything inside [-1, 1] -> s clamps to 1 -> unchanged.
    x = torch.tensor([[0.5, -1.0, 2.0, -4.0], [0.1, -0.2, 0.3, 0.9]])
    out = dynamic_threshold(x, percentile=0.5)
    torch.testing.assert_close(out[0], torch.tensor([0.5, -1.0, 1.5, -1.5]) / 1.5)
    torch.testing.assert_close(out[1], x[1])
    assert static_threshold(x).abs().max() <= 1.0
    with pytest.raises(ValueError, match="percentile"):
        dynamic_threshold(x, percentile=1.5)
