"""Read prompt sets: DrawBench CSV, PartiPrompts TSV, any CSV with a prompt column, plain text.

    >>> records = read_prompt_set("drawbench")          # a shipped set, by name
    >>> records = read_prompt_set("my_prompts.csv")     # or any file
    >>> records[0]
    PromptRecord(prompt='A red colored car.', category='Colors')

Formats, chosen by the file's suffix:

- ``.tsv``: tab-separated with a header, read without CSV quoting (PartiPrompts has a prompt
  that starts with a literal double quote; see ``data/prompts/SOURCES.md``).
- ``.csv``: comma-separated with a header.
- anything else: plain text, one prompt per line; blank lines are skipped.

In the tabular formats the prompt is the first column named ``prompt``, ``prompts``, ``text``
or ``caption`` (any case), the category the column named ``category`` (any case) and the negative
prompt the column named ``negative_prompt`` (any case; empty cells and files without one: None); a
file without a category column gives every record the category ``""``. Prompt text is kept
exactly as written (PartiPrompts has prompts with leading or trailing spaces).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..resources import shipped

PROMPTS_DIR = shipped("prompts")

# The prompt sets shipped in data/prompts/, by the short name a user may pass instead of a path.
SHIPPED_PROMPT_SETS: dict[str, Path] = {
    "drawbench": PROMPTS_DIR / "drawbench.csv",
    "partiprompts": PROMPTS_DIR / "partiprompts.tsv",
}

PROMPT_COLUMNS = ("prompt", "prompts", "text", "caption")
CATEGORY_COLUMN = "category"
NEGATIVE_PROMPT_COLUMN = "negative_prompt"


@dataclass(frozen=True)
class PromptRecord:
    """One prompt of a prompt set and its category (``""`` when the set has none)."""

    prompt: str
    category: str
    negative_prompt: str | None = None


def resolve_prompt_set(name_or_path: str | Path) -> Path:
    """The file of a shipped prompt set given by name (``drawbench``), or the path itself."""
    key = str(name_or_path).lower()
    if key in SHIPPED_PROMPT_SETS:
        return SHIPPED_PROMPT_SETS[key]
    return Path(name_or_path)


def read_prompt_set(name_or_path: str | Path) -> list[PromptRecord]:
    """Read every prompt of a prompt set, in file order (see the module docstring for formats)."""
    path = resolve_prompt_set(name_or_path)
    if not path.is_file():
        shipped = ", ".join(sorted(SHIPPED_PROMPT_SETS))
        raise FileNotFoundError(f"prompt set {str(path)!r} not found (shipped sets by name: {shipped})")
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return _read_table(path, delimiter="\t", quoting=csv.QUOTE_NONE)
    if suffix == ".csv":
        return _read_table(path, delimiter=",", quoting=csv.QUOTE_MINIMAL)
    return _read_lines(path)


def _read_table(path: Path, delimiter: str, quoting: int) -> list[PromptRecord]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        header = [name.strip().lower() for name in next(reader, [])]
        prompt_column = next((header.index(name) for name in PROMPT_COLUMNS if name in header), None)
        if prompt_column is None:
            raise ValueError(f"{path}: no prompt column; the header needs one of {', '.join(PROMPT_COLUMNS)}")
        category_column = header.index(CATEGORY_COLUMN) if CATEGORY_COLUMN in header else None
        negative_column = header.index(NEGATIVE_PROMPT_COLUMN) if NEGATIVE_PROMPT_COLUMN in header else None
        records = []
        for row in reader:
            if len(row) <= prompt_column or not row[prompt_column].strip():
                continue
            has_category = category_column is not None and category_column < len(row)
            category = row[category_column].strip() if has_category else ""
            negative = row[negative_column] if negative_column is not None and negative_column < len(row) else ""
            records.append(PromptRecord(prompt=row[prompt_column], category=category, negative_prompt=negative or None))
    return records


def _read_lines(path: Path) -> list[PromptRecord]:
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return [PromptRecord(prompt=line, category="") for line in lines if line.strip()]
