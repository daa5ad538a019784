"""Samplers checked against the closed-form optimal denoiser for Gaussian data (no training)."""

import math

import pytest
import torch

from cascade.diffusion import (
    DEFAULT_GRIDS,
    GRIDS,
    SAMPLERS,
    NoiseSchedule,
    function_evaluations,
    sample,
    time_grid,
)
from cascade.diffusion.gaussian import gaussian_denoiser, gaussian_mixture_denoiser
from cascade.diffusion.grid_study import format_table, grid_error_table, mean_errors
from cascade.diffusion.grids import KARRAS_RHO, grid_t_min

MU, S = 0.5, 0.3
N = 100_000  # scalar samples: standard error of the mean ~0.001, of the std ~0.0007
MEAN_TOLERANCE = 0.005
STD_TOLERANCE = 0.01
# The step count at which each sampler reaches the tolerance on every schedule.
STEPS = {"ddpm": 1000, "ddim": 200, "dpmpp_2m": 50, "heun": 50, "dpmpp_3m_sde": 100}
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
    ours = draw("ddpm", schedule, num_steps, seed=3, n=n, grid="uniform_t").double()

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
        ({"grid": "cosine"}, "grid"),
        ({"grid": 7}, "grid"),
        ({"sampler": "heun", "churn": -1.0}, "churn"),
        ({"sampler": "heun", "churn": float("nan")}, "churn"),
        ({"sampler": "ddim", "churn": 1.0}, "churn"),
        ({"sampler": "heun", "churn": 1.0, "churn_noise": -1.0}, "churn_noise"),
        ({"sampler": "heun", "churn_sigma_min": 2.0, "churn_sigma_max": 1.0}, "churn_sigma_min"),
        ({"sampler": "heun", "eta": 0.5}, "eta"),
        ({"sampler": "dpmpp_3m_sde", "eta": -0.5}, "eta"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs, name):
    schedule = NoiseSchedule.cosine()
    arguments = {"sampler": "ddim", "steps": 5, **kwargs}
    with pytest.raises(ValueError, match=name):
        sample(gaussian_denoiser(schedule, MU, S), schedule, (2, 1), **arguments)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "heun", "dpmpp_3m_sde"])
def test_per_row_generators_make_each_row_independent_of_its_batch(sampler):
    schedule = NoiseSchedule.cosine()
    denoise = gaussian_denoiser(schedule, MU, S)
    stochasticity = {"ddim": {"eta": 0.5}, "heun": {"churn": 4.0}, "dpmpp_3m_sde": {"eta": 1.0}}.get(sampler, {})

    def rows(seeds):
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        return sample(denoise, schedule, (len(seeds), 2, 3), sampler, 8, generators, **stochasticity)

    together = rows([11, 12, 13])
    torch.testing.assert_close(rows([12])[0], together[1])
    torch.testing.assert_close(rows([13, 11])[1], together[0])
    with pytest.raises(ValueError, match="generator"):
        sample(denoise, schedule, (2, 1), sampler, 3, [torch.Generator()])


# --- time grids ---------------------------------------------------------------------------


@pytest.mark.parametrize("schedule_name", sorted(SCHEDULES))
def test_t_from_log_snr_inverts_the_schedule_to_float64_resolution(schedule_name):
    schedule = SCHEDULES[schedule_name]()
    t = torch.rand(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    recovered = schedule.t_from_log_snr(schedule.log_snr_float64(t))
    torch.testing.assert_close(recovered, t, atol=1e-12, rtol=0)


def test_t_from_log_snr_on_cosine_is_the_closed_form_arctangent():
    """lambda = -2 log tan(t_min + t (t_max - t_min))  <=>  t = (atan(exp(-lambda / 2)) - t_min) / (t_max - t_min)."""
    schedule = NoiseSchedule.cosine()
    log_snr = torch.linspace(-19.9, 19.9, 101, dtype=torch.float64)
    t_min, t_max = math.atan(math.exp(-10.0)), math.atan(math.exp(10.0))
    expected = (torch.atan(torch.exp(-0.5 * log_snr)) - t_min) / (t_max - t_min)
    torch.testing.assert_close(schedule.t_from_log_snr(log_snr), expected, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="log_snr"):
        schedule.t_from_log_snr(torch.tensor([25.0]))


@pytest.mark.parametrize("schedule_name", sorted(SCHEDULES))
@pytest.mark.parametrize("steps", [1, 2, 10, 25])
def test_time_grids_follow_their_spacing_from_one_to_exactly_zero(schedule_name, steps):
    schedule = SCHEDULES[schedule_name]()
    lambda_1, lambda_min = schedule.log_snr_float64(torch.tensor([1.0, grid_t_min(schedule)]))
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    for grid in GRIDS:
        times = time_grid(schedule, steps, grid)
        assert times.shape == (steps + 1,) and times[0] == 1.0 and times[-1] == 0.0
        assert (times[1:] < times[:-1]).all()
    torch.testing.assert_close(time_grid(schedule, steps, "uniform_t"), torch.linspace(1, 0, steps + 1, dtype=torch.float64))
    log_snr_grid = schedule.log_snr_float64(time_grid(schedule, steps, "log_snr")[:-1])
    torch.testing.assert_close(log_snr_grid, lambda_1 + ramp * (lambda_min - lambda_1), atol=1e-9, rtol=0)
    # Karras et al. 2022, eq. 5 in sigma = exp(-lambda / 2), rho = 7.
    sigma_max, sigma_min = math.exp(-0.5 * lambda_1), math.exp(-0.5 * lambda_min)
    rho = KARRAS_RHO
    expected = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    karras = torch.exp(-0.5 * schedule.log_snr_float64(time_grid(schedule, steps, "karras")[:-1]))
    torch.testing.assert_close(karras, expected, rtol=1e-9, atol=0)


def test_bad_grid_and_steps_of_time_grid_are_named():
    with pytest.raises(ValueError, match="grid"):
        time_grid(NoiseSchedule.cosine(), 10, "edm")
    with pytest.raises(ValueError, match="steps"):
        time_grid(NoiseSchedule.cosine(), 0, "karras")


def test_function_evaluations_count_the_denoiser_calls():
    schedule = NoiseSchedule.cosine()
    for sampler in SAMPLERS:
        for steps in (1, 2, 7):
            calls = []

            def denoise(x_t, t, calls=calls):
                calls.append(t)
                return torch.zeros_like(x_t)

            sample(denoise, schedule, (2, 1), sampler, steps)
            assert len(calls) == function_evaluations(sampler, steps), (sampler, steps)
    assert function_evaluations("heun", 10) == 19 and function_evaluations("dpmpp_2m", 10) == 10
    with pytest.raises(ValueError, match="sampler"):
        function_evaluations("euler", 10)


# --- closed-form errors of every sampler x grid ---------------------------------------------


def output_moments(sampler, schedule, steps, grid, n=40_000, **kwargs):
    """Mean and std of the sampler's output for data N(MU, S^2) with the exact denoiser: exact for
    the deterministic samplers (an affine map x_T -> a x_T + b: mean b, std |a|), Monte Carlo
    (n draws, std error of the std ~S / sqrt(2 n)) for the stochastic ones."""
    denoise = gaussian_denoiser(schedule, MU, S)
    if sampler in ("ddpm", "dpmpp_3m_sde") or kwargs.get("churn"):
        x = sample(denoise, schedule, (n, 1), sampler, steps, torch.Generator().manual_seed(0), grid=grid, **kwargs)
        return x.double().mean().item(), x.double().std().item()
    x = sample(denoise, schedule, (2, 1), sampler, steps, x_T=torch.tensor([[0.0], [1.0]], dtype=torch.float64),
               grid=grid, **kwargs)  # fmt: skip
    return x[0, 0].item(), abs((x[1, 0] - x[0, 0]).item())


@pytest.mark.parametrize("schedule_name", ["cosine", "linear"])
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_on_every_grid_converges_to_the_gaussian_moments(sampler, grid, schedule_name):
    schedule = SCHEDULES[schedule_name]()
    few, many = (100, 1000) if sampler in ("ddpm", "ddim") else (25, 200)  # first order: 1000 steps for 2%
    _, std_few = output_moments(sampler, schedule, few, grid)
    mean_many, std_many = output_moments(sampler, schedule, many, grid)
    assert abs(std_many - S) < 0.02 * S and abs(mean_many - MU) < 0.02 * MU, (mean_many, std_many)
    assert abs(std_many - S) < abs(std_few - S) or abs(std_few - S) < 0.01 * S, (std_few, std_many)


def test_heun_with_churn_still_recovers_the_gaussian_moments():
    schedule = NoiseSchedule.cosine()
    mean, std = output_moments("heun", schedule, 100, "log_snr", n=100_000, churn=10.0, churn_sigma_max=50.0)
    assert abs(mean - MU) < MEAN_TOLERANCE and abs(std - S) < STD_TOLERANCE


def test_each_default_grid_has_the_lowest_closed_form_error_at_10_to_25_steps():
    """DEFAULT_GRIDS: per sampler, the grid with the least mean relative std error over N(0, s^2)
    data, s in {0.1, 1}, the cosine and DDPM linear schedules and 10, 15, 20, 25 steps.
    Run with -s to see the table (also `python -m cascade.diffusion.grid_study`)."""
    rows = grid_error_table(monte_carlo_samples=100_000)
    print("\n" + format_table(rows))
    for sampler, errors in mean_errors(rows).items():
        best = min(errors.values())
        assert errors[DEFAULT_GRIDS[sampler]] == best, (sampler, errors)


def test_dpmpp_2m_on_uniform_t_leaves_a_fifth_of_a_narrow_std_on_the_ddpm_schedule():
    """The known claim: 50 uniform-t steps of DPM-Solver++(2M) on the DDPM linear schedule shrink the
    std of an s = 0.1 dimension by about a fifth (exactly 21.0%); the log-SNR grid leaves 0.3%,
    the shrinkage of the last, exact denoising step at t_min = 1/1000 (sigma^2 / (2 s^2) = 0.5%)."""
    schedule = NoiseSchedule.linear()
    denoise = gaussian_denoiser(schedule, 0.0, 0.1)
    x_T = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    uniform = sample(denoise, schedule, (2, 1), "dpmpp_2m", 50, x_T=x_T, grid="uniform_t")
    log_snr = sample(denoise, schedule, (2, 1), "dpmpp_2m", 50, x_T=x_T, grid="log_snr")
    assert abs((uniform[1, 0] - uniform[0, 0]).item() / 0.1 - 1 + 0.210) < 0.002
    assert abs((log_snr[1, 0] - log_snr[0, 0]).item() / 0.1 - 1) < 0.005


# --- element-wise agreement with diffusers ----------------------------------------------------
# "The model" is the closed-form denoiser of N(MU, S^2) data, given to diffusers as the epsilon it
# implies. Both sides run the DDPM linear schedule (betas 1e-4..0.02, 1000 steps). diffusers
# builds its sigmas from float32 cumulative products and we from float64 sums of log(1 - beta),
# so the grids agree to ~1e-5 (checked below); for the sample-by-sample comparison diffusers is
# handed our float32 sigmas, so that both integrate the same noise levels and differ only by
# float32 rounding. diffusers calls the model with a discrete timestep interpolated from sigma,
# our denoiser takes the continuous t of the same sigma: the closed-form model below reads sigma.

DDPM_BETAS = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}
SAMPLE_TOLERANCE = {"atol": 2e-5, "rtol": 2e-5}  # float32 rounding over tens of steps (measured <= 1.2e-6); |x| ~ 1
# diffusers' sigma = sqrt((1 - alpha_bar) / alpha_bar) from float32 alpha_bar: 1 - alpha_bar near 1
# rounds by up to 6e-8 / beta_1 = 6e-4 relative; measured 8.3e-5 at sigma_min (ours: float64, 3e-7).
GRID_TOLERANCE = {"rtol": 3e-4, "atol": 0.0}


def ve_sigmas(schedule, steps, grid):
    """Our grid as diffusers' sigmas: sigma~ = sigma / alpha = exp(-lambda / 2) at the float32 t."""
    return torch.exp(-0.5 * schedule.log_snr_unchecked(time_grid(schedule, steps, grid).float()))


def closed_form_epsilon(x, sigma_ve):
    """eps implied by E[x0 | x] for x0 ~ N(MU, S^2), at the VP point x with alpha = 1/sqrt(1 + sigma~^2)."""
    alpha = (1 + sigma_ve**2) ** -0.5
    sigma = sigma_ve * alpha
    x0 = MU + alpha * S**2 / (alpha**2 * S**2 + sigma**2) * (x - alpha * MU)
    return (x - alpha * x0) / sigma


def spy(schedule):
    """Our closed-form denoiser, recording the x it is called with (the sampler's states)."""
    seen = []
    denoise = gaussian_denoiser(schedule, MU, S)

    def recording(x_t, t):
        seen.append(x_t.clone())
        return denoise(x_t, t)

    return recording, seen


def run_diffusers_multistep(scheduler, x_T, noises=None):
    """diffusers' loop; returns the states the model saw and the final sample."""
    states, x = [], x_T
    for i, timestep in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(x, timestep)
        states.append(model_input.clone())
        index = scheduler.step_index
        sigma = scheduler.sigmas[0 if index is None else index]  # None: the multistep scheduler's first step
        noise = {} if noises is None else {"variance_noise": noises[i]}
        x = scheduler.step(closed_form_epsilon(model_input, sigma), timestep, x, **noise).prev_sample
    return states, x


X_T = torch.randn(16, 3, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize(("grid", "option"), [("karras", "use_karras_sigmas"), ("log_snr", "use_lu_lambdas")])
def test_dpmpp_2m_matches_diffusers_dpm_solver_multistep_scheduler(grid, option, steps):
    diffusers = pytest.importorskip("diffusers")
    schedule = NoiseSchedule.linear()
    scheduler = diffusers.DPMSolverMultistepScheduler(
        **DDPM_BETAS, solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint",
        final_sigmas_type="zero", lower_order_final=True, euler_at_final=False, **{option: True},
    )  # fmt: skip
    scheduler.set_timesteps(steps)
    ours = ve_sigmas(schedule, steps, grid)
    torch.testing.assert_close(scheduler.sigmas, ours, **GRID_TOLERANCE)  # the same grid
    scheduler.sigmas = ours.clone()
    their_states, theirs = run_diffusers_multistep(scheduler, X_T)
    denoise, our_states = spy(schedule)
    x = sample(denoise, schedule, tuple(X_T.shape), "dpmpp_2m", steps, x_T=X_T, grid=grid)
    torch.testing.assert_close(torch.stack(our_states), torch.stack(their_states), **SAMPLE_TOLERANCE)
    torch.testing.assert_close(x, theirs, **SAMPLE_TOLERANCE)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "ddim"])
def test_uniform_t_grid_matches_diffusers_trailing_timesteps(sampler):
    """With steps dividing 1000, uniform t = k / steps are DDPM steps 1000 k / steps, diffusers'
    "trailing" spacing (timesteps 999, ..., 1000 / steps - 1, then alpha_bar = 1)."""
    diffusers = pytest.importorskip("diffusers")
    schedule, steps = NoiseSchedule.linear(), 20
    if sampler == "ddim":
        scheduler = diffusers.DDIMScheduler(**DDPM_BETAS, timestep_spacing="trailing", set_alpha_to_one=True,
                                            clip_sample=False)  # fmt: skip
        scheduler.set_timesteps(steps)
        their_states, x = [], X_T
        for timestep in scheduler.timesteps:
            their_states.append(x.clone())
            sigma_ve = ((1 - scheduler.alphas_cumprod[timestep]) / scheduler.alphas_cumprod[timestep]).sqrt()
            x = scheduler.step(closed_form_epsilon(x, sigma_ve), timestep, x, eta=0.0).prev_sample
        theirs = x
    else:
        scheduler = diffusers.DPMSolverMultistepScheduler(**DDPM_BETAS, solver_order=2, timestep_spacing="trailing")
        scheduler.set_timesteps(steps)
        torch.testing.assert_close(scheduler.sigmas, ve_sigmas(schedule, steps, "uniform_t"), **GRID_TOLERANCE)
        scheduler.sigmas = ve_sigmas(schedule, steps, "uniform_t")
        their_states, theirs = run_diffusers_multistep(scheduler, X_T)
    denoise, our_states = spy(schedule)
    x = sample(denoise, schedule, tuple(X_T.shape), sampler, steps, x_T=X_T, grid="uniform_t")
    # DDIM reads diffusers' own float32 alpha_bar (not handed our sigmas): looser by that rounding.
    tolerance = {"atol": 2e-4, "rtol": 2e-4} if sampler == "ddim" else SAMPLE_TOLERANCE
    torch.testing.assert_close(torch.stack(our_states), torch.stack(their_states), **tolerance)
    torch.testing.assert_close(x, theirs, **tolerance)


@pytest.mark.parametrize("steps", [10, 25])
def test_heun_matches_diffusers_heun_discrete_scheduler_on_karras_sigmas(steps):
    """diffusers' HeunDiscreteScheduler(use_karras_sigmas=True) is Karras et al. Alg. 1 on the
    karras grid; its sigmas list holds each inner sigma twice (the Euler and the correction
    evaluation). Its default grid (N timesteps uniform over 999..0, then sigma 0) is none of ours."""
    diffusers = pytest.importorskip("diffusers")
    schedule = NoiseSchedule.linear()
    scheduler = diffusers.HeunDiscreteScheduler(**DDPM_BETAS, use_karras_sigmas=True)
    scheduler.set_timesteps(steps)
    ours = ve_sigmas(schedule, steps, "karras")
    torch.testing.assert_close(torch.cat([scheduler.sigmas[:1], scheduler.sigmas[1::2]]), ours, **GRID_TOLERANCE)
    scheduler.sigmas = torch.cat([ours[:1], ours[1:-1].repeat_interleave(2), ours[-1:]])
    x_tilde = X_T * (1 + ours[0] ** 2).sqrt()  # diffusers' sample is x / alpha
    their_states, x_tilde = run_diffusers_multistep(scheduler, x_tilde)
    denoise, our_states = spy(schedule)
    x = sample(denoise, schedule, tuple(X_T.shape), "heun", steps, x_T=X_T, grid="karras")
    assert len(our_states) == len(their_states) == function_evaluations("heun", steps)
    torch.testing.assert_close(torch.stack(our_states), torch.stack(their_states), **SAMPLE_TOLERANCE)
    torch.testing.assert_close(x, x_tilde, **SAMPLE_TOLERANCE)


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize(("grid", "option"), [("karras", "use_karras_sigmas"), ("log_snr", "use_lu_lambdas")])
def test_dpmpp_3m_ode_matches_diffusers_third_order_dpm_solver(grid, option, steps):
    """eta = 0: DPM-Solver++(3M), diffusers' dpmsolver++ with solver_order=3 and solver_type="heun"
    (k-diffusion's phi_2 in the second-order warm-up step; "midpoint" is 2M's). lower_order_final=False
    keeps diffusers from dropping to 2nd order on the last-but-one step below 15 steps (k-diffusion
    does not); the last step into sigma = 0 is first order on both sides."""
    diffusers = pytest.importorskip("diffusers")
    schedule = NoiseSchedule.linear()
    scheduler = diffusers.DPMSolverMultistepScheduler(
        **DDPM_BETAS, solver_order=3, algorithm_type="dpmsolver++", solver_type="heun",
        final_sigmas_type="zero", lower_order_final=False, euler_at_final=False, **{option: True},
    )  # fmt: skip
    scheduler.set_timesteps(steps)
    scheduler.sigmas = ve_sigmas(schedule, steps, grid)
    their_states, theirs = run_diffusers_multistep(scheduler, X_T)
    denoise, our_states = spy(schedule)
    x = sample(denoise, schedule, tuple(X_T.shape), "dpmpp_3m_sde", steps, x_T=X_T, grid=grid, eta=0.0)
    torch.testing.assert_close(torch.stack(our_states), torch.stack(their_states), **SAMPLE_TOLERANCE)
    torch.testing.assert_close(x, theirs, **SAMPLE_TOLERANCE)


def test_dpmpp_3m_sde_matches_diffusers_sde_dpm_solver_until_its_third_order_term():
    """eta = 1 against diffusers' sde-dpmsolver++ (solver_order=3, solver_type="heun"), fed the
    same noise: the first- and second-order steps agree element-wise. From the first third-order
    step on they differ, by design of the reference we follow: k-diffusion's coefficient of D_2 is
    -phi_3(2h) = (1 - e^{-2h} - 2h) / (2h)^2 + 1/2 (-> 0 as h -> 0, and the eta = 0 limit is the
    3M ODE's -phi_3(h)), diffusers 0.42's is the same expression - 1/2 (-> -1): our step equals
    theirs plus exactly alpha_t D_2 (checked on the third step below)."""
    diffusers = pytest.importorskip("diffusers")
    schedule, steps, grid = NoiseSchedule.linear(), 10, "log_snr"
    scheduler = diffusers.DPMSolverMultistepScheduler(
        **DDPM_BETAS, solver_order=3, algorithm_type="sde-dpmsolver++", solver_type="heun",
        final_sigmas_type="zero", lower_order_final=False, use_lu_lambdas=True,
    )  # fmt: skip
    scheduler.set_timesteps(steps)
    sigmas = ve_sigmas(schedule, steps, grid)
    scheduler.sigmas = sigmas.clone()
    noise_generator = torch.Generator().manual_seed(3)
    noises = [torch.randn(tuple(X_T.shape), generator=noise_generator) for _ in range(steps)]
    their_states, _ = run_diffusers_multistep(scheduler, X_T, noises)
    denoise, our_states = spy(schedule)
    sample(denoise, schedule, tuple(X_T.shape), "dpmpp_3m_sde", steps, torch.Generator().manual_seed(3),
           x_T=X_T, grid=grid, eta=1.0)  # fmt: skip
    torch.testing.assert_close(torch.stack(our_states[:3]), torch.stack(their_states[:3]), **SAMPLE_TOLERANCE)
    # The third-order step (from state 2 to state 3): ours - theirs = alpha_t D_2.
    alphas = (1 + sigmas**2) ** -0.5
    lambdas = torch.log(alphas) - torch.log(sigmas * alphas)  # DPM-Solver's lambda = log(alpha / sigma)
    x0 = [state - sigmas[i] * alphas[i] * closed_form_epsilon(state, sigmas[i]) for i, state in enumerate(our_states[:3])]
    x0 = [x0_i / alphas[i] for i, x0_i in enumerate(x0)]
    h, h_0, h_1 = lambdas[3] - lambdas[2], lambdas[2] - lambdas[1], lambdas[1] - lambdas[0]
    r_0, r_1 = h_0 / h, h_1 / h
    d2 = ((x0[2] - x0[1]) / r_0 - (x0[1] - x0[0]) / r_1) / (r_0 + r_1)
    torch.testing.assert_close(our_states[3] - their_states[3], alphas[3] * d2, atol=2e-5, rtol=1e-3)


def test_sample_gaussian_command_has_a_step_count_for_every_sampler():
    from cascade.cli.gaussian import DEFAULT_STEPS

    assert set(DEFAULT_STEPS) == set(SAMPLERS)


# --- a Gaussian mixture: the exact denoiser is nonlinear ------------------------------------------

MIXTURE = {"weights": (0.3, 0.7), "means": (-0.6, 0.4), "stds": (0.1, 0.2)}


def mixture_statistics():
    """Mean, std and P(x0 < midpoint of the two means) of MIXTURE, in closed form."""
    w, mu, s = (torch.tensor(MIXTURE[k], dtype=torch.float64) for k in ("weights", "means", "stds"))
    mean = (w * mu).sum()
    std = ((w * (s**2 + mu**2)).sum() - mean**2).sqrt()
    midpoint = mu.mean()
    mass_below = (w * 0.5 * (1 + torch.erf((midpoint - mu) / (s * math.sqrt(2))))).sum()
    return mean.item(), std.item(), mass_below.item(), midpoint.item()


def mixture_errors(sampler, schedule, steps, grid, n=20_000):
    denoise = gaussian_mixture_denoiser(schedule, **MIXTURE)
    x = sample(denoise, schedule, (n, 1), sampler, steps, torch.Generator().manual_seed(0), grid=grid).double()
    mean, std, mass_below, midpoint = mixture_statistics()
    return abs(x.mean().item() - mean), abs(x.std().item() - std), abs((x < midpoint).double().mean().item() - mass_below)


def test_mixture_denoiser_is_the_posterior_mean_by_quadrature():
    """E[x0 | x_t] = int x0 p(x0) N(x_t; alpha x0, sigma^2) dx0 / int p(x0) N(...) dx0 on a fine grid."""
    schedule = NoiseSchedule.cosine()
    denoise = gaussian_mixture_denoiser(schedule, **MIXTURE)
    x0 = torch.linspace(-3, 3, 200_001, dtype=torch.float64)
    w, mu, s = (torch.tensor(MIXTURE[k], dtype=torch.float64) for k in ("weights", "means", "stds"))
    prior = (w / s * torch.exp(-0.5 * ((x0[:, None] - mu) / s) ** 2)).sum(-1)
    for t in (0.2, 0.5, 0.8):
        alpha, sigma = (v.double() for v in schedule.alpha_sigma(torch.tensor(t)))
        x_t = torch.linspace(-2, 2, 9, dtype=torch.float64)
        likelihood = torch.exp(-0.5 * ((x_t[:, None] - alpha * x0) / sigma) ** 2)
        expected = (likelihood * prior * x0).sum(-1) / (likelihood * prior).sum(-1)
        got = denoise(x_t.float()[:, None], torch.full((9,), t))[:, 0].double()
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_on_every_grid_converges_to_the_gaussian_mixture(sampler, grid):
    """Mean, std and the mass on each side of the modes' midpoint (closed form through erf), on
    the cosine schedule (the linear one is covered by the Gaussian test above); 20k draws:
    standard errors ~0.0035 on each, the same noise at both step counts."""
    schedule = NoiseSchedule.cosine()
    few, many = (100, 400) if sampler in ("ddpm", "ddim") else (25, 100)
    _, std_few, _ = mixture_errors(sampler, schedule, few, grid)
    mean_error, std_error, mass_error = mixture_errors(sampler, schedule, many, grid)
    assert mean_error < 0.015 and std_error < 0.015 and mass_error < 0.015, (mean_error, std_error, mass_error)
    assert std_error < std_few or std_few < 0.005, (std_few, std_error)
