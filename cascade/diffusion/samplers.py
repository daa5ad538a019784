"""Samplers that turn a denoiser `denoise(x_t, t) -> x0_hat` into samples.

Every sampler walks a time grid t_0 = 1 > t_1 > ... > t_N = 0 chosen by `grid` (see grids.py:
uniform in t, uniform in log-SNR, or EDM's rho spacing); by default the grid that gives the
sampler the lowest closed-form error on Gaussian data at 10-25 steps (`DEFAULT_GRIDS`, measured
by `cascade.diffusion.grid_study`). Samplers only see the denoiser's x0 estimate; guidance,
thresholding and the network's parameterisation are the denoiser's business.

Notation for one step from s = t_i to t = t_{i+1} (t < s, lambda_t > lambda_s):
r = SNR_s / SNR_t = exp(lambda_s - lambda_t), the posterior q(x_t | x_s, x0) is
N(mu, sigma_t^2 (1 - r) I) with mu = (alpha_t / alpha_s) r x_s + alpha_t (1 - r) x0
(Kingma et al. 2021, eq. 31-33, rewritten with the log-SNR). DPM-Solver's lambda is
log(alpha / sigma), half of our log-SNR, so its step is h = (lambda_t - lambda_s) / 2. Heun works
in EDM's variable x / alpha with noise level sigma = exp(-lambda / 2) (Karras et al. 2022, eq. 4).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .grids import check_grid, time_grid
from .schedule import NoiseSchedule, alpha_from_log_snr, sigma_from_log_snr

# A denoiser maps (x_t (B, ...), t (B,)) to its estimate x0_hat of the clean batch; stages build
# one per condition and guidance setting (`DiffusionStage.make_denoiser`).
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Told (steps done, total steps) after every step, e.g. to advance a progress bar.
StepCallback = Callable[[int, int], None]
Generators = torch.Generator | list[torch.Generator] | None
SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "heun", "dpmpp_3m_sde")
# The grid each sampler walks when `grid` is None: the lowest closed-form error on Gaussian data
# at 10-25 steps (`python -m cascade.diffusion.grid_study` prints the table;
# tests/test_diffusion_samplers.py checks the choice).
DEFAULT_GRIDS = {"ddpm": "log_snr", "ddim": "log_snr", "dpmpp_2m": "log_snr", "heun": "log_snr",
                 "dpmpp_3m_sde": "uniform_t"}  # fmt: skip
# eta when `eta` is None: ddim deterministic, dpmpp_3m_sde the SDE (k-diffusion's default).
DEFAULT_ETA = {"ddpm": 1.0, "ddim": 0.0, "dpmpp_2m": 0.0, "heun": 0.0, "dpmpp_3m_sde": 1.0}


def function_evaluations(sampler: str, steps: int) -> int:
    """Denoiser calls (NFE) of `sampler` with `steps` steps: heun 2 steps - 1 (its last step is an
    Euler step), every other sampler one per step. Callers match sampling cost with it."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    _check_steps(steps)
    return 2 * steps - 1 if sampler == "heun" else steps


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def randn(shape: tuple[int, ...], generator: Generators, device=None, dtype=None) -> torch.Tensor:
    """Standard normal noise. With a list of generators, row i of the batch is drawn from
    generator i, so an image's noise depends only on its own seed, not on how it was batched."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"generator: got {len(generator)} generators for a batch of {shape[0]}")
        rows = [torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.stack(rows).to(device or rows[0].device)
    drawn_on = generator.device if generator is not None else device
    noise = torch.randn(shape, generator=generator, device=drawn_on, dtype=dtype)
    return noise if device is None else noise.to(device)


def sample(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    sampler: str = "dpmpp_2m",
    steps: int = 25,
    generator: Generators = None,
    eta: float | None = None,
    x_T: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    device: torch.device | str | None = None,
    grid: str | None = None,
    churn: float = 0.0,
    churn_sigma_min: float = 0.0,
    churn_sigma_max: float = math.inf,
    churn_noise: float = 1.0,
    t_start: float = 1.0,
) -> torch.Tensor:
    """Draw samples of `shape` by integrating the reverse process over `steps` grid steps
    (`function_evaluations(sampler, steps)` denoiser calls).

    sampler: "ddpm" (ancestral sampling from the posterior, Ho et al. 2020, Alg. 2; eta is 1),
             "ddim" (Song et al. 2021, eq. 12, stochasticity eta, default 0; eta = 1 is DDPM),
             "dpmpp_2m" (DPM-Solver++(2M), Lu et al. 2022, Alg. 2; deterministic),
             "heun" (Karras et al. 2022, Alg. 1, with Alg. 2's churn; deterministic at churn 0),
             "dpmpp_3m_sde" (DPM-Solver++(3M) SDE as k-diffusion's `sample_dpmpp_3m_sde`;
             eta = 1 (default) the SDE, eta = 0 the 3M ODE).
    grid: a GRIDS name; None takes `DEFAULT_GRIDS[sampler]`.
    generator: seeds x_T and the per-step noise of ddpm, ddim with eta > 0, dpmpp_3m_sde with
               eta > 0 and heun with churn; a list of one generator per batch row makes each row
               reproducible on its own.
    x_T: the starting noise (defaults to N(0, I) drawn from `generator`); with t_start < 1 the
         starting point x_{t_start}, e.g. data noised to t_start (SDEdit, Meng et al. 2022).
    t_start: the time the grid starts from (1: pure noise); the steps span [0, t_start].
    callback: called as callback(i + 1, steps) after step i (a progress bar is the caller's).
    churn, churn_sigma_min, churn_sigma_max, churn_noise: heun only, S_churn, S_tmin, S_tmax and
               S_noise of Karras et al. 2022, Alg. 2 (S_tmin / S_tmax in sigma = exp(-lambda/2)).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    _check_steps(steps)
    if grid is None:
        grid = DEFAULT_GRIDS[sampler]
    check_grid(grid)
    if eta is not None and not (_is_number(eta) and eta >= 0):
        raise ValueError(f"eta must be a number >= 0, got {eta!r}")
    if sampler in ("dpmpp_2m", "heun") and eta not in (None, 0):
        raise ValueError(f"eta must be 0 for the deterministic {sampler} sampler, got {eta}")
    eta_value = 1.0 if sampler == "ddpm" else float(DEFAULT_ETA[sampler] if eta is None else eta)
    if not (_is_number(churn) and churn >= 0):
        raise ValueError(f"churn must be a finite number >= 0, got {churn!r}")
    if churn != 0 and sampler != "heun":
        raise ValueError(f"churn is a setting of the heun sampler only, got churn={churn} for {sampler!r}")
    if not (_is_number(churn_noise) and churn_noise >= 0):
        raise ValueError(f"churn_noise must be a finite number >= 0, got {churn_noise!r}")
    if not (isinstance(churn_sigma_min, (int, float)) and isinstance(churn_sigma_max, (int, float))
            and 0 <= churn_sigma_min <= churn_sigma_max):  # fmt: skip
        raise ValueError(
            f"churn_sigma_min, churn_sigma_max must satisfy 0 <= churn_sigma_min <= churn_sigma_max, "
            f"got {churn_sigma_min!r}, {churn_sigma_max!r}"
        )
    if x_T is None:
        x = randn(tuple(shape), generator, device=device)
    else:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape is {tuple(shape)}")
        if not torch.isfinite(x_T).all():
            raise ValueError("x_T contains NaN or inf")
        x = x_T.to(device) if device is not None else x_T

    # The denoiser and the update formulas see the same float32 t, hence the same lambda.
    times = time_grid(schedule, steps, grid, t_start).float()
    log_snrs = schedule.log_snr_unchecked(times)
    # The grid lives on the host: read it into Python floats once, not one element per step.
    t_values = times.tolist()
    if sampler == "heun":
        churn_settings = (churn, churn_sigma_min, churn_sigma_max, churn_noise)
        return _heun(denoise, schedule, x, t_values, log_snrs, churn_settings, generator, callback)

    previous_x0: list[torch.Tensor] = []  # newest first
    previous_h: list[torch.Tensor] = []
    for i in range(steps):
        t_batch = torch.full((shape[0],), t_values[i], device=x.device)
        x0_hat = denoise(x, t_batch)
        lambda_s, lambda_t = log_snrs[i], log_snrs[i + 1]
        last = i == steps - 1
        if sampler in ("ddpm", "ddim"):
            x = _ancestral_step(x, x0_hat, lambda_s, lambda_t, eta_value, generator)
        elif sampler == "dpmpp_2m":
            h_previous = lambda_s - log_snrs[i - 1] if i > 0 else None
            x = _dpmpp_2m_step(x, x0_hat, previous_x0[0] if previous_x0 else None, lambda_s, lambda_t, h_previous, last)
        else:
            x, h = _dpmpp_3m_sde_step(x, x0_hat, previous_x0, previous_h, lambda_s, lambda_t, eta_value, last, generator)
            previous_h = [h, *previous_h[:1]]
        previous_x0 = [x0_hat, *previous_x0[:1]]
        if callback is not None:
            callback(i + 1, steps)
    return x


def _ancestral_step(
    x: torch.Tensor,
    x0_hat: torch.Tensor,
    lambda_s: torch.Tensor,
    lambda_t: torch.Tensor,
    eta: float,
    generator: Generators,
) -> torch.Tensor:
    """One DDIM step with stochasticity eta (Song et al. 2021, eq. 12 and 16):

    x_t = alpha_t x0 + sqrt(sigma_t^2 - c^2) eps_hat + c z,   c = eta sigma_t sqrt(1 - r),

    eps_hat = (x_s - alpha_s x0) / sigma_s. eta = 1 gives the DDPM posterior step
    (mean mu and variance sigma_t^2 (1 - r) above); eta = 0 is deterministic DDIM.
    """
    alpha_s, sigma_s = alpha_from_log_snr(lambda_s), sigma_from_log_snr(lambda_s)
    alpha_t, sigma_t = alpha_from_log_snr(lambda_t), sigma_from_log_snr(lambda_t)
    one_minus_r = -torch.expm1(lambda_s - lambda_t)  # 1 - r, exact also when r -> 0
    c = eta * sigma_t * one_minus_r.sqrt()
    eps_hat = (x - alpha_s * x0_hat) / sigma_s
    x_next = alpha_t * x0_hat + (sigma_t**2 - c**2).clamp(min=0).sqrt() * eps_hat
    if eta > 0 and float(c) > 0:
        x_next = x_next + c * randn(tuple(x.shape), generator, device=x.device, dtype=x.dtype)
    return x_next


def _dpmpp_2m_step(
    x: torch.Tensor,
    x0_hat: torch.Tensor,
    previous_x0: torch.Tensor | None,
    lambda_s: torch.Tensor,
    lambda_t: torch.Tensor,
    h_previous: torch.Tensor | None,
    last: bool,
) -> torch.Tensor:
    """One DPM-Solver++(2M) step (Lu et al. 2022, "DPM-Solver++", Alg. 2):

    x_t = (sigma_t / sigma_s) x_s - alpha_t (exp(-h) - 1) D,   h = (lambda_t - lambda_s) / 2,
    D = (1 + 1/(2 r)) x0_i - 1/(2 r) x0_{i-1},  r = h_{i-1} / h.

    DPM-Solver's lambda is log(alpha / sigma), half of our log-SNR, hence the factor 1/2 in h;
    the ratio r does not depend on that scale.

    The first step, and the last one (into t = 0, where h may be infinite), use the first-order
    update D = x0_i ("lower order final", as the reference implementation does for few steps).
    """
    alpha_t = alpha_from_log_snr(lambda_t)
    sigma_s, sigma_t = sigma_from_log_snr(lambda_s), sigma_from_log_snr(lambda_t)
    h = 0.5 * (lambda_t - lambda_s)
    if previous_x0 is None or last:
        d = x0_hat
    else:
        ratio = 0.5 * h_previous / h
        d = (1 + 1 / (2 * ratio)) * x0_hat - (1 / (2 * ratio)) * previous_x0
    return (sigma_t / sigma_s) * x + alpha_t * (-torch.expm1(-h)) * d


def _dpmpp_3m_sde_step(
    x: torch.Tensor,
    x0_hat: torch.Tensor,
    previous_x0: list[torch.Tensor],
    previous_h: list[torch.Tensor],
    lambda_s: torch.Tensor,
    lambda_t: torch.Tensor,
    eta: float,
    last: bool,
    generator: Generators,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DPM-Solver++(3M) SDE step (k-diffusion's `sample_dpmpp_3m_sde`; Lu et al. 2022,
    "DPM-Solver++", sec. 4 for the multistep differences, Gonzalez et al. 2023 / Lu's SDE variant
    for eta = 1), written for the variance-preserving x (k-diffusion works in x / alpha):

    x_t = (sigma_t / sigma_s) exp(-eta h) x_s + alpha_t (1 - exp(-h_eta)) D_0
          + alpha_t (phi_2 D_1 - phi_3 D_2) + sigma_t sqrt(1 - exp(-2 eta h)) z,
    h = (lambda_t - lambda_s) / 2,  h_eta = (1 + eta) h,
    phi_2 = 1 - (1 - exp(-h_eta)) / h_eta,  phi_3 = phi_2 / h_eta - 1/2,

    with the divided differences of the last three x0 estimates (r_k = h_{-k} / h):
    d1_0 = (D_0 - D_{-1}) / r_0, d1_1 = (D_{-1} - D_{-2}) / r_1,
    D_1 = d1_0 + (d1_0 - d1_1) r_0 / (r_0 + r_1), D_2 = (d1_0 - d1_1) / (r_0 + r_1).
    With one earlier estimate only D_1 = d1_0 and D_2 = 0 (second order); with none, first order.
    eta = 0 is the 3M ODE solver (diffusers' dpmsolver++, solver_order=3, solver_type="heun").

    The last step, into t = 0, is the first-order deterministic update (x_0 = D_0 where
    sigma(0) = 0), as k-diffusion's "denoising step". Returns (x_t, h).
    """
    alpha_t = alpha_from_log_snr(lambda_t)
    sigma_s, sigma_t = sigma_from_log_snr(lambda_s), sigma_from_log_snr(lambda_t)
    h = 0.5 * (lambda_t - lambda_s)
    if last:
        return (sigma_t / sigma_s) * x + alpha_t * (-torch.expm1(-h)) * x0_hat, h
    h_eta = (1.0 + eta) * h
    x_next = (sigma_t / sigma_s) * torch.exp(-eta * h) * x + alpha_t * (-torch.expm1(-h_eta)) * x0_hat
    phi_2 = torch.expm1(-h_eta) / h_eta + 1.0
    if len(previous_x0) >= 2:
        r_0, r_1 = previous_h[0] / h, previous_h[1] / h
        d1_0 = (x0_hat - previous_x0[0]) / r_0
        d1_1 = (previous_x0[0] - previous_x0[1]) / r_1
        d_1 = d1_0 + (d1_0 - d1_1) * r_0 / (r_0 + r_1)
        d_2 = (d1_0 - d1_1) / (r_0 + r_1)
        phi_3 = phi_2 / h_eta - 0.5
        x_next = x_next + alpha_t * (phi_2 * d_1 - phi_3 * d_2)
    elif len(previous_x0) == 1:
        x_next = x_next + alpha_t * phi_2 * (x0_hat - previous_x0[0]) / (previous_h[0] / h)
    if eta > 0:
        noise = randn(tuple(x.shape), generator, device=x.device, dtype=x.dtype)
        x_next = x_next + sigma_t * (-torch.expm1(-2.0 * eta * h)).sqrt() * noise
    return x_next, h


def _heun(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    t_values: list[float],
    log_snrs: torch.Tensor,
    churn_settings: tuple[float, float, float, float],
    generator: Generators,
    callback: StepCallback | None,
) -> torch.Tensor:
    """Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1 and 2).

    In EDM's variable x~ = x / alpha with noise level sigma = exp(-lambda / 2) (eq. 4 with
    s(t) = alpha) the ODE is dx~/dsigma = (x~ - D(x~; sigma)) / sigma, D the x0 estimate.
    Churn (Alg. 2) raises sigma_i to sigma_hat = sigma_i (1 + gamma_i), clamped to the schedule's
    sigma at t = 1 (the denoiser knows no noisier t), and adds the matching fresh noise.
    `t_values`: the time grid as Python floats (read from the host once per `sample` call).
    """
    s_churn, s_tmin, s_tmax, s_noise = churn_settings
    steps = len(t_values) - 1
    batch = x.shape[0]
    sigmas = torch.exp(-0.5 * log_snrs)  # sigma~ = sigma / alpha; exp(-inf) = 0 at t = 0 on the linear schedule
    sigma_values = sigmas.tolist()  # the churn's host-side tests, read once
    alphas = alpha_from_log_snr(log_snrs)
    log_snr_noisiest = float(schedule.log_snr_float64(torch.tensor(1.0)))
    x_tilde = x / alphas[0]
    for i in range(steps):
        sigma_i = sigmas[i]
        # Alg. 2, line 4: gamma_i = min(S_churn / N, sqrt(2) - 1) if S_tmin <= sigma_i <= S_tmax, else 0.
        gamma = min(s_churn / steps, math.sqrt(2.0) - 1.0) if s_tmin <= sigma_values[i] <= s_tmax else 0.0
        t_hat, sigma_hat, alpha_hat = t_values[i], sigma_i, alphas[i]
        if gamma > 0:
            # Alg. 2, line 5: sigma_hat = sigma_i + gamma_i sigma_i (kept within the schedule).
            log_snr_target = max(-2.0 * math.log(sigma_values[i] * (1.0 + gamma)), log_snr_noisiest)
            log_snr_hat = torch.tensor(log_snr_target, dtype=torch.float64)
            t_hat_tensor = schedule.t_from_log_snr(log_snr_hat).float()
            t_hat = float(t_hat_tensor)
            log_snr_hat = schedule.log_snr_unchecked(t_hat_tensor)
            sigma_hat, alpha_hat = torch.exp(-0.5 * log_snr_hat), alpha_from_log_snr(log_snr_hat)
            # Alg. 2, line 6: x^_i = x_i + sqrt(sigma_hat^2 - sigma_i^2) eps, eps ~ N(0, S_noise^2 I).
            noise = randn(tuple(x_tilde.shape), generator, device=x_tilde.device, dtype=x_tilde.dtype)
            x_tilde = x_tilde + (sigma_hat**2 - sigma_i**2).clamp(min=0).sqrt() * s_noise * noise
        # Alg. 1, line 4 / Alg. 2, line 7: d_i = (x^_i - D(x^_i; sigma_hat)) / sigma_hat.
        x0_hat = denoise(alpha_hat * x_tilde, torch.full((batch,), t_hat, device=x_tilde.device))
        d = (x_tilde - x0_hat) / sigma_hat
        # Alg. 1, line 5 / Alg. 2, line 8: Euler step x_{i+1} = x^_i + (sigma_{i+1} - sigma_hat) d_i.
        step = sigmas[i + 1] - sigma_hat
        x_next = x_tilde + step * d
        if i < steps - 1:
            # Alg. 1, lines 6-8 (sigma_{i+1} != 0): the 2nd-order correction with the slope at
            # x_{i+1}, d' = (x_{i+1} - D(x_{i+1}; sigma_{i+1})) / sigma_{i+1}, averaged with d_i.
            t_next = torch.full((batch,), t_values[i + 1], device=x_tilde.device)
            x0_next = denoise(alphas[i + 1] * x_next, t_next)
            d_next = (x_next - x0_next) / sigmas[i + 1]
            x_next = x_tilde + step * 0.5 * (d + d_next)
        # The last step (into t = 0) stays the Euler step, as in Alg. 1.
        x_tilde = x_next
        if callback is not None:
            callback(i + 1, steps)
    return alphas[-1] * x_tilde
