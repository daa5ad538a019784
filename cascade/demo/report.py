"""The demo's HTML / Markdown report: grids per stage, guidance off vs on, the alignment table,
the settings sweep (a plot of detector accuracy and FID against guidance, and one grid of the
same captions across every setting), the ablation table, automatic metrics, training curves and
the exact configs used."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ..eval import markdown
from ..eval.plots import labelled_grid, panels_vs_setting
from ..eval.report import Report, ReportFiles, add_metrics_section
from ..files.sample_folder import intermediate_dirs, read_metadata
from .evaluation import (
    ALIGNMENT_CHECKS,
    SR_EFFECT_CHECKS,
    SWEEP_CHECKS,
    SweepResult,
    first_entries,
    format_difference,
    format_interval,
)

GRID_CAPTIONS = 12  # captions shown in the grids
SWEEP_GRID_CAPTIONS = 8  # columns of the grid of the same captions across every setting
SWEEP_PLOT_PANELS = ("exact", "shape", "count", "fid")
ABLATION_COMMAND = "cascade ablation --out runs/ablation"


def training_curves(run_dir: Path):
    """Train loss (smoothed) and validation loss against the step, from the run's CSV log."""
    files = sorted(run_dir.rglob("metrics.csv"))
    train, val = {}, {}
    for path in files:
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                step = row.get("step")
                if not step:
                    continue
                if row.get("train/loss"):
                    train[int(step)] = float(row["train/loss"])
                if row.get("val/loss"):
                    val[int(step)] = float(row["val/loss"])
    figure, axis = plt.subplots(figsize=(5.5, 3.2))
    if train:
        steps = sorted(train)
        values = [train[s] for s in steps]
        window = max(1, len(values) // 20)
        smoothed = [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
                    for i in range(len(values))]
        axis.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.8)
        axis.plot(steps, smoothed, color="tab:blue", label="train loss (moving average)")
    if val:
        steps = sorted(val)
        axis.plot(steps, [val[s] for s in steps], "o-", color="tab:orange", label="validation loss")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    return figure, (min(val.values()) if val else math.nan, val)


def _grid_paths(images: Path, entries: list[dict]) -> list[Path]:
    return [images / entry["file"] for entry in entries]


def _add_stratified_alignment(report: Report, plan: dict, evaluation: dict) -> None:
    """Per stage, accuracy per stratum and balanced with 95% intervals; then the SR stages' effect."""
    available = evaluation["strata_available"]
    report.text(
        f"The held-out set is {plan['heldout_captions']} distinct held-out captions, {plan['samples_per_caption']} "
        f"image(s) each (different seeds; more in a stratum of few captions, so that every stratum has at least "
        f"{plan.get('images_per_stratum', 0)} images), balanced over five strata by object count and relation "
        "(cascade.eval.heldout): each stratum gets an equal share, and a stratum with fewer held-out captions gives "
        "all it has. The held-out split holds " + ", ".join(f"{n} {stratum!r}" for stratum, n in available.items())
        + " distinct captions. Intervals are 95% percentile-bootstrap intervals that resample captions (all images "
        "of a caption together) within each stratum; 'balanced' is the mean of the strata accuracies, each stratum "
        "weighted equally (relation: over the strata that state one). A stratum of one caption has no interval, "
        "and the balanced interval treats it as fixed."
    )
    for label, strata in evaluation["stratified"].items():
        rows = [[stratum, values["n_captions"], values["n_images"]]
                + [format_interval(values[check]) for check in ALIGNMENT_CHECKS]
                for stratum, values in strata.items()]
        report.table(["stratum", "captions", "images"] + list(ALIGNMENT_CHECKS), rows,
                     caption=f"{label}: detector accuracy per stratum [95% interval]")
    if evaluation["sr_effect"]:
        report.heading("Do the super-resolution stages lower the base's scores?")
        report.text(
            "Balanced accuracy of the final images minus that of the base stage's images of the same samples; the "
            "interval comes from a paired bootstrap over captions (both stages' images of a drawn caption together), "
            "so an interval that excludes 0 is a change the SR stages made."
        )
        report.table(["setting"] + [f"{check}: final - base" for check in SR_EFFECT_CHECKS],
                     [[label] + [format_difference(difference[check]) for check in SR_EFFECT_CHECKS]
                      for label, difference in evaluation["sr_effect"].items()])


def first_samples(folder: Path, captions: int) -> list[dict]:
    """The metadata of the first image (sample index 0) of each of the folder's first `captions`
    conditions, in condition order."""
    entries = {entry["condition_index"]: entry for entry in read_metadata(folder)
               if entry.get("index") == 0 and entry.get("condition_index", captions) < captions}
    return [entries[index] for index in sorted(entries)]


def _format_value(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _setting_label(setting: dict) -> str:
    return ", ".join(f"{key}={_format_value(value)}" for key, value in setting.items())


def add_sweep_section(report: Report, plan: dict, sweep: list[SweepResult], folders: dict[float, Path]) -> Report:
    """The sweep's table, its plot (balanced exact / shape / count and FID against the first swept
    setting, one line per combination of the others) and one grid of the same captions in every
    setting, the main guidance folders included."""
    report.heading("Settings sweep")
    axes = list(sweep[0].setting)  # the axes' names, `base.guidance`, `aug_level`, ...
    report.text(
        f"The first {plan['sweep_captions']} captions of the held-out set (it is ordered round-robin over the strata), "
        "one image each, through the whole cascade for every combination of " + " x ".join(axes) + "; every setting "
        "starts from the same seeds, and every other setting is as in the main run (aug_level without a stage "
        "is every SR stage's). Detector accuracy is balanced over the strata with 95% caption-bootstrap "
        "intervals; FID compares each setting's images with the real renders of all held-out captions in the "
        "random-weight feature space, so with this few images it is noisy and only ranks settings of this run."
    )
    metric_keys = [key for key in ("fid", "precision", "recall") if any(key in r.metrics.metrics for r in sweep)]
    rows = [[*(_format_value(value) for value in result.setting.values()),
             result.alignment["n_images"], *(format_interval(result.alignment[check]) for check in SWEEP_CHECKS),
             *(result.metrics.metrics.get(key) for key in metric_keys)] for result in sweep]
    report.table([*axes, "images", *SWEEP_CHECKS, *(key.upper() if key == "fid" else key for key in metric_keys)], rows,
                 caption="Balanced detector accuracy [95% interval] and FID / precision / recall per setting")
    points = [(result.setting, {**{check: result.alignment[check] for check in SWEEP_CHECKS}, **result.metrics.metrics})
              for result in sweep]
    figure = panels_vs_setting(points, axes[0], SWEEP_PLOT_PANELS,
                               {check: f"{check} (balanced, 95% interval)" for check in SWEEP_CHECKS})
    for panel, axes_of_panel in zip(SWEEP_PLOT_PANELS, figure.axes):
        if panel in SWEEP_CHECKS:
            axes_of_panel.set_ylim(-0.02, 1.02)  # accuracies
    report.figure(figure, f"Balanced exact, shape and count accuracy and FID against {axes[0]}, one line per "
                  + (" x ".join(axes[1:]) or "setting"), name="sweep")
    figure.clear()
    columns = min(SWEEP_GRID_CAPTIONS, plan["sweep_captions"])
    labelled = [(_setting_label(result.setting), result.folder) for result in sweep]
    labelled += [(f"main run: guidance {guidance:g}", folder) for guidance, folder in sorted(folders.items())]
    rows_of_images = [(label, _grid_paths(folder, first_samples(folder, columns))) for label, folder in labelled]
    captions = [entry["prompt"] for entry in first_samples(sweep[0].folder, columns)]
    report.figure(labelled_grid(rows_of_images, captions),
                  f"The same {columns} captions (columns) in every setting (rows): " + "; ".join(captions),
                  name="sweep-grid")
    return report


def add_ablation_section(report: Report, ablation: Path | None) -> Report:
    """The ablation command's `ablation.md` (its tables, headings and notes), or how to make one."""
    report.heading("Ablation")
    if ablation is None:
        return report.text(f"No ablation table was found. `{ABLATION_COMMAND}` writes one (ablation.md); the demo "
                           "then shows it from <out>/../ablation/ablation.md, or from `cascade demo --ablation PATH`.")
    report.text(f"From {ablation}:")
    for kind, content in markdown.read_blocks(ablation.read_text(encoding="utf-8")):
        if kind == "table":
            headers, rows = content
            report.table(headers, rows)
        elif kind == "heading":
            level, text = content
            report.heading(text, level=max(3, level + 1))
        else:
            report.text(content)
    return report


def write_demo_report(out: Path, *, plan: dict, settings: list[dict], folders: dict[float, Path], evaluation: dict,
                      timings: dict, fast: bool, sweep: list[SweepResult], ablation: Path | None) -> ReportFiles:
    report = Report("cascade demo: a tiny text-to-image cascade trained on CPU")
    report.text(
        "A text-conditional base stage (MiniLM text encoder) and two super-resolution stages were trained on the "
        "built-in synthetic captioned dataset (coloured shapes), then the cascade generated images for held-out "
        "captions, which never occur in training (base guidance: "
        + ", ".join(f"{g:g}" for g in sorted(folders)) + "; the sweep below compares more settings)."
    )
    if fast:
        report.note("This is a --fast smoke run: a few training steps per stage, so the images are not meaningful.")
    report.table(["step", "seconds"], [(name, f"{seconds:.1f}") for name, seconds in timings.items()],
                 caption="Wall-clock time (a step a rerun skipped keeps the time of the run that did it; the total "
                         "counts the two training processes as running side by side)")

    report.heading("Caption alignment")
    report.text(
        "A deterministic detector (cascade.eval.alignment) segments the generated pixels by palette colour, finds the "
        "objects and classifies their shapes, then compares them with the ground truth of the caption's scene. "
        "The 'real renders' row is the detector on the dataset's own images of the same captions: its ceiling. "
        "Rows naming a size score that stage's output (the base's, then each SR stage's); the plain "
        "'guidance g' rows score the final images."
    )
    rows = [[label, int(values["n"])] + [values[check] for check in ALIGNMENT_CHECKS]
            for label, values in evaluation["alignment"].items()]
    report.table(["images", "n"] + [f"{check} accuracy" for check in ALIGNMENT_CHECKS], rows)
    _add_stratified_alignment(report, plan, evaluation)

    guidance_values = sorted(folders)
    per_caption = plan.get("samples_per_caption", 1)
    entries = {g: first_entries(folders[g], per_caption)[:GRID_CAPTIONS] for g in guidance_values}
    captions = [entry["prompt"] for entry in entries[guidance_values[0]]]
    if len(guidance_values) > 1:  # else the sweep's grid shows the guidance settings side by side
        report.heading("Guidance off vs on")
        side_by_side = [path for pair in zip(*[_grid_paths(folders[g], entries[g]) for g in guidance_values])
                        for path in pair]
        report.image_grid(side_by_side, "Each caption: " + " | ".join(f"guidance {g:g}" for g in guidance_values),
                          captions, name="guidance-side-by-side", columns=2 * min(4, len(captions)) or 2)

    report.heading("Every stage of the cascade")
    strongest = guidance_values[-1]
    folder = folders[strongest]
    for _, stage_dir in intermediate_dirs(folder):
        report.image_grid(_grid_paths(stage_dir, entries[strongest]), f"{stage_dir.name} (guidance {strongest:g})",
                          name=f"stage-{stage_dir.name}", columns=min(6, len(captions)) or 1)
    report.image_grid(_grid_paths(folder, entries[strongest]), f"final output (guidance {strongest:g})", captions,
                      name="stage-final", columns=min(6, len(captions)) or 1)

    add_sweep_section(report, plan, sweep, folders)
    add_ablation_section(report, ablation)

    add_metrics_section(report, evaluation["metrics"])

    report.heading("Training")
    for stage_dir in sorted((out / "runs").iterdir()):
        figure, (best_val, _) = training_curves(stage_dir)
        report.figure(figure, f"{stage_dir.name}: loss curves (best validation loss {best_val:.4f})",
                      name=f"curve-{stage_dir.name}")
        plt.close(figure)

    report.heading("Exact settings")
    report.code("\n".join(f"{key}: {value}" for key, value in plan.items()), caption="Demo plan")
    report.code("\n".join(str(s) for s in settings), caption="Sampling settings per stage (base, sr1, sr2)")
    for stage_dir in sorted((out / "runs").iterdir()):
        configs = sorted(stage_dir.rglob("config.yaml"))
        if configs:
            report.code(configs[0].read_text(), caption=f"{stage_dir.name}: the config `cascade fit` ran with")
    return report.write(out, "report")
