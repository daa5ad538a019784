"""Conversions between the three network parameterisations: eps, v and x0.

With x_t = alpha_t x0 + sigma_t eps (alpha^2 + sigma^2 = 1), the network can predict the noise
eps (Ho et al. 2020), the clean image x0, or the velocity v = alpha_t eps - sigma_t x0
(Salimans & Ho 2022, "Progressive Distillation", sec. 4 and appendix D). Each conversion below
is a pure function of (x_t, prediction, alpha_t, sigma_t); alpha and sigma are per-sample
tensors of shape (B,) and broadcast over the image dimensions.
"""

from __future__ import annotations

import torch

from .schedule import NoiseSchedule, alpha_from_log_snr, sigma_from_log_snr

TARGETS = ("eps", "v", "x0")


def broadcast_to(coefficient: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample (B,) coefficient to (B, 1, 1, ...) so it scales a batch `like`."""
    return coefficient.reshape(coefficient.shape + (1,) * (like.ndim - coefficient.ndim)).to(like.dtype)


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t - sigma eps) / alpha  (Ho et al. 2020, eq. 4 solved for x0)."""
    return (x_t - broadcast_to(sigma, x_t) * eps) / broadcast_to(alpha, x_t)


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """eps = (x_t - alpha x0) / sigma."""
    return (x_t - broadcast_to(alpha, x_t) * x0) / broadcast_to(sigma, x_t)


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """v = alpha eps - sigma x0  (Salimans & Ho 2022, sec. 4)."""
    return broadcast_to(alpha, x0) * eps - broadcast_to(sigma, x0) * x0


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0 = alpha x_t - sigma v  (Salimans & Ho 2022, appendix D)."""
    return broadcast_to(alpha, x_t) * x_t - broadcast_to(sigma, x_t) * v


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """eps = sigma x_t + alpha v."""
    return broadcast_to(sigma, x_t) * x_t + broadcast_to(alpha, x_t) * v


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")


def x0_from_prediction(
    prediction: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, target: str
) -> torch.Tensor:
    """The network's x0 estimate, whatever it was trained to predict."""
    check_target(target)
    if target == "x0":
        return prediction
    if target == "eps":
        return x0_from_eps(x_t, prediction, alpha, sigma)
    return x0_from_v(x_t, prediction, alpha, sigma)


def predicted_x0(
    prediction: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, target: str
) -> torch.Tensor:
    """x0_hat from a network output at times t (B,) under `schedule`."""
    log_snr = schedule.log_snr_unchecked(t)
    return x0_from_prediction(prediction, x_t, alpha_from_log_snr(log_snr), sigma_from_log_snr(log_snr), target)


def training_target(
    x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, target: str
) -> torch.Tensor:
    """What the network should output for (x0, eps) at noise level (alpha, sigma)."""
    check_target(target)
    if target == "x0":
        return x0
    if target == "eps":
        return eps
    return v_from_x0_eps(x0, eps, alpha, sigma)
