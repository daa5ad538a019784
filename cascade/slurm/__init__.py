"""Slurm support: the `cascade slurm submit` launcher (the sbatch templates live in slurm/)."""

from .launcher import main

__all__ = ["main"]
