"""Where images come from: a folder, webdataset tar shards, or a live iterable of tensors.

All sources yield uint8 CHW RGB tensors (folders and shards) or batches the caller made
(live generators: float NCHW in [-1, 1] or uint8). :func:`image_batches` turns any of them
into batches for a feature extractor.

Folders are read recursively in sorted path order (the order torch-fidelity uses, which
matters for IS splits). Shards are webdataset tar files (the project's format,
`cascade.data.shards`, which reads them and resolves shard specifications): members
``<key>.<field>``; the first member of each key with an image extension (`IMAGE_EXTENSIONS`)
is the image, other members (``txt``, ``cls``, ``json``) are ignored.

Every image is opened by `cascade.data.image_io.open_image`, which refuses one whose header
declares more than ``max_pixels`` before it is decoded; a reference set must not silently lose
images, so such an image (like an undecodable one) is an error naming it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from ..data.image_io import DEFAULT_MAX_PIXELS, open_image
from ..data.shards import read_samples, resolve_shards
from .images import center_crop_resize, pil_to_uint8_tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _load(image: Image.Image, resolution: int | None) -> torch.Tensor:
    image = image.convert("RGB")
    if resolution is not None:
        image = center_crop_resize(image, resolution)
    return pil_to_uint8_tensor(image)


def list_image_files(root: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """Image files under `root`, sorted by path."""
    root = Path(root)
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


class ImageFolder(Dataset):
    """Images in a folder (recursively), optionally center-cropped and resized to `resolution`.

    `files` restricts it to an explicit list of paths (in that order); an image over
    `max_pixels` (from its header) raises a ValueError naming it, without being decoded.
    """

    def __init__(self, root: str | os.PathLike[str], resolution: int | None = None, recursive: bool = True,
                 files: list[Path] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.root = Path(root)
        self.resolution = resolution
        self.max_pixels = max_pixels
        self.files = list(files) if files is not None else list_image_files(self.root, recursive)
        if not self.files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {self.root}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        try:
            with open_image(self.files[index], self.max_pixels) as image:
                return _load(image, self.resolution)
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as error:  # undecodable, or over max_pixels (ImageTooLarge)
            raise ValueError(f"cannot decode image {str(self.files[index])!r}: {error}") from error


class ShardImages(IterableDataset):
    """The images of webdataset tar shards, in shard order; shards are split across loader workers.

    Shards are read by `cascade.data.shards.read_samples`; a sample's image is its first member
    whose extension is an image extension (`IMAGE_EXTENSIONS`), a key seen again later in the
    same shard is skipped. An image over `max_pixels` (from its header) raises a ValueError naming
    it, without being decoded."""

    def __init__(self, shards: list[str], resolution: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.shards = shards
        self.resolution = resolution
        self.max_pixels = max_pixels

    def __iter__(self) -> Iterator[torch.Tensor]:
        worker = get_worker_info()
        shards = self.shards if worker is None else self.shards[worker.id :: worker.num_workers]
        for shard in shards:
            yield from self._read_shard(shard)

    def _read_shard(self, shard: str) -> Iterator[torch.Tensor]:
        seen: set[str] = set()
        for sample in read_samples(shard):
            key = sample["__key__"]
            field = next((f for f in sample if f != "__key__" and _is_image_field(f)), None)
            if key in seen or field is None:
                continue
            seen.add(key)
            try:
                with open_image(sample[field], self.max_pixels) as image:
                    tensor = _load(image, self.resolution)
            except (OSError, ValueError) as error:
                raise ValueError(f"cannot decode image {key + '.' + field!r} in shard {shard}: {error}") from error
            yield tensor


def _is_image_field(field: str) -> bool:
    """True for a shard field whose last extension is an image's ("png", "seg.PNG", ...)."""
    return "." + field.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS


def open_image_source(spec: str | os.PathLike[str], resolution: int | None = None) -> ImageFolder | ShardImages:
    """A folder of images, or shards: a `.tar`, a brace pattern, a glob, or a folder holding
    only `.tar` files (`cascade.data.shards.resolve_shards`)."""
    path = Path(spec)
    is_shard_folder = path.is_dir() and any(path.glob("*.tar")) and not list_image_files(path, recursive=False)
    if path.is_dir() and not is_shard_folder:
        return ImageFolder(path, resolution)
    return ShardImages(resolve_shards(str(spec), "image source"), resolution)


def require_one_size(files: list[Path], folder: str | os.PathLike[str]) -> None:
    """ValueError naming `folder` and the sizes found unless every image in `files` has one size:
    generated images of several resolutions (a cascade's stages) are never scored as one set."""
    sizes: Counter[tuple[int, int]] = Counter()
    for path in files:
        with Image.open(path) as image:
            sizes[image.size] += 1
    if len(sizes) > 1:
        found = ", ".join(f"{count} at {width}x{height}" for (width, height), count in sorted(sizes.items()))
        raise ValueError(f"{folder}: images of several sizes ({found}); score one resolution at a time "
                         "(a sample folder's lower stages: --stage)")


def _stack_same_size(images: list[torch.Tensor]) -> torch.Tensor:
    sizes = {tuple(image.shape) for image in images}
    if len(sizes) > 1:
        raise ValueError(
            f"images of different sizes in one batch ({sorted(sizes)[:3]}...): "
            "pass a resolution (--resolution N) to center-crop and resize them"
        )
    return torch.stack(images)


def image_batches(
    source: Dataset | IterableDataset | Iterable[torch.Tensor],
    batch_size: int = 32,
    num_workers: int = 0,
    max_images: int | None = None,
) -> Iterator[torch.Tensor]:
    """Batches (N, 3, H, W) from a dataset of single images, or a live iterable of batches.

    A live iterable (e.g. a generator sampling from a model) is passed through batch by
    batch; `max_images` truncates any source.
    """
    if isinstance(source, (Dataset, IterableDataset)):
        batches: Iterable[torch.Tensor] = DataLoader(
            source, batch_size=batch_size, num_workers=num_workers, collate_fn=_stack_same_size
        )
    else:
        batches = source
    seen = 0
    for batch in batches:
        if max_images is not None:
            if seen >= max_images:
                return
            batch = batch[: max_images - seen]
        seen += batch.shape[0]
        yield batch


def source_length(source: object, max_images: int | None = None) -> int | None:
    """How many images `source` gives (at most `max_images`) when known in advance (folders), else None."""
    if not isinstance(source, Dataset) or isinstance(source, IterableDataset):
        return None
    return len(source) if max_images is None else min(len(source), max_images)
