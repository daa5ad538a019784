"""Noise schedules in continuous time, expressed through the log signal-to-noise ratio.

A schedule maps t in [0, 1] to lambda(t) = log(alpha_t^2 / sigma_t^2), strictly decreasing,
with t = 0 (almost) clean data and t = 1 (almost) pure noise. The variance-preserving
process (Kingma et al. 2021, "Variational Diffusion Models", eq. 1-3) then has

    alpha_t^2 = sigmoid(lambda(t)),   sigma_t^2 = sigmoid(-lambda(t)),   alpha^2 + sigma^2 = 1.

One object serves training (q_sample, loss weighting) and every sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

LOG_SNR_MAX = 20.0
LOG_SNR_MIN = -20.0


def check_time(t: torch.Tensor, name: str = "t") -> None:
    """Raise ValueError naming `name` unless every entry of t is a finite number in [0, 1]."""
    if not torch.is_tensor(t):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not torch.is_floating_point(t):
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN")
    if ((t < 0) | (t > 1)).any():
        raise ValueError(f"{name} must lie in [0, 1]; got values in [{t.min().item():.4g}, {t.max().item():.4g}]")


class NoiseSchedule:
    """A variance-preserving noise schedule defined by its log-SNR function lambda(t).

    Build one with `NoiseSchedule.cosine()`, `NoiseSchedule.shifted_cosine(shift)`,
    `NoiseSchedule.interpolated_cosine(shift_low, shift_high)` or
    `NoiseSchedule.linear(beta_start, beta_end, num_steps)`.
    """

    def __init__(
        self,
        log_snr_fn: Callable[[torch.Tensor], torch.Tensor],
        name: str,
        params: dict,
        d_log_snr_dt_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self._log_snr_fn = log_snr_fn
        self._d_log_snr_dt_fn = d_log_snr_dt_fn
        self.name = name
        self.params = params

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"NoiseSchedule.{self.name}({args})"

    # --- public, validated accessors -------------------------------------------------
    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = log(alpha_t^2 / sigma_t^2). Raises ValueError if t is not in [0, 1]."""
        check_time(t)
        return self.log_snr_unchecked(t)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_t = sqrt(sigmoid(lambda(t)))."""
        return alpha_from_log_snr(self.log_snr(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma_t = sqrt(sigmoid(-lambda(t)))."""
        return sigma_from_log_snr(self.log_snr(t))

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_snr = self.log_snr(t)
        return alpha_from_log_snr(log_snr), sigma_from_log_snr(log_snr)

    # --- internal: callers that generate t themselves skip the host-syncing check ------
    def log_snr_unchecked(self, t: torch.Tensor) -> torch.Tensor:
        return self._log_snr_fn(t.float())

    def log_snr_float64(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) computed in float64 (time grids, the inverse below); t is not validated."""
        return self._log_snr_fn(t.to(torch.float64))

    # --- the inverse ---------------------------------------------------------------------
    def t_from_log_snr(self, log_snr: torch.Tensor, iterations: int = 64) -> torch.Tensor:
        """The time t in [0, 1] with lambda(t) = log_snr: the inverse of the schedule.

        Generic for any schedule: vectorised bisection in float64 on the strictly decreasing
        lambda(t) (each iteration halves the bracket, so 64 iterations reach float64 resolution
        in t). Returns float64 of the shape of `log_snr`. Raises ValueError naming log_snr for
        values outside [lambda(1), lambda(0)] (or NaN).
        """
        if not torch.is_tensor(log_snr) or not torch.is_floating_point(log_snr):
            raise ValueError(f"log_snr must be a floating-point torch.Tensor, got {log_snr!r}")
        target = log_snr.detach().to(torch.float64)
        ends = self.log_snr_float64(torch.tensor([1.0, 0.0], device=target.device))
        lowest, highest = ends[0].item(), ends[1].item()
        if torch.isnan(target).any() or (target < lowest).any() or (target > highest).any():
            raise ValueError(
                f"log_snr must lie in [lambda(1), lambda(0)] = [{lowest:.6g}, {highest:.6g}] of {self!r}; "
                f"got values in [{target.min().item():.6g}, {target.max().item():.6g}]"
            )
        low = torch.zeros_like(target)  # lambda(low) >= target
        high = torch.ones_like(target)  # lambda(high) <= target
        for _ in range(iterations):
            middle = 0.5 * (low + high)
            above = self._log_snr_fn(middle) >= target
            low = torch.where(above, middle, low)
            high = torch.where(above, high, middle)
        return 0.5 * (low + high)
    def d_log_snr_dt(self, t: torch.Tensor) -> torch.Tensor:
        """d lambda / dt at times t (negative: lambda decreases with t), element-wise.

        -d lambda/dt is the density conversion between t ~ U(0, 1) and lambda: the weighted loss
        E_t[w(lambda_t) (-d lambda/dt) ||eps - eps_hat||^2] = int w(lambda) ||eps - eps_hat||^2 d lambda
        (Kingma & Gao 2023, eq. 7-8) does not depend on the schedule. Closed form for every
        built-in schedule; a schedule built from a bare lambda(t) is differentiated by autograd
        (element-wise: lambda_i depends on t_i only), also under no_grad / inference_mode (as in
        Lightning's validation). t is not validated (no host sync).
        """
        if self._d_log_snr_dt_fn is not None:
            return self._d_log_snr_dt_fn(t.float())
        with torch.inference_mode(False), torch.enable_grad():
            t_leaf = t.float().clone().requires_grad_(True)  # clone: a normal tensor, even from inference mode
            (derivative,) = torch.autograd.grad(self._log_snr_fn(t_leaf).sum(), t_leaf)
        return derivative

    # --- constructors ------------------------------------------------------------------
    @classmethod
    def cosine(cls, log_snr_min: float = LOG_SNR_MIN, log_snr_max: float = LOG_SNR_MAX) -> NoiseSchedule:
        """The cosine schedule (Nichol & Dhariwal 2021): alpha_t = cos(pi t / 2), so
        lambda(t) = -2 log tan(pi t / 2), truncated to [log_snr_min, log_snr_max] by an affine
        change of the angle (Hoogeboom et al. 2023, "simple diffusion", eq. 4 / Alg. 1)."""
        _check_range(log_snr_min, log_snr_max)
        t_min = math.atan(math.exp(-0.5 * log_snr_max))
        t_max = math.atan(math.exp(-0.5 * log_snr_min))

        def log_snr_fn(t: torch.Tensor) -> torch.Tensor:
            return -2.0 * torch.log(torch.tan(t_min + t * (t_max - t_min)))

        def d_log_snr_dt_fn(t: torch.Tensor) -> torch.Tensor:
            # d/du [-2 log tan u] = -2 / (sin u cos u) = -4 / sin(2u), u = t_min + t (t_max - t_min)
            return -4.0 * (t_max - t_min) / torch.sin(2.0 * (t_min + t * (t_max - t_min)))

        return cls(
            log_snr_fn, "cosine", {"log_snr_min": log_snr_min, "log_snr_max": log_snr_max}, d_log_snr_dt_fn
        )

    @classmethod
    def shifted_cosine(
        cls, shift: float, log_snr_min: float = LOG_SNR_MIN, log_snr_max: float = LOG_SNR_MAX
    ) -> NoiseSchedule:
        """Resolution-shifted cosine (Hoogeboom et al. 2023, "simple diffusion", eq. 5):
        lambda_shifted(t) = lambda_cosine(t) + 2 log(shift).

        `shift` = reference_resolution / resolution: 64/256 = 0.25 makes a 256x256 model see
        the same per-pixel-block noise as a 64x64 model on the cosine schedule (more noise
        at every t). shift = 1 is the plain cosine schedule.
        """
        if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
            raise ValueError(f"shift must be a positive finite number, got {shift!r}")
        base = cls.cosine(log_snr_min, log_snr_max)
        offset = 2.0 * math.log(shift)

        def log_snr_fn(t: torch.Tensor) -> torch.Tensor:
            return base._log_snr_fn(t) + offset  # follows t.dtype (float64 in t_from_log_snr)

        return cls(
            log_snr_fn,
            "shifted_cosine",
            {"shift": shift, "log_snr_min": log_snr_min, "log_snr_max": log_snr_max},
            base.d_log_snr_dt,  # a constant offset does not change the slope
        )

    @classmethod
    def interpolated_cosine(
        cls,
        shift_low: float,
        shift_high: float,
        log_snr_min: float = LOG_SNR_MIN,
        log_snr_max: float = LOG_SNR_MAX,
    ) -> NoiseSchedule:
        """The interpolated shifted cosine schedule (Hoogeboom et al. 2023, "simple diffusion",
        sec. 3.1 and its appendix pseudocode; used by SiD2, Hoogeboom et al. 2024):
        lambda(t) = t lambda_shifted(t; shift_low) + (1 - t) lambda_shifted(t; shift_high)
                  = lambda_cosine(t) + 2 [t log(shift_low) + (1 - t) log(shift_high)],
        so low-noise times (t -> 0) follow the `shift_high` schedule and high-noise times
        (t -> 1) the `shift_low` one. Each shift is reference_resolution / resolution, e.g. for a
        512x512 stage interpolating between the schedules of 32x32 and 256x256 models:
        shift_low = 32/512, shift_high = 256/512. Needs shift_low <= shift_high (lambda then
        stays strictly decreasing). d lambda/dt = lambda_cosine'(t) + 2 log(shift_low / shift_high).
        """
        for name, shift in (("shift_low", shift_low), ("shift_high", shift_high)):
            if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
                raise ValueError(f"{name} must be a positive finite number, got {shift!r}")
        if shift_low > shift_high:
            raise ValueError(f"need shift_low <= shift_high, got shift_low={shift_low}, shift_high={shift_high}")
        base = cls.cosine(log_snr_min, log_snr_max)
        log_low, log_high = math.log(shift_low), math.log(shift_high)

        def log_snr_fn(t: torch.Tensor) -> torch.Tensor:
            return base._log_snr_fn(t) + 2.0 * (t * log_low + (1.0 - t) * log_high)

        def d_log_snr_dt_fn(t: torch.Tensor) -> torch.Tensor:
            return base.d_log_snr_dt(t) + 2.0 * (log_low - log_high)

        params = {"shift_low": shift_low, "shift_high": shift_high, "log_snr_min": log_snr_min, "log_snr_max": log_snr_max}
        return cls(log_snr_fn, "interpolated_cosine", params, d_log_snr_dt_fn)

    @classmethod
    def linear(cls, beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000) -> NoiseSchedule:
        """The discrete linear-beta schedule of DDPM (Ho et al. 2020, sec. 4), in continuous time.

        beta_i rises linearly from beta_start to beta_end over i = 1..num_steps and
        alpha_bar_i = prod_{j<=i} (1 - beta_j) (Ho et al. eq. 4). Step i sits at t = i / num_steps,
        t = 0 is clean data (alpha_bar = 1), and log(alpha_bar) is interpolated linearly in t in
        between, so a sampler on the uniform grid t = i / num_steps reproduces DDPM exactly.
        """
        if not (isinstance(num_steps, int) and num_steps >= 1):
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        if not (0 < beta_start <= beta_end < 1):
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}"
            )
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        log_alpha_bar = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-betas), 0)])
        def segment(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """log(abar) at t, and the knots of its segment (in t's dtype: float64 for the time grids)."""
            position = t * num_steps
            index = position.floor().clamp(max=num_steps - 1).long()
            frac = position - index
            table = log_alpha_bar.to(device=t.device, dtype=t.dtype)
            start, end = table[index], table[index + 1]
            return torch.lerp(start, end, frac), start, end

        def log_snr_fn(t: torch.Tensor) -> torch.Tensor:
            log_ab = segment(t)[0]
            # lambda = log(abar / (1 - abar)); -expm1 keeps precision near abar = 1 (t -> 0).
            return log_ab - torch.log(-torch.expm1(log_ab))

        def d_log_snr_dt_fn(t: torch.Tensor) -> torch.Tensor:
            # d/dx [x - log(1 - e^x)] = 1 / (1 - e^x), x = log(abar) linear in t on each segment
            log_ab, start, end = segment(t)
            return num_steps * (end - start) / -torch.expm1(log_ab)

        return cls(
            log_snr_fn,
            "linear",
            {"beta_start": beta_start, "beta_end": beta_end, "num_steps": num_steps},
            d_log_snr_dt_fn,
        )

    @classmethod
    def from_config(cls, name: str, **params) -> NoiseSchedule:
        """Build a schedule by name: 'cosine', 'shifted_cosine', 'interpolated_cosine' or 'linear'
        (used by YAML configs)."""
        constructors = {"cosine": cls.cosine, "shifted_cosine": cls.shifted_cosine,
                        "interpolated_cosine": cls.interpolated_cosine, "linear": cls.linear}
        if name not in constructors:
            raise ValueError(f"schedule name must be one of {sorted(constructors)}, got {name!r}")
        return constructors[name](**params)


def alpha_from_log_snr(log_snr: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(log_snr).sqrt()


def sigma_from_log_snr(log_snr: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(-log_snr).sqrt()


def _check_range(log_snr_min: float, log_snr_max: float) -> None:
    if not (math.isfinite(log_snr_min) and math.isfinite(log_snr_max) and log_snr_min < log_snr_max):
        raise ValueError(
            f"need finite log_snr_min < log_snr_max, got log_snr_min={log_snr_min}, log_snr_max={log_snr_max}"
        )
