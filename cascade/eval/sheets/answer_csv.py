"""The answer CSV: the template `sheets make` writes and the file a rater hands back.

The HTML sheet's download button writes exactly this format too. One row per pair, in the
rater's order, with the columns `COLUMNS`; the answer columns hold ``left``, ``right`` or
``indifferent`` (``l`` / ``r`` / ``i`` and any letter case are accepted on reading). Files are
UTF-8 with a byte-order mark so that spreadsheet programs show non-ASCII prompts correctly;
on reading, commas, semicolons and tabs are all accepted as separators, and a file that is not
UTF-8 (a spreadsheet's legacy encoding) is read as Latin-1, which is harmless because only
the ASCII id and answer columns are used.

Prompts are user text (OWASP, "CSV Injection"): every field is quoted, so a spreadsheet whose
list separator is ``;`` or a tab cannot split a prompt into a new cell, and a cell that a
spreadsheet would run as a formula (one starting with NUL, a tab or a carriage return, or with
``=``, ``+``, ``-`` or ``@`` after any leading whitespace or control characters) is written with a
leading ``'``.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .errors import SheetError
from .study import QUESTIONS, Study

COLUMNS = ("study_id", "rater_id", "position", "pair_id", "prompt", *QUESTIONS)
REQUIRED_COLUMNS = ("study_id", "rater_id", "pair_id", *QUESTIONS)
FORMULA_CHARACTERS = ("=", "+", "-", "@")
DANGEROUS_FIRST_CHARACTERS = ("\0", "\t", "\r")
ANSWER_ALIASES = {
    "left": "left",
    "l": "left",
    "right": "right",
    "r": "right",
    "indifferent": "indifferent",
    "i": "indifferent",
}


def neutralise_formula(text: str) -> str:
    """``text`` with a leading ``'`` when a spreadsheet could read it as a formula."""
    visible = next((ch for ch in text if not (ch.isspace() or unicodedata.category(ch).startswith("C"))), "")
    if text.startswith(DANGEROUS_FIRST_CHARACTERS) or (visible and visible in FORMULA_CHARACTERS):
        return "'" + text
    return text


def answer_template_csv(study: Study, rater_id: str) -> str:
    """The empty answer sheet of one rater, as CSV text (write it with a UTF-8 BOM)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_ALL)
    writer.writerow(COLUMNS)
    for placement in study.raters[rater_id].placements:
        prompt = study.pairs[placement.pair_id].prompt
        row = [study.study_id, rater_id, str(placement.position), placement.pair_id, prompt] + [""] * len(QUESTIONS)
        writer.writerow([neutralise_formula(cell) for cell in row])
    return buffer.getvalue()


@dataclass(frozen=True)
class AnswerRow:
    """One row of a filled answer sheet, as written (answers not yet checked)."""

    source: str  # "FILE row N", for error messages
    study_id: str
    rater_id: str
    pair_id: str
    answers: dict[str, str]  # question -> the cell's text


def normalise_answer(cell: str) -> str | None:
    """``left`` / ``right`` / ``indifferent`` for an accepted spelling, None otherwise."""
    return ANSWER_ALIASES.get(cell.strip().lower())


def read_answer_csv(path: str | Path) -> list[AnswerRow]:
    """The non-empty rows of one filled answer sheet; a missing column raises `SheetError`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise SheetError(f"{path}: cannot read answer sheet ({error})") from error
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:  # a spreadsheet's legacy encoding: the columns read here are ASCII anyway
        text = raw.decode("latin-1")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    header = [name.strip().lower() for name in next(reader, [])]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise SheetError(
            f"{path} row 1: missing column(s) {', '.join(missing)} (expected a header like {','.join(COLUMNS)})"
        )
    column = {name: header.index(name) for name in REQUIRED_COLUMNS}
    rows = []
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue
        cells = cells + [""] * (len(header) - len(cells))
        rows.append(
            AnswerRow(
                source=f"{path} row {reader.line_num}",
                study_id=cells[column["study_id"]].strip(),
                rater_id=cells[column["rater_id"]].strip(),
                pair_id=cells[column["pair_id"]].strip(),
                answers={question: cells[column[question]] for question in QUESTIONS},
            )
        )
    return rows


def _delimiter(text: str) -> str:
    """The separator of the header line: whichever of , ; tab splits it into the most cells."""
    header = text.splitlines()[0] if text else ""
    return max((",", ";", "\t"), key=header.count)
