"""Evaluation reports: one self-contained HTML file and a Markdown twin per evaluation run.

Python API (the demo and the pipeline build their reports with it)::

    from .report import Report, build_evaluation_report
    files = build_evaluation_report("runs/eval", results, human_eval="ratings.json")

    report = Report("cascade demo")               # or compose one by hand
    report.heading("Alignment").table(["caption", "colour ok"], rows)
    report.figure(matplotlib_figure, "training loss", name="loss")
    add_metrics_section(report, results)           # the same sections the CLI writes
    html_path, md_path = report.write("demo_out", name="report")

The HTML embeds every image (base64) and escapes every text; the Markdown links the images
it writes to ``<name>_assets/``. Both are written atomically.

CLI: ``cascade eval report --metrics metrics.json [--human-eval results.json] --out DIR``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from PIL import Image

from . import html, markdown
from ..files.atomic import write_bytes, write_text
from .human_eval_results import HumanEvalResults, load_human_eval
from .plots import METRIC_LABELS, metric_vs_setting, numeric_sweep_keys, precision_vs_recall, preference_bars, sample_grid
from .results import EvaluationResult
from .sources import list_image_files
from .sweeps import condition_text, metadata_by_file

PROTOCOL_FIELDS = (
    ("extractor", "feature extractor"), ("weights_hash", "extractor weights (sha256 prefix)"),
    ("preprocessing", "resize / preprocessing"), ("feature_dim", "feature size"),
    ("stage", "stage scored"), ("reference", "reference set"), ("num_reference", "reference images"),
    ("reference_resolution", "reference resolution"), ("reference_statistics", "reference statistics file"),
    ("pr_k", "precision/recall k"), ("is_splits", "IS splits"), ("kid_subsets", "KID subsets"),
    ("kid_subset_size", "KID subset size"), ("clip_model", "CLIP model"), ("lowres_inputs", "low-res inputs"),
    ("lowres_consistency", "low-res consistency"),
)
METRIC_ORDER = ("fid", "is_mean", "is_std", "precision", "recall", "kid_mean", "kid_std", "clip_score", "lowres_psnr")
NOT_COMPARABLE = ("FID / precision / recall here are computed in a RANDOM-weight Inception feature space "
                  "(no downloaded weights): they compare the settings of this run with each other only and are "
                  "not comparable to published FIDs. Use --extractor inception with the standard weights for that.")


@dataclass
class ReportFiles:
    html: Path
    markdown: Path


@dataclass
class _Block:
    html: str
    markdown: str
    assets: dict[str, bytes] = field(default_factory=dict)


class Report:
    """An ordered list of report blocks, each rendered to HTML and to Markdown.

    Every method escapes the text it is given and returns the report, so calls chain.
    """

    def __init__(self, title: str):
        self.title = title
        self._blocks: list[_Block] = []
        self._asset_names: set[str] = set()

    def _asset_name(self, name: str) -> str:
        stem = re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("._") or "figure"
        candidate, index = f"{stem}.png", 1
        while candidate in self._asset_names:
            index += 1
            candidate = f"{stem}-{index}.png"
        self._asset_names.add(candidate)
        return candidate

    def heading(self, text: str, level: int = 2) -> Report:
        level = min(max(level, 2), 4)
        self._blocks.append(_Block(f"<h{level}>{html.escape(text)}</h{level}>", f"{'#' * level} {markdown.escape(text)}"))
        return self

    def text(self, text: str) -> Report:
        self._blocks.append(_Block(f"<p>{html.escape(text)}</p>", markdown.escape(text)))
        return self

    def note(self, text: str) -> Report:
        self._blocks.append(_Block(f'<p class="note">{html.escape(text)}</p>', f"> **Note:** {markdown.escape(text)}"))
        return self

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]], caption: str | None = None) -> Report:
        md = markdown.table(headers, rows)
        if caption:
            md = f"*{markdown.escape(caption)}*\n\n{md}"
        self._blocks.append(_Block(html.table(headers, rows, caption), md))
        return self

    def code(self, text: str, caption: str | None = None) -> Report:
        fence = "```"
        while fence in text:
            fence += "`"
        title_html = f"<p>{html.escape(caption)}</p>" if caption else ""
        title_md = f"{markdown.escape(caption)}\n\n" if caption else ""
        self._blocks.append(_Block(f"{title_html}<pre>{html.escape(text)}</pre>", f"{title_md}{fence}\n{text}\n{fence}"))
        return self

    def figure(self, image: Figure | Image.Image | bytes, caption: str, name: str | None = None) -> Report:
        png = image if isinstance(image, bytes) else html.png_bytes(image)
        asset = self._asset_name(name or caption)
        self._blocks.append(_Block(html.figure(png, caption), f"{markdown.image(caption, '{assets}/' + asset)}\n\n"
                                   f"*{markdown.escape(caption)}*", {asset: png}))
        return self

    def image_grid(self, paths: Sequence[str | os.PathLike[str]], caption: str, captions: Sequence[str] = (),
                   name: str | None = None, columns: int = 8, tile: int = 128) -> Report:
        """A grid of image files, and underneath the numbered captions (prompts) row by row."""
        self.figure(sample_grid(paths, columns, tile), caption, name)
        if any(captions):
            items_html = "".join(f"<li>{html.escape(c)}</li>" for c in captions)
            items_md = "\n".join(f"{i}. {markdown.escape(c)}" for i, c in enumerate(captions, 1))
            self._blocks.append(_Block(f'<ol class="captions">{items_html}</ol>', items_md))
        return self

    def write(self, out_dir: str | os.PathLike[str], name: str = "report") -> ReportFiles:
        """Write ``<out_dir>/<name>.html`` (self-contained) and ``<name>.md`` (+ ``<name>_assets/``)."""
        out_dir = Path(out_dir)
        assets_dir = f"{name}_assets"
        for block in self._blocks:
            for asset, png in block.assets.items():
                write_bytes(out_dir / assets_dir / asset, png)
        body_html = "\n".join(block.html for block in self._blocks)
        body_md = "\n\n".join(block.markdown.replace("{assets}", assets_dir) for block in self._blocks)
        html_path = write_text(out_dir / f"{name}.html", html.page(self.title, body_html))
        md_path = write_text(out_dir / f"{name}.md", f"# {markdown.escape(self.title)}\n\n{body_md}\n")
        return ReportFiles(html_path, md_path)


def add_metrics_section(report: Report, results: Sequence[EvaluationResult]) -> Report:
    """The protocol, the metrics table (a row per setting) and the sweep plots."""
    report.heading("Automatic metrics")
    if any(str(r.protocol.get("extractor", "")).startswith("random-inception") for r in results):
        report.note(NOT_COMPARABLE)
    protocol_rows = []
    for key, label in PROTOCOL_FIELDS:
        values = list(dict.fromkeys(str(r.protocol[key]) for r in results if r.protocol.get(key) is not None))
        if values:
            protocol_rows.append((label, "; ".join(values)))
    report.table(["protocol", "value"], protocol_rows, caption="How these numbers were computed")
    columns = [key for key in METRIC_ORDER if any(key in r.metrics for r in results)]
    rows = [[r.label, r.protocol.get("num_samples")] + [r.metrics.get(key) for key in columns] for r in results]
    report.table(["setting", "samples"] + [METRIC_LABELS.get(key, key) for key in columns], rows, caption="Metrics")
    for key in numeric_sweep_keys(results):
        for metric in ("fid", "lowres_psnr", "clip_score"):
            if any(metric in r.metrics for r in results):
                report.figure(metric_vs_setting(results, metric, key), f"{METRIC_LABELS[metric]} vs {key}",
                              name=f"{metric}-vs-{key}")
    if any("precision" in r.metrics for r in results):
        report.figure(precision_vs_recall(results), "Precision vs recall per setting", name="precision-recall")
    return report


def add_sample_grids(report: Report, results: Sequence[EvaluationResult], images_per_setting: int = 16,
                     tile: int = 128) -> Report:
    """A grid of the first images of every setting, with their prompts from ``metadata.jsonl``."""
    folders = [(r.label, Path(r.samples)) for r in results if Path(r.samples).is_dir()]
    if not folders:
        return report
    report.heading("Samples")
    for label, folder in folders:
        paths = list_image_files(folder, recursive=False)[:images_per_setting]
        if not paths:
            continue
        metadata = metadata_by_file(folder)
        captions = [condition_text(metadata.get(path.name, {})) for path in paths]
        report.image_grid(paths, f"{label}: first {len(paths)} samples", captions, name=f"grid-{label}", tile=tile)
    return report


def add_human_eval_section(report: Report, results: HumanEvalResults) -> Report:
    """The study, then per question a table (category x system: rate [95% CI]) and a bar chart,
    then the raters' agreement."""
    report.heading("Human evaluation")
    if results.study:
        report.table(["study", "value"], [(key, value) for key, value in results.study.items()])
    for question in results.questions:
        report.heading(f"Question: {results.questions_text.get(question, question)}", level=3)
        by_key = {(row.category, row.system): row for row in results.rows if row.question == question}
        rows = []
        for category in results.categories:
            cells: list[object] = [category]
            for system in results.systems:
                row = by_key.get((category, system))
                if row is None:
                    cells.append(None)
                elif row.ci_low is not None and row.ci_high is not None:
                    cells.append(f"{row.rate:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]")
                else:
                    cells.append(f"{row.rate:.3f}")
            counts = [row.n for (c, _), row in by_key.items() if c == category and row.n is not None]
            cells.append(max(counts) if counts else None)
            rows.append(cells)
        report.table(["category"] + [f"{s}: preference [95% CI]" for s in results.systems] + ["answers"], rows)
        report.figure(preference_bars(results, question), f"Preference per category: {question}",
                      name=f"human-{question}")
    if results.agreement:
        headers = list(dict.fromkeys(key for row in results.agreement for key in row))
        report.table(headers, [[row.get(key) for key in headers] for row in results.agreement],
                     caption="Rater agreement")
    return report


def build_evaluation_report(
    out_dir: str | os.PathLike[str],
    results: Sequence[EvaluationResult] = (),
    *,
    human_eval: HumanEvalResults | str | os.PathLike[str] | None = None,
    title: str = "Evaluation report",
    images_per_setting: int = 16,
    name: str = "report",
) -> ReportFiles:
    """The standard report of an evaluation run: metrics and plots, sample grids, human evaluation."""
    report = Report(title)
    if results:
        add_metrics_section(report, results)
        add_sample_grids(report, results, images_per_setting)
    if human_eval is not None:
        if not isinstance(human_eval, HumanEvalResults):
            human_eval = load_human_eval(human_eval)
        add_human_eval_section(report, human_eval)
    return report.write(out_dir, name)
