"""The forward process q(x_t | x0) and the weighted denoising loss."""

from __future__ import annotations

import math

import torch

from .parameterization import broadcast_to, check_target, training_target
from .schedule import NoiseSchedule, alpha_from_log_snr, sigma_from_log_snr

WEIGHTINGS = ("uniform", "min_snr", "sigmoid")

# The bias b of the sigmoid weighting sigmoid(b - lambda): -3, the value of Simpler Diffusion
# (SiD2, Hoogeboom et al. 2024, eq. 4 with b = -3, as the trainings that follow SiD2 use it).
# lambda is the log-SNR of the whole image, so a model at a higher resolution d sees at a given
# lambda what a 64x64 model sees at lambda - 2 log(d / 64) (simple diffusion's shift, Hoogeboom
# et al. 2023, eq. 5): SiD2 pairs its bias with a resolution-shifted schedule, and a stage at
# another resolution tunes `sigmoid_bias` (b - 2 log(d / 64) moves the weight by that shift).
SIGMOID_BIAS = -3.0


def q_sample(x0: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, noise: torch.Tensor) -> torch.Tensor:
    """x_t = alpha_t x0 + sigma_t eps  (Ho et al. 2020, eq. 4; Kingma et al. 2021, eq. 1)."""
    log_snr = schedule.log_snr_unchecked(t)
    return broadcast_to(alpha_from_log_snr(log_snr), x0) * x0 + broadcast_to(sigma_from_log_snr(log_snr), x0) * noise


def loss_weight(
    log_snr: torch.Tensor,
    target: str,
    weighting: str,
    gamma: float = 5.0,
    sigmoid_bias: float = SIGMOID_BIAS,
    d_log_snr_dt: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample weight of the MSE on `target`.

    Each weighting is defined on the eps-MSE and carried to the other targets through the
    identities at a fixed x_t (x_t = alpha x0 + sigma eps, v = alpha eps - sigma x0):
    eps - eps_hat = alpha (v - v_hat) = -(alpha / sigma)(x0 - x0_hat), so
    w_v = w_eps alpha^2 = w_eps SNR / (SNR + 1) and w_x0 = w_eps SNR.

    - "uniform": 1 on the chosen target (the plain MSE; "simple" loss of Ho et al. 2020, eq. 14
      when the target is eps).
    - "min_snr": Min-SNR-gamma (Hang et al. 2023, eq. 6-8): the x0-space weight min(SNR, gamma),
      so min(SNR, gamma) / SNR for eps, min(SNR, gamma) / (SNR + 1) for v, min(SNR, gamma) for x0.
    - "sigmoid": Kingma & Gao 2023 ("Understanding Diffusion Objectives as the ELBO with Simple
      Data Augmentation", eq. 7-8 and the sigmoid weighting of sec. 5; Hoogeboom et al. 2024,
      "Simpler Diffusion", eq. 4): L = E_{t~U(0,1)}[w(lambda_t) (-d lambda/dt) ||eps - eps_hat||^2]
      with w(lambda) = sigmoid(b - lambda), b = `sigmoid_bias`. The -d lambda/dt factor
      (`d_log_snr_dt`, required) is included: with t ~ U(0, 1) it makes the loss the integral
      of w(lambda) ||eps - eps_hat||^2 over lambda, a weighting of noise levels that does not
      depend on the schedule (the schedule only sets where lambda is sampled). On the targets:
      w_eps = sigmoid(b - lambda) (-d lambda/dt), w_v = sigmoid(b - lambda) sigmoid(lambda)
      (-d lambda/dt), and w_x0 = sigmoid(lambda - b) e^b (-d lambda/dt) (= w_eps SNR, written
      without forming SNR = e^lambda).
    """
    check_target(target)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if weighting == "uniform":
        return torch.ones_like(log_snr)
    if weighting == "sigmoid":
        if d_log_snr_dt is None:
            raise ValueError("d_log_snr_dt is required for sigmoid weighting (the -d lambda/dt factor)")
        if not math.isfinite(sigmoid_bias):
            raise ValueError(f"sigmoid_bias must be a finite number, got {sigmoid_bias}")
        density = -d_log_snr_dt
        if target == "eps":
            return torch.sigmoid(sigmoid_bias - log_snr) * density
        if target == "v":
            return torch.sigmoid(sigmoid_bias - log_snr) * torch.sigmoid(log_snr) * density
        return torch.sigmoid(log_snr - sigmoid_bias) * math.exp(sigmoid_bias) * density
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
    sigmoid_bias: float = SIGMOID_BIAS,
) -> torch.Tensor:
    """Weighted MSE between the network output and its target, one value per sample (B,).

    The mean over pixels is taken per sample so the caller can reduce (mean) or bucket by t.
    The weights are `loss_weight`'s; "sigmoid" takes -d lambda/dt from `schedule.d_log_snr_dt`.
    """
    log_snr = schedule.log_snr_unchecked(t)
    alpha, sigma = alpha_from_log_snr(log_snr), sigma_from_log_snr(log_snr)
    wanted = training_target(x0, noise, alpha, sigma, target)
    per_sample = (prediction.float() - wanted.float()).pow(2).flatten(1).mean(1)
    slope = schedule.d_log_snr_dt(t) if weighting == "sigmoid" else None
    return loss_weight(log_snr, target, weighting, gamma, sigmoid_bias, slope) * per_sample
