"""Proportion intervals (exact Clopper-Pearson, Wilson) against closed forms, and the mean bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from multitask.scoring.stats import bootstrap_mean_interval, proportion_interval

approx = pytest.approx


def test_exact_interval_at_the_edges_is_not_a_point():
    # 0 of 17: a percentile bootstrap gives [0, 0]; the exact upper bound is 1 - 0.025^(1/17) (= 0.195).
    assert proportion_interval(0, 17) == approx([0.0, 1 - 0.025 ** (1 / 17)], abs=1e-9)
    assert proportion_interval(17, 17) == approx([0.025 ** (1 / 17), 1.0], abs=1e-9)
    assert proportion_interval(1, 1) == approx([0.025, 1.0], abs=1e-9)
    assert proportion_interval(0, 0) is None


def test_intervals_match_scipy_binomtest():
    from scipy.stats import binomtest

    for hits, total in ((3, 5), (30, 200), (0, 17), (16, 17), (499, 1000)):
        for method in ("exact", "wilson"):
            reference = binomtest(hits, total).proportion_ci(confidence_level=0.95, method=method)
            assert proportion_interval(hits, total, method) == approx([reference.low, reference.high], abs=1e-9)


def test_wilson_interval_matches_the_formula():
    z = 1.959963984540054
    assert proportion_interval(0, 17, "wilson") == approx([0.0, z * z / (17 + z * z)], abs=1e-9)
    low, high = proportion_interval(30, 200, "wilson")
    center = (0.15 + z * z / 400) / (1 + z * z / 200)
    half = z * np.sqrt(0.15 * 0.85 / 200 + z * z / 160000) / (1 + z * z / 200)
    assert (low, high) == approx((center - half, center + half), abs=1e-12)
    assert low > proportion_interval(30, 200)[0]  # the exact interval is the wider one


def test_bad_arguments():
    with pytest.raises(ValueError, match="exact, wilson"):
        proportion_interval(3, 5, "percentile")
    with pytest.raises(ValueError):
        proportion_interval(6, 5)


def test_bootstrap_mean_interval():
    values = np.r_[np.full(30, 10.0), np.zeros(170)]
    low, high = bootstrap_mean_interval(values, resamples=4000, seed=1)
    assert low < 1.5 < high and high - low == approx(2 * 1.96 * np.sqrt(1.5 * 8.5 / 200), rel=0.15)
    assert bootstrap_mean_interval(values, 500, seed=2) == bootstrap_mean_interval(values, 500, seed=2)
    assert bootstrap_mean_interval([], 100) is None and bootstrap_mean_interval([1.0, 2.0], 0) is None
