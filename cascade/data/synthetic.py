"""The built-in captioned dataset: 1-3 coloured shapes on a textured background.

Every sample is a *scene*, a resolution-independent description in unit coordinates
(x to the right, y down), drawn deterministically from ``(seed, split, index)``:

- 1, 2 or 3 objects; each a `SHAPES` entry in a `COLOURS` entry, with a centre and a size
  (half the side of its bounding square, in image widths). Objects are large and never touch.
- Layouts: one object near the middle; two objects side by side or one above the other; three
  objects as a pair on one side and a single object on the other.
- A caption states colours, counts and the spatial relation, e.g. "a red circle",
  "two green squares", "a blue triangle above a yellow circle",
  "two red circles left of a blue square", "a red circle and a blue square right of a green
  triangle". Identical objects are counted ("two", "three").
- The class label is the (colour, shape) of the largest object (the first one on ties):
  ``class = colour_index * len(SHAPES) + shape_index``, named like "red circle" (`CLASS_NAMES`).
- The background is a light neutral colour with a fine, low-contrast plane-wave texture, so
  super-resolution stages have real high-frequency detail while the shapes stay easy to see.

`render(scene, resolution)` (from `cascade.data.render`) turns a scene into pixels at any resolution.
The scene dict is exactly what the shard writer stores as the sample's ``json`` (the ground
truth that `cascade.eval.alignment` checks generated images against).

Splits hold out *captions*: a caption belongs to the ``heldout`` split when a stable hash of
its text falls in the held-out fraction (`HELDOUT_FRACTION`), otherwise to ``train``. Index i of a
split is the first scene drawn from the stream for (seed, i) whose caption is in that split,
so no held-out caption ever appears in training data, at any seed.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from typing import Any

import numpy as np

from .render import render

__all__ = [
    "CLASS_NAMES",
    "COLOURS",
    "HELDOUT_FRACTION",
    "SHAPES",
    "SPLITS",
    "caption_split",
    "rebound_caption",
    "class_index",
    "render",
    "render_sample",
    "sample_scene",
]

# Saturated, well-separated colours (RGB); the background is never this saturated.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (34, 170, 60),
    "blue": (37, 80, 235),
    "yellow": (245, 205, 30),
    "purple": (150, 50, 210),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
CLASS_NAMES: list[str] = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
SPLITS: tuple[str, ...] = ("train", "heldout")
HELDOUT_FRACTION = 0.1

_COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}
_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_SPLIT_CODE = {"train": 0, "heldout": 1}
_MAX_ATTEMPTS = 10_000


def class_index(colour: str, shape: str) -> int:
    """The class id of a (colour, shape) pair; `CLASS_NAMES[class_index(c, s)] == f"{c} {s}"`."""
    return list(COLOURS).index(colour) * len(SHAPES) + SHAPES.index(shape)


def caption_split(caption: str) -> str:
    """``"heldout"`` for the held-out fraction of captions (stable hash), else ``"train"``."""
    digest = hashlib.sha256(caption.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2.0**64
    return "heldout" if bucket < HELDOUT_FRACTION else "train"


def sample_scene(index: int, seed: int = 0, split: str = "train") -> dict[str, Any]:
    """The scene (json-ready dict) at `index` of `split` for `seed`; deterministic."""
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    for attempt in range(_MAX_ATTEMPTS):
        rng = np.random.default_rng([seed, index, attempt])
        scene = _draw_scene(rng)
        if caption_split(scene["caption"]) == split:
            scene.update(split=split, index=index, seed=seed)
            return scene
    raise RuntimeError(f"no {split} scene found for seed={seed} index={index}")


def render_sample(
    index: int, resolution: int, seed: int = 0, split: str = "train"
) -> tuple[np.ndarray, dict[str, Any]]:
    """(RGB uint8 image of shape (resolution, resolution, 3), scene dict) for one sample."""
    scene = sample_scene(index, seed=seed, split=split)
    return render(scene, resolution), scene


def _draw_scene(rng: np.random.Generator) -> dict[str, Any]:
    count = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    centres, sizes, groups, axis = _layout(rng, count)
    kinds = _object_kinds(rng, count)
    objects = [
        {
            "shape": shape,
            "colour": colour,
            "rgb": list(COLOURS[colour]),
            "center": [round(float(x), 5), round(float(y), 5)],
            "size": round(float(size), 5),
        }
        for (colour, shape), (x, y), size in zip(kinds, centres, sizes)
    ]
    caption, relation = _caption(rng, objects, groups, axis)
    main = max(range(count), key=lambda i: (objects[i]["size"], -i))
    return {
        "caption": caption,
        "class": class_index(objects[main]["colour"], objects[main]["shape"]),
        "class_name": f"{objects[main]['colour']} {objects[main]['shape']}",
        "objects": objects,
        "relation": relation,
        "background": _background(rng),
    }


def _layout(rng: np.random.Generator, count: int):
    """Centres, sizes, the two groups (lists of object indices) and the axis between them.

    Coordinates are first drawn for a horizontal arrangement (groups side by side), then
    transposed for a vertical one; the first group is on the left (or at the top).
    """
    if count == 1:
        size = rng.uniform(0.2, 0.3)
        centres = [rng.uniform(0.4, 0.6, size=2)]
        return centres, [size], [[0]], None
    axis = "horizontal" if rng.random() < 0.5 else "vertical"
    if count == 2:
        gap = rng.uniform(0.22, 0.27, size=2)
        xs = [0.5 - gap[0], 0.5 + gap[1]]
        ys = rng.uniform(0.4, 0.6, size=2)
        sizes = list(rng.uniform(0.13, 0.19, size=2))
        groups = [[0], [1]]
    else:
        pair_x = 0.5 - rng.uniform(0.2, 0.25)
        spread = rng.uniform(0.22, 0.26)
        xs = [pair_x, pair_x, 0.5 + rng.uniform(0.2, 0.25)]
        ys = [0.5 - spread, 0.5 + spread, rng.uniform(0.4, 0.6)]
        sizes = list(rng.uniform(0.12, 0.17, size=3))
        groups = [[0, 1], [2]]
    centres = [np.array([x, y]) for x, y in zip(xs, ys)]
    if rng.random() < 0.5:  # mirror: the pair (or first object) goes to the right / bottom
        centres = [np.array([1.0 - x, y]) for x, y in centres]
        groups = groups[::-1]
    if axis == "vertical":
        centres = [c[::-1] for c in centres]
    return centres, sizes, groups, axis


def _object_kinds(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    """(colour, shape) per object; with probability 0.35 all objects are identical (counting)."""
    colours, shapes = list(COLOURS), list(SHAPES)

    def draw() -> tuple[str, str]:
        return colours[rng.integers(len(colours))], shapes[rng.integers(len(shapes))]

    if count > 1 and rng.random() < 0.35:
        return [draw()] * count
    return [draw() for _ in range(count)]


def _caption(rng: np.random.Generator, objects: list[dict], groups: list[list[int]], axis: str | None):
    """The caption and the relation it states ({"subject", "relation", "object"} or None)."""
    if len(groups) == 1 or len({(o["colour"], o["shape"]) for o in objects}) == 1:
        return _noun_phrase(objects), None
    first, second = groups
    relation = "left of" if axis == "horizontal" else "above"
    if rng.random() < 0.5:  # mention the right / bottom group first
        first, second, relation = second, first, _OPPOSITE[relation]
    caption = (
        f"{_noun_phrase([objects[i] for i in first])} {relation} {_noun_phrase([objects[i] for i in second])}"
    )
    return caption, {"subject": first, "relation": relation, "object": second}


def _noun_phrase(objects: list[dict]) -> str:
    """ "a red circle", "two red circles", "a red circle and a blue square"."""
    counts = Counter((o["colour"], o["shape"]) for o in objects)
    parts = []
    for (colour, shape), n in counts.items():
        noun = shape if n == 1 else _PLURAL[shape]
        parts.append(f"{_COUNT_WORDS[n]} {colour} {noun}")
    return " and ".join(parts)


def _background(rng: np.random.Generator) -> dict[str, Any]:
    """A light, nearly neutral base colour and a fine plane-wave texture (grey-level)."""
    level = rng.uniform(150, 215)
    tint = rng.uniform(-8, 8, size=3)
    waves = []
    for _ in range(12):
        frequency = float(np.exp(rng.uniform(np.log(6.0), np.log(64.0))))  # cycles per image
        angle = rng.uniform(0, np.pi)
        amplitude = rng.uniform(2.0, 6.0)
        waves.append(
            [
                round(frequency * float(np.cos(angle)), 4),
                round(frequency * float(np.sin(angle)), 4),
                round(float(rng.uniform(0, 2 * np.pi)), 4),
                round(amplitude, 3),
            ]
        )
    return {"rgb": [round(float(level + t), 2) for t in tint], "waves": waves}


_NOUN_PHRASE = re.compile(r"\b(a|two|three) (" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")(s?)\b")


def rebound_caption(caption: str) -> str | None:
    """The caption with its attributes bound to other objects, for a negative prompt that differs
    from it only in which colour goes with which shape: the shapes cycled one noun phrase on
    ("a red circle left of a blue square" -> "a red square left of a blue circle"), or, where that
    describes the same scene (or every phrase has the same shape), the next cycle of the shapes,
    then of the colours ("a red square above a blue square" -> "a blue square above a red square").
    The same words in the same places; None where no cycle describes another scene (one noun
    phrase, or phrases all alike)."""
    phrases = list(_NOUN_PHRASE.finditer(caption))
    colours, shapes = [m.group(2) for m in phrases], [m.group(3) for m in phrases]

    def written(new_colours: list[str], new_shapes: list[str]) -> str:
        parts, end = [], 0
        for match, colour, shape in zip(phrases, new_colours, new_shapes):
            parts += [caption[end:match.start()], f"{match.group(1)} {colour} {shape}{match.group(4)}"]
            end = match.end()
        return "".join(parts) + caption[end:]

    def scene_of(text: str) -> list[Counter]:
        """What each side of the relation holds (the order of "A and B" does not matter)."""
        groups = re.split(" (?:" + "|".join(_OPPOSITE) + ") ", text)
        return [Counter(m.groups() for m in _NOUN_PHRASE.finditer(group)) for group in groups]

    for shift in range(1, len(phrases)):
        for candidate in (written(colours, shapes[shift:] + shapes[:shift]), written(colours[shift:] + colours[:shift], shapes)):
            if scene_of(candidate) != scene_of(caption):
                return candidate
    return None
