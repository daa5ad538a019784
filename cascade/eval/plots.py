"""The report's figures: metric vs sweep setting, precision vs recall, preference bars, sample grids.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot, no global state,
no display needed).
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..data.image_io import open_image
from .human_eval_results import HumanEvalResults
from .results import EvaluationResult

METRIC_LABELS = {"fid": "FID", "precision": "precision", "recall": "recall", "is_mean": "IS", "kid_mean": "KID",
                 "clip_score": "CLIP score", "lowres_psnr": "low-res PSNR (dB)"}


def numeric_sweep_keys(results: Sequence[EvaluationResult]) -> list[str]:
    """Setting keys with at least two distinct numeric values across `results`."""
    keys = dict.fromkeys(key for result in results for key in result.setting)
    numeric = []
    for key in keys:
        values = {result.setting.get(key) for result in results}
        if len(values) >= 2 and all(isinstance(value, (int, float)) for value in values):
            numeric.append(key)
    return numeric


def metric_vs_setting(results: Sequence[EvaluationResult], metric: str, key: str) -> Figure:
    """`metric` against the sweep value `key`; one line per combination of the other keys."""
    lines: dict[str, list[tuple[float, float]]] = {}
    for result in results:
        if metric not in result.metrics or key not in result.setting:
            continue
        others = ", ".join(f"{k}={v}" for k, v in result.setting.items() if k != key)
        lines.setdefault(others, []).append((float(result.setting[key]), result.metrics[metric]))
    figure = Figure(figsize=(5, 3.4))
    axes = figure.add_subplot()
    for label, points in lines.items():
        points.sort()
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label or None)
    axes.set_xlabel(key)
    axes.set_ylabel(METRIC_LABELS.get(metric, metric))
    axes.set_title(f"{METRIC_LABELS.get(metric, metric)} vs {key}")
    axes.grid(alpha=0.3)
    if any(lines):
        axes.legend(fontsize=8)
    return figure


def _value_and_error(value: float | Sequence[float]) -> tuple[float, float, float]:
    """(y, distance down, distance up) of a number or an (estimate, low, high) interval; no bar where
    the interval is undefined (NaN)."""
    if isinstance(value, (int, float)):
        return float(value), 0.0, 0.0
    estimate, low, high = (float(v) for v in value)
    if math.isnan(low) or math.isnan(high):
        return estimate, 0.0, 0.0
    return estimate, estimate - low, high - estimate


def panels_vs_setting(points: Sequence[tuple[Mapping[str, object], Mapping[str, float | Sequence[float]]]],
                      key: str, panels: Sequence[str], titles: Mapping[str, str] | None = None) -> Figure:
    """One panel per entry of `panels`, each that value against the setting `key`, one line per
    combination of the other settings; a value that is an (estimate, low, high) interval gets an
    error bar. `points` are (setting, values) pairs; NaN values are left out. A setting whose values
    are not all numbers is plotted at evenly spaced positions labelled by the values."""
    titles = titles or {}
    xs = list(dict.fromkeys(setting[key] for setting, _ in points))
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    position = {x: (float(x) if numeric else float(index)) for index, x in enumerate(xs)}
    lines: dict[str, list[tuple[object, Mapping[str, float | Sequence[float]]]]] = {}
    for setting, values in points:
        others = ", ".join(f"{k}={v}" for k, v in setting.items() if k != key)
        lines.setdefault(others, []).append((setting[key], values))
    figure = Figure(figsize=(3.4 * len(panels), 3.2))
    for index, panel in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for label, line in lines.items():
            rows = sorted(((position[x], *_value_and_error(values[panel])) for x, values in line if panel in values),
                          key=lambda row: row[0])
            rows = [row for row in rows if not math.isnan(row[1])]
            if rows:
                axes.errorbar([r[0] for r in rows], [r[1] for r in rows], yerr=[[r[2] for r in rows], [r[3] for r in rows]],
                              marker="o", capsize=2, label=label or None)
        if not numeric:
            axes.set_xticks([position[x] for x in xs], [str(x) for x in xs])
        axes.set_xlabel(key)
        axes.set_title(titles.get(panel, METRIC_LABELS.get(panel, panel)), fontsize=9)
        axes.grid(alpha=0.3)
        if index == 0 and any(lines):
            axes.legend(fontsize=7)
    figure.tight_layout()
    return figure


def precision_vs_recall(results: Sequence[EvaluationResult]) -> Figure:
    """One labelled point per setting in the precision-recall plane (Kynkäänniemi et al. 2019)."""
    figure = Figure(figsize=(4.2, 4.2))
    axes = figure.add_subplot()
    for result in results:
        if "precision" in result.metrics and "recall" in result.metrics:
            axes.scatter(result.metrics["recall"], result.metrics["precision"])
            axes.annotate(result.label, (result.metrics["recall"], result.metrics["precision"]),
                          textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xlim(0, 1.02)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title("precision vs recall")
    axes.grid(alpha=0.3)
    return figure


def preference_bars(results: HumanEvalResults, question: str) -> Figure:
    """Grouped bars: per category, each system's preference rate on `question`, with CI whiskers."""
    categories, systems = results.categories, results.systems
    rows = {(row.category, row.system): row for row in results.rows if row.question == question}
    width = 0.8 / max(len(systems), 1)
    figure = Figure(figsize=(max(5.0, 0.75 * len(categories) + 2), 3.6))
    axes = figure.add_subplot()
    for index, system in enumerate(systems):
        xs, heights, errors = [], [], [[], []]
        for position, category in enumerate(categories):
            row = rows.get((category, system))
            if row is None:
                continue
            xs.append(position + (index - (len(systems) - 1) / 2) * width)
            heights.append(row.rate)
            errors[0].append(row.rate - row.ci_low if row.ci_low is not None else 0)
            errors[1].append(row.ci_high - row.rate if row.ci_high is not None else 0)
        axes.bar(xs, heights, width=width, yerr=errors, capsize=2, label=system)
    axes.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    axes.set_xticks(range(len(categories)))
    axes.set_xticklabels(categories, rotation=35, ha="right", fontsize=8)
    axes.set_ylim(0, 1)
    axes.set_ylabel("preference rate")
    axes.set_title(f"human preference: {question} (95% CI)")
    axes.legend(fontsize=8)
    return figure


def sample_grid(paths: Sequence[str | os.PathLike[str]], columns: int = 8, tile: int = 128) -> Image.Image:
    """The images side by side, `columns` per row, each fitted into a `tile` x `tile` square."""
    rows = max(1, math.ceil(len(paths) / columns))
    columns = min(columns, max(len(paths), 1))
    grid = Image.new("RGB", (columns * tile, rows * tile), "white")
    for index, path in enumerate(paths):
        with open_image(path) as image:  # the header's size is checked before anything decodes
            thumb = ImageOps.contain(image.convert("RGB"), (tile, tile), Image.LANCZOS)
        x, y = (index % columns) * tile, (index // columns) * tile
        grid.paste(thumb, (x + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2))
    return grid


def _wrapped(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
             width: int) -> list[str]:
    """`text` broken at spaces into lines no wider than `width` pixels (a longer word stays whole)."""
    for columns in range(max(len(text), 1), 0, -1):
        lines = textwrap.wrap(text, columns) or [""]
        if all(draw.textlength(line, font=font) <= width for line in lines) or columns == 1:
            return lines
    return [text]


def labelled_grid(rows: Sequence[tuple[str, Sequence[str | os.PathLike[str]]]], column_titles: Sequence[str],
                  tile: int = 96, label_width: int = 150, font_size: int = 11) -> Image.Image:
    """A table of images: one row per (label, image files), the row's label on its left, and a
    header row of `column_titles` (e.g. the captions every row shows); each image fitted into a
    `tile` x `tile` square. Row r, column c is the square at (label_width + c * tile, header + r * tile)."""
    font = ImageFont.load_default(size=font_size)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = font_size + 3
    titles = [_wrapped(draw, title, font, tile - 4) for title in column_titles]
    header = line_height * max((len(lines) for lines in titles), default=0) + 6
    columns = max([len(column_titles), *(len(paths) for _, paths in rows)], default=1)
    grid = Image.new("RGB", (label_width + columns * tile, header + len(rows) * tile), "white")
    draw = ImageDraw.Draw(grid)
    for column, lines in enumerate(titles):
        for number, line in enumerate(lines):
            draw.text((label_width + column * tile + 2, 3 + number * line_height), line, fill="black", font=font)
    for row, (label, paths) in enumerate(rows):
        top = header + row * tile
        for number, line in enumerate(_wrapped(draw, label, font, label_width - 8)):
            draw.text((4, top + 4 + number * line_height), line, fill="black", font=font)
        for column, path in enumerate(paths):
            with open_image(path) as image:
                thumb = ImageOps.contain(image.convert("RGB"), (tile, tile), Image.LANCZOS)
            grid.paste(thumb, (label_width + column * tile + (tile - thumb.width) // 2, top + (tile - thumb.height) // 2))
    return grid
