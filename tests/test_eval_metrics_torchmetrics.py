"""The metrics as torchmetrics `Metric`s: DDP sync over 2 CPU processes (gloo), cached
reference statistics, state_dict contents, and the super-resolution metrics.

A tiny deterministic extractor stands in for Inception so these run in seconds.
"""

import json
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image

from cascade.eval.evaluate import evaluate_super_resolution
from cascade.eval.extractors import FeatureExtractor
from cascade.eval.features import ReferenceStatistics
from cascade.files.images import to_uint8
from cascade.eval.metrics import GenerativeMetrics
from cascade.eval.super_resolution import LowResConsistencyPSNR, antialiased_downsample, psnr

ALL_METRICS = ("fid", "is", "pr", "kid")
KID_OPTIONS = dict(kid_subsets=5, kid_subset_size=6)


class TinyExtractor(FeatureExtractor):
    """4x4 average-pooled pixels (48 values) through a fixed random projection: 12-d features, 5 logits."""

    name = "tiny-test"
    feature_dim = 12
    weights_hash = "0" * 16
    preprocessing = "4x4 average pool"

    def __init__(self):
        super().__init__()
        self.register_buffer("projection", torch.randn(48, 12, generator=torch.Generator().manual_seed(0)))

    @property
    def provides_logits(self):
        return True

    def features_and_logits(self, images):
        pooled = F.adaptive_avg_pool2d(to_uint8(images).float() / 255, 4).flatten(1).to(self.device)
        features = pooled @ self.projection
        return features, features[:, :5] * 3


def _images(count, seed, brightness=0.0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(count, 3, 16, 16, generator=generator) * 2 - 1 + brightness).clamp(-1, 1)


REAL, FAKE = _images(17, 0), _images(17, 1, brightness=0.3)
SPLIT = 10  # rank 0 gets the first 10 images, rank 1 the other 7: uneven on purpose


def _single_process_result():
    metric = GenerativeMetrics(TinyExtractor(), ALL_METRICS, **KID_OPTIONS)
    metric.update(REAL, real=True)
    metric.update(FAKE)
    return metric.compute()


def _ddp_worker(rank, world_size, rendezvous, out_file):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        metric = GenerativeMetrics(TinyExtractor(), ALL_METRICS, **KID_OPTIONS)
        part = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
        metric.update(REAL[part], real=True)
        for batch in FAKE[part].split(4):
            metric.update(batch)
        result = metric.compute()  # torchmetrics syncs the states across ranks here
        if rank == 0:
            with open(out_file, "w") as handle:
                json.dump(result, handle)
    finally:
        dist.destroy_process_group()


def test_ddp_synced_metrics_equal_the_single_process_result(tmp_path):
    out_file = tmp_path / "rank0.json"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "rendezvous"), str(out_file)), nprocs=2, join=True)
    synced = json.loads(out_file.read_text())
    single = _single_process_result()
    assert synced.keys() == single.keys()
    assert synced["num_real"] == synced["num_fake"] == 17
    for key, value in single.items():
        assert synced[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key  # float32 batch sums differ in the last bits


def test_reference_statistics_path_equals_streaming_real_images():
    streaming = _single_process_result()
    real_features = TinyExtractor()(REAL).numpy()
    reference = ReferenceStatistics.from_features(real_features, TinyExtractor().describe())
    metric = GenerativeMetrics(TinyExtractor(), ALL_METRICS, reference=reference, **KID_OPTIONS)
    metric.update(FAKE)
    cached = metric.compute()
    for key, value in streaming.items():
        assert cached[key] == pytest.approx(value, rel=1e-9), key
    with pytest.raises(ValueError, match="feed only generated"):
        metric.update(REAL, real=True)


def test_reference_statistics_round_trip_and_protocol_check(tmp_path):
    features = TinyExtractor()(REAL).numpy()
    stats = ReferenceStatistics.from_features(features, {"extractor": "something-else", "weights_hash": "abc"})
    stats.save(tmp_path / "stats.npz")
    loaded = ReferenceStatistics.load(tmp_path / "stats.npz")
    assert np.array_equal(loaded.features, features) and loaded.num_images == 17
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporary file
    with pytest.raises(ValueError, match="recompute"):
        GenerativeMetrics(TinyExtractor(), ("fid",), reference=loaded)


def test_extractor_is_moved_with_the_metric_but_not_saved_in_its_state_dict():
    metric = GenerativeMetrics(TinyExtractor(), ("fid", "pr"))
    assert not any("projection" in key for key in metric.state_dict())
    assert "extractor" not in dict(metric.named_modules())
    metric.to("cpu")
    assert metric.extractor.device == torch.device("cpu")


def test_is_needs_an_extractor_with_logits():
    class NoLogits(TinyExtractor):
        provides_logits = False

    with pytest.raises(ValueError, match="logits"):
        GenerativeMetrics(NoLogits(), ("is",))


def test_psnr_known_values():
    target = torch.zeros(2, 3, 4, 4)
    prediction = torch.full((2, 3, 4, 4), 0.1)  # MSE 0.01 -> 20 dB
    assert psnr(prediction, target).tolist() == pytest.approx([20.0, 20.0])
    assert psnr(target, target).tolist() == [100.0, 100.0]


def test_lowres_consistency_of_a_perfect_and_a_shifted_upsampler():
    lowres = _images(4, 2)  # float in [-1, 1]
    perfect = LowResConsistencyPSNR()
    # An SR output whose downsampling is exactly the input: a constant-per-4x4-block image
    # downsampled with area averaging. Use a matching downsample operator.
    perfect_downsample = LowResConsistencyPSNR(downsample=lambda x, size: F.adaptive_avg_pool2d(x, size))
    upsampled = F.interpolate(lowres, scale_factor=4, mode="nearest")
    perfect_downsample.update(upsampled, lowres)
    assert perfect_downsample.compute().item() > 60
    # Offsetting the output by 0.1 (in [-1, 1] units, i.e. 0.05 in [0, 1]) gives 10 log10(1 / 0.0025) = 26.02 dB.
    offset = LowResConsistencyPSNR(downsample=lambda x, size: F.adaptive_avg_pool2d(x, size))
    offset.update((upsampled + 0.1).clamp(-1, 1), lowres)
    values = 10 * torch.log10(1 / ((to01(lowres + 0.1) - to01(lowres)) ** 2).flatten(1).mean(1))
    assert offset.compute().item() == pytest.approx(values.mean().item(), rel=1e-6)
    # The default anti-aliased bicubic: smooth images come back nearly unchanged.
    smooth = F.interpolate(_images(2, 3), size=(4, 4), mode="bilinear")
    perfect.update(F.interpolate(smooth, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1), smooth)
    assert perfect.compute().item() > 25
    assert antialiased_downsample(torch.zeros(1, 3, 16, 16), (4, 4)).shape == (1, 3, 4, 4)


def to01(x):
    return ((x.clamp(-1, 1) + 1) / 2).clamp(0, 1)


def _save(images, folder):
    folder.mkdir(parents=True)
    for index, image in enumerate(to_uint8(images)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{index:03d}.png")


def test_super_resolution_folders_give_fid_and_lowres_psnr_per_aug_level(tmp_path):
    highres = _images(12, 4)
    lowres = F.interpolate(highres, size=(8, 8), mode="area")
    _save(highres, tmp_path / "real")
    _save(lowres, tmp_path / "lowres")
    _save(F.interpolate(lowres, scale_factor=2, mode="nearest"), tmp_path / "sr" / "aug_level=0")
    _save(_images(12, 5), tmp_path / "sr" / "aug_level=0.5")  # ignores its input
    results = evaluate_super_resolution(tmp_path / "sr", tmp_path / "lowres", tmp_path / "real", TinyExtractor(),
                                        ("fid",), stats_dir=tmp_path / "stats", progress=False)
    assert [r.setting for r in results] == [{"aug_level": 0.0}, {"aug_level": 0.5}]
    faithful, ignoring = results
    assert faithful.metrics["lowres_psnr"] > ignoring.metrics["lowres_psnr"] + 5
    assert faithful.protocol["num_samples"] == 12 and faithful.protocol["num_reference"] == 12
    assert "fid" in faithful.metrics and faithful.protocol["extractor"] == "tiny-test"


def test_cached_reference_statistics_are_recomputed_when_the_images_change(tmp_path):
    """Replacing a reference folder's images must not reuse the old statistics (stale FID/KID)."""
    from cascade.eval.features import reference_statistics

    real = tmp_path / "real"
    real.mkdir()
    rng = np.random.default_rng(0)

    def write_images(offset: int) -> None:
        for index in range(6):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) // 2 + offset
            Image.fromarray(pixels.astype(np.uint8)).save(real / f"{index}.png")

    extractor = TinyExtractor()
    write_images(0)
    first, path = reference_statistics(real, extractor, cache_dir=tmp_path / "cache", progress=False)
    again, same_path = reference_statistics(real, extractor, cache_dir=tmp_path / "cache", progress=False)
    assert same_path == path and np.array_equal(again.mu, first.mu)

    write_images(120)  # same names, new content
    with pytest.warns(UserWarning, match="changed since their statistics were cached"):
        changed, changed_path = reference_statistics(real, extractor, cache_dir=tmp_path / "cache", progress=False)
    assert changed_path == path
    assert not np.allclose(changed.mu, first.mu)
    assert changed.protocol["content_fingerprint"] != first.protocol["content_fingerprint"]


def test_distribution_metrics_on_too_few_images_warn():
    small = GenerativeMetrics(TinyExtractor(), ("fid", "kid"), kid_subsets=2, kid_subset_size=8)
    small.update(REAL, real=True)
    small.update(FAKE)
    with pytest.warns(UserWarning, match="fid, kid from only 17 images"):
        small.compute()

    enough = GenerativeMetrics(TinyExtractor(), ("fid",))
    enough.update(_images(100, 2), real=True)
    enough.update(_images(100, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert enough.compute()["num_fake"] == 100


def test_sr_evaluation_of_a_sample_folder_scores_its_final_images_not_its_kept_lower_stages(tmp_path):
    highres = _images(12, 4)
    lowres = F.interpolate(highres, size=(8, 8), mode="area")
    _save(highres, tmp_path / "real")
    outputs = (F.interpolate(lowres, scale_factor=2, mode="nearest") + 0.2 * _images(12, 6)).clamp(-1, 1)
    samples = tmp_path / "samples"  # `cascade sample --keep-intermediate`: the 8px stage under intermediate/
    _save(outputs, samples)
    _save(lowres, samples / "intermediate" / "stage0_8px")
    _save(outputs, tmp_path / "final_only")

    def evaluate(sr_outputs):
        (result,) = evaluate_super_resolution(sr_outputs, samples / "intermediate" / "stage0_8px", tmp_path / "real",
                                              TinyExtractor(), ("fid",), stats_dir=tmp_path / "stats", progress=False,
                                              batch_size=12)  # one batch of each size
        return result

    kept, final_only = evaluate(samples), evaluate(tmp_path / "final_only")
    assert kept.protocol["num_samples"] == 12
    assert kept.metrics["lowres_psnr"] == pytest.approx(final_only.metrics["lowres_psnr"])
    assert kept.metrics["fid"] == pytest.approx(final_only.metrics["fid"])
