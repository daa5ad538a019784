"""Turn un-blinded answers into the study's results: the ``results.json`` document and tables.

``results.json`` (written by `sheets ingest`; read by the report builder)::

    {
      "format": "cascade.eval.sheets/results", "version": 1,
      "study_id": "drawbench-1a2b3c4d",
      "prompt_set": "data/prompts/drawbench.csv",
      "sample_index": 0,
      "systems": ["base", "new"],                  # system names, in the order A, B
      "questions": {"quality": "Which image is of higher quality?",
                    "alignment": "Which image better represents the text caption?"},
      "raters": ["r1", "r2", "r3"],                # raters whose sheets were ingested
      "sheets": ["answers-...-r1.csv", ...],       # the files ingested
      "bootstrap": {"resamples": 2000, "seed": 0, "confidence": 0.95, "unit": "pair"},
      "overall": GROUP,                            # all pairs, "category": null
      "categories": [GROUP, ...]                   # one per category, in prompt-set order
    }

    GROUP = {
      "category": "Colors",
      "n_pairs": 25,                               # prompts in the group
      "n_answers": 75,                             # answers per question (pairs x raters)
      "questions": {
        "quality": {                               # and "alignment", same shape
          "systems": {
            "base": {"preference": 0.41, "ci_low": 0.33, "ci_high": 0.50, "preferred": 27},
            "new":  {"preference": 0.59, "ci_low": 0.50, "ci_high": 0.67, "preferred": 42}
          },
          "indifferent": 6,
          "agreement": {"fleiss_kappa": 0.21, "percent_agreement": 0.58, "unanimous": 0.32}
        },
        "alignment": {...}
      }
    }

``preference`` is the share of answers preferring the system with "indifferent" answers
split half-half, so the two systems' preferences add up to 1; ``preferred`` counts the
answers that chose it outright. ``ci_low`` / ``ci_high`` bound a percentile-bootstrap
interval that resamples pairs (each with all its raters' answers), seeded per group so that
the same input gives the same numbers. The agreement fields are over the three choices
(system A, system B, indifferent) after un-blinding: Fleiss' kappa, the mean share of rater
pairs that agree on a pair, and the share of pairs all raters agree on; each is null with
fewer than two raters, and kappa also when every answer is the same.
"""

from __future__ import annotations

import zlib

import numpy as np
from rich.console import Console
from rich.table import Table

from .ingest import Answer
from .stats import (
    bootstrap_indices,
    fleiss_kappa,
    percent_agreement,
    preference_rate_with_ci,
    unanimous_share,
)
from .study import QUESTIONS, Study

RESULTS_FORMAT = "cascade.eval.sheets/results"
RESULTS_VERSION = 1
CONFIDENCE = 0.95


def summarise(study: Study, answers: list[Answer], sheets: list[str], resamples: int = 2000, seed: int = 0) -> dict:
    """The ``results.json`` document (schema in the module docstring)."""
    systems = study.system_names
    raters = sorted({answer.rater_id for answer in answers}, key=list(study.raters).index)
    # choice_counts[question][pair_id] = [answers for system A, for system B, indifferent]
    choice_counts = {question: {} for question in QUESTIONS}
    for answer in answers:
        row = choice_counts[answer.question].setdefault(answer.pair_id, [0, 0, 0])
        row[2 if answer.preferred is None else systems.index(answer.preferred)] += 1
    answered = [pair_id for pair_id in study.pairs if pair_id in choice_counts[next(iter(QUESTIONS))]]
    categories = list(dict.fromkeys(study.pairs[pair_id].category for pair_id in answered))

    def group(category: str | None) -> dict:
        pair_ids = [p for p in answered if category is None or study.pairs[p].category == category]
        rng = np.random.default_rng([seed, zlib.crc32(str(category).encode())])
        indices = bootstrap_indices(len(pair_ids), resamples, rng)
        questions = {
            question: _question_summary(np.array([choice_counts[question][p] for p in pair_ids]), systems, indices)
            for question in QUESTIONS
        }
        return {
            "category": category,
            "n_pairs": len(pair_ids),
            "n_answers": len(pair_ids) * len(raters),
            "questions": questions,
        }

    return {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "study_id": study.study_id,
        "prompt_set": study.prompt_set,
        "sample_index": study.sample_index,
        "systems": systems,
        "questions": dict(QUESTIONS),
        "raters": raters,
        "sheets": [str(sheet) for sheet in sheets],
        "bootstrap": {"resamples": resamples, "seed": seed, "confidence": CONFIDENCE, "unit": "pair"},
        "overall": group(None),
        "categories": [group(category) for category in categories],
    }


def _question_summary(counts: np.ndarray, systems: list[str], indices: np.ndarray) -> dict:
    """One question's preferences, intervals and agreement from (pairs, [A, B, indifferent]) counts."""
    name_a, name_b = systems
    rate_a, low_a, high_a = preference_rate_with_ci(
        counts[:, 0] + 0.5 * counts[:, 2], counts.sum(axis=1), indices, CONFIDENCE
    )
    return {
        "systems": {
            name_a: {"preference": rate_a, "ci_low": low_a, "ci_high": high_a, "preferred": int(counts[:, 0].sum())},
            name_b: {
                "preference": 1.0 - rate_a,
                "ci_low": 1.0 - high_a,
                "ci_high": 1.0 - low_a,
                "preferred": int(counts[:, 1].sum()),
            },
        },
        "indifferent": int(counts[:, 2].sum()),
        "agreement": {
            "fleiss_kappa": fleiss_kappa(counts),
            "percent_agreement": percent_agreement(counts),
            "unanimous": unanimous_share(counts),
        },
    }


def print_results(results: dict, console: Console | None = None) -> None:
    """One rich table per question: each category and overall, both systems, agreement."""
    console = console or Console()
    name_a, name_b = results["systems"]
    console.print(
        f"study [bold]{results['study_id']}[/]: {len(results['raters'])} rater(s), "
        f"{results['overall']['n_pairs']} pairs; 95% bootstrap intervals over pairs "
        f"({results['bootstrap']['resamples']} resamples)"
    )
    for question, text in results["questions"].items():
        table = Table(
            title=f"{question}: {text}",
            title_justify="left",
            caption="preference with ties split [95% CI]; κ: Fleiss' kappa; agree: rater pairs agreeing",
            caption_justify="left",
        )
        table.add_column("category")
        table.add_column("pairs", justify="right")
        table.add_column(name_a, justify="right", no_wrap=True)
        table.add_column(name_b, justify="right", no_wrap=True)
        table.add_column("indiff.", justify="right")
        table.add_column("κ", justify="right")
        table.add_column("agree", justify="right")
        groups = [(g["category"] or "(none)", g) for g in results["categories"]]
        for index, (label, group) in enumerate(groups + [("overall", results["overall"])]):
            summary = group["questions"][question]
            agreement = summary["agreement"]
            style = "bold" if index == len(groups) else None
            table.add_row(
                label,
                str(group["n_pairs"]),
                _rate_with_ci(summary["systems"][name_a]),
                _rate_with_ci(summary["systems"][name_b]),
                str(summary["indifferent"]),
                _number(agreement["fleiss_kappa"], "{:.2f}"),
                _number(agreement["percent_agreement"], "{:.0%}"),
                style=style,
                end_section=index == len(groups) - 1,
            )
        console.print(table)


def _rate_with_ci(system: dict) -> str:
    return f"{system['preference']:.1%} [{100 * system['ci_low']:.0f}–{100 * system['ci_high']:.0f}]"


def _number(value: float | None, template: str) -> str:
    return "–" if value is None else template.format(value)
