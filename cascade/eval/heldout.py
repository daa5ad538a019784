"""The held-out caption set that measures caption following, and its intervals.

**Strata.** A scene of the synthetic dataset (`cascade.data.synthetic`) falls in one of five
strata by its number of objects and whether its caption states a spatial relation (`STRATA`):

- "1 object": "a green circle";
- "2 objects, no relation": two identical objects, "two red circles";
- "2 objects, relation": "a blue circle above a yellow triangle";
- "3 objects, no relation": three identical objects, "three blue circles";
- "3 objects, relation": "two red circles left of a blue square", "a red circle and a blue
  square right of a green triangle".

The caption grammar has 15 / 15 / 840 / 15 / 26,880 captions in these strata; the held-out split
(a hash of the caption, `caption_split`) keeps about a tenth of each, so the three strata without
a relation have only a handful of held-out captions (`heldout_captions_by_stratum`).

**The set.** `heldout_caption_set(n)` returns n scenes with distinct held-out captions, one scene
per caption, balanced over the strata: every stratum gets an equal share, a stratum with fewer
held-out captions than its share gives all it has and the rest is shared among the others.

**Intervals.** Images of one caption (several seeds) are correlated, so the unit of resampling is
the caption: a percentile bootstrap (Efron & Tibshirani 1993, ch. 13) that draws captions with
replacement within each stratum and keeps all images of a drawn caption together (the cluster
bootstrap, Davison & Hinkley 1997, sec. 3.8). A stratum's accuracy is its images' mean; the
**balanced** accuracy is the unweighted mean of the strata accuracies, so a stratum with many
captions does not outweigh one with few. `paired_difference` resamples the same captions for two
sets of images of the same captions (e.g. the base stage's and the final stage's output), so the
interval of their difference keeps what the two share.
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..data.image_io import open_image
from ..data.synthetic import COLOURS, SHAPES, caption_split, sample_scene
from ..files.sample_folder import read_metadata
from .alignment import CHECKS, score
from .sheets.stats import bootstrap_indices

STRATA: tuple[str, ...] = (
    "1 object",
    "2 objects, no relation",
    "2 objects, relation",
    "3 objects, no relation",
    "3 objects, relation",
)
BALANCED = "balanced"
DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 2  # the held-out stream the demo has always drawn from
MAX_SCENES = 20_000  # held-out scenes walked at most to find a set's captions

Interval = tuple[float, float, float]  # (estimate, low, high)

_RELATIONS = ("left of", "right of", "above", "below")
_COUNT_WORDS = {1: "a", 2: "two", 3: "three"}


class ScoredImage(NamedTuple):
    """One image's detector result (`cascade.eval.alignment.score`) and the scene it was made for."""

    file: str
    scene: dict[str, Any]
    scores: dict[str, bool | None]


def stratum_of(scene: dict[str, Any]) -> str:
    """The `STRATA` entry of a scene: its object count and whether it states a relation."""
    count = len(scene["objects"])
    if count == 1:
        return STRATA[0]
    return f"{count} objects, {'relation' if scene.get('relation') is not None else 'no relation'}"


@functools.lru_cache(maxsize=1)
def _captions_by_stratum() -> dict[str, tuple[str, ...]]:
    """Every caption the synthetic dataset's grammar can write, by stratum (see the module docstring)."""
    kinds = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    found: dict[str, set[str]] = {stratum: set() for stratum in STRATA}
    for kind in kinds:
        found["1 object"].add(_noun_phrase([kind]))
        found["2 objects, no relation"].add(_noun_phrase([kind] * 2))
        found["3 objects, no relation"].add(_noun_phrase([kind] * 3))
    for first, second, relation in itertools.product(kinds, kinds, _RELATIONS):
        if first != second:
            found["2 objects, relation"].add(f"{_noun_phrase([first])} {relation} {_noun_phrase([second])}")
    for first, second, single, relation in itertools.product(kinds, kinds, kinds, _RELATIONS):
        if first == second == single:
            continue  # three identical objects are counted, not related
        pair, alone = _noun_phrase([first, second]), _noun_phrase([single])
        found["3 objects, relation"].update((f"{pair} {relation} {alone}", f"{alone} {relation} {pair}"))
    return {stratum: tuple(sorted(captions)) for stratum, captions in found.items()}


def _noun_phrase(kinds: list[tuple[str, str]]) -> str:
    """ "a red circle", "two red circles", "a red circle and a blue square" (in order of mention)."""
    counts = Counter(kinds)
    return " and ".join(
        f"{_COUNT_WORDS[n]} {colour} {shape if n == 1 else shape + 's'}" for (colour, shape), n in counts.items()
    )


def heldout_captions_by_stratum() -> dict[str, tuple[str, ...]]:
    """Every distinct held-out caption of the synthetic dataset, by stratum (sorted).

    The counts are 1 / 4 / 96 / 2 / 2706 for `STRATA` in order (the split is a fixed hash).
    """
    return {
        stratum: tuple(caption for caption in captions if caption_split(caption) == "heldout")
        for stratum, captions in _captions_by_stratum().items()
    }


def stratum_quotas(n_captions: int, available: dict[str, int]) -> dict[str, int]:
    """How many captions each stratum gives to a set of `n_captions`: equal shares, a stratum
    with fewer than its share gives all it has, the rest is shared among the others; the captions
    an equal split leaves over go one each to the open strata in `STRATA` order."""
    total = sum(available.values())
    if not 0 < n_captions <= total:
        raise ValueError(f"n_captions must be in [1, {total}] (the distinct held-out captions), got {n_captions}")
    quotas: dict[str, int] = {}
    open_strata = [stratum for stratum in STRATA if available.get(stratum, 0) > 0]
    left = n_captions
    while True:
        share = left / len(open_strata)
        small = [stratum for stratum in open_strata if available[stratum] <= share]
        if not small:
            break
        for stratum in small:
            quotas[stratum] = available[stratum]
            left -= available[stratum]
        open_strata = [stratum for stratum in open_strata if stratum not in small]
        if not open_strata:
            break
    for position, stratum in enumerate(open_strata):
        quotas[stratum] = left // len(open_strata) + (1 if position < left % len(open_strata) else 0)
    return {stratum: quotas[stratum] for stratum in STRATA if quotas.get(stratum, 0) > 0}


def heldout_caption_set(n_captions: int, seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """`n_captions` scenes with distinct held-out captions, balanced over `STRATA` (`stratum_quotas`).

    Each caption's scene is the first one with that caption in the held-out stream
    ``sample_scene(i, seed, "heldout")``, i = 0, 1, ...; the list takes the strata in turn
    (round robin), so any prefix of it (a report's grid) spans the strata. Deterministic.
    """
    available = {stratum: len(captions) for stratum, captions in heldout_captions_by_stratum().items()}
    quotas = stratum_quotas(n_captions, available)
    chosen: dict[str, list[dict[str, Any]]] = {stratum: [] for stratum in quotas}
    seen: set[str] = set()
    missing = n_captions
    for index in range(MAX_SCENES):
        scene = sample_scene(index, seed=seed, split="heldout")
        stratum = stratum_of(scene)
        if scene["caption"] in seen or len(chosen.get(stratum, ())) >= quotas.get(stratum, 0):
            continue
        seen.add(scene["caption"])
        chosen[stratum].append(scene)
        missing -= 1
        if missing == 0:
            break
    short = {stratum: f"{len(chosen[stratum])} of {quota}" for stratum, quota in quotas.items()
             if len(chosen[stratum]) < quota}
    if short:
        raise RuntimeError(f"the first {MAX_SCENES} held-out scenes of seed {seed} hold too few distinct captions: {short}")
    rounds = itertools.zip_longest(*chosen.values())
    return [scene for group in rounds for scene in group if scene is not None]


def images_per_caption(scenes: Sequence[dict[str, Any]], per_caption: int, per_stratum: int) -> tuple[int, ...]:
    """How many images (seeds) to draw of each scene's caption: `per_caption`, and more in a
    stratum of few captions, so that every stratum has at least `per_stratum` images (a stratum
    of c captions draws ceil(per_stratum / c) of each). The balanced accuracy weighs every stratum
    equally, so a stratum of one or two held-out captions would otherwise move it by a whole
    image's worth of its share: more seeds of those captions make it less noisy (the intervals
    still resample captions, so they stay honest about how few there are)."""
    if per_caption < 1 or per_stratum < 0:
        raise ValueError(f"per_caption must be >= 1 and per_stratum >= 0, got {per_caption} and {per_stratum}")
    captions = Counter(stratum_of(scene) for scene in scenes)
    return tuple(max(per_caption, -(-per_stratum // captions[stratum_of(scene)])) for scene in scenes)


def folder_images(
    folder: str | Path, scenes: Sequence[dict[str, Any]], images: str | Path | None = None
) -> Iterator[tuple[dict[str, Any], dict[str, Any], np.ndarray]]:
    """(metadata entry, scene, RGB pixels) of every image of a sample folder, in file order.

    `scenes[i]` is the scene of condition i (the folder's ``condition_index``); `images` reads the
    same file names from another folder, e.g. one of its intermediate stages. ValueError names an
    image whose condition is not one of `scenes` or whose prompt is not its scene's caption (a
    folder sampled for another caption set).
    """
    folder = Path(folder)
    images = Path(images) if images is not None else folder
    for entry in read_metadata(folder):
        index = entry.get("condition_index")
        if not isinstance(index, int) or not 0 <= index < len(scenes):
            raise ValueError(f"{folder / entry['file']}: condition_index {index!r} is not one of the {len(scenes)} scenes")
        scene = scenes[index]
        if entry.get("prompt") != scene["caption"]:
            raise ValueError(f"{folder / entry['file']}: prompt {entry.get('prompt')!r} is not the caption of scene "
                             f"{index}, {scene['caption']!r}")
        yield entry, scene, np.asarray(open_image(images / entry["file"]).convert("RGB"))


def score_folder(folder: str | Path, scenes: Sequence[dict[str, Any]], images: str | Path | None = None) -> list[ScoredImage]:
    """The detector's scores of every image of a sample folder against the scene of its caption
    (`folder_images`: which scene, which files, and the errors)."""
    return [ScoredImage(entry["file"], scene, score(pixels, scene))
            for entry, scene, pixels in folder_images(folder, scenes, images)]


class _Stratum(NamedTuple):
    """One stratum's images grouped by caption: (captions, checks) hit and image counts."""

    captions: tuple[str, ...]
    hits: np.ndarray
    counts: np.ndarray
    images: int

    def accuracy(self, rows: np.ndarray) -> np.ndarray:
        """Accuracy per check of the images of the captions in `rows`: (checks,) for a 1-d array of
        caption indices, (resamples, checks) for a (resamples, captions) array of them."""
        n = len(self.captions)
        draws = np.atleast_2d(rows)
        offsets = draws + n * np.arange(len(draws))[:, None]
        multiplicity = np.bincount(offsets.ravel(), minlength=len(draws) * n).reshape(len(draws), n)
        with np.errstate(invalid="ignore", divide="ignore"):
            accuracy = (multiplicity @ self.hits) / (multiplicity @ self.counts)
        return accuracy[0] if rows.ndim == 1 else accuracy


def _by_stratum(scored: Iterable[ScoredImage]) -> dict[str, _Stratum]:
    grouped: dict[str, dict[str, list[dict[str, bool | None]]]] = defaultdict(lambda: defaultdict(list))
    for image in scored:
        grouped[stratum_of(image.scene)][image.scene["caption"]].append(image.scores)
    strata = {}
    for stratum in STRATA:
        if stratum not in grouped:
            continue
        captions = tuple(sorted(grouped[stratum]))
        values = [[[s[f"{check}_ok"] for check in CHECKS] for s in grouped[stratum][c]] for c in captions]
        hits = np.array([[sum(bool(v) for v in column if v is not None) for column in zip(*rows)] for rows in values])
        counts = np.array([[sum(v is not None for v in column) for column in zip(*rows)] for rows in values])
        strata[stratum] = _Stratum(captions, hits.astype(float), counts.astype(float), sum(map(len, values)))
    return strata


def _estimates(strata: dict[str, _Stratum], resamples: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per stratum and for the balanced mean: the estimate (checks,) and its bootstrap replicates
    (resamples, checks), captions drawn with replacement within each stratum (one generator, strata in order)."""
    rng = np.random.default_rng(seed)
    point, replicates = {}, {}
    for stratum, data in strata.items():
        point[stratum] = data.accuracy(np.arange(len(data.captions)))
        replicates[stratum] = data.accuracy(bootstrap_indices(len(data.captions), resamples, rng))
    applies = np.array([data.counts.sum(axis=0) > 0 for data in strata.values()])  # (strata, checks)
    weights = applies / np.maximum(applies.sum(axis=0), 1)
    with np.errstate(invalid="ignore"):
        point[BALANCED] = np.where(applies.any(axis=0), (np.nan_to_num(np.array(list(point.values()))) * weights).sum(axis=0), np.nan)
        stacked = np.nan_to_num(np.array([replicates[s] for s in strata]))  # (strata, resamples, checks)
        replicates[BALANCED] = np.where(applies.any(axis=0), (stacked * weights[:, None, :]).sum(axis=0), np.nan)
    return point, replicates


def _varies(strata: Iterable[_Stratum], check: int) -> bool:
    """Whether a bootstrap of these strata can vary for a check: some stratum the check applies to has two captions."""
    return any(len(data.captions) > 1 and data.counts[:, check].sum() > 0 for data in strata)


def _interval(point: float, replicates: np.ndarray, confidence: float, varies: bool) -> Interval:
    if np.isnan(point) or not varies:
        return (float(point), float("nan"), float("nan"))
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    return (float(point), float(low), float(high))


def _check_bootstrap_settings(resamples: int, confidence: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def stratified_alignment(
    scored: Iterable[ScoredImage],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, dict[str, Any]]:
    """Accuracy of each check per stratum and balanced over the strata, with bootstrap intervals.

    Returns ``{stratum: {check: (accuracy, low, high), "n_images": int, "n_captions": int},
    "balanced": {...}}`` for the strata present (in `STRATA` order), checks as in
    `cascade.eval.alignment.aggregate` ("colour", "shape", "count", "exact", "relation"). A
    stratum's accuracy is the mean over its images (relation: over images whose caption states
    one; NaN in strata without a relation); "balanced" is the mean of the strata accuracies,
    each stratum weighted equally (relation: over the strata with a relation). The interval is the
    percentile interval of `resamples` cluster-bootstrap replicates (captions resampled within
    each stratum); NaN where nothing can vary (a stratum of one caption; for "balanced", when every
    stratum the check applies to has one caption).
    """
    _check_bootstrap_settings(resamples, confidence)
    strata = _by_stratum(scored)
    if not strata:
        raise ValueError("scored must hold at least one image")
    point, replicates = _estimates(strata, resamples, seed)
    result: dict[str, dict[str, Any]] = {}
    for name in [*strata, BALANCED]:
        members = list(strata.values()) if name == BALANCED else [strata[name]]
        row: dict[str, Any] = {check: _interval(point[name][j], replicates[name][:, j], confidence, _varies(members, j))
                               for j, check in enumerate(CHECKS)}
        row["n_images"] = sum(data.images for data in members)
        row["n_captions"] = sum(len(data.captions) for data in members)
        result[name] = row
    return result


def paired_difference(
    before: Iterable[ScoredImage],
    after: Iterable[ScoredImage],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Interval]:
    """Balanced accuracy of `after` minus that of `before`, per check, with a paired bootstrap interval.

    Both must score the same captions (e.g. the base stage's and the final stage's images of one
    sample folder); every bootstrap replicate draws the same captions for both, so what the two
    share (the caption's difficulty) cancels in the difference. ValueError when the captions differ.
    """
    _check_bootstrap_settings(resamples, confidence)
    first, second = _by_stratum(before), _by_stratum(after)
    if {s: d.captions for s, d in first.items()} != {s: d.captions for s, d in second.items()}:
        raise ValueError("before and after must score the same captions")
    if not first:
        raise ValueError("before and after must hold at least one image")
    point_a, replicates_a = _estimates(first, resamples, seed)
    point_b, replicates_b = _estimates(second, resamples, seed)  # the same seed: the same captions drawn
    difference = point_b[BALANCED] - point_a[BALANCED]
    replicated = replicates_b[BALANCED] - replicates_a[BALANCED]
    return {check: _interval(difference[j], replicated[:, j], confidence, _varies(first.values(), j))
            for j, check in enumerate(CHECKS)}
