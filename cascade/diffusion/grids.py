"""Time grids t_0 = 1 > t_1 > ... > t_N = 0 that the samplers walk.

- "uniform_t": uniform in t. On the DDPM linear schedule with N = num_steps it visits exactly
  the discrete DDPM steps.
- "log_snr": uniform in the log-SNR lambda between lambda(1) and lambda(t_min), then t = 0
  (Lu et al. 2022, "DPM-Solver", sec. 3.3, "uniform logSNR"; diffusers' `use_lu_lambdas=True`).
- "karras": EDM's rho spacing (Karras et al. 2022, "Elucidating the Design Space...", eq. 5,
  rho = 7) in sigma = exp(-lambda / 2), the noise level of the EDM variable x / alpha:
      sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
  i = 0..N-1, from sigma_max = sigma(t = 1) to sigma_min = sigma(t_min), then t_N = 0
  (diffusers' `use_karras_sigmas=True`).

t_min, the least noisy point before the final step to t = 0: on the DDPM linear schedule it is
its first discrete step, t = 1 / num_steps (so both grids equal diffusers' on the same betas);
on the continuous schedules (cosine, shifted cosine) it is t = 1e-3, the first of 1000 steps as
these schedules are trained and sampled in DDPM practice. For the cosine schedule this gives
sigma_min = 1.6e-3, close to EDM's sigma_min = 0.002 for data in [-1, 1]; the last step then
goes from t_min to t = 0 (lambda(0) = log_snr_max, or +inf on the linear schedule).
"""

from __future__ import annotations

import torch

from .schedule import NoiseSchedule

GRIDS = ("uniform_t", "log_snr", "karras")
KARRAS_RHO = 7.0
CONTINUOUS_T_MIN = 1e-3


def grid_t_min(schedule: NoiseSchedule) -> float:
    """The least noisy grid point before t = 0 of the log_snr and karras grids (module docstring)."""
    if schedule.name == "linear":
        return 1.0 / schedule.params["num_steps"]
    return CONTINUOUS_T_MIN


def check_grid(grid: str, name: str = "grid") -> None:
    if grid not in GRIDS:
        raise ValueError(f"{name} must be one of {GRIDS}, got {grid!r}")


def time_grid(schedule: NoiseSchedule, steps: int, grid: str, t_start: float = 1.0) -> torch.Tensor:
    """The float64 times t_0 = t_start > ... > t_steps = 0 (shape (steps + 1,)) of `grid` in GRIDS.

    The first point is exactly `t_start` (1: from pure noise; less: a reverse process started
    from data noised to t_start, as SDEdit, Meng et al. 2022) and the last exactly 0. For
    "log_snr" and "karras" the points in between are spaced in lambda or sigma = exp(-lambda / 2)
    from lambda(t_start) and mapped back to t with `NoiseSchedule.t_from_log_snr`.
    """
    check_grid(grid)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    t_min = grid_t_min(schedule)
    if not (isinstance(t_start, (int, float)) and not isinstance(t_start, bool) and t_min < t_start <= 1.0):
        raise ValueError(f"t_start must be in ({t_min:g}, 1], got {t_start!r}")
    if grid == "uniform_t":
        times = torch.linspace(float(t_start), 0.0, steps + 1, dtype=torch.float64)
        times[-1] = 0.0
        return times
    ends = schedule.log_snr_float64(torch.tensor([float(t_start), t_min]))
    lambda_noisiest, lambda_cleanest = ends[0], ends[1]
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    if grid == "log_snr":
        log_snrs = lambda_noisiest + ramp * (lambda_cleanest - lambda_noisiest)
    else:
        # Karras et al. 2022, eq. 5, in sigma = exp(-lambda / 2).
        inverse_rho = 1.0 / KARRAS_RHO
        sigma_max_root = torch.exp(-0.5 * lambda_noisiest) ** inverse_rho
        sigma_min_root = torch.exp(-0.5 * lambda_cleanest) ** inverse_rho
        sigmas = (sigma_max_root + ramp * (sigma_min_root - sigma_max_root)) ** KARRAS_RHO
        log_snrs = -2.0 * torch.log(sigmas)
    log_snrs = log_snrs.clamp(min=lambda_noisiest, max=lambda_cleanest)  # rounding at the ends
    times = torch.cat([schedule.t_from_log_snr(log_snrs), torch.zeros(1, dtype=torch.float64)])
    times[0] = float(t_start)
    return times
