"""`ShardDataModule`: the LightningDataModule every stage trains on (base and super-resolution).

Example (LightningCLI YAML, the 64 -> 256 stage)::

    data:
      class_path: cascade.data.datamodule.ShardDataModule
      init_args:
        train_shards: /data/shards/train/shard-{000000..000999}.tar
        val_shards: /data/shards/val
        blur_sigma: [0.4, 0.6]
        batch_size: 32
        num_workers: 8
        samples_per_epoch: 1000000

Under `cascade fit`, ``resolution`` and ``lowres_resolution`` come from the stage
(``model.init_args.image_size`` / ``lowres_size``) and are not written in the config.

Batches follow docs/architecture.md: ``image`` (B,3,H,W) in [-1, 1], ``lowres`` (SR stages),
``class_label`` (``with_class_label``), ``caption`` (``with_caption``), ``text_tokens`` /
``text_mask`` (``text_encoder`` set: precomputed embeddings read from the shards), ``skipped`` and
``shard_errors`` (the rank's cumulative bad-sample and shard-read-error counts).
Training streams are resampled and endless per rank; see `cascade.data.stream` for the epoch semantics
and how ranks and workers split the data.
"""

from __future__ import annotations

import inspect
import warnings

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from .degrade import Degradation
from .image_io import DEFAULT_MAX_PIXELS
from .shards import resolve_shards
from .stream import ShardStream
from .transforms import SampleTransform


class ShardDataModule(LightningDataModule):
    """Train / val loaders over WebDataset shards for one cascade stage.

    Args:
        train_shards: shards for training: a directory, glob, brace pattern, path, or a list.
        val_shards: shards for validation (same forms), or None for no validation.
        resolution: side of the square target images (the stage's output resolution).
        lowres_resolution: side of the low-res input for SR stages; None for the base stage.
            ``resolution`` must be a multiple of it.
        crop_size: train (and validate) on ``crop_size`` crops of the target with the matching
            low-res crops (e.g. 256 for the 256 -> 1024 stage); None uses the full image. Must
            be a multiple of ``resolution // lowres_resolution``.
        random_crop: training takes a random square of the resized image (else the centre).
        random_flip: training flips images horizontally with probability 0.5.
        blur_sigma: (low, high) range of the Gaussian blur sigma for low-res inputs, in low-res
            pixels; None for no blur.
        jpeg_quality: (low, high) range of the JPEG quality low-res inputs are re-encoded with;
            None for no JPEG.
        with_class_label: batches carry ``class_label`` (shards need ``cls``).
        with_caption: batches carry ``caption`` (shards need ``txt``).
        text_encoder: read precomputed ``text_tokens`` / ``text_mask`` made by this encoder
            (its kind, e.g. ``minilm``, or full name); None to not read embeddings.
        batch_size: training batch size per rank.
        val_batch_size: validation batch size per rank (None: ``batch_size``).
        num_workers: DataLoader worker processes per rank.
        shuffle_buffer: samples held in each training worker's shuffle buffer.
        samples_per_epoch: samples per training epoch over all ranks; None for an endless
            epoch (bound it with the Trainer's ``limit_train_batches``).
        seed: seeds shard resampling, shuffling and augmentations (with rank, worker, epoch).
        max_pixels: images whose header declares more pixels (width x height) are skipped as bad
            samples without being decoded; bounds the memory one sample takes in a worker.
    """

    def __init__(
        self,
        train_shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        resolution: int = 64,
        lowres_resolution: int | None = None,
        crop_size: int | None = None,
        random_crop: bool = False,
        random_flip: bool = True,
        blur_sigma: tuple[float, float] | None = None,
        jpeg_quality: tuple[int, int] | None = None,
        with_class_label: bool = False,
        with_caption: bool = True,
        text_encoder: str | None = None,
        batch_size: int = 64,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        shuffle_buffer: int = 1000,
        samples_per_epoch: int | None = 100_000,
        seed: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__()
        # Hand Lightning this frame (never stored in a local): left to itself, save_hyperparameters
        # keeps a self-referencing frame alive, and with it the caller's frames and their locals
        # (e.g. a DataLoader with live workers) until the garbage collector happens to run.
        self.save_hyperparameters(frame=inspect.currentframe())
        _check_geometry(resolution, lowres_resolution, crop_size)
        for name, value in (("batch_size", batch_size), ("val_batch_size", val_batch_size or 1)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_workers < 0 or shuffle_buffer < 0:
            raise ValueError(f"num_workers and shuffle_buffer must be >= 0, got {num_workers}, {shuffle_buffer}")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1 or None, got {samples_per_epoch}")
        if max_pixels < resolution * resolution:
            raise ValueError(f"max_pixels ({max_pixels}) must be at least resolution^2 ({resolution * resolution})")
        self.train_shards, self.val_shards = train_shards, val_shards
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        degradation = Degradation(
            blur_sigma=tuple(blur_sigma) if blur_sigma is not None else None,
            jpeg_quality=tuple(jpeg_quality) if jpeg_quality is not None else None,
        )
        shared = dict(
            resolution=resolution,
            lowres_resolution=lowres_resolution,
            crop_size=crop_size,
            degradation=degradation,
            with_class_label=with_class_label,
            with_caption=with_caption,
            text_encoder=text_encoder,
            max_pixels=max_pixels,
        )
        self.train_transform = SampleTransform(train=True, random_crop=random_crop, random_flip=random_flip, **shared)
        self.val_transform = SampleTransform(train=False, **shared)
        self.train_stream: ShardStream | None = None
        self.val_stream: ShardStream | None = None

    def setup(self, stage: str) -> None:
        """Resolve the shard lists (failing clearly when they are missing) and build the streams."""
        rank, world_size, epoch = self._distributed_position()
        if stage == "fit":
            self.train_stream = self.build_stream(train=True, rank=rank, world_size=world_size, start_epoch=epoch)
        if stage in ("fit", "validate") and self.val_shards is not None:
            self.val_stream = self.build_stream(train=False, rank=rank, world_size=world_size)

    def build_stream(self, train: bool, rank: int = 0, world_size: int = 1, start_epoch: int = 0) -> ShardStream:
        """The training or validation `ShardStream` as seen by one rank."""
        flag = "train_shards" if train else "val_shards"
        shards = resolve_shards(self.train_shards if train else self.val_shards, flag)
        return ShardStream(
            shards,
            self.train_transform if train else self.val_transform,
            self.batch_size if train else self.val_batch_size,
            rank=rank,
            world_size=world_size,
            num_workers=self.num_workers,
            shuffle_buffer=self.shuffle_buffer,
            samples_per_epoch=self.samples_per_epoch,
            seed=self.seed,
            start_epoch=start_epoch,
        )

    def train_dataloader(self) -> DataLoader:
        rank, world_size, epoch = self._distributed_position()
        if self.train_stream is None or self.train_stream.start_epoch != epoch:
            # a run resumed from a checkpoint knows its epoch only now (after setup): draw a new stream
            self.train_stream = self.build_stream(train=True, rank=rank, world_size=world_size, start_epoch=epoch)
        # Each worker is configured independently (its own resampled stream and batch count),
        # so the length the stream reports is exact; Lightning's generic caution does not apply.
        warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
        return self._loader(self.train_stream)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_shards is None:
            return []
        if self.val_stream is None:
            self.setup("validate")
        return self._loader(self.val_stream)

    def _loader(self, stream: ShardStream) -> DataLoader:
        return DataLoader(
            stream,
            batch_size=None,  # the stream batches inside each worker
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def _distributed_position(self) -> tuple[int, int, int]:
        """(global rank, world size, current epoch) from the Trainer, else torch.distributed."""
        trainer = self.trainer
        if trainer is not None:
            return trainer.global_rank, trainer.world_size, trainer.current_epoch
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size(), 0
        return 0, 1, 0


def _check_geometry(resolution: int, lowres_resolution: int | None, crop_size: int | None) -> None:
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    scale = 1
    if lowres_resolution is not None:
        if lowres_resolution < 1 or lowres_resolution >= resolution or resolution % lowres_resolution:
            raise ValueError(
                f"lowres_resolution ({lowres_resolution}) must be smaller than and divide resolution ({resolution})"
            )
        scale = resolution // lowres_resolution
    if crop_size is not None and (crop_size < scale or crop_size > resolution or crop_size % scale):
        raise ValueError(
            f"crop_size ({crop_size}) must be a multiple of the scale factor {scale} "
            f"and at most resolution ({resolution})"
        )
