"""`ShardStream`: the iterable dataset that reads shards and yields ready batches.

Each DataLoader worker (or the main process with ``num_workers=0``) is one *consumer*; with
R ranks and W workers there are R*W consumers, numbered ``rank * W + worker``.

Training (``train=True``) — resampled, endless, different per consumer:
    every consumer draws shards *with replacement* from the full list with its own RNG
    (seeded by ``seed``, the starting epoch, rank, worker and how often it was iterated), reads
    them through a shuffle buffer, and applies random crops / flips / degradations. Nothing
    is split: the ranks see different random streams, not disjoint parts of one list.
    **Epoch semantics:** with ``samples_per_epoch`` set, an epoch is that many samples over
    all ranks together: each rank yields ``ceil(samples_per_epoch / (world_size * batch_size))``
    batches (rounded up to a multiple of the worker count), and ``len()`` says so; sample
    counts are approximate, there is no "every image once" pass. With ``samples_per_epoch``
    None the stream never ends; bound epochs with the Trainer's ``limit_train_batches`` (and
    training with ``max_steps``).

Validation (``train=False``) — one deterministic pass, disjoint across consumers:
    shards are split by node, then by worker (``shards[rank::R][worker::W]``) when there are at
    least as many shards as consumers; otherwise every consumer reads all shards and keeps
    every ``consumers``-th sample. Centre crops, no flips, degradations drawn from an RNG
    seeded by (seed, sample key); the last batch may be short.

Bad samples (`cascade.data.transforms.BadSample`, unreadable tar data) are skipped, counted per
consumer (``skipped`` in every batch is that cumulative count) and logged with shard and key:
the first few individually, then at counts 10, 100, 1000, ... A long run of consecutive bad
samples means a misconfiguration rather than bad data, and stops with an error.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Iterator
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from .transforms import BadSample, SampleTransform

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_BAD = 1000
_REPORTED_INDIVIDUALLY = 5


def stable_seed(*parts: Any) -> int:
    """A 64-bit seed from any printable parts, identical across processes and machines."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


class ShardStream(IterableDataset):
    """Batches (dicts, see docs/architecture.md) from WebDataset shards; see the module docstring."""

    def __init__(
        self,
        shards: list[str],
        transform: SampleTransform,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        start_epoch: int = 0,
    ) -> None:
        super().__init__()
        if not shards:
            raise ValueError("ShardStream needs at least one shard")
        self.shards = list(shards)
        self.transform = transform
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.samples_per_epoch = samples_per_epoch
        self.seed, self.start_epoch = seed, start_epoch
        self.skipped = 0
        self._iterations = 0
        self._consecutive_bad = 0

    @property
    def train(self) -> bool:
        return self.transform.train

    def batches_per_worker(self) -> int | None:
        """Training batches each consumer yields per epoch (None: endless or validation)."""
        if not self.train or self.samples_per_epoch is None:
            return None
        per_rank = math.ceil(self.samples_per_epoch / (self.world_size * self.batch_size))
        return math.ceil(per_rank / max(1, self.num_workers))

    def __len__(self) -> int:
        per_worker = self.batches_per_worker()
        if per_worker is None:
            raise TypeError("this stream has no length (validation, or training without samples_per_epoch)")
        return per_worker * max(1, self.num_workers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = _worker()
        consumer, consumers = self.rank * num_workers + worker, self.world_size * num_workers
        rng = random.Random(stable_seed(self.seed, self.start_epoch, self.rank, worker, self._iterations))
        self._iterations += 1
        if self.train:
            raw = _read_tars(_resampled(self.shards, rng), self._tar_error)
            # the buffer starts yielding once it holds `initial` samples, then grows to its size
            initial = min(self.shuffle_buffer, 100)
            raw = wds.shuffle(self.shuffle_buffer, initial, rng=rng)(raw)
        elif len(self.shards) >= consumers:  # split by node, then by worker
            raw = _read_tars(iter(self.shards[self.rank :: self.world_size][worker::num_workers]), self._tar_error)
        else:
            everything = _read_tars(iter(self.shards), self._tar_error)
            raw = (sample for index, sample in enumerate(everything) if index % consumers == consumer)
        batches = self._batches(self._examples(raw, rng, worker))
        per_worker = self.batches_per_worker()
        for count, batch in enumerate(batches):
            if per_worker is not None and count >= per_worker:
                return
            yield batch

    def _examples(self, raw: Iterator[dict[str, Any]], rng: random.Random, worker: int) -> Iterator[dict[str, Any]]:
        for sample in raw:
            sample_rng = rng if self.train else random.Random(stable_seed(self.seed, sample["__key__"]))
            try:
                example = self.transform(sample, sample_rng)
            except BadSample as problem:
                self._count_bad(f"{sample.get('__url__')} key {sample.get('__key__')}: {problem}", worker)
                continue
            self._consecutive_bad = 0
            yield example

    def _batches(self, examples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        for example in examples:
            batch.append(example)
            if len(batch) == self.batch_size:
                yield self._collate(batch)
                batch = []
        if batch and not self.train:
            yield self._collate(batch)

    def _collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for key in examples[0]:
            values = [example[key] for example in examples]
            if key == "caption":
                batch[key] = values
            elif key == "class_label":
                batch[key] = torch.tensor(values, dtype=torch.long)
            else:
                batch[key] = torch.stack(values)
        batch["skipped"] = torch.full((len(examples),), self.skipped, dtype=torch.long)
        return batch

    def _tar_error(self, error: Exception) -> bool:
        """webdataset handler for unreadable tar data: count, log, go on with the next shard."""
        self._count_bad(f"unreadable tar data: {error!r}"[:500], _worker()[0])
        return True

    def _count_bad(self, message: str, worker: int) -> None:
        self.skipped += 1
        self._consecutive_bad += 1
        where = f"rank {self.rank} worker {worker}"
        if self.skipped <= _REPORTED_INDIVIDUALLY:
            log.warning("skipping bad sample (%s): %s", where, message)
        elif math.log10(self.skipped).is_integer():
            log.warning("%d bad samples skipped so far (%s); latest: %s", self.skipped, where, message)
        if self._consecutive_bad >= MAX_CONSECUTIVE_BAD:
            raise RuntimeError(
                f"{MAX_CONSECUTIVE_BAD} bad samples in a row ({where}); the shards or the data settings "
                f"are wrong. Latest: {message}"
            )


def _resampled(shards: list[str], rng: random.Random) -> Iterator[str]:
    """An endless stream of shards drawn uniformly with replacement."""
    while True:
        yield rng.choice(shards)


def _read_tars(urls: Iterator[str], handler) -> Iterator[dict[str, Any]]:
    """Raw samples ({"__key__", "__url__", field: bytes}) from a stream of shard paths/URLs."""
    return wds.tarfile_samples((dict(url=url) for url in urls), handler=handler)


def _worker() -> tuple[int, int]:
    """(worker id, number of workers) of the calling DataLoader worker; (0, 1) in the main process."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)
