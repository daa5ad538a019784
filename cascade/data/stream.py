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

Two kinds of bad data are skipped, counted and logged apart:

- **bad samples** (`cascade.data.transforms.BadSample`: a corrupt or oversized image, a missing
  field), logged with shard and key;
- **shard errors**: a shard that cannot be opened or breaks off (a truncated or corrupt tar),
  counted once per read of that shard and logged with the shard; its samples before the break
  are used, the one it broke off in is lost with it (not counted as a bad sample; but a tar cut
  exactly between two members looks complete, and its last sample may then lack fields and count
  as a bad sample). When every consumer reads every validation shard (fewer shards than
  consumers), only consumer ``shard index % consumers`` counts and logs a shard's error.

Every batch carries the rank's cumulative counts, ``skipped`` (bad samples) and ``shard_errors``,
over all its DataLoader workers (they add to their own rows of one shared-memory tensor, which the
rank's process reads too: `ShardStream.skipped`, `ShardStream.shard_errors`). In training they
count skips as they happen: a bad sample read again later (resampled shards) counts again, and
each rank counts its own reads, so the sum over ranks is the number of skips the run made.
Messages: the first few of each kind individually, then at counts 10, 100, 1000, ... A long
run of consecutive bad samples or shard errors means a misconfiguration rather than bad data,
and stops with an error.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from .shards import SHARD_READ_ERRORS, read_samples
from .transforms import BadSample, SampleTransform

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_BAD = 1000
_REPORTED_INDIVIDUALLY = 5
_SAMPLES, _SHARDS = 0, 1  # columns of ShardStream._counts
_MESSAGES = {  # (the first few, one by one; the count at 10, 100, ...)
    _SAMPLES: ("skipping bad sample", "bad samples skipped so far"),
    _SHARDS: ("shard read error, skipping the rest of the shard", "shard read errors so far"),
}


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
        # cumulative [bad samples, shard errors] per DataLoader worker of this rank (one row each,
        # written only by its worker), in shared memory so that the workers and the rank see the totals
        self._counts = torch.zeros(max(1, num_workers), 2, dtype=torch.long).share_memory_()
        self._iterations = 0
        self._consecutive_bad = 0

    @property
    def train(self) -> bool:
        return self.transform.train

    @property
    def skipped(self) -> int:
        """Bad samples this rank's stream has skipped so far, over all its workers."""
        return int(self._counts[:, _SAMPLES].sum())

    @property
    def shard_errors(self) -> int:
        """Shard reads that ended in an error so far, over all this rank's workers."""
        return int(self._counts[:, _SHARDS].sum())

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
        if worker >= len(self._counts):
            raise ValueError(
                f"this ShardStream was built for {len(self._counts)} DataLoader workers but runs in worker "
                f"{worker} of {num_workers}; build it with num_workers={num_workers}"
            )
        consumer, consumers = self.rank * num_workers + worker, self.world_size * num_workers
        rng = random.Random(stable_seed(self.seed, self.start_epoch, self.rank, worker, self._iterations))
        self._iterations += 1
        if self.train:
            raw = self._read_shards(_resampled(self.shards, rng), worker)
            # the buffer starts yielding once it holds `initial` samples, then grows to its size
            initial = min(self.shuffle_buffer, 100)
            raw = wds.shuffle(self.shuffle_buffer, initial, rng=rng)(raw)
        elif len(self.shards) >= consumers:  # split by node, then by worker
            raw = self._read_shards(iter(self.shards[self.rank :: self.world_size][worker::num_workers]), worker)
        else:  # every consumer reads every shard; one of them counts a shard's error
            everything = self._read_shards(
                iter(self.shards), worker, counts_error=lambda position: position % consumers == consumer
            )
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
                self._count(_SAMPLES, f"{sample.get('__url__')} key {sample.get('__key__')}: {problem}", worker)
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
        skipped, shard_errors = self._counts.sum(dim=0).tolist()
        batch["skipped"] = torch.full((len(examples),), skipped, dtype=torch.long)
        batch["shard_errors"] = torch.full((len(examples),), shard_errors, dtype=torch.long)
        return batch

    def _read_shards(
        self, shards: Iterator[str], worker: int, counts_error: Callable[[int], bool] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Raw samples ({"__key__", "__url__", field: bytes}) of a stream of shard paths / URLs.

        A shard that cannot be opened or breaks off is one shard error, counted unless
        `counts_error(position in shards)` is False; reading goes on with the next shard."""
        for position, shard in enumerate(shards):
            try:
                with wds.gopen(shard, "rb") as stream:  # a local path, or pipe: / http(s): / s3: ... URLs
                    for sample in read_samples(stream):
                        # field names are case-insensitive, as webdataset reads them
                        raw = {key if key == "__key__" else key.lower(): value for key, value in sample.items()}
                        raw["__url__"] = shard
                        yield raw
            except SHARD_READ_ERRORS as error:
                if counts_error is None or counts_error(position):
                    self._count(_SHARDS, f"{shard}: {error!r}"[:500], worker)

    def _count(self, kind: int, message: str, worker: int) -> None:
        """Count and report a bad sample (`_SAMPLES`) or a shard error (`_SHARDS`)."""
        self._counts[worker, kind] += 1
        count = int(self._counts[worker, kind])
        self._consecutive_bad += 1
        where = f"rank {self.rank} worker {worker}"
        first, so_far = _MESSAGES[kind]
        if count <= _REPORTED_INDIVIDUALLY:
            log.warning("%s (%s): %s", first, where, message)
        elif math.log10(count).is_integer():
            log.warning("%d %s (%s); latest: %s", count, so_far, where, message)
        if self._consecutive_bad >= MAX_CONSECUTIVE_BAD:
            raise RuntimeError(
                f"{MAX_CONSECUTIVE_BAD} bad samples or shard read errors in a row ({where}); the shards or "
                f"the data settings are wrong. Latest: {message}"
            )


def _resampled(shards: list[str], rng: random.Random) -> Iterator[str]:
    """An endless stream of shards drawn uniformly with replacement."""
    while True:
        yield rng.choice(shards)


def _worker() -> tuple[int, int]:
    """(worker id, number of workers) of the calling DataLoader worker; (0, 1) in the main process."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)
