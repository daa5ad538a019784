"""Evaluate folders of samples against a reference set: the functions behind `cascade eval`.

:func:`evaluate_samples` scores one source of generated images (a folder or a live
iterable of batches); :func:`evaluate_sweep` every setting of a ``cascade sample --sweep``
folder; :func:`evaluate_super_resolution` one SR stage's outputs (FID against the real
high-res set and low-res consistency PSNR against the low-res inputs). All return
:class:`eval.results.EvaluationResult` records carrying the exact protocol.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .clip_score import CLIPScore
from .extractors import FeatureExtractor
from .features import ReferenceStatistics, reference_statistics
from .metrics import GenerativeMetrics, needs_raw_features, parse_metric_names
from .progress import track_images
from .results import EvaluationResult
from .sources import ImageFolder, image_batches, source_length
from .super_resolution import LowResConsistencyPSNR
from .sweeps import (
    SampleSet,
    condition_text,
    discover_sample_sets,
    metadata_by_file,
    sample_images,
)


def _scores(metric: GenerativeMetrics, reference: ReferenceStatistics,
            reference_file: Path | None) -> tuple[dict[str, float], dict[str, object]]:
    """The metric's values and the protocol that produced them (the sample count moves from the
    values to the protocol)."""
    values = metric.compute()
    protocol = _protocol(metric, reference, reference_file)
    protocol["num_samples"] = values.pop("num_fake")
    values.pop("num_real")
    return values, protocol


def _protocol(metric: GenerativeMetrics, reference: ReferenceStatistics, reference_file: Path | None) -> dict[str, object]:
    protocol: dict[str, object] = {
        "num_reference": reference.num_images,
        "reference": reference.protocol.get("source", reference.protocol.get("dataset")),
        "reference_resolution": reference.protocol.get("resolution"),
        "reference_statistics": str(reference_file) if reference_file else None,
        **metric.extractor.describe(),
        "metrics": list(metric.metrics),
    }
    if "pr" in metric.metrics:
        protocol["pr_k"] = metric.pr_k
    if "is" in metric.metrics:
        protocol["is_splits"] = metric.is_splits
    if "kid" in metric.metrics:
        protocol["kid_subsets"] = metric.kid_subsets
        protocol["kid_subset_size"] = metric.kid_subset_size
    return protocol


def evaluate_samples(
    samples: str | os.PathLike[str] | Iterable[torch.Tensor],
    reference: ReferenceStatistics,
    extractor: FeatureExtractor,
    metrics: str | Sequence[str] = ("fid", "pr"),
    *,
    reference_file: Path | None = None,
    setting: dict[str, object] | None = None,
    resolution: int | None = None,
    stage: str | int | None = None,
    recursive: bool = True,
    clip_model: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    max_images: int | None = None,
    progress: bool = True,
    **metric_options: object,
) -> EvaluationResult:
    """Score generated images (a folder, or an iterable of NCHW batches) against `reference`.

    A folder gives its final images, or with `stage` those of one lower stage it keeps
    (:func:`cascade.eval.sweeps.sample_images`); images of several sizes are an error.
    `metric_options` go to :class:`cascade.eval.metrics.GenerativeMetrics` (pr_k, kid_subsets, ...).
    With `clip_model` (a local CLIP folder) and a folder whose ``metadata.jsonl`` has prompts,
    the CLIP score is added.
    """
    metric = GenerativeMetrics(extractor, metrics, reference=reference, **metric_options).to(extractor.device)
    is_folder = isinstance(samples, (str, os.PathLike))
    if is_folder:
        folder, files = sample_images(samples, stage, recursive)
        source = ImageFolder(folder, resolution, files=files)
        name = str(folder)
    else:
        source, name = samples, "live samples"
    total = source_length(source, max_images)
    for batch in track_images(image_batches(source, batch_size, num_workers, max_images), f"samples {Path(name).name}",
                              total, progress):
        metric.update(batch)
    values, protocol = _scores(metric, reference, reference_file)
    if stage is not None:
        protocol["stage"] = str(stage)
    if clip_model is not None and is_folder:
        score = clip_score_of_folder(source, clip_model, batch_size, max_images, metadata_folder=Path(samples))
        if score is not None:
            values["clip_score"] = score
            protocol["clip_model"] = str(clip_model)
    return EvaluationResult(samples=name, metrics=values, protocol=protocol, setting=dict(setting or {}))


def clip_score_of_folder(folder: ImageFolder, clip_model: str | os.PathLike[str], batch_size: int = 32,
                         max_images: int | None = None, metadata_folder: Path | None = None) -> float | None:
    """Mean CLIP score of a sample folder's images with their ``metadata.jsonl`` prompts (None if no prompts);
    `metadata_folder` is the sample folder when the images are one of its intermediate stages (same names)."""
    metadata = metadata_by_file(metadata_folder or folder.root)
    pairs = [(index, condition_text(metadata.get(path.name, {}))) for index, path in enumerate(folder.files)]
    pairs = [(index, prompt) for index, prompt in pairs if prompt and not prompt.startswith("class ")][:max_images]
    if not pairs:
        return None
    metric = CLIPScore(clip_model)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        images = torch.stack([folder[index] for index, _ in chunk])
        metric.update(images, [prompt for _, prompt in chunk])
    return float(metric.compute())


def evaluate_sweep(
    real: str | os.PathLike[str],
    samples_root: str | os.PathLike[str],
    extractor: FeatureExtractor,
    metrics: str | Sequence[str] = ("fid", "pr"),
    *,
    resolution: int | None = None,
    dataset: str | None = None,
    stats_dir: str | os.PathLike[str] | None = None,
    max_real: int | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = True,
    stage: str | int | None = None,
    **sample_options: object,
) -> list[EvaluationResult]:
    """Reference statistics of `real` (cached), then :func:`evaluate_samples` for every sweep setting
    found under `samples_root` (or `samples_root` itself without a sweep): its final images, or
    those of `stage`."""
    names = parse_metric_names(metrics)
    reference, reference_file = reference_statistics(
        real, extractor, resolution=resolution, dataset=dataset, cache_dir=stats_dir,
        need_features=needs_raw_features(names), max_images=max_real,
        batch_size=batch_size, num_workers=num_workers, progress=progress)
    results = []
    for sample_set in discover_sample_sets(samples_root):
        results.append(evaluate_samples(
            sample_set.path, reference, extractor, names, reference_file=reference_file,
            setting=sample_set.setting, resolution=resolution, stage=stage, recursive=not sample_set.setting,
            batch_size=batch_size, num_workers=num_workers, progress=progress, **sample_options))
    return results


class _SuperResolutionPairs(torch.utils.data.Dataset):
    """(SR output, low-res input) pairs matched by file name."""

    def __init__(self, sr_folder: ImageFolder, lowres_root: Path):
        self.sr_folder = sr_folder
        lowres_by_name = {path.name: path for path in sample_images(lowres_root)[1]}
        missing = [path.name for path in sr_folder.files if path.name not in lowres_by_name]
        if missing:
            raise FileNotFoundError(f"{len(missing)} SR outputs have no low-res input of the same name in "
                                    f"{lowres_root} (e.g. {missing[:3]})")
        self.lowres = ImageFolder(lowres_root, files=[lowres_by_name[path.name] for path in sr_folder.files])

    def __len__(self) -> int:
        return len(self.sr_folder)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sr_folder[index], self.lowres[index]


def evaluate_super_resolution(
    sr_outputs: str | os.PathLike[str],
    lowres_inputs: str | os.PathLike[str],
    real_highres: str | os.PathLike[str],
    extractor: FeatureExtractor,
    metrics: str | Sequence[str] = ("fid",),
    *,
    resolution: int | None = None,
    dataset: str | None = None,
    stats_dir: str | os.PathLike[str] | None = None,
    max_real: int | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = True,
    stage: str | int | None = None,
    **metric_options: object,
) -> list[EvaluationResult]:
    """Per-stage SR evaluation for every sweep setting under `sr_outputs` (e.g. ``aug_level=0.1/``).

    The SR outputs of a sample folder are its final images, or those of `stage`; the low-res inputs
    of one are its final images (name a kept stage's folder, ``intermediate/stage1_64px``, for
    those). Each SR output is matched to the low-res input of the same file name in `lowres_inputs`.
    Metrics: those requested against `real_highres` plus ``lowres_psnr`` (dB).
    """
    names = parse_metric_names(metrics)
    reference, reference_file = reference_statistics(
        real_highres, extractor, resolution=resolution, dataset=dataset, cache_dir=stats_dir,
        need_features=needs_raw_features(names), max_images=max_real,
        batch_size=batch_size, num_workers=num_workers, progress=progress)
    results = []
    for sample_set in discover_sample_sets(sr_outputs):
        results.append(_evaluate_sr_set(sample_set, stage, Path(lowres_inputs), reference, reference_file, extractor,
                                        names, batch_size, num_workers, progress, metric_options))
    return results


def _evaluate_sr_set(sample_set: SampleSet, stage: str | int | None, lowres_root: Path,
                     reference: ReferenceStatistics, reference_file: Path, extractor: FeatureExtractor,
                     names: tuple[str, ...], batch_size: int, num_workers: int, progress: bool,
                     metric_options: dict[str, object]) -> EvaluationResult:
    folder, files = sample_images(sample_set.path, stage, recursive=not sample_set.setting)
    pairs = _SuperResolutionPairs(ImageFolder(folder, files=files), lowres_root)
    metric = GenerativeMetrics(extractor, names, reference=reference, **metric_options).to(extractor.device)
    consistency = LowResConsistencyPSNR().to(extractor.device)
    batches = DataLoader(pairs, batch_size=batch_size, num_workers=num_workers)
    for sr_batch, lowres_batch in track_images(batches, f"SR {sample_set.label}", len(pairs), progress):
        metric.update(sr_batch)
        consistency.update(sr_batch, lowres_batch)
    values, protocol = _scores(metric, reference, reference_file)
    values["lowres_psnr"] = float(consistency.compute())
    protocol["lowres_inputs"] = str(lowres_root)
    protocol["lowres_consistency"] = "SR output -> antialiased bicubic downsample to input size, PSNR in dB on [0, 1]"
    if stage is not None:
        protocol["stage"] = str(stage)
    return EvaluationResult(samples=str(folder), metrics=values, protocol=protocol, setting=sample_set.setting)
