"""The forward process q(x_t | x0) and the weighted denoising loss."""

from __future__ import annotations

import torch

from .parameterization import broadcast_to, check_target, training_target
from .schedule import NoiseSchedule, alpha_from_log_snr, sigma_from_log_snr

WEIGHTINGS = ("uniform", "min_snr")


def q_sample(x0: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, noise: torch.Tensor) -> torch.Tensor:
    """x_t = alpha_t x0 + sigma_t eps  (Ho et al. 2020, eq. 4; Kingma et al. 2021, eq. 1)."""
    log_snr = schedule.log_snr_unchecked(t)
    return broadcast_to(alpha_from_log_snr(log_snr), x0) * x0 + broadcast_to(sigma_from_log_snr(log_snr), x0) * noise


def loss_weight(log_snr: torch.Tensor, target: str, weighting: str, gamma: float = 5.0) -> torch.Tensor:
    """Per-sample weight of the MSE on `target`.

    - "uniform": 1 (the plain MSE on the chosen target; "simple" loss of Ho et al. 2020, eq. 14
      when the target is eps).
    - "min_snr": Min-SNR-gamma (Hang et al. 2023, eq. 6-8): the x0-space weight min(SNR, gamma),
      expressed on the chosen target: min(SNR, gamma) / SNR for eps, min(SNR, gamma) / (SNR + 1)
      for v, and min(SNR, gamma) for x0.
    """
    check_target(target)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if weighting == "uniform":
        return torch.ones_like(log_snr)
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0 for min_snr weighting, got {gamma}")
    snr = log_snr.exp()
    clipped = snr.clamp(max=gamma)
    if target == "eps":
        return clipped / snr
    if target == "v":
        return clipped / (snr + 1)
    return clipped


def diffusion_loss(
    prediction: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    target: str = "v",
    weighting: str = "uniform",
    gamma: float = 5.0,
) -> torch.Tensor:
    """Weighted MSE between the network output and its target, one value per sample (B,).

    The mean over pixels is taken per sample so the caller can reduce (mean) or bucket by t.
    """
    log_snr = schedule.log_snr_unchecked(t)
    alpha, sigma = alpha_from_log_snr(log_snr), sigma_from_log_snr(log_snr)
    wanted = training_target(x0, noise, alpha, sigma, target)
    per_sample = (prediction.float() - wanted.float()).pow(2).flatten(1).mean(1)
    return loss_weight(log_snr, target, weighting, gamma) * per_sample
