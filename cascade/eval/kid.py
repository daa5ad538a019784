"""Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs").

The unbiased estimate of the squared MMD with the cubic polynomial kernel
k(x, y) = (x.y / d + 1)^3, averaged over `subsets` random subsets of `subset_size` samples
from each set (without replacement). Unbiased: near 0 (and possibly slightly negative) for
two samples of the same distribution. Subsets are drawn as torch-fidelity draws them
(``numpy.random.RandomState(seed)``, generated set first), so the numbers match it.
"""

from __future__ import annotations

import numpy as np
import torch


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1) ** 3


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    m = x.shape[0]
    k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def kernel_inception_distance(
    real: torch.Tensor | np.ndarray,
    fake: torch.Tensor | np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 2020,
) -> tuple[float, float]:
    """Return ``(mean, std)`` of the KID over subsets; `subset_size` is capped by both set sizes."""
    real = np.asarray(torch.as_tensor(real).double())
    fake = np.asarray(torch.as_tensor(fake).double())
    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    for index in range(subsets):
        fake_subset = fake[rng.choice(fake.shape[0], size, replace=False)]
        real_subset = real[rng.choice(real.shape[0], size, replace=False)]
        values[index] = _unbiased_mmd2(fake_subset, real_subset)
    return float(values.mean()), float(values.std())
