"""The exact denoiser for Gaussian data: a closed-form model to test samplers without training.

For x0 ~ N(mu, s^2 I) and x_t = alpha x0 + sigma eps, Bayes' rule for jointly Gaussian
variables gives E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu).
A sampler driven by this denoiser must return samples with mean mu and standard deviation s.
"""

from __future__ import annotations

import torch

from .parameterization import broadcast_to
from .samplers import Denoiser
from .schedule import NoiseSchedule, alpha_from_log_snr, sigma_from_log_snr


def gaussian_denoiser(schedule: NoiseSchedule, mu: float, s: float) -> Denoiser:
    """denoise(x_t, t) = E[x0 | x_t] for data x0 ~ N(mu, s^2 I)."""

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        log_snr = schedule.log_snr(t)
        alpha = broadcast_to(alpha_from_log_snr(log_snr), x_t)
        sigma = broadcast_to(sigma_from_log_snr(log_snr), x_t)
        gain = alpha * s**2 / (alpha**2 * s**2 + sigma**2)
        return mu + gain * (x_t - alpha * mu)

    return denoise
