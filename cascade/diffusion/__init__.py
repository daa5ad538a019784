"""Diffusion math in pure torch: schedules, parameterisations, losses, samplers, guidance."""

from .grids import GRIDS, time_grid
from .guidance import cfg_combine, dynamic_threshold, in_guidance_interval, static_threshold
from .loss import SIGMOID_BIAS, WEIGHTINGS, diffusion_loss, loss_weight, q_sample
from .parameterization import (
    TARGETS,
    eps_from_v,
    eps_from_x0,
    predicted_x0,
    training_target,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_prediction,
    x0_from_v,
)
from .samplers import (
    DEFAULT_GRIDS,
    SAMPLERS,
    Denoiser,
    Generators,
    StepCallback,
    function_evaluations,
    sample,
)
from .schedule import NoiseSchedule, alpha_from_log_snr, check_time, sigma_from_log_snr

__all__ = [
    "DEFAULT_GRIDS",
    "GRIDS",
    "SAMPLERS",
    "TARGETS",
    "WEIGHTINGS",
    "Denoiser",
    "Generators",
    "NoiseSchedule",
    "SAMPLERS",
    "SIGMOID_BIAS",
    "StepCallback",
    "alpha_from_log_snr",
    "cfg_combine",
    "check_time",
    "diffusion_loss",
    "dynamic_threshold",
    "eps_from_v",
    "eps_from_x0",
    "function_evaluations",
    "in_guidance_interval",
    "loss_weight",
    "predicted_x0",
    "q_sample",
    "sample",
    "sigma_from_log_snr",
    "static_threshold",
    "time_grid",
    "training_target",
    "v_from_x0_eps",
    "x0_from_eps",
    "x0_from_prediction",
    "x0_from_v",
]
