"""Low-resolution inputs for super-resolution stages: anti-aliased downsampling + degradations.

The low-res input is made from the high-res target the stage learns to produce:

1. ``downsample``: PIL ``resize(..., BICUBIC, reducing_gap=None)``. PIL widens the bicubic
   kernel by the downscale factor, so this is an anti-aliased bicubic reduction (the same
   filter as ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)`` up to
   rounding), not point sampling.
2. ``Degradation`` (optional, applied to the low-res image at its own size, in this order):
   a Gaussian blur with sigma drawn uniformly from ``blur_sigma`` (in low-res pixels; PIL's
   GaussianBlur, an extended-box approximation; sigma 0 leaves the image unchanged), then a
   JPEG re-encode with quality drawn uniformly (integers) from ``jpeg_quality``.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image, ImageFilter


def downsample(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Anti-aliased bicubic downsampling of `image` to `size` = (width, height)."""
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=None)


@dataclass(frozen=True)
class Degradation:
    """Random blur and JPEG re-encoding for a low-res input; ``None`` ranges switch a step off."""

    blur_sigma: tuple[float, float] | None = None
    jpeg_quality: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.blur_sigma is not None:
            low, high = self.blur_sigma
            if not 0 <= low <= high:
                raise ValueError(f"blur_sigma must be a range 0 <= low <= high, got {self.blur_sigma}")
        if self.jpeg_quality is not None:
            low, high = self.jpeg_quality
            if not 1 <= low <= high <= 100:
                raise ValueError(f"jpeg_quality must be a range within [1, 100], got {self.jpeg_quality}")

    def __call__(self, image: Image.Image, rng: random.Random) -> Image.Image:
        if self.blur_sigma is not None:
            sigma = rng.uniform(*self.blur_sigma)
            if sigma > 0:
                image = image.filter(ImageFilter.GaussianBlur(radius=sigma))
        if self.jpeg_quality is not None:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=rng.randint(*self.jpeg_quality))
            image = Image.open(buffer)  # the JPEG just encoded from `image`: its size is known, no limit to check
            image.load()
        return image
