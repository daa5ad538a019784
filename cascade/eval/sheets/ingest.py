"""Check filled answer sheets against the study key and un-blind them.

Every problem across every file is collected before anything is reported, so one run of
`sheets ingest` lists all that needs fixing: a sheet from another study, an unknown rater or
pair id, a duplicate answer (within one file or across files), an empty or unknown answer,
and pairs a rater left out. Raters of the study who handed in no sheet are simply absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .answer_csv import AnswerRow, normalise_answer, read_answer_csv
from .errors import SheetError
from .study import CHOICES, QUESTIONS, Study

# How many missing pair ids one message names before it only counts them.
SHOWN_MISSING = 10


@dataclass(frozen=True)
class Answer:
    """One rater's un-blinded answer to one question about one pair."""

    rater_id: str
    pair_id: str
    question: str
    preferred: str | None  # the preferred system's name; None for "indifferent"


def load_study(key_path: str | Path) -> Study:
    """Read a key file written by `sheets make`."""
    key_path = Path(key_path)
    try:
        key = json.loads(key_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SheetError(f"{key_path}: cannot read key file ({error})") from error
    return Study.from_key(key, source=str(key_path))


def collect_answers(study: Study, sheet_paths: list[str | Path]) -> list[Answer]:
    """Every answer of every sheet, validated and un-blinded; any problem raises `SheetError`."""
    problems: list[str] = []
    first_seen: dict[tuple[str, str], str] = {}  # (rater, pair) -> where it was answered
    files_of_rater: dict[str, list[str]] = {}
    answers: list[Answer] = []
    for path in sheet_paths:
        try:
            rows = read_answer_csv(path)
        except SheetError as error:
            problems += error.problems
            continue
        if not rows:
            problems.append(f"{path}: no answer rows")
            continue
        foreign = next((row for row in rows if row.study_id != study.study_id), None)
        if foreign is not None:
            problems.append(
                f"{foreign.source}: study id {foreign.study_id!r} is not this key's study {study.study_id!r} "
                "(a sheet from another study?); file skipped"
            )
            continue
        for row in rows:
            identity_problems = _check_identity(study, row, first_seen)
            problems += identity_problems
            if identity_problems:
                continue
            first_seen[(row.rater_id, row.pair_id)] = row.source
            rater_files = files_of_rater.setdefault(row.rater_id, [])
            if str(path) not in rater_files:
                rater_files.append(str(path))
            cell_problems = _check_cells(row)
            problems += cell_problems
            if not cell_problems:
                answers += _unblind(study, row)
    problems += _missing_answers(study, first_seen, files_of_rater)
    if problems:
        raise SheetError(problems)
    if not answers:
        raise SheetError("no answers in the given sheets")
    return answers


def _check_identity(study: Study, row: AnswerRow, first_seen: dict[tuple[str, str], str]) -> list[str]:
    """Problems with the row's rater id or pair id (unknown, or answered before)."""
    if row.rater_id not in study.raters:
        return [f"{row.source}: unknown rater id {row.rater_id!r} (this study has {', '.join(study.raters)})"]
    if row.pair_id not in study.raters[row.rater_id].by_pair_id:
        return [f"{row.source}: unknown pair id {row.pair_id!r} for rater {row.rater_id}"]
    earlier = first_seen.get((row.rater_id, row.pair_id))
    if earlier is not None:
        return [
            f"{row.source}: duplicate answer for rater {row.rater_id} pair {row.pair_id} (first answered at {earlier})"
        ]
    return []


def _check_cells(row: AnswerRow) -> list[str]:
    """Problems with the row's answers (empty, or not an accepted choice)."""
    problems = []
    for question, cell in row.answers.items():
        if not cell.strip():
            problems.append(f"{row.source}: missing answer to {question!r} for pair {row.pair_id}")
        elif normalise_answer(cell) is None:
            problems.append(
                f"{row.source}: unknown answer {cell!r} to {question!r} for pair {row.pair_id} "
                f"(expected one of {', '.join(CHOICES)})"
            )
    return problems


def _unblind(study: Study, row: AnswerRow) -> list[Answer]:
    placement = study.raters[row.rater_id].by_pair_id[row.pair_id]
    side_to_system = {"left": placement.left, "right": placement.right, "indifferent": None}
    return [
        Answer(row.rater_id, row.pair_id, question, side_to_system[normalise_answer(row.answers[question])])
        for question in QUESTIONS
    ]


def _missing_answers(
    study: Study, first_seen: dict[tuple[str, str], str], files_of_rater: dict[str, list[str]]
) -> list[str]:
    problems = []
    for rater_id, files in files_of_rater.items():
        missing = [p.pair_id for p in study.raters[rater_id].placements if (rater_id, p.pair_id) not in first_seen]
        if missing:
            shown = ", ".join(missing[:SHOWN_MISSING]) + (", ..." if len(missing) > SHOWN_MISSING else "")
            problems.append(
                f"{' + '.join(files)}: rater {rater_id} has no answers for {len(missing)} of "
                f"{len(study.raters[rater_id].placements)} pairs: {shown}"
            )
    return problems
