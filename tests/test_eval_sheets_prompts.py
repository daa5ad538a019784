"""The prompt-set reader that `sheets make` (and sampling) use: data/prompt_sets.py."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from cascade.data.prompt_sets import PromptRecord, read_prompt_set


def test_drawbench():
    records = read_prompt_set("drawbench")
    assert len(records) == 200 and len({r.prompt for r in records}) == 200
    counts = Counter(r.category for r in records)
    assert len(counts) == 11 and counts["Colors"] == 25 and counts["Gary Marcus et al."] == 10
    assert records[0] == PromptRecord("A red colored car.", "Colors")


def test_partiprompts_keeps_quotes_and_spaces():
    records = read_prompt_set("partiprompts")
    assert len(records) == 1632 and len(Counter(r.category for r in records)) == 12
    assert any(r.prompt.startswith('"G I G G L E"') for r in records)
    assert sum(r.prompt != r.prompt.strip() for r in records) == 10


def test_any_csv_with_a_prompt_column(tmp_path: Path):
    path = tmp_path / "mine.csv"
    path.write_text('id,Text\n1,"a cat, sitting"\n2,\n3,a dog\n', encoding="utf-8")
    assert read_prompt_set(path) == [PromptRecord("a cat, sitting", ""), PromptRecord("a dog", "")]


def test_plain_text(tmp_path: Path):
    path = tmp_path / "mine.txt"
    path.write_text("a cat\n\n  a dog\n", encoding="utf-8")
    assert read_prompt_set(path) == [PromptRecord("a cat", ""), PromptRecord("  a dog", "")]


def test_errors(tmp_path: Path):
    (tmp_path / "bad.csv").write_text("name,category\nx,y\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no prompt column"):
        read_prompt_set(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="drawbench"):
        read_prompt_set(tmp_path / "absent.csv")


def test_a_negative_prompt_column_gives_each_prompt_its_negative_and_an_empty_cell_none(tmp_path: Path):
    path = tmp_path / "mine.csv"
    path.write_text("prompt,Negative_Prompt\na red circle,a blue circle\ntwo dogs,\n", encoding="utf-8")
    assert read_prompt_set(path) == [PromptRecord("a red circle", "", "a blue circle"), PromptRecord("two dogs", "", None)]
