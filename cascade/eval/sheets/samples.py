"""Read a sample folder written by `cascade sample`: image files plus ``metadata.jsonl``.

Each line of ``metadata.jsonl`` is one JSON object with at least ``file`` (relative to the
folder), ``prompt`` and ``index`` (which of several samples for the same prompt; 0 when
absent); other fields (``seed``, ``condition_id``, ...) are ignored here. Images are looked
up by prompt, with whitespace runs collapsed so that ``"a  cat "`` and ``"a cat"`` match.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ...files.sample_folder import METADATA_FILE
from .errors import SheetError


def prompt_key(prompt: str) -> str:
    """The form prompts are matched in: surrounding whitespace dropped, inner runs collapsed."""
    return " ".join(prompt.split())


@dataclass(frozen=True)
class SampleFolder:
    """One system's samples: its name, folder, and image file per (prompt key, index)."""

    name: str
    root: Path
    images: dict[tuple[str, int], Path]

    def image_for(self, prompt: str, index: int) -> Path | None:
        """The image for ``prompt`` with sample index ``index``, or None when there is none."""
        return self.images.get((prompt_key(prompt), index))


def read_sample_folder(name: str, root: str | Path) -> SampleFolder:
    """Index the images of one `cascade sample` folder; problems raise `SheetError`."""
    root = Path(root)
    metadata = root / METADATA_FILE
    if not metadata.is_file():
        raise SheetError(f"system {name!r}: {root} has no {METADATA_FILE} (is it a `cascade sample` folder?)")
    images: dict[tuple[str, int], Path] = {}
    seen_on_line: dict[tuple[str, int], int] = {}
    problems = []
    for line_number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{metadata} line {line_number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append(f"{where}: not valid JSON ({error.msg})")
            continue
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("file"), str)
            or not isinstance(entry.get("prompt"), str)
        ):
            problems.append(f"{where}: needs string fields 'file' and 'prompt'")
            continue
        index = entry.get("index", 0)
        if not isinstance(index, int) or isinstance(index, bool):
            problems.append(f"{where}: 'index' must be an integer, got {index!r}")
            continue
        key = (prompt_key(entry["prompt"]), index)
        if key in seen_on_line:
            problems.append(
                f"{where}: prompt {entry['prompt']!r} index {index} already listed on line {seen_on_line[key]}"
            )
            continue
        seen_on_line[key] = line_number
        images[key] = root / entry["file"]
    if problems:
        raise SheetError(problems)
    return SampleFolder(name=name, root=root, images=images)
