"""FID, IS, precision/recall and KID as one torchmetrics `Metric` over a shared feature extractor.

One forward pass of the extractor per batch feeds every requested metric. The states are
synced across DDP ranks by torchmetrics (sums with ``sum``, feature lists with ``cat``), so
the metric can sit in a Lightning validation loop; the CLI uses the same class.

- ``fid``: Fréchet distance of Gaussians fitted to the features (Heusel et al. 2017). The
  sums of features and of their outer products are accumulated in float64, so memory does
  not grow with the number of images.
- ``is``: Inception Score over 10 splits (Salimans et al. 2016), from the extractor's logits.
- ``pr``: improved precision/recall, k = 3 (Kynkäänniemi et al. 2019); keeps the features.
- ``kid``: Kernel Inception Distance (Bińkowski et al. 2018); keeps the features.

The reference side is either accumulated with ``update(images, real=True)`` or given as
cached :class:`cascade.eval.features.ReferenceStatistics` (then only generated images are fed).
With several ranks the generated set is the concatenation of every rank's images in rank
order; IS depends on that order through its splits, the other metrics do not.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from .extractors import FeatureExtractor
from .features import ReferenceStatistics
from .frechet import frechet_distance
from .inception_score import inception_score
from .kid import kernel_inception_distance
from .precision_recall import precision_recall

METRIC_NAMES = ("fid", "is", "pr", "kid")
# Below this many images FID / KID / precision-recall are dominated by their small-sample bias
# (FID's covariance of 2048 dimensions needs thousands; ~100 is the least that says anything).
MIN_IMAGES_FOR_DISTRIBUTION_METRICS = 100


def needs_raw_features(names: Iterable[str]) -> bool:
    """True when one of the metrics `names` reads every feature vector (precision/recall, KID),
    not only their mean and covariance (FID) or the logits (IS)."""
    return any(name in ("pr", "kid") for name in names)


def parse_metric_names(names: str | Iterable[str]) -> tuple[str, ...]:
    """``"fid,is"`` or ``["fid", "is"]`` -> validated tuple of metric names."""
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    names = tuple(dict.fromkeys(names))
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown or not names:
        raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(METRIC_NAMES)}")
    return names


class GenerativeMetrics(Metric):
    """FID / IS / precision-recall / KID of generated images against a reference set.

    Args:
        extractor: the feature space (see :func:`cascade.eval.extractors.build_extractor`). It is
            moved with the metric (``.to(device)``) but is not part of its ``state_dict``,
            so checkpoints of a module holding this metric stay small.
        metrics: any of ``"fid", "is", "pr", "kid"``.
        reference: cached statistics of the real set; without it, feed real images with
            ``update(images, real=True)``.
        pr_k: neighbourhood size of precision/recall.
        is_splits, kid_subsets, kid_subset_size, seed: as in torch-fidelity's defaults.

    ``compute()`` returns a dict of floats: ``fid``, ``is_mean``, ``is_std``, ``precision``,
    ``recall``, ``kid_mean``, ``kid_std`` (those requested), ``num_fake`` and ``num_real``.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(
        self,
        extractor: FeatureExtractor,
        metrics: str | Sequence[str] = ("fid",),
        reference: ReferenceStatistics | None = None,
        pr_k: int = 3,
        is_splits: int = 10,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        seed: int = 2020,
        **kwargs: object,
    ):
        super().__init__(**kwargs)
        # Kept out of the module tree on purpose: no extractor weights in state_dict / checkpoints.
        object.__setattr__(self, "extractor", extractor)
        self.metrics = parse_metric_names(metrics)
        self.reference = reference
        self.pr_k, self.is_splits, self.seed = pr_k, is_splits, seed
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        if "is" in self.metrics and not extractor.provides_logits:
            raise ValueError(f"IS needs class logits; the extractor {extractor.name!r} has none")
        self._check_reference(reference)

        dim = extractor.feature_dim
        sides = ("fake",) if reference is not None else ("fake", "real")
        for side in sides:
            self.add_state(f"{side}_count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            if "fid" in self.metrics:
                self.add_state(f"{side}_sum", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
                self.add_state(f"{side}_outer", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")
            if self._needs_raw_features:
                self.add_state(f"{side}_features", [], dist_reduce_fx="cat")
        if "is" in self.metrics:
            self.add_state("fake_logits", [], dist_reduce_fx="cat")

    @property
    def _needs_raw_features(self) -> bool:
        return needs_raw_features(self.metrics)

    def _check_reference(self, reference: ReferenceStatistics | None) -> None:
        if reference is None:
            return
        if reference.mu.shape != (self.extractor.feature_dim,):
            raise ValueError(f"reference statistics have {reference.mu.shape[0]}-d features, "
                             f"the extractor {self.extractor.feature_dim}-d")
        for key in ("extractor", "weights_hash"):
            ours, theirs = self.extractor.describe()[key], reference.protocol.get(key)
            if theirs is not None and theirs != ours:
                raise ValueError(f"reference statistics were computed with {key}={theirs!r}, "
                                 f"this extractor has {key}={ours!r}: recompute them")
        if self._needs_raw_features and reference.features is None:
            raise ValueError("precision/recall and KID need the reference features; the statistics file has "
                             "only mu/sigma (recompute it with features kept)")

    def _apply(self, fn, exclude_state=""):  # noqa: ANN001, ANN202 - torchmetrics' signature
        this = super()._apply(fn, exclude_state)
        self.extractor.to(self.device)
        return this

    def update(self, images: torch.Tensor, real: bool = False) -> None:
        """Add a batch: uint8 NCHW in [0, 255] or float NCHW in [-1, 1]."""
        if real and self.reference is not None:
            raise ValueError("this metric was given reference statistics; feed only generated images")
        side = "real" if real else "fake"
        features, logits = self.extractor.features_and_logits(images)
        features = features.to(self.device)
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + features.shape[0])
        if "fid" in self.metrics:
            features64 = features.double()
            setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + features64.sum(dim=0))
            setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + features64.T @ features64)
        if self._needs_raw_features:
            getattr(self, f"{side}_features").append(features.float())
        if "is" in self.metrics and not real:
            self.fake_logits.append(logits.to(self.device).float())

    def _gaussian(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        count = getattr(self, f"{side}_count").item()
        if count < 2:
            raise ValueError(f"FID needs at least 2 {side} images, got {int(count)}")
        total = getattr(self, f"{side}_sum").cpu().numpy()
        outer = getattr(self, f"{side}_outer").cpu().numpy()
        mu = total / count
        sigma = (outer - count * np.outer(mu, mu)) / (count - 1)
        return mu, sigma

    def _raw_features(self, side: str) -> np.ndarray:
        if side == "real" and self.reference is not None:
            return self.reference.features
        return dim_zero_cat(getattr(self, f"{side}_features")).cpu().numpy()

    def compute(self) -> dict[str, float]:
        results: dict[str, float] = {"num_fake": int(self.fake_count.item())}
        results["num_real"] = self.reference.num_images if self.reference is not None else int(self.real_count.item())
        few = min(results["num_fake"], results["num_real"])
        distribution_metrics = sorted({"fid", "kid", "pr"} & set(self.metrics))
        if distribution_metrics and few < MIN_IMAGES_FOR_DISTRIBUTION_METRICS:
            warnings.warn(
                f"{', '.join(distribution_metrics)} from only {few} images (fewer than "
                f"{MIN_IMAGES_FOR_DISTRIBUTION_METRICS}): the estimates are strongly biased and noisy (KID can "
                f"even come out negative); do not compare them with published numbers",
                stacklevel=2,
            )
        if "fid" in self.metrics:
            mu_fake, sigma_fake = self._gaussian("fake")
            if self.reference is not None:
                results["fid"] = frechet_distance(mu_fake, sigma_fake, self.reference.mu, self.reference.sigma,
                                                  sqrt_sigma2=self.reference.sqrt_sigma())
            else:
                results["fid"] = frechet_distance(mu_fake, sigma_fake, *self._gaussian("real"))
        if "is" in self.metrics:
            logits = dim_zero_cat(self.fake_logits).cpu()
            results["is_mean"], results["is_std"] = inception_score(logits, self.is_splits, self.seed)
        if self._needs_raw_features:
            real, fake = self._raw_features("real"), self._raw_features("fake")
            if "pr" in self.metrics:
                results["precision"], results["recall"] = precision_recall(real, fake, self.pr_k)
            if "kid" in self.metrics:
                results["kid_mean"], results["kid_std"] = kernel_inception_distance(
                    real, fake, self.kid_subsets, self.kid_subset_size, self.seed)
        return results
