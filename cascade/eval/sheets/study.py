"""A blinded pairwise study: which prompts, which images, and what each rater sees where.

`plan_study` matches two systems' sample folders by prompt and gives every rater their own
shuffled order and their own left/right placement per pair (balanced: each system is on the
left for half of a rater's pairs, up to one). The `Study` is also the un-blinding key:
`Study.to_key` / `Study.from_key` convert it to and from the key file's JSON::

    {
      "format": "cascade.eval.sheets/key", "version": 1,
      "study_id": "drawbench-1a2b3c4d", "created": "2025-01-01T12:00:00+00:00", "seed": 7,
      "prompt_set": "data/prompts/drawbench.csv", "sample_index": 0,
      "questions": {"quality": "Which image is of higher quality?", "alignment": "..."},
      "systems": [{"name": "base", "folder": "runs/a"}, {"name": "new", "folder": "runs/b"}],
      "pairs": [{"pair_id": "p001", "prompt": "...", "category": "Colors",
                 "images": {"base": "runs/a/00000_0.png", "new": "runs/b/00000_0.png"}}, ...],
      "raters": [{"rater_id": "r1",
                  "sheet": [{"position": 1, "pair_id": "p017", "left": "new", "right": "base"}, ...]},
                 ...]
    }

Pair ids name prompts and are the same for every rater; positions and sides differ per rater.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

from ...data.prompt_sets import PromptRecord
from .errors import SheetError
from .samples import SampleFolder, prompt_key

KEY_FORMAT = "cascade.eval.sheets/key"
KEY_VERSION = 1

# The two DrawBench questions (Saharia et al. 2022, Imagen, sec. 4.2 and appendix E).
QUESTIONS: dict[str, str] = {
    "quality": "Which image is of higher quality?",
    "alignment": "Which image better represents the text caption?",
}
CHOICES = ("left", "right", "indifferent")


@dataclass(frozen=True)
class Pair:
    """One prompt and the image each system made for it."""

    pair_id: str
    prompt: str
    category: str
    images: dict[str, str]  # system name -> image path


@dataclass(frozen=True)
class Placement:
    """One pair as one rater sees it: its position on the sheet and the system on each side."""

    position: int
    pair_id: str
    left: str
    right: str


@dataclass(frozen=True)
class RaterSheet:
    """Everything one rater is shown, in order."""

    rater_id: str
    placements: list[Placement]

    @cached_property
    def by_pair_id(self) -> dict[str, Placement]:
        """Each placement under its pair id."""
        return {p.pair_id: p for p in self.placements}


@dataclass(frozen=True)
class Study:
    """A blinded comparison of two systems; also the key that un-blinds it."""

    study_id: str
    created: str
    seed: int
    prompt_set: str
    sample_index: int
    systems: dict[str, str]  # system name -> sample folder, in the order A, B
    pairs: dict[str, Pair]  # by pair id, in prompt-set order
    raters: dict[str, RaterSheet]  # by rater id

    @property
    def system_names(self) -> list[str]:
        return list(self.systems)

    def to_key(self) -> dict:
        """The key file's JSON (see the module docstring)."""
        return {
            "format": KEY_FORMAT,
            "version": KEY_VERSION,
            "study_id": self.study_id,
            "created": self.created,
            "seed": self.seed,
            "prompt_set": self.prompt_set,
            "sample_index": self.sample_index,
            "questions": dict(QUESTIONS),
            "systems": [{"name": name, "folder": folder} for name, folder in self.systems.items()],
            "pairs": [
                {"pair_id": p.pair_id, "prompt": p.prompt, "category": p.category, "images": p.images}
                for p in self.pairs.values()
            ],
            "raters": [
                {
                    "rater_id": sheet.rater_id,
                    "sheet": [
                        {"position": p.position, "pair_id": p.pair_id, "left": p.left, "right": p.right}
                        for p in sheet.placements
                    ],
                }
                for sheet in self.raters.values()
            ],
        }

    @classmethod
    def from_key(cls, key: dict, source: str = "key") -> Study:
        """Rebuild a study from its key file's JSON; a malformed key raises `SheetError`."""
        if not isinstance(key, dict) or key.get("format") != KEY_FORMAT:
            raise SheetError(f"{source}: not a sheets key file (expected format {KEY_FORMAT!r})")
        if key.get("version") != KEY_VERSION:
            raise SheetError(f"{source}: key version {key.get('version')!r} is not supported (expected {KEY_VERSION})")
        try:
            study = cls(
                study_id=str(key["study_id"]),
                created=str(key["created"]),
                seed=int(key["seed"]),
                prompt_set=str(key["prompt_set"]),
                sample_index=int(key["sample_index"]),
                systems={s["name"]: s["folder"] for s in key["systems"]},
                pairs={
                    p["pair_id"]: Pair(p["pair_id"], p["prompt"], p["category"], dict(p["images"]))
                    for p in key["pairs"]
                },
                raters={
                    r["rater_id"]: RaterSheet(
                        r["rater_id"],
                        [Placement(int(s["position"]), s["pair_id"], s["left"], s["right"]) for s in r["sheet"]],
                    )
                    for r in key["raters"]
                },
            )
        except (KeyError, TypeError, ValueError) as error:
            raise SheetError(f"{source}: malformed key file ({type(error).__name__}: {error})") from error
        problems = study._inconsistencies()
        if problems:
            raise SheetError([f"{source}: {problem}" for problem in problems])
        return study

    def _inconsistencies(self) -> list[str]:
        """What makes this study unusable as a key: not two systems, or sheets that do not fit the pairs."""
        if len(self.systems) != 2:
            return [f"expected 2 systems, found {len(self.systems)}"]
        problems = []
        for sheet in self.raters.values():
            if sorted(p.pair_id for p in sheet.placements) != sorted(self.pairs):
                problems.append(f"rater {sheet.rater_id}'s sheet does not list every pair exactly once")
            if any({p.left, p.right} != set(self.systems) for p in sheet.placements):
                problems.append(f"rater {sheet.rater_id}'s sheet names a system that is not in the study")
        return problems


def unique_prompts(records: list[PromptRecord]) -> list[PromptRecord]:
    """The records with repeated prompts (compared as `prompt_key`) dropped, first one kept."""
    seen: set[str] = set()
    unique = []
    for record in records:
        key = prompt_key(record.prompt)
        if key not in seen:
            seen.add(key)
            unique.append(record)
    return unique


def plan_study(
    records: list[PromptRecord],
    system_a: SampleFolder,
    system_b: SampleFolder,
    raters: int,
    prompt_set: str,
    seed: int | None = None,
    sample_index: int = 0,
) -> Study:
    """Pair both systems' images for every record and lay out one blinded sheet per rater.

    ``records`` should already be unique (`unique_prompts`) and cut to the wanted length.
    ``seed`` fixes the study id, every order and every side; None draws a fresh one.
    """
    if system_a.name == system_b.name:
        raise SheetError(f"the two systems need different names (both are {system_a.name!r})")
    if raters < 1:
        raise SheetError(f"--raters must be at least 1, got {raters}")
    if not records:
        raise SheetError(f"prompt set {prompt_set}: no prompts")
    seed = secrets.randbelow(2**31) if seed is None else seed
    pairs = _match_pairs(records, (system_a, system_b), sample_index)
    prompts = [pair.prompt for pair in pairs.values()]
    study_id = _study_id(prompt_set, seed, system_a.name, system_b.name, prompts, raters, sample_index)
    rater_ids = [f"r{number}" for number in range(1, raters + 1)]
    return Study(
        study_id=study_id,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        seed=seed,
        prompt_set=prompt_set,
        sample_index=sample_index,
        systems={system_a.name: str(system_a.root), system_b.name: str(system_b.root)},
        pairs=pairs,
        raters={
            rater_id: _lay_out_sheet(rater_id, list(pairs), (system_a.name, system_b.name), f"{study_id}:{rater_id}")
            for rater_id in rater_ids
        },
    )


def _match_pairs(
    records: list[PromptRecord], systems: tuple[SampleFolder, SampleFolder], sample_index: int
) -> dict[str, Pair]:
    width = max(3, len(str(len(records))))
    pairs: dict[str, Pair] = {}
    problems = []
    for system in systems:
        missing = [r.prompt for r in records if system.image_for(r.prompt, sample_index) is None]
        if missing:
            examples = "; ".join(repr(prompt) for prompt in missing[:3])
            problems.append(
                f"system {system.name!r} ({system.root}) has no image with index {sample_index} for "
                f"{len(missing)} of {len(records)} prompts, e.g. {examples} "
                "(sample them, or pass --limit / --index to match what was sampled)"
            )
    if problems:
        raise SheetError(problems)
    for number, record in enumerate(records, start=1):
        images = {system.name: system.image_for(record.prompt, sample_index) for system in systems}
        absent = [str(path) for path in images.values() if not path.is_file()]
        problems += [f"image listed in metadata.jsonl does not exist: {path}" for path in absent]
        pair_id = f"p{number:0{width}d}"
        pairs[pair_id] = Pair(
            pair_id, record.prompt, record.category, {name: str(path) for name, path in images.items()}
        )
    if problems:
        raise SheetError(problems)
    return pairs


def _lay_out_sheet(rater_id: str, pair_ids: list[str], systems: tuple[str, str], rng_seed: str) -> RaterSheet:
    """A rater's own order, and sides with each system on the left for half the pairs."""
    rng = random.Random(rng_seed)
    order = list(pair_ids)
    rng.shuffle(order)
    a_on_left = [index < len(order) // 2 for index in range(len(order))]
    if len(order) % 2:
        a_on_left[-1] = rng.random() < 0.5
    rng.shuffle(a_on_left)
    first, second = systems
    placements = [
        Placement(position, pair_id, *((first, second) if left_is_a else (second, first)))
        for position, (pair_id, left_is_a) in enumerate(zip(order, a_on_left, strict=True), start=1)
    ]
    return RaterSheet(rater_id, placements)


def _study_id(
    prompt_set: str, seed: int, name_a: str, name_b: str, prompts: list[str], raters: int, sample_index: int
) -> str:
    """The prompt set's name plus a hash of everything that shapes the study (not of file paths)."""
    stem = re.sub(r"[^a-z0-9]+", "-", Path(prompt_set).stem.lower()).strip("-") or "study"
    fingerprint = json.dumps([seed, name_a, name_b, prompts, raters, sample_index])
    return f"{stem}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:8]}"
