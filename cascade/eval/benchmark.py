"""`cascade eval benchmark`: feature-extraction throughput and the cost of FID from cached statistics.

Measures, on the chosen device:

1. images per second through a feature extractor (default: the FID Inception-v3 architecture
   with random weights, which costs exactly what the real weights cost), uint8 inputs of
   ``--image-size`` resized to 299 inside, after one warm-up batch;
2. the time to turn ``--fake-features`` generated features (N x 2048) into mean/covariance,
   and the Fréchet distance against cached reference statistics (2048-d), i.e. the cost of
   FID once the features exist.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .frechet import frechet_distance, mean_and_covariance, symmetric_sqrt


def extraction_throughput(extractor, batch_size: int, batches: int, image_size: int) -> tuple[float, float]:  # noqa: ANN001
    """(images per wall-clock second, images per CPU second of this process) over `batches`
    timed batches, after one untimed warm-up batch. On a shared machine the CPU-second figure
    is the stable one; wall-clock is what a user waits."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8, generator=generator)
    extractor.features_and_logits(images)
    if extractor.device.type == "cuda":
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        extractor.features_and_logits(images)
    if extractor.device.type == "cuda":
        torch.cuda.synchronize()
    count = batch_size * batches
    return count / (time.perf_counter() - start), count / (time.process_time() - start_cpu)


def fid_from_cached_statistics_seconds(num_fake: int, dim: int = 2048, repeats: int = 3) -> dict[str, float]:
    """Best-of-`repeats` wall-clock and CPU (``*_cpu``) seconds for: the mean/covariance of the
    fake features ("statistics"); the Fréchet distance from scratch ("distance"); and with the
    reference's matrix square root already cached ("distance_cached_sqrt"), as
    :class:`cascade.eval.metrics.GenerativeMetrics` does after its first FID."""
    rng = np.random.RandomState(0)
    mixing = rng.randn(dim, dim).astype(np.float32) / np.sqrt(dim)
    reference = rng.randn(4 * dim, dim).astype(np.float32) @ mixing
    mu_real, sigma_real = mean_and_covariance(reference)
    fake = (rng.randn(num_fake, dim).astype(np.float32) @ mixing) * 1.1
    sqrt_sigma_real = symmetric_sqrt(sigma_real)
    steps = {
        "statistics": lambda: mean_and_covariance(fake),
        "distance": lambda: frechet_distance(mu_fake, sigma_fake, mu_real, sigma_real),
        "distance_cached_sqrt": lambda: frechet_distance(mu_fake, sigma_fake, mu_real, sigma_real, sqrt_sigma_real),
    }
    mu_fake, sigma_fake = mean_and_covariance(fake)
    times: dict[str, float] = {}
    for name, step in steps.items():
        wall, cpu = [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        times[name], times[f"{name}_cpu"] = min(wall), min(cpu)
    return times
