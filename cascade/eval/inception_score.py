"""Inception Score (Salimans et al. 2016, "Improved Techniques for Training GANs").

IS = exp(E_x KL(p(y|x) || p(y))), computed on `splits` disjoint chunks; the mean and
standard deviation over chunks are reported. As in torch-fidelity (whose numbers this
matches), the rows are first shuffled with ``numpy.random.RandomState(2020)`` and the
logits are the 1008 unbiased logits of the FID Inception network.
"""

from __future__ import annotations

import numpy as np
import torch


def inception_score(logits: torch.Tensor | np.ndarray, splits: int = 10, shuffle_seed: int | None = 2020) -> tuple[float, float]:
    """Return ``(mean, std)`` of the IS over `splits` chunks of the (N, classes) `logits`."""
    logits = torch.as_tensor(logits).double()
    count = logits.shape[0]
    if count < splits:
        raise ValueError(f"IS with {splits} splits needs at least {splits} images, got {count}")
    if shuffle_seed is not None:
        logits = logits[torch.from_numpy(np.random.RandomState(shuffle_seed).permutation(count))]
    probabilities = logits.softmax(dim=1)
    log_probabilities = logits.log_softmax(dim=1)
    scores = []
    for index in range(splits):
        chunk = slice(index * count // splits, (index + 1) * count // splits)
        p_chunk, log_p_chunk = probabilities[chunk], log_probabilities[chunk]
        marginal = p_chunk.mean(dim=0, keepdim=True)
        kl = (p_chunk * (log_p_chunk - marginal.log())).sum(dim=1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores)), float(np.std(scores))
