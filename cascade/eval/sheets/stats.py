"""Statistics of a pairwise study: preference rates, bootstrap intervals, rater agreement.

Pure numpy, no knowledge of sheets or files; `cascade.eval.sheets.results` feeds it.
"""

from __future__ import annotations

import numpy as np


def preference_rate_with_ci(
    score_sums: np.ndarray,
    answer_counts: np.ndarray,
    resample_indices: np.ndarray,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """A system's preference rate and its percentile-bootstrap interval, resampling pairs.

    ``score_sums[i]`` adds up the system's scores on pair i over the raters (1 preferred,
    0.5 indifferent, 0 the other system preferred) and ``answer_counts[i]`` counts those
    answers; the rate is ``sum(score_sums) / sum(answer_counts)``. ``resample_indices`` is a
    (resamples, pairs) array of pair indices drawn with replacement (`bootstrap_indices`);
    all of one pair's answers travel together, so rater correlation within a pair is kept.
    Returns ``(rate, low, high)``.
    """
    rate = float(score_sums.sum() / answer_counts.sum())
    resampled = score_sums[resample_indices].sum(axis=1) / answer_counts[resample_indices].sum(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    return rate, float(low), float(high)


def bootstrap_indices(pair_count: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """A (resamples, pair_count) array of pair indices drawn uniformly with replacement."""
    return rng.integers(0, pair_count, size=(resamples, pair_count))


def fleiss_kappa(counts: np.ndarray) -> float | None:
    """Fleiss' kappa (Fleiss 1971) of an (items, categories) table of rater counts.

    ``counts[i, j]`` is how many raters put item i in category j; every item needs the same
    number of raters, at least two. kappa = (P_bar - P_e) / (1 - P_e) with P_bar the mean
    per-item agreement (`percent_agreement`) and P_e = sum_j p_j^2 the agreement expected by
    chance from the overall category shares p_j. None when P_e = 1 (every answer in one
    category: agreement beyond chance is undefined) or with fewer than two raters.
    """
    counts = np.asarray(counts, dtype=float)
    raters = _raters_per_item(counts)
    if raters is None:
        return None
    shares = counts.sum(axis=0) / counts.sum()
    chance = float((shares**2).sum())
    if np.isclose(chance, 1.0):
        return None
    observed = float(_per_item_agreement(counts, raters).mean())
    return (observed - chance) / (1.0 - chance)


def percent_agreement(counts: np.ndarray) -> float | None:
    """Mean over items of the share of rater pairs that gave the same answer (Fleiss' P_bar)."""
    counts = np.asarray(counts, dtype=float)
    raters = _raters_per_item(counts)
    return None if raters is None else float(_per_item_agreement(counts, raters).mean())


def unanimous_share(counts: np.ndarray) -> float | None:
    """Share of items on which all raters gave the same answer."""
    counts = np.asarray(counts, dtype=float)
    raters = _raters_per_item(counts)
    return None if raters is None else float((counts.max(axis=1) == raters).mean())


def _raters_per_item(counts: np.ndarray) -> int | None:
    if counts.ndim != 2 or counts.shape[0] == 0:
        return None
    per_item = counts.sum(axis=1)
    if not np.all(per_item == per_item[0]):
        raise ValueError("every item needs the same number of raters")
    return int(per_item[0]) if per_item[0] >= 2 else None


def _per_item_agreement(counts: np.ndarray, raters: int) -> np.ndarray:
    return (counts * (counts - 1)).sum(axis=1) / (raters * (raters - 1))
