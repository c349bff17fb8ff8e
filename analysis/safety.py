"""Safety-style evaluation: how often dangerous rows are let through, with bootstrap intervals and costs.

Pure functions on label strings; the CLI (`--allow_label`, `--critical_labels`, `--cost_matrix`) feeds them.
A rate with no row to measure is None, never NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from multitask.metrics import category_metrics, per_class_metrics


def bootstrap_interval(hits: int, total: int, resamples: int = 1000, seed: int = 0) -> list[float] | None:
    """95 % percentile bootstrap interval of the rate ``hits / total`` (resampling the ``total`` rows).

    Resampling n rows with replacement and counting hits is exactly a Binomial(n, hits/n) draw, so we draw
    that instead of materialising (resamples × n) indices: same distribution, O(resamples) memory.
    """
    if total == 0 or resamples <= 0:
        return None
    rates = np.random.default_rng(seed).binomial(total, hits / total, size=resamples) / total
    low, high = np.percentile(rates, [2.5, 97.5])
    return [float(low), float(high)]


def let_through_rate(
    mask: np.ndarray, let_through: np.ndarray, resamples: int = 1000, seed: int = 0
) -> dict[str, float | int | list[float] | None]:
    """Share of ``mask`` rows where ``let_through`` holds, with its count, denominator and interval."""
    mask = np.asarray(mask, dtype=bool)
    total = int(mask.sum())
    hits = int((mask & np.asarray(let_through, dtype=bool)).sum())
    return {
        "rate": hits / total if total else None,
        "count": hits,
        "rows": total,
        "ci95": bootstrap_interval(hits, total, resamples, seed),
    }


def load_cost_matrix(path: str | Path) -> pd.DataFrame:
    """Cost CSV: rows = gold label, columns = predicted label; first column named ``gold`` or unnamed."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: cost matrix not found")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    first = frame.columns[0]
    if first != "gold" and not first.startswith("Unnamed"):
        raise ValueError(f"{path}: the first column must be named 'gold' (or be unnamed), got {first!r}")
    costs = frame.set_index(first)
    costs.index = costs.index.str.strip()
    costs.columns = costs.columns.str.strip()
    try:
        return costs.apply(pd.to_numeric).astype(float)
    except ValueError as error:
        raise ValueError(f"{path}: every cost must be a number ({error})") from error


def mean_cost(
    gold: Sequence[str], predicted: Sequence[str], costs: pd.DataFrame, source: str = "cost matrix"
) -> float | None:
    """Mean of ``costs[gold][predicted]`` over rows; a label the matrix lacks is a ValueError naming it."""
    for axis, labels, where in (
        (costs.index, gold, "row (gold)"),
        (costs.columns, predicted, "column (predicted)"),
    ):
        missing = sorted(set(labels) - set(axis))
        if missing:
            raise ValueError(f"{source}: no {where} for label(s) {', '.join(map(repr, missing))}")
    if len(gold) == 0:
        return None
    matrix = costs.to_numpy()
    rows = costs.index.get_indexer(list(gold))
    columns = costs.columns.get_indexer(list(predicted))
    return float(matrix[rows, columns].mean())


def category_safety(
    gold: Sequence[str],
    predicted: Sequence[str],
    allow_label: str,
    critical_labels: Sequence[str],
    costs: pd.DataFrame | None = None,
    resamples: int = 1000,
    seed: int = 0,
    cost_source: str = "cost matrix",
) -> dict:
    """Accuracy, macro-F1, per-class F1, critical-as-allowed rate (+ interval) and mean cost.

    ``gold``/``predicted`` are label strings of the scored rows. The allow and critical labels must be
    labels seen in gold or predictions, else a ValueError: a typo would
    otherwise report a reassuring 0 %.
    """
    gold, predicted = np.asarray(gold, dtype=object), np.asarray(predicted, dtype=object)
    labels = sorted(set(gold) | set(predicted))
    unknown = [label for label in [allow_label, *critical_labels] if label not in labels]
    if unknown:
        raise ValueError(
            f"label(s) {', '.join(map(repr, unknown))} occur in neither gold nor predictions "
            f"(labels: {', '.join(labels)})"
        )
    label2id = {label: i for i, label in enumerate(labels)}
    y_true = np.array([label2id[g] for g in gold], dtype=int)
    y_pred = np.array([label2id[p] for p in predicted], dtype=int)
    headline = category_metrics(np.eye(len(labels))[y_pred], y_true, top_k=())
    per_class = per_class_metrics(y_true, y_pred, dict(enumerate(labels)))
    critical = np.isin(gold, list(critical_labels))
    return {
        "allow_label": allow_label,
        "critical_labels": list(critical_labels),
        "rows": len(gold),
        "accuracy": headline.get("category_accuracy"),
        "macro_f1": headline.get("category_macro_f1"),
        "per_class_f1": {row["label"]: row["f1"] for row in per_class if row["support"] > 0},
        "critical_as_allowed": let_through_rate(critical, predicted == allow_label, resamples, seed),
        "mean_cost": None if costs is None else mean_cost(list(gold), list(predicted), costs, cost_source),
    }


def gate_safety(gate_labels: np.ndarray, pick_pred: np.ndarray, resamples: int = 1000, seed: int = 0) -> dict:
    """Decline rows let through as Pick (``decline_as_pick``) over rows with a gold pick label."""
    gate_labels, pick_pred = np.asarray(gate_labels), np.asarray(pick_pred)
    return {"decline_as_pick": let_through_rate(gate_labels == 0, pick_pred == 1, resamples, seed)}
