"""Classifier-free guidance, autoguidance, the guidance interval and x0 thresholding."""

from __future__ import annotations

import torch


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6), written as
    uncond + scale * (cond - uncond).

    Convention: `scale` = 1 is the plain conditional model, 0 the unconditional one; Ho &
    Salimans' w equals scale - 1. Because x0, eps and v are affine in each other at a fixed x_t,
    combining x0 predictions is the same as combining eps (or v) predictions.

    Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself",
    eq. 2) is the same combination with the guide's conditional prediction in place of
    `uncond`: D_w(x|c) = D_guide(x|c) + w (D_main(x|c) - D_guide(x|c)).
    """
    return uncond + scale * (cond - uncond)


def in_guidance_interval(log_snr: torch.Tensor, interval: tuple[float, float] | None) -> torch.Tensor:
    """Which rows are guided: lambda_lo <= log_snr <= lambda_hi (bool, the shape of log_snr).

    The guidance interval of Kynkaenniemi et al. 2024 ("Applying Guidance in a Limited Interval
    Improves Sample and Distribution Quality in Diffusion Models", sec. 3), in log-SNR: their
    sigma (EDM, sigma_EDM = sigma_t / alpha_t) is lambda = -2 log sigma_EDM, so their
    sigma in (sigma_lo, sigma_hi] is lambda in [-2 log sigma_hi, -2 log sigma_lo). None: every row.
    """
    if interval is None:
        return torch.ones_like(log_snr, dtype=torch.bool)
    low, high = interval
    return (log_snr >= low) & (log_snr <= high)


def static_threshold(x0: torch.Tensor) -> torch.Tensor:
    """Clip x0 predictions to the data range [-1, 1] (Saharia et al. 2022, sec. 2.3)."""
    return x0.clamp(-1.0, 1.0)


def dynamic_threshold(x0: torch.Tensor, percentile: float = 0.995) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3).

    Per sample, s = the `percentile` quantile of |x0|; if s > 1, x0 is clipped to [-s, s] and
    divided by s, pulling saturated pixels inwards. Samples with s <= 1 are unchanged.
    """
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must be in (0, 1], got {percentile}")
    flat = x0.detach().float().abs().flatten(1)
    s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0)
    s = s.reshape((-1,) + (1,) * (x0.ndim - 1)).to(x0.dtype)
    return torch.maximum(torch.minimum(x0, s), -s) / s
