"""Decoding and encoding images with PIL (shared by the shard writer and the loader)."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

# PIL format name -> shard field for the formats a shard may store as they are.
_FIELD_OF_FORMAT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
_PIL_FORMAT_OF_FIELD = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}

# 8000 x 8000: every stage's images fit (the 1024 stage needs a short side of 1024), and decoding
# one costs at most ~0.7 GB (RGBA, plus its RGB conversion) per loader worker or writer process.
DEFAULT_MAX_PIXELS = 64_000_000


class ImageTooLarge(ValueError):
    """An image whose header declares more pixels than the limit; refused before it is decoded."""


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} Mpx"


def open_image(source: bytes | str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image file or its bytes and check its size before anything decodes it.

    PIL's ``Image.open`` reads only the header; when it declares more than `max_pixels` pixels
    (width x height) the image is closed and `ImageTooLarge` names its size. Every decode of an
    image that comes from outside (writer, loader, reference images) opens it here, so a small
    file that decodes to gigabytes never gets that far. Pillow's own decompression-bomb refusal
    (over 2 x ``Image.MAX_IMAGE_PIXELS``, checked inside ``Image.open``) is an `ImageTooLarge`
    too; its warning below that is silenced, since `max_pixels` decides.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"header declares a decompression bomb: {error}") from error
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageTooLarge(
            f"{width}x{height} image ({_megapixels(width * height)}) is over max_pixels ({_megapixels(max_pixels)})"
        )
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB version of `image`; transparent pixels are composited over white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def decode_image(data: bytes, min_short_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image bytes to a fully loaded RGB PIL image (EXIF orientation applied).

    Images over `max_pixels` raise `ImageTooLarge` before decoding (`open_image`). With
    `min_short_side`, JPEGs are decoded at a reduced DCT scale (``Image.draft``) that still
    keeps the short side >= `min_short_side`: much faster, and much less memory, for large
    photos that are downsampled afterwards anyway.
    """
    image = open_image(data, max_pixels)
    if min_short_side is not None and image.format == "JPEG":
        width, height = image.size
        scale = min_short_side / min(width, height)
        if scale < 1:
            image.draft("RGB", (int(np.ceil(width * scale)), int(np.ceil(height * scale))))
    image = ImageOps.exif_transpose(image)
    image.load()
    return to_rgb(image)


def resize_short_side(image: Image.Image, short_side: int) -> Image.Image:
    """Resize so the short side is `short_side`, keeping the aspect ratio (anti-aliased bicubic).

    PIL's BICUBIC resize widens its kernel by the downscale factor, so downsampling is
    anti-aliased (like ``torch.nn.functional.interpolate(..., antialias=True)``).
    """
    width, height = image.size
    scale = short_side / min(width, height)
    size = (max(short_side, round(width * scale)), max(short_side, round(height * scale)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=None)


def encode_image(image: Image.Image, field: str, quality: int = 95) -> bytes:
    """Encode an RGB image as ``jpg`` / ``png`` / ``webp`` bytes (deterministic)."""
    if field not in _PIL_FORMAT_OF_FIELD:
        raise ValueError(f"image format must be one of {sorted(_PIL_FORMAT_OF_FIELD)}, got {field!r}")
    buffer = io.BytesIO()
    # PNG: fast zlib level; textured images barely compress better at higher levels
    options = {"quality": quality} if field in ("jpg", "webp") else {"compress_level": 1}
    image.save(buffer, format=_PIL_FORMAT_OF_FIELD[field], **options)
    return buffer.getvalue()


@dataclass(frozen=True)
class ImageEncoding:
    """How the shard writer stores images.

    format: ``jpg`` / ``png`` / ``webp``, or ``keep`` to copy a source file's bytes unchanged
        when it is already JPEG/PNG/WebP and needs no resize (otherwise it is re-encoded in
        its own format, or as JPEG for other formats).
    quality: JPEG / WebP quality.
    resize: if set, images whose short side is larger are downsized to this short side
        (never upscaled).
    max_pixels: source images whose header declares more pixels are refused (`ImageTooLarge`)
        without being decoded.
    """

    format: str = "keep"
    quality: int = 95
    resize: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.format != "keep" and self.format not in _PIL_FORMAT_OF_FIELD:
            raise ValueError(f"format must be keep, jpg, png or webp, got {self.format!r}")
        if self.resize is not None and self.resize < 1:
            raise ValueError(f"resize must be a positive short side, got {self.resize}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")

    def encode_file(self, data: bytes) -> tuple[str, bytes, tuple[int, int]]:
        """(field, bytes, stored (width, height)) for the bytes of an image file."""
        with open_image(data, self.max_pixels) as probe:
            source_field = _FIELD_OF_FORMAT.get(probe.format)
            size = probe.size
        needs_resize = self.resize is not None and min(size) > self.resize
        if self.format == "keep" and source_field is not None and not needs_resize:
            # reject truncated / corrupt files here, not in training; a JPEG is checked at the smallest
            # DCT scale (its whole stream is still read, in a fraction of the memory)
            decode_image(data, min_short_side=1, max_pixels=self.max_pixels)
            return source_field, data, size
        image = decode_image(data, min_short_side=self.resize if needs_resize else None, max_pixels=self.max_pixels)
        if needs_resize:
            image = resize_short_side(image, self.resize)
        field = (source_field or "jpg") if self.format == "keep" else self.format
        return field, encode_image(image, field, self.quality), image.size

    def encode_array(self, pixels: np.ndarray) -> tuple[str, bytes]:
        """(field, bytes) for an RGB uint8 array of shape (H, W, 3)."""
        image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
        if self.resize is not None and min(image.size) > self.resize:
            image = resize_short_side(image, self.resize)
        field = "png" if self.format == "keep" else self.format
        return field, encode_image(image, field, self.quality)
