"""Data-loader benchmark: decoded training samples per second per worker, from `cascade.data.bench`.

The measurement itself (shards written once into a work folder, the training transform of each
stage, warm-up batch, then a timed stream) is the data package's; this module only turns its
results into benchmark records.
"""

from __future__ import annotations

from ..data import bench as data_bench


def run_loader_benchmark(workdir: str, datasets: list[str], stages: list[str], samples: int) -> list[dict]:
    """One record per (data set, stage) pair."""
    unknown = sorted(set(stages) - set(data_bench.STAGES))
    if unknown:
        raise ValueError(f"unknown loader stages {unknown}; choose from {sorted(data_bench.STAGES)}")
    return [
        {
            "benchmark": "data_loader",
            "dataset": result.dataset,
            "stage": result.stage,
            "stored_size": result.stored_size,
            "samples": result.samples,
            "cpu_seconds": result.cpu_seconds,
            "wall_seconds": result.wall_seconds,
            "samples_per_s_per_worker": result.rate,  # per CPU second of the worker (see cascade.data.bench)
        }
        for result in data_bench.run(workdir, datasets, stages, samples)
    ]
