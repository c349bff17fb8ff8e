"""Confidence intervals that stay honest at the edges.

A proportion (k of n) gets a closed-form interval: exact Clopper–Pearson (default; never narrower than its
nominal level, and at k = 0 or k = n it is one-sided-wide rather than collapsing to a point as a percentile
bootstrap does) or Wilson. The bootstrap is kept for statistics without a closed form (e.g. a mean cost).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

PROPORTION_METHODS = {
    "exact": "Clopper-Pearson exact",
    "wilson": "Wilson score",
}


def clopper_pearson(hits: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval: the Beta quantiles of Clopper & Pearson (1934)."""
    from scipy.stats import beta

    alpha = 1.0 - level
    low = 0.0 if hits == 0 else float(beta.ppf(alpha / 2, hits, total - hits + 1))
    high = 1.0 if hits == total else float(beta.ppf(1 - alpha / 2, hits + 1, total - hits))
    return low, high


def wilson(hits: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927)."""
    from scipy.stats import norm

    z = float(norm.ppf(1 - (1 - level) / 2))
    rate = hits / total
    denominator = 1 + z * z / total
    center = (rate + z * z / (2 * total)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def proportion_interval(hits: int, total: int, method: str = "exact", level: float = 0.95) -> list[float] | None:
    """`level` interval of the proportion hits/total by `method` (exact or wilson); None when total is 0."""
    if method not in PROPORTION_METHODS:
        raise ValueError(f"interval method must be one of {', '.join(PROPORTION_METHODS)}, got {method!r}")
    if total <= 0:
        return None
    if not 0 <= hits <= total:
        raise ValueError(f"hits must be in [0, {total}], got {hits}")
    low, high = (clopper_pearson if method == "exact" else wilson)(int(hits), int(total), level)
    return [low, high]


def bootstrap_mean_interval(
    values: Sequence[float] | np.ndarray, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> list[float] | None:
    """Percentile bootstrap interval of a mean (rows resampled with replacement); None with no rows/resamples."""
    values = np.asarray(values, dtype=float)
    if values.size == 0 or resamples <= 0:
        return None
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 256):  # chunks: at most 256 x n indices in memory
        count = min(256, resamples - start)
        means[start : start + count] = values[rng.integers(0, values.size, size=(count, values.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return [float(low), float(high)]
