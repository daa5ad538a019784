"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall
Metric for Assessing Generative Models").

Each set's manifold is the union of balls around its points, the radius of a ball being the
distance to the point's k-th nearest neighbour in its own set (k = 3). Precision is the
fraction of generated samples inside the real manifold; recall the fraction of real samples
inside the generated manifold. Distances are Euclidean in feature space, computed in blocks
so 50k x 50k sets fit in memory; matches torch-fidelity's `prc`.
"""

from __future__ import annotations

import numpy as np
import torch


def knn_radii(features: torch.Tensor, k: int = 3, block_size: int = 10000) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    if features.shape[0] <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} points, got {features.shape[0]}")
    radii = [torch.cdist(block, features).kthvalue(k + 1, dim=1).values for block in features.split(block_size)]
    return torch.cat(radii)


def _fraction_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block_size: int) -> float:
    inside = [(torch.cdist(block, centres) <= radii).any(dim=1) for block in points.split(block_size)]
    return torch.cat(inside).float().mean().item()


def precision_recall(
    real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray, k: int = 3, block_size: int = 10000
) -> tuple[float, float]:
    """Return ``(precision, recall)`` of `fake` against `real`, both (N, D) features."""
    real, fake = torch.as_tensor(real).float(), torch.as_tensor(fake).float()
    precision = _fraction_inside(fake, real, knn_radii(real, k, block_size), block_size)
    recall = _fraction_inside(real, fake, knn_radii(fake, k, block_size), block_size)
    return precision, recall
