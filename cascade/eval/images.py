"""Image conversions shared by the feature extractors and the image sources.

The project's convention is float images in [-1, 1], NCHW; feature extractors work on
8-bit images, as every reference implementation of FID does (images are read from PNG/JPEG).
Float images are quantised by `cascade.files.images.to_uint8`, exactly as saving them to PNG
does, so evaluating a live generator and evaluating its saved samples give the same numbers.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..files.images import to_uint8


def uint8_batch(images: torch.Tensor) -> torch.Tensor:
    """A batch of RGB images, uint8 NCHW or float NCHW in [-1, 1], as uint8 NCHW in [0, 255]
    (`cascade.files.images.to_uint8`); ValueError for any other shape."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
    return to_uint8(images)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """float NCHW in [0, 1] from uint8 or float in [-1, 1] (no quantisation)."""
    if images.dtype == torch.uint8:
        return images.float() / 255
    return (images.float() + 1) / 2


def pil_to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image (any mode) as a uint8 CHW RGB tensor."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def center_crop_resize(image: Image.Image, resolution: int) -> Image.Image:
    """Center-crop to a square and resize to `resolution` (PIL bicubic, antialiased)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        image = image.resize((resolution, resolution), resample=Image.BICUBIC)
    return image


def pil_bicubic_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """clean-fid's resize (Parmar et al. 2022): PIL bicubic on each channel as a float image.

    Identical to ``cleanfid.resize.make_resizer("PIL", False, "bicubic", (size, size))``:
    every channel is resized as a 32-bit float ('F' mode) image, so there is no
    re-quantisation, and the result is clipped to [0, 255]. Runs on the CPU.
    Input uint8 NCHW; output float32 NCHW with values in [0, 255].
    """
    batch = images.detach().cpu().numpy()
    out = np.empty((batch.shape[0], 3, size, size), dtype=np.float32)
    for index, image in enumerate(batch):
        for channel in range(3):
            plane = Image.fromarray(image[channel].astype(np.float32))  # mode "F"
            out[index, channel] = np.asarray(plane.resize((size, size), resample=Image.BICUBIC)).clip(0, 255)
    return torch.from_numpy(out)
