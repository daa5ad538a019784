"""Slurm support: the `cascade slurm submit` launcher (the sbatch templates live in slurm/)."""

from cascade.slurm.launcher import main

__all__ = ["main"]
