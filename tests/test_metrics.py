"""Metrics against hand-computed and closed-form values."""

import math

import pytest
import torch

from pyro_meta import metrics
from pyro_meta.testing import assert_close


def _gaussian_crps(mu, sigma, y):
    """Closed form: sigma * (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi)), z = (y - mu) / sigma."""
    z = (y - mu) / sigma
    Phi = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    phi = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return sigma * (z * (2 * Phi - 1) + 2 * phi - 1 / math.sqrt(math.pi))


def test_mse_hand_computed_and_masked():
    y = torch.tensor([[[1.0], [2.0], [3.0]], [[0.0], [0.0], [9.0]]])
    pred = torch.tensor([[[2.0], [2.0], [5.0]], [[1.0], [-2.0], [100.0]]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    # squared errors of the real points: 1, 0, 4, 1, 4 -> 10 / 5
    assert metrics.mse(pred, y, mask) == pytest.approx(2.0)


def test_log_likelihood_is_mean_per_real_point():
    lp = torch.tensor([[-1.0, -2.0], [-3.0, -1000.0]])
    mask = torch.tensor([[True, True], [True, False]])
    assert metrics.log_likelihood(lp, mask) == pytest.approx(-2.0)


def test_crps_of_a_point_mass_is_absolute_error():
    # every draw equal to 1: CRPS = |1 - y|
    samples = torch.ones(7, 1, 2, 1)
    y = torch.tensor([[[3.0], [0.5]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert metrics.crps(samples, y, mask) == pytest.approx((2.0 + 0.5) / 2)


def test_crps_two_draws_hand_computed():
    # draws {0, 2}, y = 0: E|X - y| = 1, E|X - X'| over S^2 pairs = (0 + 2 + 2 + 0) / 4 = 1 -> 0.5
    # fair: E|X - X'| over S(S-1) pairs = 4 / 2 = 2 -> 0
    samples = torch.tensor([0.0, 2.0]).reshape(2, 1, 1, 1)
    y = torch.zeros(1, 1, 1)
    mask = torch.ones(1, 1, dtype=torch.bool)
    assert metrics.crps(samples, y, mask) == pytest.approx(0.5)
    assert metrics.crps(samples, y, mask, fair=True) == pytest.approx(0.0)


def test_crps_pair_sum_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(9, 2, 3, 2, generator=g)
    y = torch.randn(2, 3, 2, generator=g)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    s = samples.double()
    brute = (s - y).abs().mean(0) - 0.5 * (s[:, None] - s[None, :]).abs().mean((0, 1))
    expected = float(brute[mask].mean())
    assert metrics.crps(samples, y, mask) == pytest.approx(expected, abs=1e-6)


def test_crps_of_gaussian_draws_matches_closed_form():
    g = torch.Generator().manual_seed(1)
    mu, sigma = 0.3, 1.7
    ys = [0.3, -1.0, 2.5, 6.0]
    y = torch.tensor(ys).reshape(1, 4, 1)
    samples = mu + sigma * torch.randn(20000, 1, 4, 1, generator=g)
    mask = torch.ones(1, 4, dtype=torch.bool)
    expected = sum(_gaussian_crps(mu, sigma, v) for v in ys) / 4
    # Monte Carlo error of each CRPS term is ~ sigma / sqrt(S) ~ 0.012; averaged over 4 points
    assert metrics.crps(samples, y, mask, fair=True) == pytest.approx(expected, abs=0.02)
    assert metrics.crps(samples, y, mask) == pytest.approx(expected, abs=0.02)


def test_crps_flattens_leading_sample_dims():
    g = torch.Generator().manual_seed(2)
    samples = torch.randn(2, 5, 3, 4, 1, generator=g)  # [C, S, T, N, D]
    y = torch.randn(3, 4, 1, generator=g)
    mask = torch.ones(3, 4, dtype=torch.bool)
    assert metrics.crps(samples, y, mask) == pytest.approx(metrics.crps(samples.reshape(10, 3, 4, 1), y, mask))


def test_coverage_hand_built():
    # draws 0..100: the central 90% interval is [5, 95]
    samples = torch.arange(101.0).reshape(101, 1, 1, 1).expand(101, 1, 4, 1)
    y = torch.tensor([4.0, 5.0, 50.0, 96.0]).reshape(1, 4, 1)
    mask = torch.tensor([[True, True, True, True]])
    assert metrics.coverage(samples, y, mask, level=0.9) == pytest.approx(0.5)
    mask = torch.tensor([[False, True, True, False]])
    assert metrics.coverage(samples, y, mask, level=0.9) == pytest.approx(1.0)


def test_coverage_of_the_true_distribution_is_the_level():
    g = torch.Generator().manual_seed(3)
    T, N, S = 40, 50, 400
    samples = torch.randn(S, T, N, 1, generator=g)
    y = torch.randn(T, N, 1, generator=g)
    mask = torch.ones(T, N, dtype=torch.bool)
    for level in (0.5, 0.9):
        # binomial std over 2000 points ~ 0.011 at 0.5, 0.007 at 0.9; plus quantile error of S = 400 draws
        assert metrics.coverage(samples, y, mask, level) == pytest.approx(level, abs=0.04)


def test_pit_hand_built_and_histogram():
    samples = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(4, 1, 1, 1).expand(4, 1, 3, 1)
    y = torch.tensor([2.5, 3.0, 10.0]).reshape(1, 3, 1)
    mask = torch.tensor([[True, True, False]])
    p = metrics.pit(samples, y, mask)
    # 2.5: two draws below -> 0.5; 3.0: two below and one tie -> (2 + 0.5) / 4
    assert_close(p, torch.tensor([0.5, 0.625], dtype=torch.float64), atol=1e-12, what="pit")
    edges, freq = metrics.pit_histogram(torch.tensor([0.05, 0.15, 0.15, 0.95, 1.0]), bins=10)
    assert_close(edges, torch.linspace(0, 1, 11, dtype=torch.float64), atol=1e-12, what="edges")
    expected = torch.tensor([1, 2, 0, 0, 0, 0, 0, 0, 0, 2], dtype=torch.float64) / 5
    assert_close(freq, expected, atol=1e-12, what="frequency")


def test_pit_of_the_true_distribution_is_uniform():
    g = torch.Generator().manual_seed(4)
    samples = 2 + 3 * torch.randn(500, 20, 50, 1, generator=g)
    y = 2 + 3 * torch.randn(20, 50, 1, generator=g)
    _, freq = metrics.pit_histogram(metrics.pit(samples, y, torch.ones(20, 50, dtype=torch.bool)), bins=5)
    # 1000 PIT values: binomial std per bin sqrt(0.2 * 0.8 / 1000) = 0.013
    assert_close(freq, torch.full((5,), 0.2, dtype=torch.float64), atol=0.055, what="PIT frequency")
    # an overconfident predictive (draws too narrow) piles PIT values at the ends: U shape
    _, freq = metrics.pit_histogram(metrics.pit(2 + samples / 3, y, torch.ones(20, 50, dtype=torch.bool)), bins=5)
    assert float(freq[0] + freq[-1]) > 0.6


def _probs_example():
    probs = torch.tensor(
        [
            [[0.90, 0.05, 0.05], [0.62, 0.28, 0.10], [0.25, 0.33, 0.42]],
            [[0.20, 0.75, 0.05], [0.10, 0.12, 0.78], [0.34, 0.33, 0.33]],
        ]
    )
    labels = torch.tensor([[0, 1, 2], [1, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    return probs, labels, mask


def test_accuracy_and_brier_hand_computed():
    probs, labels, mask = _probs_example()
    # real points: argmax 0 (y 0) right, 0 (y 1) wrong, 2 (y 2) right, 1 (y 1) right, 2 (y 0) wrong -> 3/5
    assert metrics.accuracy(probs, labels, mask) == pytest.approx(0.6)
    # (p - onehot)^2 summed over classes: 0.015, 0.9128, 0.5078, 0.105, 1.4328
    assert metrics.brier_score(probs, labels, mask) == pytest.approx(2.9734 / 5, abs=1e-6)


def test_ece_hand_built():
    probs, labels, mask = _probs_example()
    ece, rel = metrics.expected_calibration_error(probs, labels, mask, bins=5)
    # confidences (right?): 0.90 (y), 0.62 (n), 0.42 (y), 0.75 (y), 0.78 (n); bins of width 0.2:
    # (0.4, 0.6]: {0.42 y} -> |1 - 0.42| = 0.58
    # (0.6, 0.8]: {0.62 n, 0.75 y, 0.78 n} -> 3 * |1/3 - 2.15/3| = 1.15
    # (0.8, 1.0]: {0.90 y} -> 0.10;  ECE = (0.58 + 1.15 + 0.10) / 5
    assert ece == pytest.approx(1.83 / 5, abs=1e-6)
    assert_close(rel.count, torch.tensor([0, 0, 1, 3, 1]), what="counts")
    assert_close(rel.edges, torch.linspace(0, 1, 6, dtype=torch.float64), atol=1e-12, what="edges")
    assert_close(rel.accuracy[2:], torch.tensor([1.0, 1 / 3, 1.0], dtype=torch.float64), atol=1e-12, what="acc")
    assert_close(rel.confidence[2:], torch.tensor([0.42, 2.15 / 3, 0.9], dtype=torch.float64), atol=1e-6, what="conf")
    assert bool(torch.isnan(rel.accuracy[:2]).all()) and bool(torch.isnan(rel.confidence[:2]).all())


def test_ece_exact_bins_away_from_edges():
    probs = torch.tensor(
        [[[0.7, 0.15, 0.15], [0.3, 0.35, 0.35], [0.9, 0.1, 0.0], [0.0, 0.9, 0.1]]], dtype=torch.float64
    )
    labels = torch.tensor([[0, 0, 0, 1]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    ece, rel = metrics.expected_calibration_error(probs, labels, mask, bins=2)
    # bin [0, 0.5]: conf 0.35 (argmax 1, label 0: wrong): |0 - 0.35| ; bin (0.5, 1]: conf 0.7, 0.9, 0.9 all right
    expected = (1 * 0.35 + 3 * abs(1 - (0.7 + 0.9 + 0.9) / 3)) / 4
    assert ece == pytest.approx(expected, abs=1e-12)
    assert_close(rel.count, torch.tensor([1, 3]), what="counts")
    assert_close(rel.accuracy, torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-12, what="bin accuracy")


def test_perfectly_calibrated_probabilities_have_small_ece():
    g = torch.Generator().manual_seed(5)
    p1 = torch.rand(1, 20000, generator=g)
    labels = (torch.rand(1, 20000, generator=g) < p1).long()  # label 1 with probability p1
    probs = torch.stack([1 - p1, p1], -1)
    ece, _ = metrics.expected_calibration_error(probs, labels, torch.ones(1, 20000, dtype=torch.bool))
    assert ece < 0.02
    # a miscalibrated version (probabilities pushed to the extremes) is worse
    sharp = torch.stack([1 - p1.round(), p1.round()], -1)
    ece_sharp, _ = metrics.expected_calibration_error(sharp, labels, torch.ones(1, 20000, dtype=torch.bool))
    assert ece_sharp > 0.2


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: metrics.mse(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), torch.ones(2, 3)), TypeError, "mask"),
        (lambda: metrics.mse(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), torch.ones(3, 2).bool()), ValueError, "mask"),
        (
            lambda: metrics.mse(torch.zeros(2, 3), torch.zeros(2, 3, 1), torch.ones(2, 3).bool()),
            ValueError,
            "pred_mean",
        ),
        (
            lambda: metrics.crps(torch.zeros(4, 2, 3), torch.zeros(2, 3, 1), torch.ones(2, 3).bool()),
            ValueError,
            "samples",
        ),
        (
            lambda: metrics.coverage(torch.zeros(4, 1, 1, 1), torch.zeros(1, 1, 1), torch.ones(1, 1).bool(), 1.0),
            ValueError,
            "level",
        ),
        (
            lambda: metrics.mse(torch.zeros(1, 2, 1), torch.zeros(1, 2, 1), torch.zeros(1, 2).bool()),
            ValueError,
            "no point",
        ),
        (
            lambda: metrics.accuracy(torch.full((1, 2, 2), 0.5), torch.zeros(1, 2), torch.ones(1, 2).bool()),
            TypeError,
            "labels",
        ),
        (
            lambda: metrics.accuracy(torch.full((1, 2, 2), 0.7), torch.zeros(1, 2).long(), torch.ones(1, 2).bool()),
            ValueError,
            "sum to 1",
        ),
        (
            lambda: metrics.brier_score(torch.full((1, 2, 2), 0.5), torch.full((1, 2), 2), torch.ones(1, 2).bool()),
            ValueError,
            "labels",
        ),
        (lambda: metrics.pit_histogram(torch.tensor([0.5, 1.5])), ValueError, "pit_values"),
    ],
)
def test_bad_input_raises(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_ece_bins_are_right_closed():
    # confidence exactly 0.5 falls in (0, 0.5], confidence 1.0 in the last bin
    probs = torch.tensor([[[0.5, 0.5], [1.0, 0.0]]], dtype=torch.float64)
    _, rel = metrics.expected_calibration_error(probs, torch.tensor([[0, 0]]), torch.ones(1, 2, dtype=torch.bool), 2)
    assert rel.count.tolist() == [1, 1]
