"""Build the inputs of `cascade eval sheets make` for tests (a prompt CSV, sample folders) and run it."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from cascade.cli import main as cascade_main


def write_prompt_csv(path: Path, records: list[tuple[str, str]]) -> Path:
    """A prompt set CSV with the DrawBench header ``prompt,category``."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "category"])
        writer.writerows(records)
    return path


def write_sample_folder(folder: Path, prompts: list[str], shade: int, samples_per_prompt: int = 1) -> Path:
    """A folder as `cascade sample` writes it: tiny PNGs plus ``metadata.jsonl``.

    Every image is a distinct solid colour (``shade`` picks the system, the prompt's
    position and the sample index the rest), so a test can tell exactly which file a sheet shows.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "metadata.jsonl").open("w", encoding="utf-8") as metadata:
        for number, prompt in enumerate(prompts):
            for index in range(samples_per_prompt):
                name = f"{number:05d}_{index}.png"
                Image.new("RGB", (8, 8), (shade, number % 256, index * 40)).save(folder / name)
                entry = {"file": name, "prompt": prompt, "index": index, "seed": 1000 * number + index}
                metadata.write(json.dumps(entry) + "\n")
    return folder


SCRIPT_PROMPT = "</script><script>window.__xss = 1</script>"
TAG_PROMPT = '<img src=x onerror="window.__xss = 2"> & "quotes"'
FORMULA_PROMPT = '=HYPERLINK("http://example.invalid","click")'
PROMPTS = [
    ("A red colored car.", "Colors"),
    ("A black colored dog.", "Colors"),
    ("Two cats on a sofa.", "Counting"),
    ("Three apples.", "Counting"),
    ("Five birds in the sky.", "Counting"),
    (SCRIPT_PROMPT, "Safety"),
    (TAG_PROMPT, "Safety"),
    (FORMULA_PROMPT, "Safety"),
    ("+1 dollar", "Safety"),
    ("-minus", "Safety"),
    ("@mention", "Safety"),
    ("A sign that says 'Schönhausen'.", "Text"),
]


@dataclass
class MadeStudy:
    """A study written by `make_study`: its folder, key and the two systems' sample folders."""

    out: Path
    key_path: Path
    key: dict
    system_dirs: dict[str, Path]

    def sheet(self, rater: str) -> str:
        return (self.out / "raters" / f"sheet-{self.key['study_id']}-{rater}.html").read_text(encoding="utf-8")

    def template(self, rater: str) -> Path:
        return self.out / "raters" / f"answers-{self.key['study_id']}-{rater}.csv"

    def placements(self, rater: str) -> list[dict]:
        return next(r["sheet"] for r in self.key["raters"] if r["rater_id"] == rater)


def make_study(tmp_path: Path, seed: int = 5, raters: int = 3, image_format: str = "png",
               prompts: list[tuple[str, str]] = PROMPTS) -> MadeStudy:
    """Run `cascade eval sheets make` on `prompts` (default `PROMPTS`) with systems ``base`` and ``new``.

    PNG by default, so that each embedded image is its sample file byte for byte.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    prompts_csv = write_prompt_csv(tmp_path / "prompts.csv", prompts)
    texts = [prompt for prompt, _ in prompts]
    dirs = {
        "base": write_sample_folder(tmp_path / "base", texts, 10),
        "new": write_sample_folder(tmp_path / "new", texts, 200),
    }
    out = tmp_path / f"study-{seed}"
    argv = [
        "sheets",
        "make",
        "--prompts",
        str(prompts_csv),
        "--system-a",
        f"base={dirs['base']}",
        "--system-b",
        f"new={dirs['new']}",
        "--raters",
        str(raters),
        "--out",
        str(out),
        "--seed",
        str(seed),
        "--image-format",
        image_format,
    ]
    assert cascade_main(["eval", *argv]) == 0
    (key_path,) = out.glob("key-*.json")
    return MadeStudy(out, key_path, json.loads(key_path.read_text(encoding="utf-8")), dirs)
