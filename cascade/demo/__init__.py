"""`cascade demo`: the whole pipeline on the built-in captioned dataset, on a CPU, in one command.

1. writes the synthetic captioned dataset as webdataset shards (train / val) and real renders
   of held-out captions (captions that never occur in training) as the reference set;
2. trains the tiny text-conditional base (MiniLM text encoder) and the two tiny SR stages with
   `cascade fit` on `configs/demo/*.yaml`, the base in one process and the SR stages one after
   the other in a second, at the same time (`cascade.demo.training`);
3. samples the held-out captions through the whole cascade without guidance (scale 1) and with
   it, keeping every stage's output; then a few of them for every combination of a settings sweep
   (base guidance x SR augmentation level, `cascade.demo.sweep`);
4. evaluates caption alignment with the dataset's deterministic detector (`cascade.eval.alignment`), per
   stratum of the held-out caption set with caption-bootstrap intervals (`cascade.eval.heldout`),
   and FID / precision / recall in an offline feature space, for the main run and every sweep setting;
5. writes an HTML and Markdown report (`report.html`) with grids, tables, the sweep's plot and grid,
   the ablation table (`cascade ablation`'s ablation.md, when there is one), curves and configs.

Every step resumes: rerunning the command skips finished shards, trained stages and samples,
and the report keeps the times of the run that did them (`cascade.demo.timings`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console

from ..eval.heldout import images_per_caption
from ..files.sample_folder import merge_metadata
from ..pipeline import Cascade
from ..pipeline.sweep import SweepAxis
from ..pipeline.to_folder import FolderJob, LocalRanks
from ..resources import shipped
from ..stages.config import SamplingSettings
from .evaluation import evaluate_demo, evaluate_sweep
from .report import write_demo_report
from .sweep import sample_sweep
from .timings import StepTimes
from .training import StageRun, StageTrainingError, train_concurrently

CONFIG_DIR = shipped("configs", "demo")
STAGES = ("base", "sr1", "sr2")
SHARD_RESOLUTION = 128
ABLATION_TABLE = Path("ablation") / "ablation.md"  # beside the demo's out: `cascade ablation --out runs/ablation`


@dataclass(frozen=True)
class DemoPlan:
    """How much of everything the demo does (the full run and `--fast` differ only here)."""

    train_images: int = 6000
    val_images: int = 128
    heldout_captions: int = 128  # distinct, balanced over the strata (`cascade.eval.heldout`)
    samples_per_caption: int = 2  # seeds per caption: intervals resample captions, not images
    # ... and more in the strata of few held-out captions (1, 4 and 2 of them), so that each stratum,
    # a fifth of the balanced score, has at least this many images (`images_per_caption`)
    images_per_stratum: int = 16
    # The base trains alone in one process while sr1 then sr2 train in another: about the same
    # wall time on one core each (on the 2-core Intel Xeon VM: base 1.7-2.0, sr1 ~2.5, sr2 ~2.9
    # steps/s). Sized for a 15-minute demo there; measured 15:27 and 16:50 there, 6:46 and 9:05 on
    # the 2-core AMD EPYC VM (docs/benchmarks.md).
    # The base's 1,600 Muon steps: 1.6x the 1,000 that cost what 1,200 AdamW steps did (1.18x the step
    # time), since the demo ran in 10 of its 15 minutes there; the ablation's yardstick of that (1.4x the
    # compute with the layout pre-training) gains relation +0.16, shape +0.05, exact +0.04 at 3 seeds.
    # The SR stages finish well before it on the other core.
    # Since the twentieth session the base has four gated layout choices (configs/demo/base.yaml), whose
    # layout pre-training costs 18.6 s more (1 thread): 60 of those steps, so 1,540 at the same compute.
    # Since the twenty-first, the base takes the SR lane's thread when that lane is done (about a third
    # into its training; `train_concurrently`), and steps 1.32x faster on two threads: 2,000 steps in
    # about the time 1,540 took (docs/benchmarks.md, "Both cores for the base").
    train_steps: tuple[int, int, int] = (2000, 600, 600)
    validations: int = 4  # per stage, evenly spaced; the last one at the final step saves last.ckpt
    # the base stage's guidance "on"; the SR stages sample unguided. 2, not 3: on the networks of the
    # ablation's 1.4x-compute yardstick (the demo's base length then) exact +0.05 +- 0.02*, FID -1.0 +- 0.2*
    # at 3 training seeds (docs/benchmarks.md, "Guidance for the longer base"). With the gated layout
    # choices, on the same yardstick's networks 3 gained shape +0.03 +- 0.01*, but at the demo's 1.3x
    # their denoiser steps (its base since the twenty-first session) 3 against 2 leaves the alignment
    # the same (shape -0.005 +- 0.009, relation +0.011 +- 0.013) and costs FID +0.40 +- 0.05*
    # (docs/benchmarks.md, "Guidance for the gated choices")
    guidance: float = 2.0
    # ... applied only for log-SNR in this interval (Kynkaanniemi et al. 2024's EDM2 interval, sigma in
    # (0.28, 2.9]; None: every step): unguided at the highest noise levels, where the count is decided.
    # On the same networks, guidance 2 in it against 3 everywhere: exact +0.09 +- 0.04*, shape +0.07*,
    # count +0.04*, FID -1.6*, at 32 of 40 network evaluations (3 training seeds; docs/benchmarks.md)
    guidance_interval: tuple[float, float] | None = (-2.13, 2.55)
    # Also sample the held-out set with the base unguided (guidance 1). Off in the full run to keep
    # it within 15 minutes on 2 cores: the sweep compares guidance 1 / 2 / 3 on its captions anyway.
    heldout_unguided: bool = False
    # The SR stages start from their upsampled input noised to log-SNR 10 (SDEdit): their x0
    # estimates at higher noise are worse than that input (docs/benchmarks.md), so 5 steps from
    # there beat 10-25 from pure noise; and from log-SNR 6 or 7 they redraw the base's shapes as
    # rounded blobs, lowering its scores (`cascade ablation --sr`: final minus base exact -0.05 from
    # log-SNR 6, 0.00 from 10, 3 training seeds).
    sampling_steps: tuple[int, int, int] = (25, 5, 5)
    sr_start_log_snr: float | None = 10.0
    dynamic_threshold: float | None = 0.995  # every stage
    aug_levels: tuple[float, float] = (0.1, 0.1)
    batch_size: int = 16
    # the base's layout pre-training steps (None: configs/demo/base.yaml's; a smoke test's few, over its
    # train_images)
    layout_pretraining_steps: int | None = None
    # The settings sweep: the first sweep_captions held-out captions (round-robin over the strata),
    # one image each, for every combination of the axes' values (`cascade.demo.sweep`); the first
    # axis is the plot's x axis. Another setting is one more SweepAxis.
    sweep_captions: int = 16
    sweep: tuple[SweepAxis, ...] = (
        SweepAxis("guidance", (1.0, 2.0, 3.0), stage=0),
        SweepAxis("aug_level", (0.0, 0.3)),
        # Kynkaanniemi et al. 2024's interval (EDM2, sigma in (0.28, 2.9]) in log-SNR
        SweepAxis("guidance_interval", (None, (-2.13, 2.55)), stage=0),
    )

    def __post_init__(self) -> None:
        if any(steps % self.validations for steps in self.train_steps):
            raise ValueError(f"every stage's training steps {self.train_steps} must be a multiple of "
                             f"validations={self.validations}, so the last validation saves the final step")
        if not 1 <= self.sweep_captions <= self.heldout_captions:
            raise ValueError(f"sweep_captions: must be in [1, heldout_captions={self.heldout_captions}], "
                             f"got {self.sweep_captions}")
        if not self.sweep:
            raise ValueError("sweep: give at least one SweepAxis")


FULL = DemoPlan()
FAST = DemoPlan(
    train_images=128, val_images=32, heldout_captions=6, samples_per_caption=1, images_per_stratum=2,
    heldout_unguided=True,
    train_steps=(8, 4, 4), validations=2, sampling_steps=(4, 3, 3), layout_pretraining_steps=4,
    sweep_captions=2, sweep=(SweepAxis("guidance", (1.0, 3.0), stage=0), SweepAxis("aug_level", (0.0, 0.3))),
)


def write_datasets(out: Path, plan: DemoPlan, console: Console, workers: int = 0) -> tuple[dict[str, Path], bool]:
    """Train / val shards at SHARD_RESOLUTION (each stage resizes) and held-out reference renders:
    their paths, and whether anything was written (False when an earlier run wrote them all).
    `workers` > 0: render and encode the shards' images in that many processes (same shards)."""
    from PIL import Image

    from ..data.sources import SyntheticSource
    from ..data.synthetic import render
    from ..data.writer import write_shards

    paths = {"train": out / "shards" / "train", "val": out / "shards" / "val", "reference": out / "reference"}
    wrote = False
    for split_name, count, seed in (("train", plan.train_images, 0), ("val", plan.val_images, 1)):
        summary = write_shards(
            SyntheticSource(count=count, resolution=SHARD_RESOLUTION, seed=seed, split="train"),
            str(paths[split_name]), max_samples=1000, workers=workers, progress=True,
        )
        wrote = wrote or summary.resumed_shards < len(summary.shards)
        console.print(f"shards/{split_name}: {summary.samples} samples in {len(summary.shards)} shards")
    paths["reference"].mkdir(parents=True, exist_ok=True)
    scenes = heldout_scenes(plan)
    listing = paths["reference"] / "scenes.json"
    same_scenes = listing.exists() and json.loads(listing.read_text()) == scenes
    for stale in ([] if same_scenes else paths["reference"].glob("*.png")):  # an earlier run's caption set
        stale.unlink()
    for index, scene in enumerate(scenes):  # one real render per caption
        target = paths["reference"] / f"{index:05d}.png"
        if not target.exists():
            Image.fromarray(render(scene, SHARD_RESOLUTION)).save(target)
            wrote = True
    listing.write_text(json.dumps(scenes, indent=1))
    return paths, wrote


def heldout_scenes(plan: DemoPlan) -> list[dict]:
    """One scene per caption for `plan.heldout_captions` distinct captions that never occur in training
    (`cascade.data.synthetic` splits by caption), balanced over object count and relation
    (`cascade.eval.heldout.heldout_caption_set`)."""
    from ..eval.heldout import heldout_caption_set

    return heldout_caption_set(plan.heldout_captions)


def stage_runs(out: Path, data: dict[str, Path], plan: DemoPlan) -> list[StageRun]:
    """The `cascade fit` of each demo stage on `configs/demo/<stage>.yaml` and the demo's shards."""
    shared = ("--data.init_args.train_shards", str(data["train"]), "--data.init_args.val_shards", str(data["val"]),
              "--data.init_args.batch_size", str(plan.batch_size),
              "--data.init_args.val_batch_size", str(2 * plan.batch_size))
    layout = () if plan.layout_pretraining_steps is None else \
        ("--model.init_args.layout_pretraining.steps", str(plan.layout_pretraining_steps),
         "--model.init_args.layout_pretraining.images", str(plan.train_images))
    return [
        StageRun(name, CONFIG_DIR / f"{name}.yaml", out / "runs" / name, steps,
                 shared + ("--trainer.val_check_interval", str(max(1, steps // plan.validations)))
                 + (layout if name == STAGES[0] else ()))
        for name, steps in zip(STAGES, plan.train_steps)
    ]


def sample_heldout(cascade: Cascade, scenes: list[dict], out: Path, plan: DemoPlan,
                   console: Console, ranks: LocalRanks | None = None) -> tuple[dict[float, Path], int]:
    """Held-out captions through the cascade with the base stage's guidance at plan.guidance (and at 1, off,
    when plan.heldout_unguided): the folder of each guidance scale, and how many images this call wrote
    (0: all were there). `ranks`: the processes that sample (None: this one)."""
    conditions = [(scene["caption"], None) for scene in scenes]
    counts = images_per_caption(scenes, plan.samples_per_caption, plan.images_per_stratum)
    job = FolderJob(n_per_condition=counts, batch_size=plan.batch_size, keep_intermediate=True)
    folders, written = {}, 0
    ranks = ranks or LocalRanks(1)
    for guidance in ((1.0,) if plan.heldout_unguided else ()) + (plan.guidance,):
        folder = out / "samples" / f"guidance={guidance:g}"
        written += ranks.fill(cascade.updated(0, guidance=guidance), conditions, job, folder, console)
        merge_metadata(folder)
        folders[guidance] = folder
    return folders, written


def ablation_table(out: Path, given: Path | None) -> Path | None:
    """The ablation table the report shows: `given`, else `out/../ablation/ablation.md` when it exists,
    else None. FileNotFoundError naming --ablation when `given` is not a file."""
    if given is not None:
        if not given.is_file():
            raise FileNotFoundError(f"--ablation: {given} is not a file (write one with `cascade ablation --out DIR`)")
        return given
    default = out.resolve().parent / ABLATION_TABLE  # out need not exist yet
    return default if default.is_file() else None


def sample_heldout_sweep(cascade: Cascade, scenes: list[dict], out: Path, plan: DemoPlan,
                         console: Console, ranks: LocalRanks | None = None) -> tuple[list, int]:
    """The first `plan.sweep_captions` held-out captions, one image each, for every combination of
    `plan.sweep` into `out/samples/sweep/<setting>/`: the sweep's points and how many images this call wrote."""
    conditions = [(scene["caption"], None) for scene in scenes[:plan.sweep_captions]]
    job = FolderJob(n_per_condition=1, batch_size=plan.batch_size)
    return sample_sweep(cascade, plan.sweep, conditions, out / "samples" / "sweep", job, console, ranks)


def run_demo(out: Path, plan: DemoPlan, threads: int, fast: bool = False, ablation: Path | None = None) -> int:
    """Every step of the demo into `out` (resuming what is there); returns the exit status.
    `ablation`: the ablation table to show (`ablation_table`), None for none."""
    torch.set_num_threads(threads)
    console = Console()
    torch.manual_seed(0)
    started = time.perf_counter()

    def step(title: str) -> None:
        console.rule(f"[bold]{title}[/bold]  ({time.perf_counter() - started:.0f} s so far)")

    out.mkdir(parents=True, exist_ok=True)
    try:
        times = StepTimes(out)
    except ValueError as error:
        console.print(f"cascade demo: {error}", style="red", markup=False)
        return 1
    step("1/5 writing the synthetic captioned dataset")
    data, wrote = write_datasets(out, plan, console, workers=threads if threads > 1 else 0)
    if wrote:
        times.record("data", time.perf_counter() - started)
    step("2/5 training: base | sr1 then sr2, in two processes")
    base, sr1, sr2 = stage_runs(out, data, plan)
    lanes = [[base], [sr1, sr2]]
    try:
        trained = train_concurrently(lanes, threads, console)
    except StageTrainingError as error:
        console.print(f"cascade demo: {error}", style="red", markup=False)
        return 1
    for name in STAGES:
        if name in trained:
            times.record(f"train {name}", trained[name])
    checkpoints = [run.last_checkpoint for run in (base, sr1, sr2)]
    step("3/5 sampling held-out captions through the cascade")
    begun = time.perf_counter()
    settings = [SamplingSettings(steps=plan.sampling_steps[0], guidance=plan.guidance,
                                 guidance_interval=plan.guidance_interval,
                                 dynamic_threshold=plan.dynamic_threshold)] + [
        SamplingSettings(steps=steps, guidance=1.0, dynamic_threshold=plan.dynamic_threshold, aug_level=aug,
                         start_log_snr=plan.sr_start_log_snr)
        for steps, aug in zip(plan.sampling_steps[1:], plan.aug_levels)
    ]
    cascade = Cascade.from_paths(checkpoints, settings)
    scenes = heldout_scenes(plan)
    with LocalRanks(threads) as ranks:  # one sampling process per core, one torch thread each
        folders, written = sample_heldout(cascade, scenes, out, plan, console, ranks)
        if written:
            times.record("sampling", time.perf_counter() - begun)
        begun = time.perf_counter()
        points, written = sample_heldout_sweep(cascade, scenes, out, plan, console, ranks)
        if written:
            times.record("sweep sampling", time.perf_counter() - begun)
    step("4/5 evaluating alignment and FID / precision / recall")
    begun = time.perf_counter()
    evaluation = evaluate_demo(folders, data["reference"], scenes, console, per_caption=plan.samples_per_caption)
    times.record("evaluation", time.perf_counter() - begun)
    begun = time.perf_counter()
    sweep = evaluate_sweep(points, data["reference"], scenes[:plan.sweep_captions], console)
    times.record("sweep evaluation", time.perf_counter() - begun)
    console.print(f"sweep: {len(points)} settings x {plan.sweep_captions} captions: sampling "
                  f"{times.seconds.get('sweep sampling', float('nan')):.0f} s, evaluation "
                  f"{times.seconds['sweep evaluation']:.0f} s")
    step("5/5 writing the report")
    sequential = ["data", "sampling", "sweep sampling", "evaluation", "sweep evaluation"]
    steps = ["data", *(f"train {name}" for name in STAGES), *sequential[1:]]
    timings = {name: times.seconds[name] for name in steps if name in times.seconds}
    total = times.total(sequential, [[f"train {run.name}" for run in lane] for lane in lanes])
    if total is not None:
        timings["total"] = total
    files = write_demo_report(out, plan=asdict(plan), settings=[s.to_dict() for s in settings],
                              folders=folders, evaluation=evaluation, timings=timings, fast=fast,
                              sweep=sweep, ablation=ablation)
    console.print(f"[green]report: {files.html}[/green] (and {files.markdown})")
    console.print(f"total {time.perf_counter() - started:.0f} s")
    return 0
