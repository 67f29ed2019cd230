"""Paired bootstrap intervals (`benchmark.metrics.paired`): coverage on populations of known difference, identical
methods, a hand-computed case, seeds, and set-level statistics."""
import numpy as np
import pytest

from benchmark.metrics.paired import RESAMPLES, bootstrap_indices, paired_delta, paired_delta_of


def test_the_95_interval_covers_a_known_difference_in_93_to_97_percent_of_draws():
    """Per-image PSNR-like values of two methods sharing each photo's difficulty (correlated), true mean
    difference 0.3 dB; 1000 independent draws of 100 photos, each with its own 2000-resample interval."""
    rng = np.random.default_rng(1)
    truth, covered, draws = 0.3, 0, 1000
    for k in range(draws):
        difficulty = rng.normal(27, 3, 100)
        a = difficulty + truth + rng.gamma(2.0, 0.5, 100) - 1.0  # skewed per-photo gains, mean 0 noise
        b = difficulty
        r = paired_delta(a, b, seed=k)
        covered += r.lo <= truth <= r.hi
    assert 0.93 <= covered / draws <= 0.97


def test_binary_outcomes_cover_too():
    rng = np.random.default_rng(2)
    p_a, p_b, covered, draws = 0.64, 0.62, 0, 1000
    for k in range(draws):  # correlated correctness: most photos are right or wrong for both
        u = rng.random(300)
        a, b = (u < p_a).astype(float), (u < p_b).astype(float)
        flip = rng.random(300) < 0.1
        a[flip] = (rng.random(flip.sum()) < p_a)
        covered += paired_delta(a, b, seed=k).lo <= p_a - p_b <= paired_delta(a, b, seed=k).hi
    assert 0.93 <= covered / draws <= 0.97


def test_identical_methods_give_zero_and_a_tie():
    v = np.random.default_rng(0).normal(30, 2, 50)
    r = paired_delta(v, v)
    assert (r.delta, r.lo, r.hi) == (0.0, 0.0, 0.0) and r.verdict() == "tie" and not r.distinguishable


def test_hand_computed_small_case():
    """Three photos, differences (1, 0, 2): the delta is their mean 1; a resample's delta is the mean of three
    draws from them, and each of the 27 equally likely triples counts: P(mean = 0) = P(0, 0, 0) = 1/27 = 3.7 %
    > 2.5 %, and P(mean = 2) likewise, so the 2.5 / 97.5 percentiles are exactly 0 and 2."""
    a, b = np.array([3.0, 1.0, 4.0]), np.array([2.0, 1.0, 2.0])
    r = paired_delta(a, b, resamples=20000)
    assert r.delta == 1.0 and r.n_images == 3
    assert (r.lo, r.hi) == (0.0, 2.0) and r.verdict() == "tie"
    # the bootstrap deltas themselves, by hand from the same indices
    idx = np.concatenate(list(bootstrap_indices(3, 20000)))
    assert np.array_equal(np.sort((a - b)[idx].mean(1))[[0, -1]], [0.0, 2.0])


def test_discordant_photos_are_counted():
    a = np.array([1, 1, 0, 0, 1, 1])
    b = np.array([0, 1, 1, 0, 0, 1])
    r = paired_delta(a, b)
    assert (r.better, r.worse) == (2, 1) and r.delta == pytest.approx(1 / 6)
    assert paired_delta(a + 0.5, b).better is None  # not 0/1 outcomes


def test_same_seed_same_interval_other_seed_other_interval():
    rng = np.random.default_rng(3)
    a, b = rng.normal(1, 1, 80), rng.normal(0.8, 1, 80)
    assert paired_delta(a, b, seed=5) == paired_delta(a, b, seed=5)
    assert paired_delta(a, b, seed=5) != paired_delta(a, b, seed=6)
    assert paired_delta(a, b).resamples == RESAMPLES >= 2000


def test_set_level_statistic_is_recomputed_on_each_resample():
    """A ratio of sums (not a mean of per-image values) through `paired_delta_of` equals the per-image path when the
    statistic is the mean, and differs from naive averaging when it is not."""
    rng = np.random.default_rng(4)
    a, b = rng.normal(5, 1, 40), rng.normal(4.5, 1, 40)
    via_mean = paired_delta_of(lambda i: (a[i].mean(), b[i].mean()), 40)
    direct = paired_delta(a, b)
    assert via_mean.delta == pytest.approx(direct.delta)
    assert (via_mean.lo, via_mean.hi) == pytest.approx((direct.lo, direct.hi))
    hits, trials = rng.integers(0, 5, 40), rng.integers(5, 10, 40)
    ratio = paired_delta_of(lambda i: (hits[i].sum() / trials[i].sum(), 0.3), 40)
    assert ratio.delta == pytest.approx(hits.sum() / trials.sum() - 0.3)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="same images"):
        paired_delta([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        paired_delta([1, float("nan")], [1, 2])
    with pytest.raises(ValueError, match="no image"):
        paired_delta([], [])
