"""Fréchet distance between Gaussians fitted to features: FID (Heusel et al. 2017) and FD_DINOv2 (Stein et al. 2023).

    d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))

Tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the
symmetric PSD matrix S2^(1/2) S1 S2^(1/2), which has the same spectrum as S1 S2. Two
symmetric eigendecompositions in float64 are faster and more stable than the general
`scipy.linalg.sqrtm` (pytorch-fid, clean-fid) or non-symmetric `eigvals` (torch-fidelity),
and need no diagonal jitter when the covariances are singular (fewer samples than dims).
S2^(1/2) depends on the reference set only, so it can be computed once and reused
(:meth:`cascade.eval.features.ReferenceStatistics.sqrt_sigma`), which leaves one eigenvalue-only
decomposition per FID.
"""

from __future__ import annotations

import numpy as np


def mean_and_covariance(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean and unbiased covariance (``np.cov(rowvar=False)``) in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need a (N >= 2, D) feature matrix, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The PSD square root of a symmetric PSD matrix (negative round-off eigenvalues clipped to 0)."""
    matrix = np.asarray(matrix, np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     sqrt_sigma2: np.ndarray | None = None) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    `sqrt_sigma2` optionally gives ``symmetric_sqrt(sigma2)`` precomputed.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    root = symmetric_sqrt(sigma2) if sqrt_sigma2 is None else np.asarray(sqrt_sigma2, np.float64)
    middle = root @ sigma1 @ root
    trace_sqrt_product = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product)
