"""Schedules, parameterisations, the loss and guidance helpers."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade.diffusion import (
    SIGMOID_BIAS,
    WEIGHTINGS,
    NoiseSchedule,
    cfg_combine,
    diffusion_loss,
    dynamic_threshold,
    eps_from_v,
    eps_from_x0,
    in_guidance_interval,
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
    NoiseSchedule.interpolated_cosine(32 / 512, 256 / 512),
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


def test_interpolated_cosine_moves_from_the_high_to_the_low_resolution_shift():
    """simple diffusion's interpolated schedule: t lambda_shifted(t; low) + (1 - t) lambda_shifted(t; high)."""
    t = torch.linspace(0.0, 1.0, 21)
    low, high = NoiseSchedule.shifted_cosine(32 / 512), NoiseSchedule.shifted_cosine(256 / 512)
    interpolated = NoiseSchedule.from_config("interpolated_cosine", shift_low=32 / 512, shift_high=256 / 512)
    torch.testing.assert_close(interpolated.log_snr(t), t * low.log_snr(t) + (1 - t) * high.log_snr(t))
    with pytest.raises(ValueError, match="shift_low <= shift_high"):
        NoiseSchedule.interpolated_cosine(0.5, 0.25)


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
        (lambda: NoiseSchedule.interpolated_cosine(0.0, 0.5), "shift_low"),
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


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_d_log_snr_dt_matches_central_finite_differences(schedule):
    """The closed forms (cosine, shifted and interpolated cosine, linear) against
    (lambda(t + h) - lambda(t - h)) / 2h, in float64 through the schedule's lambda(t)."""
    if schedule.name == "linear":  # midpoints of the DDPM segments: lambda(t) is smooth there
        steps = schedule.params["num_steps"]
        t = (torch.arange(0, steps, max(1, steps // 40)) + 0.5) / steps
        h = 1e-3 / steps  # lambda ~ -log(t) near t = 0: a small step keeps the O(h^2) error down
    else:
        t, h = torch.linspace(0.02, 0.98, 49), 1e-4
    t64 = t.double()
    central = (schedule._log_snr_fn(t64 + h) - schedule._log_snr_fn(t64 - h)) / (2 * h)
    slope = schedule.d_log_snr_dt(t)
    assert slope.dtype == torch.float32 and (slope < 0).all()
    torch.testing.assert_close(slope.double(), central, rtol=1e-4, atol=0)


@pytest.mark.parametrize("schedule", [*SCHEDULES, NoiseSchedule(lambda t: 4.0 - 8.0 * t**2, "bare", {})], ids=repr)
def test_d_log_snr_dt_works_under_inference_mode_as_in_lightning_validation(schedule):
    t = torch.linspace(0.1, 0.9, 9)
    expected = schedule.d_log_snr_dt(t)
    with torch.inference_mode():
        torch.testing.assert_close(schedule.d_log_snr_dt(torch.linspace(0.1, 0.9, 9)), expected)
    if schedule.name == "bare":  # autograd through a bare lambda(t): d/dt (4 - 8 t^2) = -16 t
        torch.testing.assert_close(expected, -16.0 * t)


def test_d_log_snr_dt_of_the_cosine_schedule_is_its_closed_form():
    """lambda = -2 log tan(pi t / 2) untruncated: d lambda/dt = -2 pi / sin(pi t)."""
    schedule = NoiseSchedule.cosine(-40.0, 40.0)  # truncation at |lambda| = 40: the angle map is ~identity
    t = torch.linspace(0.05, 0.95, 19)
    torch.testing.assert_close(schedule.d_log_snr_dt(t), -2 * math.pi / torch.sin(math.pi * t), rtol=1e-5, atol=0)


def test_sigmoid_weight_is_its_formula_on_each_target():
    """Kingma & Gao 2023 / SiD2 eq. 4: w_eps = sigmoid(b - lambda)(-dlambda/dt); the same loss on v
    and x0 is w_eps alpha^2 and w_eps SNR (SiD2 writes the x0 one as sigmoid(lambda - b) e^b)."""
    schedule = NoiseSchedule.cosine()
    t = torch.linspace(0.01, 0.99, 50)
    log_snr, slope = schedule.log_snr(t), schedule.d_log_snr_dt(t)
    for bias in (SIGMOID_BIAS, 0.0, 2.0):
        w_eps = torch.sigmoid(bias - log_snr) * -slope
        torch.testing.assert_close(loss_weight(log_snr, "eps", "sigmoid", sigmoid_bias=bias, d_log_snr_dt=slope), w_eps)
        torch.testing.assert_close(loss_weight(log_snr, "v", "sigmoid", sigmoid_bias=bias, d_log_snr_dt=slope),
                                   w_eps * torch.sigmoid(log_snr))
        torch.testing.assert_close(loss_weight(log_snr, "x0", "sigmoid", sigmoid_bias=bias, d_log_snr_dt=slope),
                                   w_eps * log_snr.exp(), rtol=1e-5, atol=0)
        torch.testing.assert_close(loss_weight(log_snr, "x0", "sigmoid", sigmoid_bias=bias, d_log_snr_dt=slope),
                                   torch.sigmoid(log_snr - bias) * math.exp(bias) * -slope)
    with pytest.raises(ValueError, match="d_log_snr_dt"):
        loss_weight(log_snr, "eps", "sigmoid")
    assert SIGMOID_BIAS == -3.0


@pytest.mark.parametrize("schedule", [NoiseSchedule.cosine(), NoiseSchedule.shifted_cosine(0.25),
                                      NoiseSchedule.linear(1e-4, 0.02, 1000)], ids=repr)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_the_weighted_loss_is_the_same_through_target_eps_v_and_x0(schedule, weighting):
    """One x_t, one noise and one arbitrary network estimate x0_hat, expressed as the eps, v and x0
    outputs it corresponds to: every weighting gives one loss whatever the target (catches a wrong
    per-target conversion: eps - eps_hat = alpha (v - v_hat) = -(alpha/sigma)(x0 - x0_hat))."""
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(12, 3, 4, 4, generator=generator), torch.randn(12, 3, 4, 4, generator=generator)
    x0_hat = x0 + 0.3 * torch.randn(12, 3, 4, 4, generator=generator)
    t = torch.linspace(0.08, 0.92, 12)
    alpha, sigma = schedule.alpha_sigma(t)
    x_t = q_sample(x0, t, schedule, eps)
    eps_hat = eps_from_x0(x_t, x0_hat, alpha, sigma)
    outputs = {"eps": eps_hat, "v": v_from_x0_eps(x0_hat, eps_hat, alpha, sigma), "x0": x0_hat}
    losses = {target: diffusion_loss(output, x0, eps, t, schedule, target, weighting, gamma=5.0)
              for target, output in outputs.items()}
    if weighting == "uniform":  # uniform is the plain MSE on each target: equal only in x0 units
        snr = schedule.log_snr(t).exp()
        losses = {"eps": losses["eps"] / snr, "v": losses["v"] / (snr + 1), "x0": losses["x0"]}
    torch.testing.assert_close(losses["eps"], losses["x0"], rtol=2e-4, atol=0)
    torch.testing.assert_close(losses["v"], losses["x0"], rtol=2e-4, atol=0)


@pytest.mark.parametrize("schedule", [NoiseSchedule.cosine(-10.0, 10.0), NoiseSchedule.shifted_cosine(0.25, -10.0, 10.0),
                                      NoiseSchedule.linear(1e-4, 0.02, 1000)], ids=repr)
def test_the_sigmoid_weight_over_t_integrates_to_the_integral_over_log_snr(schedule):
    """With -d lambda/dt in the weight, E_{t~U(0,1)}[w_eps(t)] = int_{lambda(1)}^{lambda(0)} sigmoid(b - lambda) d lambda
    = softplus(b - lambda(1)) - softplus(b - lambda(0)) whatever the schedule (Kingma & Gao 2023, eq. 8):
    the schedule only decides where lambda is sampled. Midpoint rule on 200k points of t."""
    t = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000
    log_snr = schedule.log_snr(t.float())
    weight = loss_weight(log_snr, "eps", "sigmoid", sigmoid_bias=-1.0, d_log_snr_dt=schedule.d_log_snr_dt(t.float()))
    low, high = schedule.log_snr(torch.tensor([1.0, 0.0])).double()
    expected = torch.nn.functional.softplus(-1.0 - low) - torch.nn.functional.softplus(-1.0 - high)
    torch.testing.assert_close(weight.double().mean(), expected, rtol=2e-3, atol=0)
    # and the weight is a density over lambda: weight / (-d lambda/dt) is sigmoid(b - lambda) itself
    torch.testing.assert_close(weight / -schedule.d_log_snr_dt(t.float()), torch.sigmoid(-1.0 - log_snr))


def test_guidance_interval_selects_the_rows_whose_log_snr_lies_in_it():
    log_snr = torch.tensor([-3.0, -2.0, 0.0, 2.5, 2.6])
    assert in_guidance_interval(log_snr, (-2.0, 2.5)).tolist() == [False, True, True, True, False]
    assert in_guidance_interval(log_snr, None).all()
    # Kynkaenniemi et al. state it in EDM's sigma = sigma_t / alpha_t: lambda = -2 log sigma
    sigma_lo, sigma_hi = 0.28, 2.9
    inside = in_guidance_interval(torch.tensor([-2 * math.log(s) for s in (0.2, 0.3, 2.8, 3.0)]),
                                  (-2 * math.log(sigma_hi), -2 * math.log(sigma_lo)))
    assert inside.tolist() == [False, True, True, False]


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
