"""`cascade bench`: benchmarks of the train step, sampling, the data loader, and imagen-pytorch
side by side; see `cascade.bench.cli` for the commands."""

from .cli import main

__all__ = ["main"]
