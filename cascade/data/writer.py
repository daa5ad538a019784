"""Write a source's samples into WebDataset shards: atomically, resumably, deterministically.

- **Assignment.** Samples go to shards in source order; a shard is closed when it holds
  `max_samples` samples or the next sample would take it past `max_bytes`. Encoding is
  deterministic, so the same source and limits always give the same shards, byte for byte.
- **Atomic.** A shard is written to a temporary ``.shard-NNNNNN.tar.RANDOM.tmp`` next to it,
  flushed, fsync'ed and renamed (the one scheme of `cascade.files.atomic`, which sample folders
  and reports use too): a file named ``shard-NNNNNN.tar`` is always complete.
- **Resume.** Rerunning on the same folder removes the temporaries a killed run left (the
  writer owns its output folder), keeps the complete shards, and continues after the last key
  of the last complete shard (keys are source indices), so the result equals an uninterrupted
  run. ``writer.json`` records the source and limits; resuming with different ones is refused.
- At the end, ``manifest.json`` lists the shards and their sample counts, and
  ``classes.json`` the class names (when the source has classes).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..files.atomic import remove_stale_temporaries, write_text
from .shards import AtomicShard, encode_sample, member_bytes, shard_keys, shard_name
from .sources import Unreadable

log = logging.getLogger(__name__)

DEFAULT_MAX_SAMPLES = 10_000
DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB
_SHARD_FILE = re.compile(r"^shard-(\d{6})\.tar$")
_REPORTED_UNREADABLE = 10


@dataclass
class WriteSummary:
    """What a `write_shards` call left in the output folder."""

    out_dir: str
    shards: list[dict[str, Any]]  # {"name", "samples"} per shard, in order
    samples: int
    unreadable: int  # source inputs that could not be read or decoded (skipped)
    resumed_shards: int  # complete shards found and kept from an earlier run


def write_shards(
    source,
    out_dir: str,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    workers: int = 0,
    progress: bool = True,
) -> WriteSummary:
    """Write (or finish writing) `source` as shards in `out_dir`; see the module docstring.

    `source` is one of `cascade.data.sources` (FolderSource, CaptionListSource, SyntheticSource).
    `workers` > 0 encodes images in that many processes (the order is kept).
    """
    if max_samples < 1 or max_bytes < 1:
        raise ValueError(f"max_samples and max_bytes must be positive, got {max_samples}, {max_bytes}")
    if len(source) == 0:
        raise ValueError("the source has no samples")
    os.makedirs(out_dir, exist_ok=True)
    _check_settings(out_dir, {"source": source.describe(), "max_samples": max_samples, "max_bytes": max_bytes})
    remove_stale_temporaries(out_dir)
    shards, last_key = _complete_shards(out_dir)
    resumed = len(shards)
    start = int(last_key) + 1 if shards else 0
    unreadable = start - sum(s["samples"] for s in shards)

    current: AtomicShard | None = None
    try:
        for index, sample in _samples(source, start, workers, progress):
            if isinstance(sample, Unreadable):
                unreadable += 1
                _report_unreadable(source, index, unreadable, sample.reason)
                continue
            members = encode_sample(sample)
            size = member_bytes(members)
            if current is not None and (current.samples >= max_samples or current.bytes + size > max_bytes):
                current.commit()
                shards.append({"name": os.path.basename(current.path), "samples": current.samples})
                current = None
            if current is None:
                current = AtomicShard(os.path.join(out_dir, shard_name(len(shards))))
            current.add(members, size)
        if current is not None:
            current.commit()
            shards.append({"name": os.path.basename(current.path), "samples": current.samples})
            current = None
    finally:
        if current is not None:  # an exception mid-shard: leave nothing half-written behind
            current.discard()

    if not shards:
        raise ValueError("no readable samples: every input of the source failed to decode")
    summary = WriteSummary(out_dir, shards, sum(s["samples"] for s in shards), unreadable, resumed)
    manifest = {"shards": shards, "samples": summary.samples, "unreadable": unreadable}
    _write_json(os.path.join(out_dir, "manifest.json"), manifest)
    if source.classes is not None:
        _write_json(os.path.join(out_dir, "classes.json"), source.classes)
    return summary


def _check_settings(out_dir: str, settings: dict[str, Any]) -> None:
    """Record the settings in writer.json, or refuse to resume a write with other settings."""
    path = os.path.join(out_dir, "writer.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            previous = json.load(handle)
        recorded, requested = previous.get("source", {}).get("encoding", {}), settings["source"].get("encoding", {})
        upgraded = "max_pixels" in requested and "max_pixels" not in recorded
        if upgraded:  # written before max_pixels existed: resume under this run's limit, and record it
            recorded["max_pixels"] = requested["max_pixels"]
        if previous != json.loads(json.dumps(settings)):
            raise ValueError(
                f"{out_dir} holds shards written with other settings ({path}); "
                "write to an empty folder or repeat the original command to resume"
            )
        if upgraded:
            _write_json(path, settings)
        return
    _write_json(path, settings)


def _complete_shards(out_dir: str) -> tuple[list[dict[str, Any]], str | None]:
    """The complete shards already in `out_dir` (numbered 0..k-1 without gaps) and the last key."""
    numbers = sorted(int(m.group(1)) for name in os.listdir(out_dir) if (m := _SHARD_FILE.match(name)))
    if numbers != list(range(len(numbers))):
        raise ValueError(f"{out_dir}: shard numbers {numbers} have gaps; cannot resume safely")
    shards, last_key = [], None
    for number in numbers:
        keys = shard_keys(os.path.join(out_dir, shard_name(number)))
        shards.append({"name": shard_name(number), "samples": len(keys)})
        last_key = keys[-1]
    return shards, last_key


def _samples(
    source, start: int, workers: int, progress: bool
) -> Iterator[tuple[int, dict[str, Any] | Unreadable]]:
    """(index, encoded sample or why it is unreadable) from `start` to the end, in order, with a progress bar."""
    indices = range(start, len(source))
    pool = multiprocessing.Pool(workers) if workers > 0 else None
    columns = (
        TextColumn("writing shards"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    try:
        results = pool.imap(source.sample, indices, chunksize=8) if pool else map(source.sample, indices)
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task("write", total=len(source), completed=start)
            for index, sample in zip(indices, results):
                yield index, sample
                bar.advance(task)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _report_unreadable(source, index: int, count: int, reason: str) -> None:
    if count <= _REPORTED_UNREADABLE:
        log.warning("skipping unreadable input %d: %s: %s", index, source.input_name(index), reason)
    if count == _REPORTED_UNREADABLE:
        log.warning("further unreadable inputs are counted in manifest.json without a warning each")


def _write_json(path: str, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")
