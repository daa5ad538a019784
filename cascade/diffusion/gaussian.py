"""The exact denoiser for Gaussian data: a closed-form model to test samplers without training.

For x0 ~ N(mu, s^2 I) and x_t = alpha x0 + sigma eps, Bayes' rule for jointly Gaussian
variables gives E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu).
A sampler driven by this denoiser must return samples with mean mu and standard deviation s.
`gaussian_mixture_denoiser` is the same for a mixture of Gaussians (a nonlinear denoiser).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def gaussian_mixture_denoiser(
    schedule: NoiseSchedule, weights: Sequence[float], means: Sequence[float], stds: Sequence[float]
) -> Denoiser:
    """denoise(x_t, t) = E[x0 | x_t] for data x0 ~ sum_k w_k N(mu_k, s_k^2), independently per entry.

    Component k reaches x_t as N(alpha mu_k, v_k), v_k = alpha^2 s_k^2 + sigma^2, so its posterior
    weight is r_k(x_t) = softmax_k(log w_k + log N(x_t; alpha mu_k, v_k)), and
    E[x0 | x_t] = sum_k r_k (mu_k + alpha s_k^2 / v_k (x_t - alpha mu_k)) (the Gaussian case above
    per component; e.g. Bishop 2006, eq. 9.13 for the responsibilities). Unlike the single
    Gaussian this denoiser is nonlinear in x_t, so samplers meet curvature.
    """
    if not (len(weights) == len(means) == len(stds) >= 1):
        raise ValueError(f"weights, means and stds need one entry per component, got {len(weights)}, {len(means)}, {len(stds)}")
    if any(w <= 0 for w in weights) or any(s <= 0 for s in stds):
        raise ValueError(f"weights and stds must be positive, got weights={list(weights)}, stds={list(stds)}")
    total = float(sum(weights))
    log_w = torch.tensor([math.log(w / total) for w in weights])
    mu = torch.tensor(list(means), dtype=torch.float32)
    s2 = torch.tensor(list(stds), dtype=torch.float32) ** 2

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        log_snr = schedule.log_snr(t)
        x = x_t.unsqueeze(-1)  # components on a new last axis
        alpha = broadcast_to(alpha_from_log_snr(log_snr), x_t).unsqueeze(-1)
        sigma = broadcast_to(sigma_from_log_snr(log_snr), x_t).unsqueeze(-1)
        mu_k, s2_k, log_w_k = (v.to(device=x_t.device, dtype=x_t.dtype) for v in (mu, s2, log_w))
        variance = alpha**2 * s2_k + sigma**2
        log_density = -0.5 * ((x - alpha * mu_k) ** 2 / variance + torch.log(variance))
        responsibility = torch.softmax(log_w_k + log_density, dim=-1)
        posterior_mean = mu_k + alpha * s2_k / variance * (x - alpha * mu_k)
        return (responsibility * posterior_mean).sum(-1)

    return denoise
