"""Reading human-evaluation results for the report (per-category preference rates with 95% CIs).

The input is the ``results.json`` that ``cascade eval sheets ingest`` writes (format
``cascade.eval.sheets/results``, documented in :mod:`cascade.eval.sheets.results`): for the
overall set and each category, per question, each system's preference rate (ties split)
with a bootstrap confidence interval, and the raters' agreement. This module flattens it
into rows for tables and bar charts; only the fields listed there are read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

RESULTS_FORMAT = "cascade.eval.sheets/results"
OVERALL = "overall"


@dataclass
class PreferenceRow:
    """How often raters preferred `system` on `question` within `category` (ties split)."""

    category: str
    question: str
    system: str
    rate: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None


@dataclass
class HumanEvalResults:
    """Flattened study results: preference rows, agreement rows and the study's description."""

    rows: list[PreferenceRow]
    agreement: list[dict[str, object]] = field(default_factory=list)
    study: dict[str, object] = field(default_factory=dict)
    questions_text: dict[str, str] = field(default_factory=dict)

    @property
    def questions(self) -> list[str]:
        return list(dict.fromkeys(row.question for row in self.rows))

    @property
    def systems(self) -> list[str]:
        return list(dict.fromkeys(row.system for row in self.rows))

    @property
    def categories(self) -> list[str]:
        """Categories in study order, the overall group last."""
        names = list(dict.fromkeys(row.category for row in self.rows))
        return [c for c in names if c != OVERALL] + [c for c in names if c == OVERALL]


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)


def parse_human_eval(document: dict[str, object]) -> HumanEvalResults:
    """Flatten a ``cascade.eval.sheets/results`` document."""
    if document.get("format") != RESULTS_FORMAT:
        raise ValueError(f"not a human-eval results file (expected format {RESULTS_FORMAT!r}, "
                         f"got {document.get('format')!r}); produce it with `cascade eval sheets ingest`")
    groups = list(document.get("categories") or []) + ([document["overall"]] if document.get("overall") else [])
    rows, agreement = [], []
    for group in groups:
        category = group.get("category") or OVERALL
        for question, summary in group["questions"].items():
            for system, values in summary["systems"].items():
                rows.append(PreferenceRow(category, question, system, float(values["preference"]),
                                          _optional_float(values.get("ci_low")), _optional_float(values.get("ci_high")),
                                          group.get("n_answers")))
            if summary.get("agreement"):
                agreement.append({"category": category, "question": question, **summary["agreement"]})
    study = {key: document[key] for key in ("study_id", "prompt_set") if key in document}
    if "systems" in document:
        study["systems"] = ", ".join(str(system) for system in document["systems"])
    if "raters" in document:
        study["raters"] = len(document["raters"])
    if "bootstrap" in document:
        study["bootstrap"] = ", ".join(f"{k}={v}" for k, v in document["bootstrap"].items())
    return HumanEvalResults(rows, agreement, study, dict(document.get("questions") or {}))


def load_human_eval(path: str | os.PathLike[str]) -> HumanEvalResults:
    try:
        return parse_human_eval(json.loads(Path(path).read_text(encoding="utf-8")))
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: malformed human-eval results ({error!r})") from error
