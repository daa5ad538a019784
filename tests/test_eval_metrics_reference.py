"""Agreement with the reference implementations on real images through the real network.

The FID Inception-v3 gets random weights (built here, saved in torch-fidelity's state-dict
format); this package and torch-fidelity are pointed at the same weights file and the same
image folders, and FID / IS / precision-recall / KID must agree to 1e-3 relative. The clean
protocol is checked against clean-fid's own resize and folder pipeline.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from cascade.eval.extractors import CleanInceptionExtractor, InceptionExtractor, build_extractor
from cascade.eval.features import extract_features, reference_statistics
from cascade.eval.frechet import frechet_distance, mean_and_covariance
from cascade.eval.images import pil_bicubic_resize
from cascade.eval.inception import FIDInceptionV3
from cascade.eval.metrics import GenerativeMetrics
from cascade.eval.sources import ImageFolder, image_batches
from cascade.eval.weights import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILENAMES,
    WEIGHTS_HASH_LENGTH,
    InceptionWeightsNotFound,
)
from cascade.files.hashing import file_sha256

IMAGES_PER_SET = 12


def _write_images(folder, count, seed, frequency_shift, size=48):
    """Smooth coloured stripes plus noise: different enough between sets to give a clear FID."""
    folder.mkdir(parents=True)
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    for index in range(count):
        colour = rng.rand(3) * 255
        frequency = rng.rand() * 6 + frequency_shift
        direction = rng.rand(2)
        phase = rng.rand() * 6
        stripes = 0.5 + 0.5 * np.sin(frequency * (xx * direction[0] + yy * direction[1]) * 6.28 + phase)
        image = colour * stripes[..., None] + rng.randn(size, size, 3) * 10
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"{index:03d}.png")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    torch.set_num_threads(2)
    weights = root / "inception-random.pth"
    torch.save(FIDInceptionV3.with_random_weights(seed=1).state_dict(), weights)
    _write_images(root / "real", IMAGES_PER_SET, seed=0, frequency_shift=0)
    _write_images(root / "fake", IMAGES_PER_SET, seed=1, frequency_shift=3)
    return root, weights


@pytest.fixture(scope="module")
def torch_fidelity_metrics(setup):
    import torch_fidelity

    root, weights = setup
    return torch_fidelity.calculate_metrics(
        input1=str(root / "fake"), input2=str(root / "real"), feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights), fid=True, isc=True, prc=True, kid=True,
        kid_subset_size=10, kid_subsets=20, cuda=False, cache=False, save_cpu_ram=True, verbose=False)


@pytest.mark.slow  # two FIDs on 2048-d covariances and 48 Inception passes at 299x299: ~40 s on 2 cores
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # clean-fid passes scipy's deprecated `disp`
@pytest.mark.filterwarnings("ignore:Matrix is singular")  # clean-fid's sqrtm on 12 samples
def test_fid_is_pr_kid_agree_with_torch_fidelity_and_clean_fid(setup, torch_fidelity_metrics, tmp_path):
    from cleanfid.fid import frechet_distance as cleanfid_frechet_distance

    root, weights = setup
    extractor = InceptionExtractor.from_weights(weights)
    statistics, path = reference_statistics(root / "real", extractor, cache_dir=tmp_path, progress=False)
    assert path.parent == tmp_path and extractor.weights_hash in path.name and "native" in path.name
    assert statistics.protocol["weights_hash"] == file_sha256(weights, WEIGHTS_HASH_LENGTH)
    cached, same_path = reference_statistics(root / "real", extractor, cache_dir=tmp_path, progress=False)
    assert same_path == path and np.array_equal(cached.sigma, statistics.sigma)

    metric = GenerativeMetrics(extractor, ("fid", "is", "pr", "kid"), reference=cached, kid_subsets=20,
                               kid_subset_size=10)
    for batch in image_batches(ImageFolder(root / "fake"), batch_size=8):
        metric.update(batch)
    ours = metric.compute()
    reference = torch_fidelity_metrics
    assert ours["fid"] > 1  # the sets differ: a degenerate 0 = 0 comparison would prove nothing
    assert ours["fid"] == pytest.approx(reference["frechet_inception_distance"], rel=1e-3)
    assert ours["is_mean"] == pytest.approx(reference["inception_score_mean"], rel=1e-3)
    assert ours["kid_mean"] == pytest.approx(reference["kernel_inception_distance_mean"], rel=1e-3)
    assert ours["precision"] == pytest.approx(reference["precision"], abs=1e-6)
    assert ours["recall"] == pytest.approx(reference["recall"], abs=1e-6)
    assert (ours["num_real"], ours["num_fake"]) == (IMAGES_PER_SET, IMAGES_PER_SET)

    # clean-fid's Fréchet distance on the same Inception features (the first 256 coordinates: its
    # scipy sqrtm on 2048-d matrices alone takes a minute on 2 cores).
    fake_features = torch.cat(metric.fake_features).numpy()[:, :256]  # kept by the metric for P/R
    real_features = statistics.features[:, :256]
    ours_256 = frechet_distance(*mean_and_covariance(fake_features), *mean_and_covariance(real_features))
    cleanfid_256 = cleanfid_frechet_distance(*mean_and_covariance(fake_features), *mean_and_covariance(real_features))
    assert ours_256 == pytest.approx(cleanfid_256, rel=1e-3)


def test_clean_protocol_matches_clean_fid(setup, tmp_path):
    from cleanfid.fid import get_folder_features
    from cleanfid.resize import make_resizer

    root, weights = setup
    folder = tmp_path / "few"
    folder.mkdir()
    for path in ImageFolder(root / "real").files[:4]:
        (folder / path.name).write_bytes(path.read_bytes())
    images = torch.stack([ImageFolder(folder)[i] for i in range(4)])
    clean_resize = make_resizer("PIL", False, "bicubic", (299, 299))
    expected = np.stack([clean_resize(image.permute(1, 2, 0).numpy()).transpose(2, 0, 1) for image in images])
    assert np.array_equal(pil_bicubic_resize(images, 299).numpy(), expected)

    network = FIDInceptionV3.from_weights_file(weights)
    # clean-fid's own loading and resize with the same network behind it (its model contract:
    # float images in [0, 255] at 299x299 -> 2048-d features).
    theirs = get_folder_features(str(folder), model=lambda x: network(x, resize_to=None)[0], num_workers=0,
                                 batch_size=4, device=torch.device("cpu"), mode="clean", verbose=False)
    extractor = CleanInceptionExtractor(network, file_sha256(weights, WEIGHTS_HASH_LENGTH))
    ours = extract_features(extractor, ImageFolder(folder), batch_size=4, progress=False).features
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_missing_inception_weights_error_names_the_file_and_every_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(tmp_path / "from-env.pth"))
    with pytest.raises(InceptionWeightsNotFound) as caught:
        build_extractor("inception", device="cpu")
    message = str(caught.value)
    assert INCEPTION_WEIGHTS_FILENAMES[0] in message
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    for tried in (tmp_path / "from-env.pth", hub / INCEPTION_WEIGHTS_FILENAMES[0], hub / INCEPTION_WEIGHTS_FILENAMES[1]):
        assert str(tried) in message
    assert INCEPTION_WEIGHTS_ENV in message and "--inception-weights" in message

    with pytest.raises(InceptionWeightsNotFound, match="typo.pth"):  # an explicit path never falls back
        build_extractor("clean", inception_weights=tmp_path / "typo.pth", device="cpu")


def test_inception_weights_are_found_in_the_torch_hub_cache(tmp_path, monkeypatch, setup):
    _, weights = setup
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / INCEPTION_WEIGHTS_FILENAMES[1]).write_bytes(weights.read_bytes())
    extractor = build_extractor("inception", device="cpu")
    assert extractor.weights_hash == file_sha256(weights, WEIGHTS_HASH_LENGTH)
