"""The one stratified split, and stratified samples: used by prepare (train/test), training (validation split,
`--max_train_samples` / `--max_eval_samples`).

Pure functions of label lists and a seed (scikit-learn's `train_test_split` underneath); indices come back sorted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from multitask.labels import IGNORE_INDEX

UNLABELLED = "(unlabelled)"


def _key(label: Hashable | None) -> str:
    """The stratum name of a label: None, "", IGNORE_INDEX and NaN are all `UNLABELLED` (one stratum)."""
    if label is None or label == "" or label == IGNORE_INDEX or label != label:  # label != label: NaN
        return UNLABELLED
    return str(label)


def stratified_split(
    labels: Sequence[Hashable | None],
    test_size: float | int,
    seed: int = 42,
    fallback: Sequence[Hashable | None] | None = None,
    cover: Sequence[Hashable | None] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Seeded train/test split keeping label proportions (sklearn `train_test_split(stratify=…)`).

    Labels with a single row cannot be in both parts: they go to train and are listed in the info's
    `too_small_to_stratify`. When sklearn cannot stratify by `labels` (e.g. fewer test rows than classes) it
    tries `fallback`, then a plain seeded split. Unlabelled rows (None, "", -100, NaN) form one stratum of
    their own.

    Args:
        labels (`Sequence[Hashable | None]`):
            One stratification label per row (compared as `str`, so 1 and "1" are one stratum).
        test_size (`float` or `int`):
            A share in (0, 1) of the rows that can be split, or a whole number of test rows. A whole number of
            at least the splittable rows puts every splittable row in test (single-row labels still in train).
        seed (`int`, *optional*, defaults to 42):
            `random_state` of sklearn's split and seed of the `cover` moves: same inputs, same indices.
        fallback (`Sequence[Hashable | None]`, *optional*):
            A coarser label per row (e.g. the gate label), tried when `labels` cannot be stratified; skipped
            when one of its values has a single splittable row.
        cover (`Sequence[Hashable | None]`, *optional*):
            A label per row of which every value with at least two rows must appear in test: a value test
            lacks gets one of its training rows moved there (seeded). Validation then always holds both gate
            classes, which the thresholds are tuned on; test may come out a few rows larger than asked.

    Returns:
        `tuple[np.ndarray, np.ndarray, dict]`: Sorted int64 train and test row indices, and the info:
        `stratified` (bool), `stratified_by` (`"labels"`, `"fallback"` or None for a plain split), `reason`
        (why the stratified attempts failed, or None), `too_small_to_stratify` (`{label: 1}`) and, when
        `cover` moved rows, `moved_to_cover` (the values moved). Fewer than two splittable rows give every row
        to train and an empty test.

    Raises:
        `ValueError`: A float `test_size` outside (0, 1), or a size sklearn rejects even for a plain split
        (e.g. the whole number 0).
    """
    if isinstance(test_size, float) and not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1) or a number of rows, got {test_size}")
    keys = np.array([_key(label) for label in labels], dtype=object)
    counts = Counter(keys.tolist())
    too_small = {key: count for key, count in sorted(counts.items()) if count < 2}
    splittable = np.array([counts[key] >= 2 for key in keys], dtype=bool)
    rows = np.flatnonzero(splittable)
    info: dict[str, Any] = {"stratified": True, "stratified_by": "labels", "too_small_to_stratify": too_small,
                            "reason": None}
    # sklearn refuses a test size of every row; asked for that many, all splittable rows go to test.
    if isinstance(test_size, (int, np.integer)) and not isinstance(test_size, bool) and test_size >= len(rows):
        return np.flatnonzero(~splittable), np.sort(rows), info
    if len(rows) < 2:
        info.update(stratified=False, stratified_by=None, reason="fewer than 2 rows in classes that can be split")
        return np.arange(len(keys)), np.array([], dtype=np.int64), info
    candidates = [("labels", keys[rows])]
    if fallback is not None:
        fallback_keys = np.array([_key(label) for label in fallback], dtype=object)[rows]
        # A fallback with a single-row value would fail sklearn's stratification just the same.
        if min(Counter(fallback_keys.tolist()).values()) >= 2:
            candidates.append(("fallback", fallback_keys))
    candidates.append((None, None))
    reasons, chosen = [], None
    for name, stratify in candidates:
        try:
            # The row indices themselves are split, so what comes back indexes `labels` directly.
            train_rows, test_rows = train_test_split(rows, test_size=test_size, random_state=seed, stratify=stratify)
            chosen = name
            break
        except ValueError as error:  # too few rows per class for the requested size
            if stratify is None:
                raise
            reasons.append(str(error))
    info.update(stratified=chosen is not None, stratified_by=chosen, reason="; ".join(reasons) or None)
    train_rows = np.concatenate([train_rows, np.flatnonzero(~splittable)])  # single-row labels rejoin train
    if cover is not None:
        cover_keys = np.array([_key(label) for label in cover], dtype=object)
        rng = np.random.default_rng(seed)
        moved = []
        # sorted: the same seed moves the same rows whatever order the values first appear in.
        for value in sorted(set(cover_keys.tolist()) - {UNLABELLED}):
            in_train = train_rows[cover_keys[train_rows] == value]
            if (cover_keys == value).sum() >= 2 and not (cover_keys[test_rows] == value).any() and len(in_train):
                row = rng.choice(in_train)
                train_rows, test_rows = train_rows[train_rows != row], np.append(test_rows, row)
                moved.append(value)
        if moved:
            info["moved_to_cover"] = moved
    return np.sort(train_rows).astype(np.int64), np.sort(test_rows).astype(np.int64), info


def stratified_sample(labels: Sequence[Hashable | None], size: int, seed: int = 42,
                      fallback: Sequence[Hashable | None] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Sorted indices of a seeded sample of `size` rows keeping label proportions.

    Labels with a single row are not sampled (they cannot be stratified), so the sample can come out smaller
    than `size` when there are few splittable rows.

    Args:
        labels (`Sequence[Hashable | None]`):
            One stratification label per row, as in `stratified_split`.
        size (`int`):
            Number of rows wanted (`--max_train_samples` / `--max_eval_samples`); all rows when it is at least
            `len(labels)`.
        seed (`int`, *optional*, defaults to 42):
            Seed of the split underneath.
        fallback (`Sequence[Hashable | None]`, *optional*):
            The coarser label tried when `labels` cannot be stratified.

    Returns:
        `tuple[np.ndarray, dict]`: The sorted indices and the split info of `stratified_split` plus `sampled`
        (False, with only `stratified` besides, when every row was kept).
    """
    if size >= len(labels):
        return np.arange(len(labels)), {"stratified": True, "sampled": False}
    _, sample, info = stratified_split(labels, int(size), seed, fallback=fallback)
    return sample, {**info, "sampled": True}


def strata(gate: Sequence[int], category: Sequence[int | str]) -> list[str]:
    """The stratum of each training row: its category, or its gate label for rows without one.

    Args:
        gate (`Sequence[int]`):
            Gate label per row (1 Pick, 0 Decline, -100 none).
        category (`Sequence[int | str]`):
            Category label per row (-100 or "" for none).

    Returns:
        `list[str]`: `"category=<c>"`, else `"pick=<g>"`, else `"(unlabelled)"` per row; the category takes
        precedence because it implies Pick.
    """
    return [f"category={c}" if _key(c) != UNLABELLED else (f"pick={g}" if _key(g) != UNLABELLED else UNLABELLED)
            for g, c in zip(gate, category)]
