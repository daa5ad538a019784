"""Feature extraction over image sources, and cached reference statistics.

Reference statistics of a real set (mean, covariance, and the raw features that precision /
recall and KID need) are computed once and stored as an ``.npz`` file whose name is keyed by
dataset, resolution, extractor and the extractor's weights hash, so a changed network or
resize never reuses stale statistics.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from ..files.atomic import save_npz
from .extractors import FeatureExtractor
from .frechet import mean_and_covariance, symmetric_sqrt
from .progress import track_images
from .sources import image_batches, open_image_source, source_length

STATS_DIR_ENV = "CASCADE_STATS_DIR"


@dataclass
class ExtractedFeatures:
    """Features (N, D) and, for extractors with a classifier, logits (N, C), as float32 arrays."""

    features: np.ndarray
    logits: np.ndarray | None


def extract_features(
    extractor: FeatureExtractor,
    source: Dataset | IterableDataset | Iterable[torch.Tensor],
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    max_images: int | None = None,
    progress: bool = True,
    description: str = "features",
) -> ExtractedFeatures:
    """Run `extractor` over a source (see :func:`cascade.eval.sources.image_batches`), batched, on its device."""
    features, logits = [], []
    total = source_length(source, max_images)
    batches = image_batches(source, batch_size, num_workers, max_images)
    for batch in track_images(batches, description, total, progress):
        batch_features, batch_logits = extractor.features_and_logits(batch)
        features.append(batch_features.cpu().numpy())
        if batch_logits is not None:
            logits.append(batch_logits.cpu().numpy())
    if not features:
        raise ValueError("the image source yielded no images")
    return ExtractedFeatures(np.concatenate(features), np.concatenate(logits) if logits else None)


@dataclass
class ReferenceStatistics:
    """Statistics of a reference (real) set in one feature space.

    `features` are kept for precision/recall and KID; `protocol` records the dataset,
    resolution and extractor (name, weights hash, resize) they were computed with.
    """

    mu: np.ndarray
    sigma: np.ndarray
    num_images: int
    features: np.ndarray | None = None
    protocol: dict[str, object] = field(default_factory=dict)
    _sqrt_sigma: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def sqrt_sigma(self) -> np.ndarray:
        """``symmetric_sqrt(sigma)``, computed on first use and kept (it makes each later FID ~2x cheaper)."""
        if self._sqrt_sigma is None:
            self._sqrt_sigma = symmetric_sqrt(self.sigma)
        return self._sqrt_sigma

    @classmethod
    def from_features(cls, features: np.ndarray, protocol: dict[str, object] | None = None,
                      keep_features: bool = True) -> ReferenceStatistics:
        mu, sigma = mean_and_covariance(features)
        return cls(mu, sigma, int(features.shape[0]), features if keep_features else None, dict(protocol or {}))

    def save(self, path: str | os.PathLike[str]) -> Path:
        arrays: dict[str, np.ndarray] = {
            "mu": self.mu,
            "sigma": self.sigma,
            "num_images": np.asarray(self.num_images),
            "protocol": np.asarray(json.dumps(self.protocol, sort_keys=True)),
        }
        if self.features is not None:
            arrays["features"] = self.features
        return save_npz(path, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReferenceStatistics:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                mu=data["mu"],
                sigma=data["sigma"],
                num_images=int(data["num_images"]),
                features=data["features"] if "features" in data.files else None,
                protocol=json.loads(str(data["protocol"])),
            )


def default_stats_dir() -> Path:
    """``$CASCADE_STATS_DIR``, else ``~/.cache/cascade/reference-stats``."""
    return Path(os.environ.get(STATS_DIR_ENV, Path.home() / ".cache" / "cascade" / "reference-stats"))


def dataset_name_for(spec: str | os.PathLike[str]) -> str:
    """A cache-safe dataset name: the folder/shard base name plus a hash of its absolute path."""
    absolute = os.path.abspath(str(spec))
    base = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(absolute).name.split("{")[0]) or "dataset"
    return f"{base}-{hashlib.sha256(absolute.encode()).hexdigest()[:8]}"


def content_fingerprint(source: Dataset | IterableDataset) -> str:
    """A hash of what a real set holds: each image file's or shard's path, size and modification
    time (cheap: nothing is read). Any added, removed, replaced or touched file changes it."""
    paths = getattr(source, "files", None) or getattr(source, "shards", None) or []
    entries = []
    for path in paths:
        stat = os.stat(path)
        entries.append([os.path.abspath(path), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def reference_cache_path(cache_dir: str | os.PathLike[str], dataset: str, resolution: int | None,
                         extractor: FeatureExtractor) -> Path:
    """``<cache_dir>/<dataset>-<resolution|native>-<extractor>-<weights hash>.npz``."""
    resolution_tag = f"{resolution}px" if resolution else "native"
    return Path(cache_dir) / f"{dataset}-{resolution_tag}-{extractor.name}-{extractor.weights_hash}.npz"


def reference_statistics(
    spec: str | os.PathLike[str],
    extractor: FeatureExtractor,
    *,
    resolution: int | None = None,
    dataset: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    need_features: bool = True,
    max_images: int | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[ReferenceStatistics, Path]:
    """Load the cached statistics of a real set, or compute and cache them.

    `spec` is an image folder or shards (see :func:`cascade.eval.sources.open_image_source`), or an
    ``.npz`` written earlier (used as is). A cached file without raw features is recomputed
    when `need_features` is set. Returns the statistics and the cache file's path.

    The cache stores a fingerprint of the set's files (`content_fingerprint`); when the images
    changed since, the statistics are recomputed (with a warning) instead of silently reused.
    """
    if str(spec).endswith(".npz"):
        return ReferenceStatistics.load(spec), Path(spec)
    dataset = dataset or dataset_name_for(spec)
    if max_images is not None:
        dataset = f"{dataset}-first{max_images}"
    path = reference_cache_path(cache_dir or default_stats_dir(), dataset, resolution, extractor)
    source = open_image_source(spec, resolution)
    fingerprint = content_fingerprint(source)
    if path.is_file():
        cached = ReferenceStatistics.load(path)
        if cached.protocol.get("content_fingerprint") != fingerprint:
            warnings.warn(f"{spec}: the images changed since their statistics were cached in {path}; recomputing",
                          stacklevel=2)
        elif cached.features is not None or not need_features:
            return cached, path
    extracted = extract_features(extractor, source, batch_size=batch_size, num_workers=num_workers,
                                 max_images=max_images, progress=progress, description=f"reference {dataset}")
    protocol = {"dataset": dataset, "source": str(spec), "resolution": resolution,
                "content_fingerprint": fingerprint, **extractor.describe()}
    statistics = ReferenceStatistics.from_features(extracted.features, protocol)
    statistics.save(path)
    return statistics, path
