"""The sample folder: which images to make, their seeds, their files, and resuming.

A sample folder holds, per image, `<name>.png` and a `<name>.json` sidecar (the image's
metadata), both written atomically (temporary file + rename), the sidecar last: an image
counts as done when its sidecar exists. `metadata.jsonl` gathers the sidecars once every
rank has finished. Work is split by rank as items[rank::world_size], so ranks never overlap
and together leave no gaps.

With `--keep-intermediate` the outputs of the lower stages go to `intermediate/stage{i}_{size}px/`
under the same names. The folder's own images are its final ones: what an evaluation scores
unless it is asked for one stage by name or index (`stage_folder`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .atomic import remove_stale_temporaries, write_bytes
from .images import png_bytes

METADATA_FILE = "metadata.jsonl"
INTERMEDIATE_DIR = "intermediate"
STAGE_DIR_NAME = re.compile(r"stage(\d+)_(\d+)px")  # intermediate/stage{index}_{size}px


@dataclass(frozen=True)
class WorkItem:
    """One image to generate: the condition (a prompt or a class id) and its sample index."""

    condition_index: int
    condition: str | int
    sample_index: int
    category: str | None = None

    @property
    def name(self) -> str:
        return f"{self.condition_index:05d}_{self.sample_index:03d}"

    def seed(self, base_seed: int) -> int:
        """A seed that depends only on (base seed, condition, sample index): a rerun, another
        batch size or another number of ranks gives the same image."""
        key = f"{base_seed}\x00{self.condition!r}\x00{self.sample_index}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:7], "big")


def work_items(conditions: list[tuple[str | int, str | None]],
               per_condition: int | Sequence[int]) -> list[WorkItem]:
    """Every (condition, sample index) pair in a fixed order; conditions are (value, category).
    `per_condition`: images of every condition, or one count per condition."""
    counts = [per_condition] * len(conditions) if isinstance(per_condition, int) else list(per_condition)
    if len(counts) != len(conditions):
        raise ValueError(f"--n-per-condition: {len(counts)} counts for {len(conditions)} conditions")
    if any(count < 1 for count in counts):
        raise ValueError(f"--n-per-condition must be >= 1, got {per_condition}")
    return [
        WorkItem(i, condition, k, category)
        for i, ((condition, category), count) in enumerate(zip(conditions, counts))
        for k in range(count)
    ]


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the number of ranks, from torchrun (RANK / WORLD_SIZE) or
    Slurm (SLURM_PROCID / SLURM_NTASKS); (0, 1) when neither launched us."""
    for rank_key, world_key in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_key in os.environ and world_key in os.environ:
            rank, world = int(os.environ[rank_key]), int(os.environ[world_key])
            if not 0 <= rank < world:
                raise ValueError(f"{rank_key}={rank} is outside [0, {world_key}={world})")
            return rank, world
    return 0, 1


def shard_for_rank(items: list[WorkItem], rank: int, world_size: int) -> list[WorkItem]:
    return items[rank::world_size]


def intermediate_dir(folder: Path, stage_index: int, image_size: int) -> Path:
    """Where `--keep-intermediate` puts the outputs of stage `stage_index` (not the last one)."""
    return folder / INTERMEDIATE_DIR / f"stage{stage_index}_{image_size}px"


def intermediate_dirs(folder: Path) -> list[tuple[int, Path]]:
    """(image size, folder) of each kept intermediate stage of a sample folder, in cascade order."""
    found = []
    for path in (folder / INTERMEDIATE_DIR).glob("stage*_*px"):
        match = STAGE_DIR_NAME.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), int(match.group(2)), path))
    return [(size, path) for _, size, path in sorted(found)]


def is_intermediate_image(path: Path) -> bool:
    """True for a file inside a sample folder's `intermediate/stage{i}_{size}px/`: a lower stage's
    output, never one of the folder's final images."""
    parts = path.parts
    return len(parts) >= 3 and parts[-3] == INTERMEDIATE_DIR and STAGE_DIR_NAME.fullmatch(parts[-2]) is not None


def stage_folder(folder: Path, stage: str | int) -> Path:
    """The folder holding one stage's images of a sample folder: a kept intermediate stage named
    as its folder (`stage0_32px`) or by its index (0), or `folder` itself for the index of the
    final stage (one past the last kept one). ValueError naming the folder and its stages otherwise."""
    text = str(stage).strip()
    kept = [path for _, path in intermediate_dirs(folder)]
    for path in kept:
        if text == path.name or (text.isdigit() and int(text) == _stage_index(path)):
            return path
    if kept and text.isdigit() and int(text) == _stage_index(kept[-1]) + 1:
        return folder
    if not kept:
        raise ValueError(f"{folder}: no stage {text!r}: it keeps no intermediate stages "
                         f"(no {INTERMEDIATE_DIR}/stage{{i}}_{{size}}px folders; `cascade sample --keep-intermediate` writes them)")
    names = ", ".join(f"{path.name} ({_stage_index(path)})" for path in kept)
    raise ValueError(f"{folder}: no stage {text!r}; its stages: {names}, and the final images ({_stage_index(kept[-1]) + 1})")


def _stage_index(path: Path) -> int:
    return int(STAGE_DIR_NAME.fullmatch(path.name).group(1))


def is_done(folder: Path, item: WorkItem) -> bool:
    return (folder / f"{item.name}.json").exists() and (folder / f"{item.name}.png").exists()


def write_image(folder: Path, name: str, image: torch.Tensor, metadata: dict) -> None:
    """The PNG first, then its sidecar: the sidecar marks the image complete."""
    write_bytes(folder / f"{name}.png", png_bytes(image))
    write_bytes(folder / f"{name}.json", (json.dumps(metadata, sort_keys=True) + "\n").encode())


def remove_stale_writes(folder: Path, items: list[WorkItem]) -> int:
    """Remove the temporary files a killed earlier run left for these items' PNGs and sidecars
    (one listing of the folder). Only for the rank that writes these items."""
    return remove_stale_temporaries(folder, [f"{item.name}{suffix}" for item in items for suffix in (".png", ".json")])


def read_metadata(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a sample folder's metadata.jsonl in file order (blank lines skipped);
    FileNotFoundError when the folder has none, ValueError naming a line that is not a JSON object."""
    path = Path(folder) / METADATA_FILE
    records = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{line_number}: expected a JSON object per line")
        records.append(record)
    return records


def merge_metadata(folder: Path) -> int:
    """Gather every sidecar of a folder into metadata.jsonl (sorted by file name); returns the count."""
    lines = [
        sidecar.read_text().strip()
        for sidecar in sorted(folder.glob("*.json"))
        if (folder / f"{sidecar.stem}.png").exists()
    ]
    remove_stale_temporaries(folder, [METADATA_FILE])
    write_bytes(folder / METADATA_FILE, ("\n".join(lines) + "\n").encode() if lines else b"")
    return len(lines)
