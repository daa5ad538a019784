"""`cascade sample-gaussian`: every sampler on every schedule, driven by the exact Gaussian denoiser.

The fastest real end-to-end check of the diffusion core: no training, the optimal model is
known in closed form, so the printed mean / std errors are the samplers' own error.
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table

from ..diffusion.gaussian import gaussian_denoiser
from ..diffusion.samplers import SAMPLERS, sample
from ..diffusion.schedule import NoiseSchedule

SCHEDULES = {
    "cosine": lambda: NoiseSchedule.cosine(),
    "shifted_cosine(0.5)": lambda: NoiseSchedule.shifted_cosine(0.5),
    "linear": lambda: NoiseSchedule.linear(1e-4, 0.02, 1000),
}
# Step counts at which each sampler, on its default grid (DEFAULT_GRIDS), reaches about the test
# tolerance (|std error| 0.01 at s = 0.3) on every schedule.
DEFAULT_STEPS = {"ddpm": 250, "ddim": 120, "dpmpp_2m": 25, "heun": 40, "dpmpp_3m_sde": 100}


def moment_errors(sampler: str, schedule: NoiseSchedule, steps: int, mu: float, s: float, n: int, seed: int):
    """Sample n scalars and return (|mean - mu|, |std - s|)."""
    generator = torch.Generator().manual_seed(seed)
    x = sample(
        gaussian_denoiser(schedule, mu, s), schedule, (n, 1), sampler=sampler, steps=steps,
        generator=generator,
    )
    return abs(x.mean().item() - mu), abs(x.std().item() - s)


def sample_gaussian(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cascade sample-gaussian", description=__doc__)
    parser.add_argument("--mu", type=float, default=0.5, help="data mean")
    parser.add_argument("--s", type=float, default=0.3, help="data standard deviation")
    parser.add_argument("--n", type=int, default=100_000, help="number of scalar samples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    table = Table(title=f"Samplers on x0 ~ N({args.mu}, {args.s}^2), {args.n} samples, exact denoiser")
    for column in ("sampler", "steps", "schedule", "|mean error|", "|std error|"):
        table.add_column(column)
    for sampler in SAMPLERS:
        for name, make in SCHEDULES.items():
            steps = DEFAULT_STEPS[sampler]
            mean_err, std_err = moment_errors(sampler, make(), steps, args.mu, args.s, args.n, args.seed)
            table.add_row(sampler, str(steps), name, f"{mean_err:.4f}", f"{std_err:.4f}")
    Console().print(table)
    return 0
