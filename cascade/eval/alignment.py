"""Caption alignment of images of the built-in synthetic dataset, judged by a simple detector.

The detector is deterministic and has no learned parts, so it can judge generated samples:

1. **Segment.** A pixel is foreground when its chroma (max - min of R, G, B) is at least
   `MIN_CHROMA`; the synthetic backgrounds are nearly grey, the shapes saturated. Each
   foreground pixel takes the palette colour (`cascade.data.synthetic.COLOURS`) nearest in hue.
2. **Objects.** Per colour, holes are filled and 8-connected components found; components
   smaller than `min_area` (a fraction of the image) are noise and dropped.
3. **Shape** from the fill ratio, area / bounding-box area: a square fills ~1, a circle
   pi/4 ~ 0.785, the upright triangle ~0.5 (thresholds at the midpoints, `FILL_THRESHOLDS`).

`score(image, ground_truth)` compares the detections with a scene's ground truth (the
sample's json, see `cascade.data.synthetic`):

- ``count_ok``: as many objects detected as the caption has;
- ``colour_ok``: the set of detected colours equals the caption's set of colours;
- ``shape_ok``: for every colour in the caption, the set of shapes detected in that colour
  equals the caption's (so the shape has to come with the right colour);
- ``exact_ok``: the detected (colour, shape) multiset equals the caption's (counts included);
- ``relation_ok``: for captions with a spatial relation ("left of", "above", ...): exact and
  the detected positions satisfy it; None for captions without one.

`aggregate` turns a list of scores into accuracies.

`placement(image, ground_truth)` splits a relation into its two halves, on the two-object
captions whose objects differ in colour, by colour alone (so a wrong shape does not hide them):
``axis_ok``, the two objects lie along the relation's axis (side by side for "left of" /
"right of", one above the other for "above" / "below"), and ``side_ok``, the subject's colour is
on the stated side of the object's. A model that reads the relation word but not which object
it is about gets ``axis_ok`` right and ``side_ok`` at chance (0.5).
"""

from __future__ import annotations

import colorsys
import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..data.synthetic import COLOURS
from ..files.images import to_uint8

MIN_CHROMA = 60
DEFAULT_MIN_AREA = 0.006  # the smallest synthetic object covers ~0.029 of the image
FILL_THRESHOLDS = (0.64, 0.89)  # below: triangle; between: circle; above: square
_PALETTE_HUES = np.array([colorsys.rgb_to_hsv(*(np.array(rgb) / 255.0))[0] for rgb in COLOURS.values()])
CHECKS = ("colour", "shape", "count", "exact", "relation")


@dataclass(frozen=True)
class Detection:
    """One detected object: palette colour, shape, centre (unit coordinates, x right, y down),
    area (fraction of the image) and fill ratio (area / bounding-box area)."""

    colour: str
    shape: str
    center: tuple[float, float]
    area: float
    fill: float


def to_rgb_uint8(image: Any) -> np.ndarray:
    """An (H, W, 3) uint8 array from a uint8 (H, W, 3) array or a float (3, H, W) array or
    tensor in [-1, 1] (the models' convention)."""
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.dtype == np.uint8:
        return array
    pixels = to_uint8(torch.from_numpy(np.ascontiguousarray(array))).numpy()  # as a PNG of it would hold
    return pixels.transpose(1, 2, 0) if pixels.ndim == 3 and pixels.shape[0] == 3 else pixels


def segment(image: Any) -> np.ndarray:
    """(H, W) int array: the palette index of each foreground pixel, -1 for background."""
    rgb = to_rgb_uint8(image).astype(np.float64) / 255.0
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    chroma = high - low
    hue = _hue(rgb, high, chroma)
    distance = np.abs(hue[..., None] - _PALETTE_HUES)
    distance = np.minimum(distance, 1.0 - distance)  # hue is circular
    labels = distance.argmin(axis=2)
    return np.where(chroma * 255.0 >= MIN_CHROMA, labels, -1)


def detect(image: Any, min_area: float = DEFAULT_MIN_AREA) -> list[Detection]:
    """The objects in an RGB image (see the module docstring), sorted left to right."""
    labels = segment(image)
    height, width = labels.shape
    detections = []
    for index, colour in enumerate(COLOURS):
        mask = ndimage.binary_fill_holes(labels == index)
        components, _count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        for number, box in enumerate(ndimage.find_objects(components), start=1):
            component = components[box] == number
            area = int(component.sum())
            if area < min_area * height * width:
                continue
            fill = area / component.size
            ys, xs = np.nonzero(component)
            center = (float(xs.mean() + box[1].start + 0.5) / width, float(ys.mean() + box[0].start + 0.5) / height)
            detections.append(Detection(colour, _shape(fill), center, area / (height * width), fill))
    return sorted(detections, key=lambda d: d.center)


def score(image: Any, ground_truth: dict[str, Any], min_area: float = DEFAULT_MIN_AREA) -> dict[str, bool | None]:
    """colour_ok, shape_ok, count_ok, exact_ok, relation_ok of one image against its scene."""
    detections = detect(image, min_area)
    objects = ground_truth["objects"]
    wanted = Counter((o["colour"], o["shape"]) for o in objects)
    found = Counter((d.colour, d.shape) for d in detections)
    colours = {o["colour"] for o in objects}
    exact = wanted == found
    relation = ground_truth.get("relation")
    return {
        "colour_ok": colours == {d.colour for d in detections},
        "shape_ok": all(
            {o["shape"] for o in objects if o["colour"] == c} == {d.shape for d in detections if d.colour == c}
            for c in colours
        ),
        "count_ok": len(detections) == len(objects),
        "exact_ok": exact,
        "relation_ok": None if relation is None else exact and _relation_holds(detections, objects, relation),
    }


_RELATION_TESTS = {
    "left of": lambda a, b: a[0] < b[0],
    "right of": lambda a, b: a[0] > b[0],
    "above": lambda a, b: a[1] < b[1],
    "below": lambda a, b: a[1] > b[1],
}


def placement(image: Any, ground_truth: dict[str, Any], min_area: float = DEFAULT_MIN_AREA) -> dict[str, bool | None]:
    """axis_ok, side_ok of one image (see the module docstring); both None unless the scene has two
    objects of different colours and a relation, and each of the two colours is detected once."""
    objects, relation = ground_truth["objects"], ground_truth.get("relation")
    unscored: dict[str, bool | None] = {"axis_ok": None, "side_ok": None}
    if relation is None or len(objects) != 2 or objects[0]["colour"] == objects[1]["colour"]:
        return unscored
    subject, other = (objects[relation[role][0]]["colour"] for role in ("subject", "object"))
    detections = detect(image, min_area)
    found = {colour: [d for d in detections if d.colour == colour] for colour in (subject, other)}
    if any(len(matches) != 1 for matches in found.values()):
        return unscored
    a, b = found[subject][0].center, found[other][0].center
    horizontal = relation["relation"] in ("left of", "right of")
    return {"axis_ok": (abs(a[0] - b[0]) > abs(a[1] - b[1])) == horizontal,
            "side_ok": bool(_RELATION_TESTS[relation["relation"]](a, b))}


def shape_readings(image: Any, ground_truth: dict[str, Any], min_area: float = DEFAULT_MIN_AREA) -> list[tuple[str, str, float | None]]:
    """Where shape fails: for every object whose colour is its scene's only one of that colour,
    (true shape, what the detector reads, fill ratio). The reading is "none" / "several" (fill None)
    when that colour is found 0 or 2+ times; `shape_confusion` tallies them over many images."""
    detections = detect(image, min_area)
    colours = Counter(o["colour"] for o in ground_truth["objects"])
    readings = []
    for obj in ground_truth["objects"]:
        if colours[obj["colour"]] != 1:
            continue
        found = [d for d in detections if d.colour == obj["colour"]]
        if len(found) == 1:
            readings.append((obj["shape"], found[0].shape, found[0].fill))
        else:
            readings.append((obj["shape"], "none" if not found else "several", None))
    return readings


def shape_confusion(readings: Iterable[tuple[str, str, float | None]]) -> dict[str, dict[str, float]]:
    """Per true shape: the fraction of its objects read as each shape (or "none" / "several"), their
    count "n" and the median fill ratio of those found once ("median fill", NaN if none were)."""
    by_shape: dict[str, list[tuple[str, float | None]]] = {}
    for true, read, fill in readings:
        by_shape.setdefault(true, []).append((read, fill))
    table = {}
    for true, rows in sorted(by_shape.items()):
        counts = Counter(read for read, _ in rows)
        fills = [fill for _, fill in rows if fill is not None]
        table[true] = {**{read: count / len(rows) for read, count in sorted(counts.items())},
                       "n": float(len(rows)), "median fill": float(np.median(fills)) if fills else float("nan")}
    return table


def aggregate(scores: Iterable[dict[str, bool | None]]) -> dict[str, float]:
    """Accuracy per check over the scores (relation over the captions that state one), and n."""
    scores = list(scores)
    result: dict[str, float] = {"n": float(len(scores))}
    for check in CHECKS:
        values = [s[f"{check}_ok"] for s in scores if s[f"{check}_ok"] is not None]
        result[check] = float(np.mean(values)) if values else float("nan")
    return result


def _hue(rgb: np.ndarray, high: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    """HSV hue in [0, 1) per pixel (0 where the chroma is 0)."""
    safe = np.where(chroma > 0, chroma, 1.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.where(
        high == r,
        ((g - b) / safe) % 6.0,
        np.where(high == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    return np.where(chroma > 0, hue / 6.0, 0.0)


def _shape(fill: float) -> str:
    low, high = FILL_THRESHOLDS
    return "triangle" if fill < low else ("circle" if fill < high else "square")


def _relation_holds(detections: list[Detection], objects: list[dict], relation: dict[str, Any]) -> bool:
    """True if some type-consistent assignment of detections to objects satisfies the relation."""
    test = _RELATION_TESTS[relation["relation"]]
    for order in itertools.permutations(detections):
        if any((d.colour, d.shape) != (o["colour"], o["shape"]) for d, o in zip(order, objects)):
            continue
        if all(test(order[s].center, order[o].center) for s in relation["subject"] for o in relation["object"]):
            return True
    return False
