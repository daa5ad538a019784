"""Float images in [-1, 1] (the models' convention) as 8-bit pixels and as PNG files.

One quantisation everywhere: clamp to [-1, 1], then round((x + 1) * 127.5) to the nearest
integer (ties to even). Saving a sample as PNG, scoring a live generator's batch and checking a
sample's content all use it, so metrics of live samples equal those of the same samples saved.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in [0, 255], same shape: uint8 is returned as is, floats in [-1, 1] are
    quantised as the module docstring says (values outside [-1, 1] are clamped)."""
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise TypeError(f"expected uint8 or float images, got {images.dtype}")
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_hwc_uint8(image: torch.Tensor) -> np.ndarray:
    """A (3, H, W) image (uint8, or float in [-1, 1]) as the (H, W, 3) uint8 array PIL takes."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected one image of shape (3, H, W), got {tuple(image.shape)}")
    return to_uint8(image).permute(1, 2, 0).cpu().numpy()


def png_bytes(image: torch.Tensor) -> bytes:
    """A (3, H, W) image (uint8, or float in [-1, 1]) encoded as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(to_hwc_uint8(image)).save(buffer, format="PNG")
    return buffer.getvalue()
