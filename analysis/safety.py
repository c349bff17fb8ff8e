"""Safety-style evaluation: how often dangerous rows are let through, with intervals, and costs.

Pure functions on label strings; the CLI (`--allow_label`, `--critical_labels`, `--cost_matrix`) feeds them.
A rate is a proportion, so its 95 % interval is closed-form: exact Clopper–Pearson (default) or Wilson, named
in the output (`ci_method`). At 0 of 17 the exact interval is [0, 0.195], where a percentile bootstrap would
collapse to [0, 0]. The mean cost has no closed form: its interval is a row bootstrap. A rate with no row to
measure is None, never NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from multitask.errors import DataError, UsageError
from multitask.scoring.metrics import category_metrics, per_class_metrics
from multitask.scoring.stats import PROPORTION_METHODS, bootstrap_mean_interval, proportion_interval


def let_through_rate(
    mask: np.ndarray, let_through: np.ndarray, method: str = "exact"
) -> dict[str, float | int | str | list[float] | None]:
    """Share of ``mask`` rows where ``let_through`` holds: count, denominator, 95 % interval and its method."""
    mask = np.asarray(mask, dtype=bool)
    total = int(mask.sum())
    hits = int((mask & np.asarray(let_through, dtype=bool)).sum())
    return {
        "rate": hits / total if total else None,
        "count": hits,
        "rows": total,
        "ci95": proportion_interval(hits, total, method),
        "ci_method": PROPORTION_METHODS[method],
    }


def load_cost_matrix(path: str | Path) -> pd.DataFrame:
    """Cost CSV: rows = gold label, columns = predicted label; first column named ``gold`` or unnamed."""
    from multitask.io.tables import read_csv

    path = Path(path)
    frame = read_csv(path)  # every unreadable-file case is a DataError naming the file
    first = frame.columns[0]
    if first != "gold" and not first.startswith("Unnamed"):
        raise DataError(f"{path}, row 1: the first column must be named 'gold' (or be unnamed), got {first!r}")
    costs = frame.set_index(first)
    costs.index = costs.index.str.strip()
    costs.columns = costs.columns.str.strip()
    for column in costs.columns:
        numbers = pd.to_numeric(costs[column], errors="coerce")
        bad = np.flatnonzero(numbers.isna().to_numpy())
        if len(bad):
            raise DataError(f"{path}, row {bad[0] + 2}, column {column!r}: {costs[column].iat[bad[0]]!r} is not a number")
    return costs.apply(pd.to_numeric).astype(float)


def row_costs(
    gold: Sequence[str], predicted: Sequence[str], costs: pd.DataFrame, source: str = "cost matrix"
) -> np.ndarray:
    """``costs[gold][predicted]`` per row; a label the matrix lacks is a `DataError` naming it."""
    for axis, labels, where in (
        (costs.index, gold, "row (gold)"),
        (costs.columns, predicted, "column (predicted)"),
    ):
        missing = sorted(set(labels) - set(axis))
        if missing:
            raise DataError(f"{source}: no {where} for label(s) {', '.join(map(repr, missing))}")
    matrix = costs.to_numpy()
    rows = costs.index.get_indexer(list(gold))
    columns = costs.columns.get_indexer(list(predicted))
    return matrix[rows, columns].astype(float)


def mean_cost(
    gold: Sequence[str], predicted: Sequence[str], costs: pd.DataFrame, source: str = "cost matrix"
) -> float | None:
    """Mean of ``costs[gold][predicted]`` over rows; a label the matrix lacks is a `DataError` naming it."""
    values = row_costs(gold, predicted, costs, source)
    return float(values.mean()) if len(values) else None


def category_safety(
    gold: Sequence[str],
    predicted: Sequence[str],
    allow_label: str,
    critical_labels: Sequence[str],
    costs: pd.DataFrame | None = None,
    resamples: int = 1000,
    seed: int = 0,
    cost_source: str = "cost matrix",
    interval: str = "exact",
) -> dict:
    """Accuracy, macro-F1, per-class F1, critical-as-allowed rate (+ exact or Wilson interval) and mean cost
    (+ a bootstrap interval over rows, ``resamples`` draws; none with 0).

    ``gold``/``predicted`` are label strings of the scored rows. The allow and critical labels must be
    labels seen in gold or predictions, else a `UsageError`: a typo would otherwise report a reassuring 0 %.
    """
    gold, predicted = np.asarray(gold, dtype=object), np.asarray(predicted, dtype=object)
    labels = sorted(set(gold) | set(predicted))
    unknown = [label for label in [allow_label, *critical_labels] if label not in labels]
    if unknown:
        raise UsageError(
            f"--allow_label/--critical_labels: label(s) {', '.join(map(repr, unknown))} occur in neither gold nor "
            f"predictions (labels: {', '.join(labels)})"
        )
    label2id = {label: i for i, label in enumerate(labels)}
    y_true = np.array([label2id[g] for g in gold], dtype=int)
    y_pred = np.array([label2id[p] for p in predicted], dtype=int)
    headline = category_metrics(np.eye(len(labels))[y_pred], y_true, top_k=())
    per_class = per_class_metrics(y_true, y_pred, dict(enumerate(labels)))
    critical = np.isin(gold, list(critical_labels))
    cost_values = None if costs is None else row_costs(list(gold), list(predicted), costs, cost_source)
    return {
        "allow_label": allow_label,
        "critical_labels": list(critical_labels),
        "rows": len(gold),
        "accuracy": headline.get("category_accuracy"),
        "macro_f1": headline.get("category_macro_f1"),
        "per_class_f1": {row["label"]: row["f1"] for row in per_class if row["support"] > 0},
        "critical_as_allowed": let_through_rate(critical, predicted == allow_label, interval),
        "mean_cost": None if cost_values is None or not len(cost_values) else float(cost_values.mean()),
        "mean_cost_ci95": None if cost_values is None else bootstrap_mean_interval(cost_values, resamples, seed),
        "mean_cost_ci_method": None if cost_values is None else f"percentile bootstrap over rows ({resamples} resamples)",
    }


def gate_safety(gate_labels: np.ndarray, pick_pred: np.ndarray, interval: str = "exact") -> dict:
    """Decline rows let through as Pick (``decline_as_pick``) over rows with a gold pick label."""
    gate_labels, pick_pred = np.asarray(gate_labels), np.asarray(pick_pred)
    return {"decline_as_pick": let_through_rate(gate_labels == 0, pick_pred == 1, interval)}
