"""Sampling a cascade to disk: one folder of images with their metadata, resumable and split by rank.

`sample_folder` writes this rank's missing images of one folder in the sample-folder format of
`cascade.files.sample_folder` (one PNG per image, one metadata line per image, every stage's
output under `intermediate/` when asked); rerunning it skips what is done.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..files.hashing import file_sha256
from ..files.sample_folder import (
    intermediate_dir,
    is_done,
    rank_and_world_size,
    remove_stale_writes,
    shard_for_rank,
    work_items,
    write_image,
)
from . import Cascade


@dataclass(frozen=True)
class FolderJob:
    """What to generate into one folder: every condition n_per_condition times."""

    n_per_condition: int = 1
    batch_size: int = 8
    seed: int = 0
    keep_intermediate: bool = False
    progress: bool = True


def sample_folder(cascade: Cascade, conditions, job: FolderJob, folder: Path, rank: int = 0, world_size: int = 1,
                  console: Console | None = None) -> int:
    """Generate this rank's missing images of one folder; returns how many it wrote."""
    console = console or Console(stderr=True, soft_wrap=True)
    folder.mkdir(parents=True, exist_ok=True)
    items = shard_for_rank(work_items(conditions, job.n_per_condition), rank, world_size)
    todo = [item for item in items if not is_done(folder, item)]
    hashes = [_source_hash(source) for source in cascade.sources]
    settings = [setting.to_dict() for setting in cascade.settings]
    intermediate_dirs = []
    if job.keep_intermediate:
        for index, stage in enumerate(cascade.stages[:-1]):
            intermediate_dirs.append(intermediate_dir(folder, index, stage.image_size))
            intermediate_dirs[-1].mkdir(parents=True, exist_ok=True)
    for directory in (folder, *intermediate_dirs):
        remove_stale_writes(directory, todo)
    if len(todo) < len(items):
        console.print(f"rank {rank}: {folder}: {len(items) - len(todo)} of {len(items)} images already done, resuming", markup=False)
    text = cascade.conditioning == "text"
    with _progress(console, job.progress) as progress:
        task = progress.add_task(f"rank {rank}: {folder.name}", total=len(todo))
        for start in range(0, len(todo), job.batch_size):
            batch = todo[start : start + job.batch_size]
            seeds = [item.seed(job.seed) for item in batch]
            conditions_batch = [item.condition for item in batch]
            outputs = cascade.generate(
                seeds,
                prompts=conditions_batch if text else None,
                class_labels=None if text else conditions_batch,
                keep_intermediate=job.keep_intermediate,
            )
            for row, (item, seed) in enumerate(zip(batch, seeds)):
                for directory, images in zip(intermediate_dirs, outputs[:-1]):
                    write_image(directory, item.name, images[row], {"file": f"{item.name}.png", "seed": seed})
                metadata = {
                    "file": f"{item.name}.png",
                    "condition_index": item.condition_index,
                    "index": item.sample_index,
                    "seed": seed,
                    ("prompt" if text else "class_label"): item.condition,
                    "category": item.category,
                    "stages": [
                        {"source": source, "sha256": digest, "image_size": stage.image_size, **setting}
                        for source, digest, stage, setting in zip(cascade.sources, hashes, cascade.stages, settings)
                    ],
                }
                write_image(folder, item.name, outputs[-1][row], metadata)
            progress.advance(task, len(batch))
    return len(todo)


def _source_hash(source: str) -> str | None:
    """sha256 of a checkpoint file, or of an export's weights file."""
    path = Path(source)
    if path.is_dir():
        path = path / "model.safetensors"
    return file_sha256(path) if path.is_file() else None


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, disable=not enabled,
    )


def barrier_if_distributed(world_size: int) -> None:
    """Wait for every rank (gloo over MASTER_ADDR / MASTER_PORT) before metadata is merged."""
    if world_size == 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        rank, world = rank_and_world_size()
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29517")
        dist.init_process_group("gloo", rank=rank, world_size=world)
    dist.barrier()
