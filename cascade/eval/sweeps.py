"""Sample folders written by ``cascade sample``, with or without ``--sweep``.

A sweep writes one sub-folder per setting, named ``key=value`` (``guidance=3/``, or for one
stage's setting ``base.guidance=3/``), with several keys either joined by commas
(``base.guidance=3,sr1.aug_level=0.1/``) or nested (``guidance=3/aug_level=0.1/``). Each leaf folder holds PNGs and a ``metadata.jsonl`` with
one JSON object per image, and with ``--keep-intermediate`` the lower stages' outputs under
``intermediate/``: the folder's own images are the final ones, what is scored unless a stage is
asked for (:func:`sample_images`). The metadata keys this module reads: the image file name
(``file``, ``image``, ``filename`` or ``path``) and the condition (``prompt``, ``caption`` or
``class_label``); any others are kept as they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..files.sample_folder import (
    METADATA_FILE,
    is_intermediate_image,
    read_metadata,
    stage_folder,
)
from .sources import IMAGE_EXTENSIONS, list_image_files, require_one_size

FILE_KEYS = ("file", "image", "filename", "path")
CONDITION_KEYS = ("prompt", "caption", "class_label")


def parse_value(text: str) -> object:
    """``"3"`` -> 3.0, ``"0.1"`` -> 0.1, ``"ddim"`` -> ``"ddim"``."""
    try:
        return float(text)
    except ValueError:
        return text


def parse_setting(folder_name: str) -> dict[str, object] | None:
    """``"guidance=3,aug_level=0.1"`` -> ``{"guidance": 3.0, "aug_level": 0.1}``; None if not a setting name."""
    parts = folder_name.split(",")
    if not all("=" in part and part.split("=", 1)[0] for part in parts):
        return None
    return {key: parse_value(value) for key, value in (part.split("=", 1) for part in parts)}


@dataclass
class SampleSet:
    """One folder of samples and the sweep setting it was made with."""

    path: Path
    setting: dict[str, object] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return ",".join(f"{key}={value}" for key, value in self.setting.items()) or self.path.name


def discover_sample_sets(root: str | os.PathLike[str]) -> list[SampleSet]:
    """The sweep settings under `root`, or `root` itself when it is not a sweep.

    A folder counts as a setting when every path component below `root` parses as
    ``key=value`` and it holds images directly. Sorted by setting (numbers numerically).
    """
    root = Path(root)
    sets = []
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        settings = [parse_setting(part) for part in folder.relative_to(root).parts]
        if any(setting is None for setting in settings) or not list_image_files(folder, recursive=False):
            continue
        merged: dict[str, object] = {}
        for setting in settings:
            merged.update(setting)
        sets.append(SampleSet(folder, merged))
    if not sets:
        return [SampleSet(root)]
    return sorted(sets, key=lambda s: [(k, (0, v, "") if isinstance(v, float) else (1, 0, str(v)))
                                       for k, v in s.setting.items()])


def sample_images(folder: str | os.PathLike[str], stage: str | int | None = None,
                  recursive: bool = True) -> tuple[Path, list[Path]]:
    """(the folder read, its image files) of one set of generated images, all of one size.

    Without `stage`: the images under `folder` (in its sub-folders too when `recursive`), leaving
    out the lower stages a sample folder keeps in ``intermediate/``, so a sample folder gives its
    final images. With `stage`: that stage's images (``cascade.files.sample_folder.stage_folder``:
    ``stage0_32px`` or an index). FileNotFoundError without images; ValueError naming the folder
    and the sizes when they are not all one size.
    """
    folder = Path(folder)
    if stage is not None:
        folder, recursive = stage_folder(folder, stage), False
    files = [path for path in list_image_files(folder, recursive) if not is_intermediate_image(path.relative_to(folder))]
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}")
    require_one_size(files, folder)
    return folder, files


def metadata_by_file(folder: str | os.PathLike[str]) -> dict[str, dict[str, object]]:
    """``metadata.jsonl`` of a sample folder as {image file name: record}; empty if absent."""
    if not (Path(folder) / METADATA_FILE).is_file():
        return {}
    records = {}
    for record in read_metadata(folder):
        name = next((record[key] for key in FILE_KEYS if key in record), None)
        if name is not None:
            records[Path(str(name)).name] = record
    return records


def condition_text(record: dict[str, object]) -> str:
    """The prompt / caption / class of a metadata record, as text ('' if none)."""
    for key in CONDITION_KEYS:
        if key in record and record[key] is not None:
            return str(record[key]) if key != "class_label" else f"class {record[key]}"
    return ""
