"""Loader benchmark: decoded training samples per second for one worker, per stage and data set.

One worker = one consumer of `ShardStream` (a DataLoader worker process does exactly this
work, single-threaded; timing it in the main process with one torch thread leaves out only
the inter-process copy of the batch). The figure per worker is samples per second of CPU
time of that process, which is what one worker on one free core delivers and does not
depend on other load on the machine; the wall-clock rate is reported next to it.
Each measurement reads real shards through the training pipeline (resampled shards, shuffle
buffer, decode, resize/crop, flip, low-res derivation and degradations, collation) after a
warm-up batch that fills the shuffle buffer.

Data sets, written once into ``--workdir`` and reused:

- ``synthetic``: the built-in dataset rendered at the stored size, PNG (the writer's default);
- ``photos``: the colour photographs shipped with scikit-image (astronaut, chelsea, coffee,
  hubble_deep_field, immunohistochemistry, retina, rocket), resized (bicubic) to the stored
  size and stored as JPEG quality 90, each 4 times under distinct keys.

Stored sizes (short side): 512 and 128 (shards pre-resized for the base stage) for the base
stage, 512 for the 64->256 stage, 1024 for the 256->1024 stage.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import torch
from PIL import Image

from .degrade import Degradation
from .image_io import ImageEncoding, resize_short_side
from .shards import resolve_shards
from .sources import CaptionListSource, SyntheticSource
from .stream import ShardStream
from .transforms import SampleTransform
from .writer import write_shards

PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket")
_SR_DEGRADATION = Degradation(blur_sigma=(0.4, 0.6), jpeg_quality=(70, 95))


@dataclass(frozen=True)
class StageSetting:
    """A stage as the loader sees it, the stored image sizes it is measured on, and the share
    of the ``--samples`` budget it measures (SR samples cost much more)."""

    name: str
    stored_sizes: tuple[int, ...]
    transform: SampleTransform
    samples_divisor: int = 1


STAGES = {
    "base64": StageSetting("base64", (512, 128), SampleTransform(resolution=64, random_flip=True)),
    "sr256": StageSetting(
        "sr256",
        (512,),
        SampleTransform(resolution=256, lowres_resolution=64, random_flip=True, degradation=_SR_DEGRADATION),
        samples_divisor=4,
    ),
    "sr1024": StageSetting(
        "sr1024",
        (1024,),
        SampleTransform(
            resolution=1024, lowres_resolution=256, crop_size=256, random_flip=True, degradation=_SR_DEGRADATION
        ),
        samples_divisor=8,
    ),
}


@dataclass
class Measurement:
    dataset: str
    stage: str
    stored_size: int
    samples: int
    cpu_seconds: float
    wall_seconds: float

    @property
    def seconds(self) -> float:
        """The seconds `rate` is computed from (the worker's CPU time)."""
        return self.cpu_seconds

    @property
    def rate(self) -> float:
        """Samples per CPU second: one worker's throughput on a free core."""
        return self.samples / self.seconds


def prepare_shards(workdir: str, dataset: str, stored_size: int, count: int) -> list[str]:
    """Shards of `dataset` at `stored_size` in `workdir` (written on first use)."""
    out = os.path.join(workdir, f"{dataset}-{stored_size}")
    if dataset == "synthetic":
        source = SyntheticSource(count=count, resolution=stored_size, seed=0)
    elif dataset == "photos":
        source = CaptionListSource(_photo_list(workdir, stored_size), encoding=ImageEncoding(format="keep"))
    else:
        raise ValueError(f"unknown data set {dataset!r}; choose synthetic or photos")
    write_shards(source, out, max_samples=16, progress=False)
    return resolve_shards(out, "bench shards")


def _photo_list(workdir: str, stored_size: int) -> str:
    """JPEG files of the scikit-image photos at `stored_size` and a JSONL list of them."""
    try:
        from skimage import data as skimage_data
    except ImportError as error:
        message = "the photos data set needs scikit-image (a dev dependency); use --datasets synthetic"
        raise ValueError(message) from error

    folder = os.path.join(workdir, f"photo-files-{stored_size}")
    os.makedirs(folder, exist_ok=True)
    rows = []
    for name in PHOTOS:
        path = os.path.join(folder, f"{name}.jpg")
        if not os.path.exists(path):
            image = resize_short_side(Image.fromarray(getattr(skimage_data, name)()), stored_size)
            image.save(path, format="JPEG", quality=90)
        rows += [{"image": os.path.basename(path), "caption": f"a photograph ({name})"}] * 4
    list_file = os.path.join(folder, "photos.jsonl")
    with open(list_file, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    return list_file


def measure(
    shards: list[str], transform: SampleTransform, samples: int, batch_size: int = 16
) -> tuple[int, float, float]:
    """(samples decoded, CPU seconds, wall seconds) for one worker reading `shards` with `transform`."""
    stream = ShardStream(shards, transform, batch_size, shuffle_buffer=32, samples_per_epoch=None, seed=0)
    batches = iter(stream)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        next(batches)  # warm-up: opens shards, fills the shuffle buffer
        done = 0
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        while done < samples:
            done += len(next(batches)["image"])
        return done, time.process_time() - cpu_start, time.perf_counter() - wall_start
    finally:
        torch.set_num_threads(threads)


def run(workdir: str, datasets: list[str], stages: list[str], samples: int) -> list[Measurement]:
    """Measure every (data set, stage) pair: `samples` for the base stage, fewer for SR stages."""
    results = []
    for dataset in datasets:
        for stage_name in stages:
            stage = STAGES[stage_name]
            for stored_size in stage.stored_sizes:
                shards = prepare_shards(workdir, dataset, stored_size, count=48)
                count, cpu, wall = measure(shards, stage.transform, max(32, samples // stage.samples_divisor))
                results.append(Measurement(dataset, stage_name, stored_size, count, cpu, wall))
    return results


def markdown_table(results: list[Measurement]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| data set | stage | stored short side | samples | CPU s | wall s | samples/s per worker (CPU time) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.dataset} | {r.stage} | {r.stored_size} | {r.samples} | {r.cpu_seconds:.2f} | {r.wall_seconds:.2f} "
        f"| {r.rate:.0f} |"
        for r in results
    ]
    return "\n".join(lines)
