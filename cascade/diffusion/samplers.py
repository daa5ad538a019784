"""Samplers that turn a denoiser `denoise(x_t, t) -> x0_hat` into samples.

All samplers walk the same time grid t_0 = 1 > t_1 > ... > t_N = 0 (uniform in t, so on the
DDPM linear schedule with steps = num_steps they visit exactly the discrete DDPM steps) and
only see the denoiser's x0 estimate; guidance, thresholding and the network's
parameterisation are the denoiser's business.

Notation for one step from s = t_i to t = t_{i+1} (t < s, lambda_t > lambda_s):
r = SNR_s / SNR_t = exp(lambda_s - lambda_t), the posterior q(x_t | x_s, x0) is
N(mu, sigma_t^2 (1 - r) I) with mu = (alpha_t / alpha_s) r x_s + alpha_t (1 - r) x0
(Kingma et al. 2021, eq. 31-33, rewritten with the log-SNR).
"""

from __future__ import annotations

from typing import Callable

import torch

from .schedule import NoiseSchedule, alpha_from_log_snr, sigma_from_log_snr

# A denoiser maps (x_t (B, ...), t (B,)) to its estimate x0_hat of the clean batch; stages build
# one per condition and guidance setting (`DiffusionStage.make_denoiser`).
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Told (steps done, total steps) after every step, e.g. to advance a progress bar.
StepCallback = Callable[[int, int], None]
Generators = torch.Generator | list[torch.Generator] | None
SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")


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
    eta: float = 0.0,
    x_T: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw samples of `shape` by integrating the reverse process with `steps` denoiser calls.

    sampler: "ddpm" (ancestral sampling from the posterior, Ho et al. 2020, Alg. 2),
             "ddim" (Song et al. 2021, eq. 12, stochasticity eta; eta = 1 is DDPM),
             "dpmpp_2m" (DPM-Solver++(2M), Lu et al. 2022, Alg. 2; deterministic).
    generator: seeds x_T and the per-step noise of ddpm / ddim with eta > 0; a list of one
               generator per batch row makes each row reproducible on its own.
    x_T: the starting noise (defaults to N(0, I) drawn from `generator`).
    callback: called as callback(i + 1, steps) after step i (a progress bar is the caller's).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (isinstance(eta, (int, float)) and eta >= 0):
        raise ValueError(f"eta must be a number >= 0, got {eta!r}")
    if sampler == "dpmpp_2m" and eta != 0:
        raise ValueError(f"eta must be 0 for the deterministic dpmpp_2m sampler, got {eta}")
    if x_T is None:
        x = randn(tuple(shape), generator, device=device)
    else:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape is {tuple(shape)}")
        if not torch.isfinite(x_T).all():
            raise ValueError("x_T contains NaN or inf")
        x = x_T.to(device) if device is not None else x_T

    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float32)
    log_snrs = schedule.log_snr_unchecked(times)
    step_fn = {"ddpm": _ancestral_step, "ddim": _ancestral_step, "dpmpp_2m": None}[sampler]
    eta_value = 1.0 if sampler == "ddpm" else float(eta)

    previous_x0 = None
    for i in range(steps):
        t_batch = torch.full((shape[0],), float(times[i]), device=x.device)
        x0_hat = denoise(x, t_batch)
        lambda_s, lambda_t = log_snrs[i], log_snrs[i + 1]
        if step_fn is not None:
            x = step_fn(x, x0_hat, lambda_s, lambda_t, eta_value, generator)
        else:
            h_previous = lambda_s - log_snrs[i - 1] if i > 0 else None
            last = i == steps - 1
            x = _dpmpp_2m_step(x, x0_hat, previous_x0, lambda_s, lambda_t, h_previous, last)
            previous_x0 = x0_hat
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
