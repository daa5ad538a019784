"""Statistics of `sheets ingest`: Fleiss' kappa, agreement, preference rates, bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.eval.sheets.ingest import Answer
from cascade.eval.sheets.results import summarise
from cascade.eval.sheets.stats import (
    bootstrap_indices,
    fleiss_kappa,
    percent_agreement,
    preference_rate_with_ci,
    unanimous_share,
)
from cascade.eval.sheets.study import Pair, Placement, RaterSheet, Study

# Fleiss (1971)'s worked example as reproduced on Wikipedia ("Fleiss' kappa"): 10 items,
# 14 raters, 5 categories; P_bar = 0.378, P_e = 0.213, kappa = 0.210.
FLEISS_EXAMPLE = np.array(
    [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
)


def test_fleiss_kappa_worked_example():
    assert percent_agreement(FLEISS_EXAMPLE) == pytest.approx(0.37802, abs=1e-5)
    assert fleiss_kappa(FLEISS_EXAMPLE) == pytest.approx(0.20993, abs=1e-5)


def test_fleiss_kappa_small_table_by_hand():
    # 3 raters, choices (A, B, indifferent). Per-item agreement: 1, 1/3, 1/3, 1/3 -> P_bar = 1/2.
    # Shares: A 5/12, B 4/12, indifferent 3/12 -> P_e = (25 + 16 + 9) / 144 = 50/144.
    counts = np.array([[3, 0, 0], [1, 2, 0], [1, 0, 2], [0, 0, 3] if False else [0, 3, 0]])
    counts = np.array([[3, 0, 0], [1, 2, 0], [1, 0, 2], [0, 2, 1]])
    assert percent_agreement(counts) == pytest.approx(0.5)
    assert fleiss_kappa(counts) == pytest.approx((0.5 - 50 / 144) / (1 - 50 / 144))
    assert unanimous_share(counts) == pytest.approx(0.25)


def test_fleiss_kappa_edge_cases():
    assert fleiss_kappa(np.array([[3, 0, 0], [0, 3, 0], [0, 0, 3]])) == pytest.approx(1.0)
    assert fleiss_kappa(np.array([[3, 0, 0], [3, 0, 0]])) is None, "one category only: undefined"
    assert fleiss_kappa(np.array([[1, 0, 0], [0, 1, 0]])) is None, "one rater: undefined"
    assert percent_agreement(np.array([[1, 0, 0]])) is None
    with pytest.raises(ValueError, match="same number of raters"):
        fleiss_kappa(np.array([[2, 0, 0], [1, 1, 1]]))


def test_bootstrap_interval_contains_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    score_sums = rng.choice([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0], size=60)
    counts = np.full(60, 3.0)
    first = preference_rate_with_ci(score_sums, counts, bootstrap_indices(60, 2000, np.random.default_rng(1)))
    again = preference_rate_with_ci(score_sums, counts, bootstrap_indices(60, 2000, np.random.default_rng(1)))
    other = preference_rate_with_ci(score_sums, counts, bootstrap_indices(60, 2000, np.random.default_rng(2)))
    rate, low, high = first
    assert rate == pytest.approx(score_sums.sum() / 180)
    assert low < rate < high and high - low < 0.3
    assert first == again and first[1:] != other[1:] and other[0] == rate


def study_with(pair_categories: list[str], raters: int) -> Study:
    pairs = {
        f"p{i}": Pair(f"p{i}", f"prompt {i}", category, {"A": "a.png", "B": "b.png"})
        for i, category in enumerate(pair_categories)
    }
    sheets = {
        f"r{r}": RaterSheet(f"r{r}", [Placement(i + 1, pair_id, "A", "B") for i, pair_id in enumerate(pairs)])
        for r in range(raters)
    }
    return Study("s", "now", 0, "set.csv", 0, {"A": "a", "B": "b"}, pairs, sheets)


def test_summarise_splits_ties_and_is_deterministic():
    study = study_with(["x", "x", "y", "y"], raters=2)
    # quality: A wins p0 twice, B wins p1 twice, p2 one tie and one A, p3 two ties.
    preferred = {
        ("r0", "p0"): "A",
        ("r1", "p0"): "A",
        ("r0", "p1"): "B",
        ("r1", "p1"): "B",
        ("r0", "p2"): None,
        ("r1", "p2"): "A",
        ("r0", "p3"): None,
        ("r1", "p3"): None,
    }
    answers = [Answer(r, p, q, choice) for (r, p), choice in preferred.items() for q in ("quality", "alignment")]
    results = summarise(study, answers, sheets=["s.csv"], resamples=500, seed=3)
    quality = results["overall"]["questions"]["quality"]
    assert quality["systems"]["A"]["preference"] == pytest.approx((2 + 0 + 1.5 + 1) / 8)
    assert quality["systems"]["A"]["preferred"] == 3 and quality["systems"]["B"]["preferred"] == 2
    assert quality["indifferent"] == 3
    assert quality["agreement"]["unanimous"] == pytest.approx(0.75)
    by_category = {g["category"]: g for g in results["categories"]}
    assert by_category["x"]["questions"]["quality"]["systems"]["A"]["preference"] == pytest.approx(0.5)
    assert by_category["y"]["questions"]["quality"]["systems"]["A"]["preference"] == pytest.approx(2.5 / 4)
    assert by_category["y"]["n_pairs"] == 2 and by_category["y"]["n_answers"] == 4
    assert summarise(study, answers, sheets=["s.csv"], resamples=500, seed=3) == results
    for group in [results["overall"], *results["categories"]]:
        for summary in group["questions"].values():
            a, b = summary["systems"]["A"], summary["systems"]["B"]
            assert a["ci_low"] <= a["preference"] <= a["ci_high"]
            assert b["ci_low"] == pytest.approx(1 - a["ci_high"]) and b["ci_high"] == pytest.approx(1 - a["ci_low"])
