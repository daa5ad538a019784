"""`cascade ablation --sr BASE`: the demo's super-resolution stages, one change at a time, on a fixed base.

An SR stage is judged by what it keeps of the base's images, so every row samples the same held-out
captions with the same seeds through the same base (`BASE`, a trained demo base: .ckpt or export);
the base's 32-px images are identical in every row and training seed (each image depends on its
seed only). Each row's sr1 (32 -> 64) and sr2 (64 -> 128) are trained for every seed on the demo's
data (`configs/demo/sr1.yaml`, `sr2.yaml`, the demo's steps and batch); rows that change only how the
SR stages sample reuse the networks of the training they name.

Scored per row and seed: the detector on the final 128-px images, balanced over the strata
(`cascade.eval.heldout`); **final minus base**, the paired (same image) difference from the base's
own 32-px images, which the SR stages must not make negative; and FID / precision / recall of the
final images against the real 128-px renders in the offline feature space. The table gives the mean
over training seeds and its standard error, and each row's paired (same seed) difference from the
reference row, marked where it is more than two standard errors from zero. NFE counts the SR
stages' network evaluations per image (their sampler steps, from `start_log_snr` on).

The detector reads the same picture differently at 32 and at 128 px: real 32-px renders score 0.87
exact at 32 px (the base ablation's "real renders" row) and 1.00 once the demo's SR stages bring them
to 128 px; the base's 32-px images upsampled by plain bicubic interpolation score 0.02 lower than at
32 px (docs/benchmarks.md). A final minus base of -0.02 is therefore what a stage that changes
nothing would get.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ..data.image_io import open_image
from ..data.transforms import to_tensor
from ..diffusion import function_evaluations
from ..eval.evaluate import evaluate_samples
from ..eval.heldout import BALANCED, images_per_caption, paired_difference, score_folder, stratified_alignment
from ..files.atomic import write_bytes, write_text
from ..files.images import png_bytes
from ..files.sample_folder import METADATA_FILE, intermediate_dirs, merge_metadata
from ..pipeline import Cascade
from ..pipeline.to_folder import FolderJob, LocalRanks
from ..stages.config import SamplingSettings
from . import CONFIG_DIR, STAGES, DemoPlan, heldout_scenes, write_datasets
from .ablation import CHECKS, _cell, _delta, paired_summary, training_lanes
from .evaluation import feature_space, first_images
from .training import StageRun, train_concurrently

SR_STAGES = STAGES[1:]
# The base's sampling in every row: the demo's (guidance 3, 25 dpmpp_2m steps, dynamic thresholding).
BASE_SAMPLING = {"sampler": "dpmpp_2m", "steps": 25, "guidance": 3.0, "dynamic_threshold": 0.995}
# The SR stages' sampling of the reference row, set in full so the rows stay what they were whatever the
# demo's plan now says: the demo's until the sixteenth session (5 steps from the upsampled input noised
# to log-SNR 6, noise-conditioning augmentation 0.1).
SR_SAMPLING = {"sampler": "dpmpp_2m", "steps": 5, "dynamic_threshold": 0.995, "aug_level": 0.1, "start_log_snr": 6.0}


@dataclass(frozen=True)
class SRRow:
    """One recipe of the SR stages: which trained networks (`training`, a `SR_TRAININGS` key) and how
    both SR stages sample (changes to `SR_SAMPLING`). `key` names the row's sample folder."""

    name: str
    key: str
    training: str = "demo"
    sampling: dict[str, Any] = field(default_factory=dict)


# The SR stages' training flags (to configs/demo/sr1.yaml and sr2.yaml alike); "demo": as they are.
# "muon+lr2e-3": Muon for the hidden layers' weights at twice AdamW's peak learning rate, the ratio
# the base's ablation chose (docs/benchmarks.md, "Muon").
SR_TRAININGS: dict[str, tuple[str, ...]] = {
    "demo": (),
    "muon+lr2e-3": ("--model.init_args.optimizer.algorithm", "muon", "--model.init_args.optimizer.lr", "2.0e-3"),
}
# A step's cost relative to the demo's AdamW step where a training's costs more (measured, one thread,
# batch 16 on the stages' 32-px training crops, median of 8 alternating blocks of 10 steps: sr1 1.158x,
# sr2 1.198x; their mean): it trains proportionally fewer steps, so every row has the same compute.
SR_TRAINING_STEP_COST: dict[str, float] = {"muon+lr2e-3": 1.18}

SR_ROWS: tuple[SRRow, ...] = (
    SRRow("demo's SR sampling (start at log-SNR 6)", "demo"),
    # Start later in the reverse process: the upsampled input noised less, so the stage redraws less of it.
    *(SRRow(f"start at log-SNR {value:g}", f"start{value:g}", sampling={"start_log_snr": float(value)})
      for value in (7, 8, 10)),
    SRRow("Muon at lr 2e-3 (same compute)", "muon", training="muon+lr2e-3"),
    SRRow("Muon at lr 2e-3 (same compute), start at log-SNR 8", "muon+start8", training="muon+lr2e-3",
          sampling={"start_log_snr": 8.0}),
)


# the control row: what final minus base is for SR stages that only upsample (the detector's reading of size)
UPSAMPLED_ROW = "no SR network: the stages' own bicubic upsampling"
UPSAMPLED_KEY = "upsampled"


@dataclass(frozen=True)
class SRAblationPlan:
    seeds: tuple[int, ...] = (0, 1, 2)
    train_steps: int = 600  # each SR stage's, the demo's
    train_images: int = 6000
    captions: int = 128
    samples_per_caption: int = 2
    images_per_stratum: int = 16
    batch_size: int = 16
    validations: int = 4
    sample_batch: int = 32
    lanes: int = 2

    @property
    def dataset_plan(self) -> DemoPlan:
        return DemoPlan(train_images=self.train_images, val_images=128, heldout_captions=self.captions,
                        samples_per_caption=self.samples_per_caption, images_per_stratum=self.images_per_stratum,
                        sweep_captions=1)


FAST_SR_ABLATION = SRAblationPlan(seeds=(0, 1), train_steps=4, train_images=128, captions=6, samples_per_caption=1,
                                  images_per_stratum=2, validations=2, sample_batch=16)


def select_sr_rows(keys: list[str] | None, reference: str | None = None) -> list[SRRow]:
    """The rows of `keys` (every row when None) after the reference row (the first row unless
    `reference` names another); ValueError naming an unknown key."""
    by_key = {row.key: row for row in SR_ROWS}
    unknown = [key for key in [*(keys or []), *([reference] if reference else [])] if key not in by_key]
    if unknown:
        raise ValueError(f"--rows / --reference: unknown SR row {unknown[0]!r}; the rows are {', '.join(by_key)}")
    first = by_key[reference or SR_ROWS[0].key]
    rest = [row for row in SR_ROWS if row is not first] if keys is None else \
        [by_key[key] for key in dict.fromkeys(keys) if key != first.key]
    return [first, *rest]


def sr_training_steps(training: str, plan: SRAblationPlan) -> int:
    """A training's steps for the compute of `plan.train_steps` demo steps: fewer where its step costs
    more (`SR_TRAINING_STEP_COST`), a multiple of the validations."""
    steps = plan.train_steps / SR_TRAINING_STEP_COST.get(training, 1.0)
    return max(plan.validations, round(steps / plan.validations) * plan.validations)


def sr_training_runs(out: Path, data: dict[str, Path], plan: SRAblationPlan,
                     trainings: set[str]) -> dict[tuple[str, int, str], StageRun]:
    """One `cascade fit` of each SR stage per training recipe and seed, as the demo trains it."""
    runs = {}
    for training in trainings:
        steps = sr_training_steps(training, plan)
        every = max(1, steps // plan.validations)
        for seed in plan.seeds:
            for stage in SR_STAGES:
                overrides = ("--data.init_args.train_shards", str(data["train"]),
                             "--data.init_args.val_shards", str(data["val"]),
                             "--data.init_args.batch_size", str(plan.batch_size),
                             "--data.init_args.val_batch_size", str(2 * plan.batch_size),
                             "--trainer.val_check_interval", str(every), *SR_TRAININGS[training])
                runs[training, seed, stage] = StageRun(f"{training}-seed{seed}-{stage}", CONFIG_DIR / f"{stage}.yaml",
                                                       out / "runs" / training / f"seed{seed}" / stage,
                                                       steps, overrides, seed)
    return runs


def sr_settings(row: SRRow) -> SamplingSettings:
    """Both SR stages' sampling settings of a row."""
    return SamplingSettings(guidance=1.0).updated(**{**SR_SAMPLING, **row.sampling})


def sr_function_evaluations(settings: list[SamplingSettings]) -> int:
    """Network evaluations per image of the SR stages of these settings: each sampler's calls (from
    `start_log_snr` on, the steps span the rest), doubled where a stage is guided."""
    return sum(function_evaluations(s.sampler, s.steps) * (1 if s.guidance == 1.0 else 2) for s in settings)


@dataclass(frozen=True)
class SRSampled:
    """One row's images of one training seed and their scores: `final` and `effect` (final minus
    base) balanced per check, FID / precision / recall of the final images."""

    row: str
    seed: int
    folder: str
    nfe: int
    final: dict[str, float]
    effect: dict[str, float]
    metrics: dict[str, float]


def sample_and_score_sr(row: SRRow, base: Path, runs: dict[str, StageRun], scenes: list[dict], folder: Path,
                        plan: SRAblationPlan, reference, extractor, ranks: LocalRanks | None = None) -> SRSampled:
    """The held-out captions through the base and the row's SR stages into `folder` (resumable, the
    base's images kept; by `ranks`, else in this process), scored."""
    settings = sr_settings(row)
    cascade = Cascade.from_paths([base, *(runs[stage].last_checkpoint for stage in SR_STAGES)],
                                 [SamplingSettings().updated(**BASE_SAMPLING), settings, settings])
    counts = images_per_caption(scenes, plan.samples_per_caption, plan.images_per_stratum)
    job = FolderJob(n_per_condition=counts, batch_size=plan.sample_batch, keep_intermediate=True, progress=False)
    (ranks or LocalRanks(1)).fill(cascade, [(scene["caption"], None) for scene in scenes], job, folder,
                                  console=Console(quiet=True))
    merge_metadata(folder)
    return scored(row.name, runs[SR_STAGES[0]].seed, folder, folder, sr_function_evaluations(cascade.settings[1:]),
                  scenes, plan, reference, extractor)


def scored(row: str, seed: int, folder: Path, final_dir: Path, nfe: int, scenes: list[dict], plan: SRAblationPlan,
           reference, extractor) -> SRSampled:
    """The final images in `final_dir` (named as in the sampled `folder`) scored: the detector balanced
    over the strata, final minus the base's images of `folder` paired by image, FID / precision / recall."""
    final = score_folder(folder, scenes, final_dir)
    _, base_dir = intermediate_dirs(folder)[0]
    effect = paired_difference(score_folder(folder, scenes, base_dir), final, resamples=200)
    balanced = stratified_alignment(final, resamples=200)[BALANCED]
    metrics = evaluate_samples(first_images(final_dir, plan.samples_per_caption), reference, extractor,
                               metrics=("fid", "pr"), progress=False).metrics
    return SRSampled(row, seed, str(final_dir), nfe, {check: balanced[check][0] for check in CHECKS},
                     {check: effect[check][0] for check in CHECKS}, {key: float(value) for key, value in metrics.items()})


def upsampling_control(folder: Path, target: Path, cascade_sources: list[Path], scenes: list[dict],
                       plan: SRAblationPlan, reference, extractor, seeds: tuple[int, ...]) -> list[SRSampled]:
    """The row of SR stages that change nothing: the base's images of a sampled `folder` brought to
    the final size by the SR stages' own upsampling (`SuperResStage.upsample_lowres`, no network), into
    `target`, scored like a row; the same for every seed (no training involved)."""
    from ..stages.export import load_stage

    target.mkdir(parents=True, exist_ok=True)
    _, base_dir = intermediate_dirs(folder)[0]
    stages = [load_stage(path).eval() for path in cascade_sources]
    for image in sorted(base_dir.glob("*.png")):
        if not (target / image.name).exists():
            pixels = to_tensor(open_image(image).convert("RGB"))[None]
            for stage in stages:
                pixels = stage.upsample_lowres(pixels)
            write_bytes(target / image.name, png_bytes(pixels[0]))
    shutil.copyfile(folder / METADATA_FILE, target / METADATA_FILE)
    control = scored(UPSAMPLED_ROW, seeds[0], folder, target, 0, scenes, plan, reference, extractor)
    return [replace(control, seed=seed) for seed in seeds]


def summarise_sr(sampled: list[SRSampled], order: list[str]) -> list[dict[str, Any]]:
    """Per row: mean and standard error over training seeds of every score, and the paired (same
    seed) difference of each from the reference (the first row)."""
    def scores(item: SRSampled) -> dict[str, float]:
        return {**item.final, **{f"effect {check}": value for check, value in item.effect.items()},
                **{metric: item.metrics.get(metric, math.nan) for metric in ("fid", "precision", "recall")}}

    return paired_summary(sampled, order, scores)


def sr_markdown_table(summary: list[dict[str, Any]], plan: SRAblationPlan, command: str, base: Path) -> str:
    """The SR ablation table as Markdown."""
    lines = [
        (f"The demo's SR stages (32 -> 64 -> 128 px), {plan.train_steps} training steps each at batch "
         f"{plan.batch_size}, {len(plan.seeds)} training seeds per row ({', '.join(map(str, plan.seeds))}), on the "
         f"same base's images ({base}, guidance {BASE_SAMPLING['guidance']:g}) of {plan.captions} distinct held-out "
         f"captions x {plan.samples_per_caption} seed(s), stratified, at least {plan.images_per_stratum} images per "
         "stratum. Cells: mean over training seeds ± standard error of the final 128-px images' balanced detector "
         "accuracy; 'SR effect': final minus the base's own 32-px images (paired by image); Δ: paired (same seed) "
         f"difference from the first row ({summary[0]['row']}), * beyond two standard errors. FID / precision / "
         "recall: offline random-weight Inception features against real 128-px renders. NFE: the SR stages' "
         "network evaluations per image."),
        "",
        f"Reproduce: `{command}`",
        "",
        "| row | shape | count | relation | exact | SR effect exact | SR effect shape | SR effect relation | Δ exact "
        "| Δ shape | FID | Δ FID | precision | recall | NFE |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in summary:
        lines.append(
            f"| {entry['row']} | " + " | ".join(_cell(entry[c]) for c in ("shape", "count", "relation", "exact"))
            + " | " + " | ".join(_delta(entry[f"effect {c}"]) for c in ("exact", "shape", "relation"))
            + f" | {_delta(entry['delta exact'])} | {_delta(entry['delta shape'])} | {_cell(entry['fid'], 1)} | "
            f"{_delta(entry['delta fid'], 1)} | {_cell(entry['precision'])} | {_cell(entry['recall'])} | {entry['nfe']} |"
        )
    return "\n".join(lines) + "\n"


def run_sr_ablation(out: Path, base: Path, plan: SRAblationPlan, threads: int, command: str,
                    console: Console | None = None, row_keys: list[str] | None = None,
                    reference: str | None = None) -> Path:
    """Train, sample, score and tabulate the SR rows into `out` (everything resumes); returns the
    Markdown table's path (`out/sr_ablation.md`, beside `out/sr_ablation.json`)."""
    console = console or Console()
    rows = select_sr_rows(row_keys, reference)
    if not base.exists():
        raise FileNotFoundError(f"--sr: {base} does not exist (a trained base: e.g. a demo's runs/base/checkpoints/last.ckpt)")
    out.mkdir(parents=True, exist_ok=True)
    console.rule("SR ablation 1/3: data")
    data, _ = write_datasets(out, plan.dataset_plan, console, workers=threads if threads > 2 else 0)
    scenes = heldout_scenes(plan.dataset_plan)
    console.rule(f"SR ablation 2/3: training ({plan.lanes} processes at once)")
    runs = sr_training_runs(out, data, plan, {row.training for row in rows})
    train_concurrently(training_lanes(list(runs.values()), plan.lanes), threads, console)
    console.rule("SR ablation 3/3: sampling and scoring every row")
    torch.set_num_threads(threads)
    extractor, reference_stats = feature_space(data["reference"])
    sampled = []
    with LocalRanks(threads) as ranks:  # one sampling process per core, one torch thread each, as the demo
        for row in rows:
            for seed in plan.seeds:
                stage_runs = {stage: runs[row.training, seed, stage] for stage in SR_STAGES}
                result = sample_and_score_sr(row, base, stage_runs, scenes, out / "samples" / row.key / f"seed{seed}",
                                             plan, reference_stats, extractor, ranks)
                console.print(f"{row.name} seed {seed}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.final.items())
                              + f"; final minus base exact {result.effect['exact']:+.2f}, "
                                f"FID {result.metrics.get('fid', math.nan):.1f}", markup=False)
                sampled.append(result)
    first = out / "samples" / rows[0].key / f"seed{plan.seeds[0]}"
    stages = [runs[rows[0].training, plan.seeds[0], stage].last_checkpoint for stage in SR_STAGES]
    sampled += upsampling_control(first, out / "samples" / UPSAMPLED_KEY, stages, scenes, plan, reference_stats,
                                  extractor, plan.seeds)
    summary = summarise_sr(sampled, [row.name for row in rows] + [UPSAMPLED_ROW])
    text = sr_markdown_table(summary, plan, command, base)
    write_text(out / "sr_ablation.json", json.dumps({"plan": asdict(plan), "base": str(base),
                                                     "rows": [asdict(r) for r in rows], "summary": summary,
                                                     "runs": [asdict(s) for s in sampled]}, indent=1, default=str))
    write_text(out / "sr_ablation.md", text)
    console.print(text, markup=False)
    return out / "sr_ablation.md"
