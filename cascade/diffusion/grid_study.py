"""Which time grid suits which sampler: the closed-form error of each sampler x grid x steps.

Data x0 ~ N(0, s^2) per dimension with its exact denoiser (gaussian.py); a perfect sampler
returns samples with standard deviation s, so |std / s - 1| is the sampler's discretisation
error alone. With this linear denoiser a deterministic sampler is an affine map x_T -> a x_T + b,
so its output std |a| is computed exactly from two runs (x_T = 0 and 1) without Monte Carlo;
the stochastic ones (ddpm, dpmpp_3m_sde with eta = 1) are measured on `monte_carlo_samples`
draws with common random numbers across grids (standard error of the relative std about
1 / sqrt(2 n), 0.1% at n = 500k).

    python -m cascade.diffusion.grid_study        # prints the table
"""

from __future__ import annotations

import torch

from .gaussian import gaussian_denoiser
from .grids import GRIDS
from .samplers import DEFAULT_ETA, DEFAULT_GRIDS, SAMPLERS, sample
from .schedule import NoiseSchedule

STUDY_STEPS = (10, 15, 20, 25)
STUDY_STDS = (0.1, 1.0)
STUDY_SCHEDULES = ("cosine", "linear")


def sample_std(sampler: str, schedule: NoiseSchedule, s: float, steps: int, grid: str,
               monte_carlo_samples: int = 500_000, seed: int = 0) -> float:  # fmt: skip
    """The standard deviation of `sampler`'s output for data N(0, s^2) with the exact denoiser."""
    denoise = gaussian_denoiser(schedule, 0.0, s)
    stochastic = sampler == "ddpm" or DEFAULT_ETA[sampler] > 0
    if not stochastic:
        x_T = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
        x = sample(denoise, schedule, (2, 1), sampler, steps, x_T=x_T, grid=grid)
        return abs(float(x[1, 0] - x[0, 0]))
    generator = torch.Generator().manual_seed(seed)
    x = sample(denoise, schedule, (monte_carlo_samples, 1), sampler, steps, generator, grid=grid)
    return float(x.double().std())


def grid_error_table(samplers: tuple[str, ...] = SAMPLERS, steps: tuple[int, ...] = STUDY_STEPS,
                     stds: tuple[float, ...] = STUDY_STDS, schedules: tuple[str, ...] = STUDY_SCHEDULES,
                     monte_carlo_samples: int = 500_000) -> list[dict]:  # fmt: skip
    """One row per (sampler, schedule, s, steps): the relative std error |std / s - 1| of each grid."""
    rows = []
    for schedule_name in schedules:
        schedule = NoiseSchedule.from_config(schedule_name)
        for sampler in samplers:
            for s in stds:
                for n in steps:
                    errors = {
                        grid: abs(sample_std(sampler, schedule, s, n, grid, monte_carlo_samples) / s - 1.0)
                        for grid in GRIDS
                    }
                    rows.append({"sampler": sampler, "schedule": schedule_name, "s": s, "steps": n, **errors})
    return rows


def mean_errors(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per sampler and grid, the mean relative std error over the rows (schedules, s, steps):
    the criterion `DEFAULT_GRIDS` is chosen by."""
    summary: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        for grid in GRIDS:
            summary.setdefault(row["sampler"], {}).setdefault(grid, []).append(row[grid])
    return {sampler: {grid: sum(v) / len(v) for grid, v in grids.items()} for sampler, grids in summary.items()}


def format_table(rows: list[dict]) -> str:
    lines = [f"{'sampler':<13}{'schedule':<9}{'s':>5}{'steps':>6}" + "".join(f"{grid:>11}" for grid in GRIDS)]
    for row in rows:
        best = min(GRIDS, key=lambda grid: row[grid])
        cells = "".join(f"{row[grid]:>10.2%}{'*' if grid == best else ' '}" for grid in GRIDS)
        lines.append(f"{row['sampler']:<13}{row['schedule']:<9}{row['s']:>5}{row['steps']:>6}{cells}")
    lines.append("mean relative std error over schedules, s and steps (* the default grid):")
    for sampler, grids in mean_errors(rows).items():
        cells = "".join(f"{grids[grid]:>10.2%}{'*' if grid == DEFAULT_GRIDS[sampler] else ' '}" for grid in GRIDS)
        lines.append(f"{sampler:<13}{'':<20}{cells}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_table(grid_error_table()))
