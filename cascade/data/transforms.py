"""Turn one raw shard sample into the tensors of one training example (or reject it).

`SampleTransform` does, per sample: find and decode the image (one over ``max_pixels`` is refused
from its header, before decoding), refuse images whose short side is below the stage resolution
(a training target is never upscaled), resize the short side to ``resolution`` (anti-aliased
bicubic), crop a ``resolution`` square (centre, or random for training with ``random_crop``), flip
horizontally (training with ``random_flip``), derive the low-res input for SR stages (`cascade.data.degrade`), take a ``crop_size`` crop of the target and the
matching low-res crop (offsets are multiples of the scale factor, so the pair stays aligned;
only a window around the crop is downsampled, see `SampleTransform._crop_pair`),
and read the class, caption and precomputed text embeddings.

Bad data raises `BadSample` (the stream skips and counts it); a configuration mismatch (the
shards' embeddings come from another text encoder) raises `ValueError`.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from .degrade import Degradation, downsample
from .image_io import DEFAULT_MAX_PIXELS, ImageTooLarge, decode_image, resize_short_side
from .shards import EMBEDDING_FIELD, IMAGE_FIELDS, decode_caption


_LOWRES_MARGIN = 16  # low-res pixels around an SR crop that are downsampled and degraded with it
_LOWRES_GRID = 16  # JPEG MCU size (4:2:0): window edges sit on this grid of the whole low-res image


class BadSample(Exception):
    """A sample that cannot be used (corrupt image, missing field, ...); it is skipped."""


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [-1, 1]."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return pixels.permute(2, 0, 1).float().div_(127.5).sub_(1.0)


@dataclass(frozen=True)
class SampleTransform:
    """Per-sample processing for one stage; see the module docstring.

    resolution: side of the square high-res target.
    lowres_resolution: side of the low-res input (SR stages), or None (base stage).
    crop_size: side of the training crop of the target (None: the full target); the low-res
        crop is ``crop_size * lowres_resolution / resolution``.
    train: random crop / flip / degradations on; False gives the deterministic val view
        (centre crops, no flip; degradations drawn from an RNG seeded by the sample key).
    max_pixels: images whose header declares more pixels are bad samples, never decoded.
    """

    resolution: int
    lowres_resolution: int | None = None
    crop_size: int | None = None
    train: bool = True
    random_crop: bool = False
    random_flip: bool = False
    degradation: Degradation = field(default_factory=Degradation)
    with_class_label: bool = False
    with_caption: bool = True
    text_encoder: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS

    @property
    def scale(self) -> int:
        return 1 if self.lowres_resolution is None else self.resolution // self.lowres_resolution

    def __call__(self, raw: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        target = self._target(raw, rng)
        example: dict[str, Any] = {}
        lowres = None
        if self.crop_size is not None:
            target, lowres = self._crop_pair(target, rng)
        elif self.lowres_resolution is not None:
            size = (self.lowres_resolution, self.lowres_resolution)
            lowres = self.degradation(downsample(target, size), rng)
        example["image"] = to_tensor(target)
        if lowres is not None:
            example["lowres"] = to_tensor(lowres)
        if self.with_class_label:
            example["class_label"] = _class_label(raw)
        if self.with_caption:
            example["caption"] = _caption(raw)
        if self.text_encoder is not None:
            example["text_tokens"], example["text_mask"] = self._embeddings(raw)
        return example

    def _target(self, raw: dict[str, Any], rng: random.Random) -> Image.Image:
        image_field = next((f for f in IMAGE_FIELDS if f in raw), None)
        if image_field is None:
            raise BadSample(f"no image field (one of {', '.join(IMAGE_FIELDS)})")
        try:
            image = decode_image(raw[image_field], min_short_side=self.resolution, max_pixels=self.max_pixels)
        except ImageTooLarge as error:
            raise BadSample(f"{image_field} image too large: {error}") from error
        except (OSError, ValueError, SyntaxError) as error:
            raise BadSample(f"corrupt {image_field} image: {error}") from error
        if min(image.size) < self.resolution:
            raise BadSample(f"image {image.size[0]}x{image.size[1]} is smaller than the resolution {self.resolution}")
        image = resize_short_side(image, self.resolution)
        width, height = image.size
        if self.train and self.random_crop:
            left, top = rng.randint(0, width - self.resolution), rng.randint(0, height - self.resolution)
        else:
            left, top = (width - self.resolution) // 2, (height - self.resolution) // 2
        image = image.crop((left, top, left + self.resolution, top + self.resolution))
        if self.train and self.random_flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image

    def _crop_pair(self, target: Image.Image, rng: random.Random) -> tuple[Image.Image, Image.Image | None]:
        """A crop_size crop of the target and the (degraded) low-res crop covering the same area.

        The low-res crop equals cropping the low-res version of the whole target, but only a
        window around the crop is downsampled and degraded: `_LOWRES_MARGIN` low-res pixels on
        each side (more than the bicubic kernel's reach of 2, and 3 sigma of blurs up to 5),
        with the window's edges on the 16-pixel grid of the whole low-res image, so JPEG blocks
        fall where they would for the whole image.
        """
        scale, low_crop = self.scale, self.crop_size // self.scale
        positions = (self.resolution - self.crop_size) // scale  # crop offsets, in low-res pixels
        x, y = (rng.randint(0, positions), rng.randint(0, positions)) if self.train else (positions // 2,) * 2
        crop = target.crop((x * scale, y * scale, x * scale + self.crop_size, y * scale + self.crop_size))
        if self.lowres_resolution is None:
            return crop, None
        grid, limit = _LOWRES_GRID, self.lowres_resolution
        x0, y0 = (max(0, (v - _LOWRES_MARGIN) // grid * grid) for v in (x, y))
        x1, y1 = (min(limit, -(-(v + low_crop + _LOWRES_MARGIN) // grid) * grid) for v in (x, y))
        window = target.crop((x0 * scale, y0 * scale, x1 * scale, y1 * scale))
        lowres = self.degradation(downsample(window, (x1 - x0, y1 - y0)), rng)
        return crop, lowres.crop((x - x0, y - y0, x - x0 + low_crop, y - y0 + low_crop))

    def _embeddings(self, raw: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if EMBEDDING_FIELD not in raw or "json" not in raw:
            raise BadSample(f"missing field {EMBEDDING_FIELD} or json (text_encoder={self.text_encoder!r})")
        try:
            info = json.loads(raw["json"].decode("utf-8"))["text_encoder"]
            tokens = np.load(io.BytesIO(raw[EMBEDDING_FIELD]), allow_pickle=False)
        except (ValueError, KeyError, TypeError, OSError) as error:
            raise BadSample(f"unreadable text embeddings: {error!r}") from error
        if self.text_encoder not in (info.get("kind"), info.get("name")):
            raise ValueError(
                f"text_encoder={self.text_encoder!r}, but the shards hold embeddings from "
                f"{info.get('name')!r} (kind {info.get('kind')!r}); precompute them for this encoder"
            )
        length = int(info["max_length"])
        if tokens.ndim != 2 or tokens.shape[0] > length:
            raise BadSample(f"text embeddings of shape {tokens.shape} do not fit max_length {length}")
        padded = torch.zeros(length, tokens.shape[1], dtype=torch.float32)
        padded[: tokens.shape[0]] = torch.from_numpy(tokens.astype(np.float32))
        mask = torch.zeros(length, dtype=torch.bool)
        mask[: tokens.shape[0]] = True
        return padded, mask


def _class_label(raw: dict[str, Any]) -> int:
    if "cls" not in raw:
        raise BadSample("missing field cls")
    try:
        return int(raw["cls"].decode("ascii").strip())
    except (UnicodeDecodeError, ValueError) as error:
        raise BadSample(f"unreadable cls: {raw['cls'][:32]!r}") from error


def _caption(raw: dict[str, Any]) -> str:
    if "txt" not in raw:
        raise BadSample("missing field txt")
    try:
        return decode_caption(raw["txt"])
    except UnicodeDecodeError as error:
        raise BadSample(f"caption is not UTF-8: {error}") from error
