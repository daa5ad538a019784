"""Write a study to disk: the key, and per rater an HTML sheet and a CSV answer template.

    OUT/key-<study>.json                   un-blinds the pairs: keep it away from the raters
    OUT/raters/sheet-<study>-<rater>.html  open in a browser, answer, download the CSV
    OUT/raters/answers-<study>-<rater>.csv the same answers as a spreadsheet template

Everything in ``OUT/raters/`` can be handed out; every file is written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.progress import track

from .answer_csv import answer_template_csv
from ...files.atomic import write_text
from .html_sheet import answers_file_name, render_sheet, sheet_file_name
from .images import image_data_uri
from .study import Study

RATERS_FOLDER = "raters"


@dataclass(frozen=True)
class WrittenStudy:
    """Where `write_study` put each file."""

    key: Path
    sheets: dict[str, Path]  # rater id -> HTML sheet
    templates: dict[str, Path]  # rater id -> CSV template


def key_file_name(study_id: str) -> str:
    """The name of a study's key file."""
    return f"key-{study_id}.json"


def write_study(
    study: Study, out_dir: str | Path, max_side: int = 512, image_format: str = "jpeg", jpeg_quality: int = 95
) -> WrittenStudy:
    """Embed every image once (see `image_data_uri`), then write the key, then each rater's sheet and template."""
    out_dir = Path(out_dir)
    paths = sorted({path for pair in study.pairs.values() for path in pair.images.values()})
    image_uris = {
        path: image_data_uri(path, max_side, image_format, jpeg_quality)
        for path in track(paths, description="embedding images", transient=True)
    }
    key_text = json.dumps(study.to_key(), indent=1, ensure_ascii=False) + "\n"
    key = write_text(out_dir / key_file_name(study.study_id), key_text)  # first: no sheet without its key
    raters_dir = out_dir / RATERS_FOLDER
    sheets, templates = {}, {}
    for rater_id in study.raters:
        html = render_sheet(study, rater_id, image_uris)
        sheets[rater_id] = write_text(raters_dir / sheet_file_name(study.study_id, rater_id), html)
        template = answer_template_csv(study, rater_id)
        templates[rater_id] = write_text(
            raters_dir / answers_file_name(study.study_id, rater_id), template, encoding="utf-8-sig"
        )
    return WrittenStudy(key=key, sheets=sheets, templates=templates)
