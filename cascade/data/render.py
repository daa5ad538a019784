"""Rasterise a synthetic scene (see `cascade.data.synthetic`) at any resolution.

A scene lives in unit coordinates (x to the right, y down, the image is [0, 1]^2), so the
same scene renders at 32, 64, 256 or 1024 pixels. Every pixel is the *area average* of the
continuous picture over that pixel, which keeps renders at different resolutions consistent
(render(R) ~= box-downsample(render(k R))) with no supersampling:

- the background is a neutral base colour plus a sum of plane waves (grey-level only, so it
  stays unsaturated); averaging a wave over a square pixel of width w multiplies its
  amplitude by sinc(fx w) sinc(fy w), which is applied exactly;
- shapes are flat palette colours whose per-pixel coverage is estimated from the signed
  distance at the pixel centre, coverage = clip(0.5 - distance / w, 0, 1) (exact for straight
  edges, a close approximation at corners and on the circle).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def render(scene: dict[str, Any], resolution: int) -> np.ndarray:
    """Return the scene as an RGB uint8 array of shape (resolution, resolution, 3)."""
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    centres = (np.arange(resolution, dtype=np.float64) + 0.5) / resolution
    image = _background(scene["background"], centres)
    for obj in scene["objects"]:
        _paint_shape(image, obj, centres, resolution)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _background(background: dict[str, Any], centres: np.ndarray) -> np.ndarray:
    """Base colour plus box-filtered plane waves, as float RGB in [0, 255]."""
    pixel = centres[1] - centres[0] if len(centres) > 1 else 1.0
    grey = np.zeros((len(centres), len(centres)), dtype=np.float64)
    for fx, fy, phase, amplitude in background["waves"]:
        # exp(i(2 pi fx x + 2 pi fy y + phase)) factorises into a row and a column vector
        row = np.exp(2j * np.pi * fy * centres + 1j * phase)[:, None]
        col = np.exp(2j * np.pi * fx * centres)[None, :]
        attenuation = np.sinc(fx * pixel) * np.sinc(fy * pixel)
        grey += amplitude * attenuation * (row * col).real
    base = np.asarray(background["rgb"], dtype=np.float64)
    return base[None, None, :] + grey[:, :, None]


def _paint_shape(image: np.ndarray, obj: dict[str, Any], centres: np.ndarray, resolution: int) -> None:
    """Composite one flat-coloured shape over `image` in place, with anti-aliased edges."""
    cx, cy = obj["center"]
    size = obj["size"]
    margin = size + 2.0 / resolution
    cols = np.nonzero(np.abs(centres - cx) <= margin)[0]
    rows = np.nonzero(np.abs(centres - cy) <= margin)[0]
    if len(cols) == 0 or len(rows) == 0:
        return
    x = centres[cols][None, :] - cx
    y = centres[rows][:, None] - cy
    distance = SIGNED_DISTANCE[obj["shape"]](x, y, size)
    coverage = np.clip(0.5 - distance * resolution, 0.0, 1.0)[:, :, None]
    colour = np.asarray(obj["rgb"], dtype=np.float64)
    region = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    region += coverage * (colour - region)


def _circle(x: np.ndarray, y: np.ndarray, size: float) -> np.ndarray:
    return np.hypot(x, y) - size


def _square(x: np.ndarray, y: np.ndarray, size: float) -> np.ndarray:
    dx = np.abs(x) - size
    dy = np.abs(y) - size
    outside = np.hypot(np.maximum(dx, 0.0), np.maximum(dy, 0.0))
    inside = np.minimum(np.maximum(dx, dy), 0.0)
    return outside + inside


def _triangle(x: np.ndarray, y: np.ndarray, size: float) -> np.ndarray:
    """Upright isosceles triangle filling the box [-size, size]^2 (apex at the top, y down)."""
    corners = [(0.0, -size), (size, size), (-size, size)]
    best_sq = np.full(np.broadcast(x, y).shape, np.inf)
    inside = np.ones_like(best_sq, dtype=bool)
    for (ax, ay), (bx, by) in zip(corners, corners[1:] + corners[:1]):
        ex, ey = bx - ax, by - ay
        vx, vy = x - ax, y - ay
        t = np.clip((vx * ex + vy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        best_sq = np.minimum(best_sq, (vx - t * ex) ** 2 + (vy - t * ey) ** 2)
        # corners run clockwise on screen (y down): the inside is where the cross product is >= 0
        inside &= (ex * vy - ey * vx) >= 0.0
    distance = np.sqrt(best_sq)
    return np.where(inside, -distance, distance)


SIGNED_DISTANCE = {"circle": _circle, "square": _square, "triangle": _triangle}
