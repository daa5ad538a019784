"""Sampling a cascade to disk: one folder of images with their metadata, resumable and split by rank.

`sample_folder` writes this rank's missing images of one folder in the sample-folder format of
`cascade.files.sample_folder` (one PNG per image, one metadata line per image, every stage's
output under `intermediate/` when asked); rerunning it skips what is done. `LocalRanks` runs the
ranks as local processes of one torch thread each (on a small CPU they beat one process's threads).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Self

import torch
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
    """What to generate into one folder: every condition n_per_condition times (or
    n_per_condition[i] times for condition i)."""

    n_per_condition: int | tuple[int, ...] = 1
    batch_size: int = 8
    seed: int = 0
    keep_intermediate: bool = False
    progress: bool = True
    # one per condition (None: none): each takes the unconditional prediction's place where a stage
    # is guided (`Cascade.generate`); written to the image's metadata
    negative_prompts: tuple[str | None, ...] | None = None


def sample_folder(cascade: Cascade, conditions, job: FolderJob, folder: Path, rank: int = 0, world_size: int = 1,
                  console: Console | None = None) -> int:
    """Generate this rank's missing images of one folder; returns how many it wrote."""
    console = console or Console(stderr=True, soft_wrap=True)
    if job.negative_prompts is not None and len(job.negative_prompts) != len(conditions):
        raise ValueError(f"got {len(job.negative_prompts)} negative prompts for {len(conditions)} conditions")
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
        pending = {item.name for item in todo}
        check_resumable(folder, next(item.name for item in items if item.name not in pending), hashes, settings)
        console.print(f"rank {rank}: {folder}: {len(items) - len(todo)} of {len(items)} images already done, resuming", markup=False)
    text = cascade.conditioning == "text"
    with _progress(console, job.progress) as progress:
        task = progress.add_task(f"rank {rank}: {folder.name}", total=len(todo))
        for start in range(0, len(todo), job.batch_size):
            batch = todo[start : start + job.batch_size]
            seeds = [item.seed(job.seed) for item in batch]
            conditions_batch = [item.condition for item in batch]
            negatives = None if job.negative_prompts is None else [job.negative_prompts[item.condition_index] for item in batch]
            outputs = cascade.generate(
                seeds,
                prompts=conditions_batch if text else None,
                class_labels=None if text else conditions_batch,
                keep_intermediate=job.keep_intermediate,
                negative_prompts=negatives,
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
                    **({} if negatives is None or negatives[row] is None else {"negative_prompt": negatives[row]}),
                    "stages": [
                        {"source": source, "sha256": digest, "image_size": stage.image_size, **setting}
                        for source, digest, stage, setting in zip(cascade.sources, hashes, cascade.stages, settings)
                    ],
                }
                write_image(folder, item.name, outputs[-1][row], metadata)
            progress.advance(task, len(batch))
    return len(todo)


class LocalRanks:
    """`processes` local sampling processes of one torch thread each; `fill` splits a folder between
    them as the ranks of a `processes`-way job (`shard_for_rank`), so each draws half (a third, ...)
    of every folder. On a small CPU this beats one process with as many threads: the small
    convolutions of a tiny cascade scale badly over threads (docs/benchmarks.md, "Sampling in
    processes"). An image does not depend on the rank that draws it: its seed is its own
    (`WorkItem.seed`) and each seed's image is independent of its batch.

    Use as a context manager. Each process loads a cascade's checkpoints once (by their paths,
    `Cascade.sources`) and applies each folder's settings to them. With `processes` 1, or for a
    cascade not loaded from files, `fill` samples in this process.
    """

    def __init__(self, processes: int):
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Self:
        if self.processes > 1:
            self._pool = ProcessPoolExecutor(self.processes, mp_context=get_context("spawn"),
                                             initializer=torch.set_num_threads, initargs=(1,))
        return self

    def __exit__(self, *exc_info) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def fill(self, cascade: Cascade, conditions, job: FolderJob, folder: Path, console: Console | None = None) -> int:
        """Every missing image of `folder` (as `sample_folder` with one rank); returns how many were written.
        The caller merges the folder's metadata (`merge_metadata`) afterwards, as after any ranks."""
        if self._pool is None or not all(cascade.sources):
            return sample_folder(cascade, conditions, job, folder, console=console)
        quiet = replace(job, progress=False)
        futures = [self._pool.submit(_fill_rank, list(cascade.sources), list(cascade.settings), conditions, quiet,
                                     folder, rank, self.processes) for rank in range(self.processes)]
        written = sum(future.result() for future in futures)
        (console or Console(stderr=True, soft_wrap=True)).print(
            f"{folder}: wrote {written} images in {self.processes} processes", markup=False)
        return written


_LOADED: dict[tuple[str, ...], Cascade] = {}  # a LocalRanks process's cascades, by their checkpoint paths


def _fill_rank(sources: list[str], settings: list, conditions, job: FolderJob, folder: Path, rank: int,
               world_size: int) -> int:
    """One rank of `LocalRanks.fill`, in a pool process: the cascade at `sources` with `settings`."""
    key = tuple(sources)
    if key not in _LOADED:
        _LOADED[key] = Cascade.from_paths(sources)
    loaded = _LOADED[key]
    cascade = Cascade(loaded.stages, settings, loaded.sources, loaded.guides)
    return sample_folder(cascade, conditions, job, folder, rank, world_size, console=Console(quiet=True))


def check_resumable(folder: Path, name: str, hashes: list[str | None], settings: list[dict]) -> None:
    """Refuse to resume a folder whose images came from other weights or settings: a resumed folder
    would mix them. Reads the sidecar of one done image (every image of a folder is written alike)."""
    stages = json.loads((folder / f"{name}.json").read_text()).get("stages", [])
    if len(stages) != len(settings):
        raise ValueError(f"{folder}: {name}.json was sampled by {len(stages)} stage(s), this run has "
                         f"{len(settings)}; sample into another folder, or delete its images to resample them")
    for index, (stage, digest, setting) in enumerate(zip(stages, hashes, settings)):
        old = {"sha256": stage.get("sha256"), **{key: stage.get(key) for key in setting}}
        new = {"sha256": digest, **json.loads(json.dumps(setting))}  # tuples as the sidecar spells them
        key = next((key for key in new if old[key] != new[key]), None)
        if key is not None:
            raise ValueError(f"{folder}: {name}.json was sampled with stage {index} {key}={old[key]!r}, this run "
                             f"has {new[key]!r}; sample into another folder, or delete its images to resample them")


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
