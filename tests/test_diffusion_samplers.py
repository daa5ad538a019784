"""Samplers checked against the closed-form optimal denoiser for Gaussian data (no training)."""

import math

import pytest
import torch

from cascade.diffusion import NoiseSchedule, sample
from cascade.diffusion.gaussian import gaussian_denoiser

MU, S = 0.5, 0.3
N = 100_000  # scalar samples: standard error of the mean ~0.001, of the std ~0.0007
MEAN_TOLERANCE = 0.005
STD_TOLERANCE = 0.01
# The step count at which each sampler reaches the tolerance on every schedule.
STEPS = {"ddpm": 1000, "ddim": 200, "dpmpp_2m": 50}
SCHEDULES = {
    "cosine": NoiseSchedule.cosine,
    "shifted_cosine": lambda: NoiseSchedule.shifted_cosine(0.5),
    "linear": lambda: NoiseSchedule.linear(1e-4, 0.02, 1000),
}


def draw(sampler, schedule, steps, seed=0, n=N, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    return sample(
        gaussian_denoiser(schedule, MU, S), schedule, (n, 1), sampler=sampler, steps=steps,
        generator=generator, **kwargs,
    )


@pytest.mark.parametrize("schedule_name", sorted(SCHEDULES))
@pytest.mark.parametrize("sampler", sorted(STEPS))
def test_sampler_recovers_gaussian_moments(sampler, schedule_name):
    x = draw(sampler, SCHEDULES[schedule_name](), STEPS[sampler])
    assert abs(x.mean().item() - MU) < MEAN_TOLERANCE
    assert abs(x.std().item() - S) < STD_TOLERANCE


def test_second_order_solver_beats_first_order_at_equal_steps():
    schedule = NoiseSchedule.cosine()
    ddim_error = abs(draw("ddim", schedule, 25).std().item() - S)
    dpm_error = abs(draw("dpmpp_2m", schedule, 25).std().item() - S)
    assert dpm_error < ddim_error / 4


def test_errors_shrink_with_more_steps():
    schedule = NoiseSchedule.linear()
    for sampler in ("ddim", "dpmpp_2m"):
        errors = [abs(draw(sampler, schedule, steps).std().item() - S) for steps in (10, 20, 40)]
        assert errors[0] > errors[1] > errors[2], (sampler, errors)


def test_ddpm_on_linear_schedule_is_exactly_textbook_ddpm():
    """With steps = num_steps, 'ddpm' on the linear schedule is Ho et al. 2020, Alg. 2 with the
    posterior variance beta_tilde (eq. 7), step for step and noise draw for noise draw."""
    num_steps, n = 50, 64
    schedule = NoiseSchedule.linear(1e-4, 0.2, num_steps)
    denoise = gaussian_denoiser(schedule, MU, S)
    ours = draw("ddpm", schedule, num_steps, seed=3, n=n).double()

    betas = torch.linspace(1e-4, 0.2, num_steps, dtype=torch.float64)
    alphas = 1 - betas
    alpha_bars = torch.cumprod(alphas, 0)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn((n, 1), generator=generator)
    for i in reversed(range(num_steps)):  # i is the 0-based index of DDPM step t = i + 1
        t = torch.full((n,), (i + 1) / num_steps)
        x0 = denoise(x, t).double()
        ab, ab_prev = alpha_bars[i], (alpha_bars[i - 1] if i > 0 else torch.tensor(1.0, dtype=torch.float64))
        mean = (ab_prev.sqrt() * betas[i] / (1 - ab)) * x0 + (alphas[i].sqrt() * (1 - ab_prev) / (1 - ab)) * x.double()
        if i > 0:
            variance = (1 - ab_prev) / (1 - ab) * betas[i]
            mean = mean + variance.sqrt() * torch.randn((n, 1), generator=generator).double()
        x = mean.float()
    torch.testing.assert_close(ours.float(), x, atol=2e-4, rtol=1e-4)


def test_ddim_eta_zero_is_deterministic_and_eta_one_is_not():
    schedule = NoiseSchedule.cosine()
    x_T = torch.randn(256, 1, generator=torch.Generator().manual_seed(1))
    denoise = gaussian_denoiser(schedule, MU, S)
    first = sample(denoise, schedule, (256, 1), "ddim", 20, generator=torch.Generator().manual_seed(5), x_T=x_T)
    second = sample(denoise, schedule, (256, 1), "ddim", 20, generator=torch.Generator().manual_seed(6), x_T=x_T)
    assert torch.equal(first, second)
    noisy_a = sample(denoise, schedule, (256, 1), "ddim", 20, torch.Generator().manual_seed(5), eta=1.0, x_T=x_T)
    noisy_b = sample(denoise, schedule, (256, 1), "ddim", 20, torch.Generator().manual_seed(6), eta=1.0, x_T=x_T)
    assert not torch.equal(noisy_a, noisy_b)


def test_ddim_eta_one_equals_ddpm():
    schedule = NoiseSchedule.cosine()
    a = draw("ddim", schedule, 30, seed=2, n=128, eta=1.0)
    b = draw("ddpm", schedule, 30, seed=2, n=128)
    torch.testing.assert_close(a, b)


def test_same_generator_seed_reproduces_samples():
    schedule = NoiseSchedule.cosine()
    for sampler in STEPS:
        torch.testing.assert_close(draw(sampler, schedule, 10, seed=9, n=64), draw(sampler, schedule, 10, seed=9, n=64))


def test_denoiser_receives_batch_of_times_in_unit_interval_and_the_callback_each_step():
    seen = []

    def denoise(x_t, t):
        seen.append(t.clone())
        return torch.zeros_like(x_t)

    steps_done = []
    sample(denoise, NoiseSchedule.cosine(), (3, 2, 4, 4), "dpmpp_2m", steps=7,
           callback=lambda done, total: steps_done.append((done, total, len(seen))))
    assert len(seen) == 7
    assert steps_done == [(i, 7, i) for i in range(1, 8)]  # told after each step, never before its denoiser call
    for t in seen:
        assert t.shape == (3,) and t.dtype == torch.float32
        assert 0 <= t.min() and t.max() <= 1
    assert math.isclose(seen[0][0].item(), 1.0)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"sampler": "euler"}, "sampler"),
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"eta": -1.0}, "eta"),
        ({"sampler": "dpmpp_2m", "eta": 0.5}, "eta"),
        ({"x_T": torch.full((2, 1), float("nan"))}, "x_T"),
        ({"x_T": torch.zeros(3, 1)}, "x_T"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs, name):
    schedule = NoiseSchedule.cosine()
    arguments = {"sampler": "ddim", "steps": 5, **kwargs}
    with pytest.raises(ValueError, match=name):
        sample(gaussian_denoiser(schedule, MU, S), schedule, (2, 1), **arguments)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_per_row_generators_make_each_row_independent_of_its_batch(sampler):
    schedule = NoiseSchedule.cosine()
    denoise = gaussian_denoiser(schedule, MU, S)

    def rows(seeds):
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        return sample(denoise, schedule, (len(seeds), 2, 3), sampler, 8, generators, eta=0.5 if sampler == "ddim" else 0.0)

    together = rows([11, 12, 13])
    torch.testing.assert_close(rows([12])[0], together[1])
    torch.testing.assert_close(rows([13, 11])[1], together[0])
    with pytest.raises(ValueError, match="generator"):
        sample(denoise, schedule, (2, 1), sampler, 3, [torch.Generator()])
