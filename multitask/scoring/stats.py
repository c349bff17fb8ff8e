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
    """Exact binomial interval: the Beta quantiles of Clopper & Pearson (1934).

    Args:
        hits (`int`):
            Successes k, in [0, `total`].
        total (`int`):
            Trials n, > 0 (with 0 the Beta quantiles are undefined; `proportion_interval` returns None
            instead).
        level (`float`, *optional*, defaults to 0.95):
            Two-sided coverage; each tail gets (1 - level) / 2.

    Returns:
        `tuple[float, float]`: `(low, high)` within [0, 1]; low is exactly 0 when k = 0 and high exactly 1
        when k = n.
    """
    # scipy.stats is slow to import: only callers that compute an interval pay for it.
    from scipy.stats import beta

    alpha = 1.0 - level
    # At k = 0 (k = n) the Beta shape parameter would be 0; the bound is exactly 0 (1) there.
    low = 0.0 if hits == 0 else float(beta.ppf(alpha / 2, hits, total - hits + 1))
    high = 1.0 if hits == total else float(beta.ppf(1 - alpha / 2, hits + 1, total - hits))
    return low, high


def wilson(hits: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927), clipped to [0, 1]; `total` must be > 0.

    Args:
        hits (`int`):
            Successes k, in [0, `total`].
        total (`int`):
            Trials n; 0 raises `ZeroDivisionError`.
        level (`float`, *optional*, defaults to 0.95):
            Two-sided coverage, turned into the normal quantile z.

    Returns:
        `tuple[float, float]`: `(low, high)`. Narrower than Clopper–Pearson, and its coverage can fall below
        `level` for small n or a rate near 0 or 1.
    """
    from scipy.stats import norm

    z = float(norm.ppf(1 - (1 - level) / 2))
    rate = hits / total
    denominator = 1 + z * z / total
    center = (rate + z * z / (2 * total)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def proportion_interval(hits: int, total: int, method: str = "exact", level: float = 0.95) -> list[float] | None:
    """`level` interval of the proportion hits/total by `method` (exact or wilson); None when total is 0.

    Args:
        hits (`int`):
            Successes, in [0, `total`]; numpy integers are accepted.
        total (`int`):
            Trials; 0 or less means there is nothing to estimate.
        method (`str`, *optional*, defaults to `"exact"`):
            A key of `PROPORTION_METHODS`: `"exact"` (Clopper–Pearson) or `"wilson"`.
        level (`float`, *optional*, defaults to 0.95):
            Two-sided coverage.

    Returns:
        `list[float] | None`: `[low, high]` (a list, so it serialises to JSON as an array), or None when
        `total <= 0`.

    Raises:
        `ValueError`: For an unknown `method` (checked first, even when `total` is 0), or `hits` outside
        [0, `total`].
    """
    # The method is checked before the row count, so a misspelt method fails even on an empty split.
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
    """Percentile bootstrap interval of a mean (rows resampled with replacement); None with no rows/resamples.

    Args:
        values (`Sequence[float]` or `np.ndarray`):
            One value per row (e.g. the cost of each decision); converted to a flat float array.
        resamples (`int`, *optional*, defaults to 1000):
            Number of bootstrap resamples; 0 or less gives None.
        seed (`int`, *optional*, defaults to 0):
            Seed of `np.random.default_rng`: the same values and seed give the same interval.
        level (`float`, *optional*, defaults to 0.95):
            Two-sided coverage; the bounds are the (1 - level) / 2 and (1 + level) / 2 percentiles of the
            means.

    Returns:
        `list[float] | None`: `[low, high]`, or None without values or resamples. With all values equal, or
        one row, the interval collapses to that value.
    """
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
