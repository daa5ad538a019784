"""Where the shard writer's samples come from: an image folder, a caption list, or the synthetic set.

A source is an indexable, picklable object (so a process pool can encode samples): ``len``,
``sample(i)`` -> a shard sample dict (``__key__`` plus fields, see `cascade.data.shards`) or an
`Unreadable` saying why input ``i`` cannot be read or decoded (a corrupt file, an image over the
encoding's ``max_pixels``), ``input_name(i)`` (for messages), ``describe()`` -> a json-ready dict of
everything that determines the output (used to refuse resuming with different settings), and
``classes`` (list of class names, or None).

The order of samples is fixed by the source (plus a seeded shuffle for file sources), and the
key of sample i is ``f"{i:09d}"``, so a resumed write knows exactly where to continue.
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from . import synthetic
from .image_io import ImageEncoding

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def sample_key(index: int) -> str:
    """The shard key of the source's sample `index`."""
    return f"{index:09d}"


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


@dataclass(frozen=True)
class Unreadable:
    """What ``sample(i)`` gives for an input the writer skips (and counts): why, for its warning."""

    reason: str


def _encode_file_sample(
    index: int, path: str, encoding: ImageEncoding, extra: dict[str, Any]
) -> dict[str, Any] | Unreadable:
    """A sample for the image file at `path`, or why it cannot be read or decoded."""
    try:
        field_name, data, (width, height) = encoding.encode_file(_read(path))
    except (OSError, ValueError, SyntaxError) as error:  # ImageTooLarge is a ValueError
        return Unreadable(str(error) or type(error).__name__)
    metadata = {"source": path, "width": width, "height": height}
    sample: dict[str, Any] = {"__key__": sample_key(index), field_name: data}
    if "cls" in extra:
        sample["cls"] = extra["cls"]
    if "class_name" in extra:
        metadata["class_name"] = extra["class_name"]
    if "txt" in extra:
        sample["txt"] = extra["txt"]
    sample["json"] = {**metadata, **extra.get("json", {})}
    return sample


@dataclass
class FolderSource:
    """ImageNet layout: ``root/<class name>/<image file>``; class ids follow sorted folder names."""

    root: str
    encoding: ImageEncoding = field(default_factory=ImageEncoding)
    shuffle_seed: int | None = 0
    classes: list[str] = field(init=False)
    items: list[tuple[str, int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"--source folder: {self.root!r} is not a directory")
        self.classes = sorted(d.name for d in os.scandir(self.root) if d.is_dir())
        if not self.classes:
            raise ValueError(
                f"--source folder: {self.root!r} has no class sub-folders (folder:PATH is the ImageNet layout "
                f"PATH/<class>/<image>); for a flat folder of images, list them with captions in a JSONL or "
                f"CSV file (fields `image`, `caption`) and use --source list:FILE"
            )
        self.items = [
            (os.path.join(self.root, name, file), label)
            for label, name in enumerate(self.classes)
            for file in sorted(os.listdir(os.path.join(self.root, name)))
            if file.lower().endswith(IMAGE_SUFFIXES)
        ]
        if self.shuffle_seed is not None:
            random.Random(self.shuffle_seed).shuffle(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, index: int) -> dict[str, Any] | Unreadable:
        path, label = self.items[index]
        extra = {"cls": label, "class_name": self.classes[label]}
        return _encode_file_sample(index, path, self.encoding, extra)

    def input_name(self, index: int) -> str:
        return self.items[index][0]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "folder",
            "root": os.path.abspath(self.root),
            "count": len(self),
            "shuffle_seed": self.shuffle_seed,
            "encoding": asdict(self.encoding),
        }


@dataclass
class CaptionListSource:
    """A JSONL or CSV list of images with captions.

    JSONL: one object per line with ``image`` (path) and ``caption``; optional ``class``
    (int). CSV: a header with the same column names. Relative image paths are resolved
    against the list file's folder. Other fields/columns are kept in the sample's json.
    """

    list_file: str
    encoding: ImageEncoding = field(default_factory=ImageEncoding)
    shuffle_seed: int | None = 0
    classes: None = field(init=False, default=None)
    rows: list[dict[str, Any]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not os.path.isfile(self.list_file):
            raise FileNotFoundError(f"--source list: {self.list_file!r} does not exist")
        self.rows = self._read_rows()
        base = os.path.dirname(os.path.abspath(self.list_file))
        for number, row in enumerate(self.rows, start=1):
            if "image" not in row or "caption" not in row:
                raise ValueError(
                    f"{self.list_file}: row {number} needs 'image' and 'caption' fields, got {sorted(row)}"
                )
            row["image"] = os.path.join(base, row["image"])
        if self.shuffle_seed is not None:
            random.Random(self.shuffle_seed).shuffle(self.rows)

    def _read_rows(self) -> list[dict[str, Any]]:
        with open(self.list_file, encoding="utf-8", newline="") as handle:
            if self.list_file.lower().endswith(".csv"):
                return [dict(row) for row in csv.DictReader(handle)]
            return [json.loads(line) for line in handle if line.strip()]

    def __len__(self) -> int:
        return len(self.rows)

    def sample(self, index: int) -> dict[str, Any] | Unreadable:
        row = self.rows[index]
        extra: dict[str, Any] = {"txt": str(row["caption"])}
        if row.get("class") not in (None, ""):
            extra["cls"] = int(row["class"])
        extra["json"] = {k: v for k, v in row.items() if k not in ("image", "caption", "class")}
        return _encode_file_sample(index, row["image"], self.encoding, extra)

    def input_name(self, index: int) -> str:
        return self.rows[index]["image"]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "list",
            "list_file": os.path.abspath(self.list_file),
            "count": len(self),
            "shuffle_seed": self.shuffle_seed,
            "encoding": asdict(self.encoding),
        }


@dataclass
class SyntheticSource:
    """The built-in captioned dataset (`cascade.data.synthetic`), rendered at `resolution`."""

    count: int
    resolution: int = 64
    seed: int = 0
    split: str = "train"
    encoding: ImageEncoding = field(default_factory=lambda: ImageEncoding(format="png"))
    classes: list[str] = field(init=False, default_factory=lambda: list(synthetic.CLASS_NAMES))

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"--count must be >= 1, got {self.count}")
        if self.split not in synthetic.SPLITS:
            raise ValueError(f"--split must be one of {synthetic.SPLITS}, got {self.split!r}")

    def __len__(self) -> int:
        return self.count

    def sample(self, index: int) -> dict[str, Any]:
        pixels, scene = synthetic.render_sample(index, self.resolution, seed=self.seed, split=self.split)
        field_name, data = self.encoding.encode_array(pixels)
        return {
            "__key__": sample_key(index),
            field_name: data,
            "cls": scene["class"],
            "txt": scene["caption"],
            "json": scene,
        }

    def input_name(self, index: int) -> str:
        return f"synthetic {self.split} scene {index} (seed {self.seed})"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "synthetic",
            "count": self.count,
            "resolution": self.resolution,
            "seed": self.seed,
            "split": self.split,
            "encoding": asdict(self.encoding),
        }
