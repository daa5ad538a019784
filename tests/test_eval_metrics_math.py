"""The metric formulas on their own: closed forms, hand-made point clouds, and the references'
own functions (clean-fid, torch-fidelity) on identical inputs."""

import numpy as np
import pytest
import torch
from cleanfid.fid import frechet_distance as cleanfid_frechet_distance
from torch_fidelity.metric_fid import fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

from cascade.eval.frechet import frechet_distance, mean_and_covariance, symmetric_sqrt
from cascade.eval.inception_score import inception_score
from cascade.eval.kid import kernel_inception_distance
from cascade.eval.precision_recall import knn_radii, precision_recall


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.RandomState(0)
    mu1, mu2 = rng.randn(16), rng.randn(16)
    s1, s2 = rng.rand(16) + 0.1, rng.rand(16) + 0.1
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_is_zero_for_identical_and_symmetric():
    rng = np.random.RandomState(1)
    a, b = rng.randn(300, 8), rng.randn(300, 8) * 1.5 + 0.3
    mu_a, sigma_a = mean_and_covariance(a)
    mu_b, sigma_b = mean_and_covariance(b)
    assert frechet_distance(mu_a, sigma_a, mu_a, sigma_a) == pytest.approx(0, abs=1e-9)
    assert frechet_distance(mu_a, sigma_a, mu_b, sigma_b) == pytest.approx(frechet_distance(mu_b, sigma_b, mu_a, sigma_a))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # clean-fid passes scipy's deprecated `disp`
@pytest.mark.parametrize("samples", [500, 40])  # full-rank and singular (fewer samples than dims) covariances
def test_frechet_distance_agrees_with_clean_fid_and_torch_fidelity(samples):
    rng = np.random.RandomState(2)
    mixing = rng.randn(64, 64) / 8
    a = rng.randn(samples, 64) @ mixing
    b = rng.randn(samples, 64) @ mixing * 1.2 + 0.1
    mu_a, sigma_a = mean_and_covariance(a)
    mu_b, sigma_b = mean_and_covariance(b)
    ours = frechet_distance(mu_a, sigma_a, mu_b, sigma_b)
    assert ours == pytest.approx(cleanfid_frechet_distance(mu_a, sigma_a, mu_b, sigma_b), rel=1e-6)
    reference = fid_statistics_to_metric({"mu": mu_a, "sigma": sigma_a}, {"mu": mu_b, "sigma": sigma_b}, False)
    assert ours == pytest.approx(reference["frechet_inception_distance"], rel=1e-6)


def test_knn_radii_exclude_the_point_itself():
    points = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    assert knn_radii(points, k=1).tolist() == [1.0, 1.0, 2.0, 3.0]
    assert knn_radii(points, k=3).tolist() == [6.0, 5.0, 3.0, 6.0]


def test_precision_recall_on_hand_made_point_clouds():
    # Real: 10 points on a line 0..9 (k=3 radius 3 at the ends, less inside; all within [0, 9] +- 3).
    real = torch.arange(10.0).unsqueeze(1)
    # Fake: half inside the real manifold, half far away -> precision 0.5.
    fake = torch.tensor([[1.0], [4.0], [5.5], [8.0], [100.0], [101.0], [102.0], [103.0]])
    precision, recall = precision_recall(real, fake, k=3)
    assert precision == pytest.approx(0.5)
    # Fake k=3 radii: 7, 4, 4.5, 7 for 1, 4, 5.5, 8 (the far cluster: 3). Every real point 0..9
    # is within 7 of 1 or of 8 -> recall 1.
    assert recall == pytest.approx(1.0)
    # Mode collapse: all fakes at one real point -> precision 1, recall only the points within radius 0.
    collapsed = torch.full((5, 1), 4.0)
    precision, recall = precision_recall(real, collapsed, k=3)
    assert (precision, recall) == (pytest.approx(1.0), pytest.approx(0.1))


def test_precision_recall_matches_torch_fidelity():
    rng = np.random.RandomState(3)
    real = torch.from_numpy(rng.randn(120, 16).astype(np.float32))
    fake = torch.from_numpy((rng.randn(90, 16) * 1.3 + 0.4).astype(np.float32))
    reference = prc_features_to_metric(fake, real, prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False,
                                       verbose=False)
    precision, recall = precision_recall(real, fake, k=3, block_size=50)
    assert (precision, recall) == (pytest.approx(reference["precision"]), pytest.approx(reference["recall"]))


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.RandomState(4)
    a, b = rng.randn(400, 32), rng.randn(400, 32)
    same, _ = kernel_inception_distance(a, b, subsets=20, subset_size=200)
    different, _ = kernel_inception_distance(a, b + 0.5, subsets=20, subset_size=200)
    assert abs(same) < 0.02 * different
    assert different > 0


def test_kid_matches_torch_fidelity():
    rng = np.random.RandomState(5)
    real = torch.from_numpy(rng.randn(150, 24).astype(np.float32))
    fake = torch.from_numpy((rng.randn(120, 24) + 0.2).astype(np.float32))
    reference = kid_features_to_metric(fake, real, kid_subsets=10, kid_subset_size=100, kid_kernel="poly",
                                       kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                       kid_kernel_poly_coef0=1, rng_seed=2020, verbose=False)
    mean, std = kernel_inception_distance(real, fake, subsets=10, subset_size=100, seed=2020)
    assert mean == pytest.approx(reference["kernel_inception_distance_mean"], rel=1e-4)
    assert std == pytest.approx(reference["kernel_inception_distance_std"], rel=1e-3)


def test_inception_score_extremes_and_torch_fidelity():
    uniform = torch.zeros(100, 10)
    assert inception_score(uniform, splits=10)[0] == pytest.approx(1.0)
    confident_and_diverse = torch.eye(10).repeat(10, 1) * 50  # each split covers all 10 classes
    assert inception_score(confident_and_diverse, splits=1)[0] == pytest.approx(10.0, rel=1e-6)
    logits = torch.from_numpy(np.random.RandomState(6).randn(200, 1008).astype(np.float32)) * 3
    reference = isc_features_to_metric(logits, splits=10, shuffle=True, rng_seed=2020)
    mean, std = inception_score(logits, splits=10, shuffle_seed=2020)
    assert mean == pytest.approx(reference["inception_score_mean"], rel=1e-9)
    assert std == pytest.approx(reference["inception_score_std"], rel=1e-9)


def test_frechet_distance_with_a_cached_reference_square_root():
    rng = np.random.RandomState(7)
    a, b = rng.randn(80, 20), rng.randn(60, 20) * 0.8
    mu_a, sigma_a = mean_and_covariance(a)
    mu_b, sigma_b = mean_and_covariance(b)
    cached = frechet_distance(mu_a, sigma_a, mu_b, sigma_b, sqrt_sigma2=symmetric_sqrt(sigma_b))
    assert cached == pytest.approx(frechet_distance(mu_a, sigma_a, mu_b, sigma_b), rel=1e-12)
    root = symmetric_sqrt(sigma_b)
    np.testing.assert_allclose(root @ root, sigma_b, atol=1e-10)
