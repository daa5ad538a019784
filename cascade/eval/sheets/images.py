"""Embed an image file in a sheet as a ``data:`` URI, downscaled when it is larger than needed.

Two formats, chosen per study:

- ``jpeg`` (the default): every image is stored as a JPEG of the given quality with full
  colour resolution (no chroma subsampling); at quality 95 a 512x512 sample takes about
  100 KB, so a 200-pair sheet stays a few tens of MB. Files that already are JPEGs and fit
  are embedded byte for byte.
- ``png``: lossless, pixel-exact, but a 512x512 photo-like sample takes 0.4-0.8 MB, so a
  200-pair sheet runs to hundreds of MB. PNG, JPEG and WebP files that fit are embedded
  byte for byte.

Both systems' images always go through the same path, so neither is favoured. Anything
larger than ``max_side`` on its longer side is first downscaled (Lanczos).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

from ...data.image_io import ImageTooLarge, open_image
from .errors import SheetError

IMAGE_FORMATS = ("jpeg", "png")
# Formats every browser shows, embedded unchanged in "png" mode when no resize is needed.
BROWSER_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def image_data_uri(path: str | Path, max_side: int = 0, image_format: str = "jpeg", jpeg_quality: int = 95) -> str:
    """A ``data:`` URI of the image at ``path``; ``max_side`` > 0 caps its longer side in pixels."""
    if image_format not in IMAGE_FORMATS:
        raise SheetError(f"image format {image_format!r}: expected one of {', '.join(IMAGE_FORMATS)}")
    path = Path(path)
    try:
        raw = path.read_bytes()
        with open_image(raw) as image:  # the header's size is checked before anything decodes
            image.load()
            fits = max_side <= 0 or max(image.size) <= max_side
            keep_png_mode = image_format == "png" and image.format in BROWSER_FORMATS
            if fits and (keep_png_mode or (image_format == "jpeg" and image.format == "JPEG")):
                return _data_uri(BROWSER_FORMATS[image.format], raw)
            has_alpha = image_format == "png" and "A" in image.getbands()
            converted = image.convert("RGBA" if has_alpha else "RGB")
    except (OSError, ImageTooLarge) as error:  # OSError: a missing file, PIL's UnidentifiedImageError
        raise SheetError(f"{path}: cannot read image ({error})") from error
    if not fits:
        converted.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if image_format == "jpeg":
        converted.save(buffer, format="JPEG", quality=jpeg_quality, subsampling=0)
        return _data_uri("image/jpeg", buffer.getvalue())
    converted.save(buffer, format="PNG")
    return _data_uri("image/png", buffer.getvalue())


def _data_uri(mime: str, payload: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"
