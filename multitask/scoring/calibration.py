"""Probability calibration: temperature scaling per head (Guo et al., ICML 2017) and the figures that judge it.

A head's probabilities are calibrated when, among items given probability p, a share p is right. Fine-tuned
encoders are usually over-confident; dividing the logits by one temperature T > 1, fitted on validation by
minimising the negative log-likelihood, fixes most of it and never changes the head's argmax (nor the order of
P(Pick), a monotone function of the gate's logit difference), so decisions at a stored threshold are unchanged
once thresholds are searched on the calibrated scores, as run_finetune does.

Joint (N+1)-way probabilities (Decline, then each category): P(Decline) = 1 - P(Pick) and
P(c) = P(Pick) · P(c | Pick), from the calibrated heads; they sum to 1 by construction.

Figures (all on rows with a label for that head):
- ``ece``: expected calibration error of the top-1 probability over equal-mass bins (each bin holds the same
  number of rows, 15 by default; equal-width bins leave most bins empty when nearly every probability is near 1):
  Σ_b (n_b / n) · |accuracy_b - mean confidence_b|;
- ``brier``: mean over rows of Σ_k (p_k - 1[k = y])², the multi-class Brier score;
- ``nll``: mean negative log-likelihood of the gold class.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

# T is searched as log T in this range: T from about 0.05 to 20.
_LOG_T_BOUNDS = (-3.0, 3.0)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on (logits, labels); 1.0 without rows.

    Args:
        logits (`np.ndarray` of shape `(rows, classes)`):
            Raw head outputs on validation, uncalibrated; cast to float64.
        labels (`np.ndarray` of shape `(rows,)`):
            Gold class index per row. Every row counts: drop rows labelled -100 before calling.

    Returns:
        `float`: T in about [0.05, 20] (the search runs over log T in `_LOG_T_BOUNDS`, to a tolerance of 1e-4
        in log T). T > 1 softens over-confident probabilities; a T at a bound suggests the optimum lies beyond
        it.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.size == 0:
        return 1.0

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[np.arange(labels.size), labels].mean())

    # Searching log T keeps T positive and gives sharpening (T < 1) and softening (T > 1) equal room.
    result = minimize_scalar(nll, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-1 probability over ``bins`` equal-mass bins (see the module docstring).

    Args:
        probs (`np.ndarray` of shape `(rows, classes)`):
            Probabilities of one head (rows summing to 1); the top-1 prediction is the argmax, lower index on
            ties.
        labels (`np.ndarray` of shape `(rows,)`):
            Gold class index per row; every row counts.
        bins (`int`, *optional*, defaults to 15):
            Number of bins, each holding the same number of rows (±1) after sorting by confidence; with fewer
            rows than bins every row is its own bin.

    Returns:
        `float`: The ECE in [0, 1] (0 = calibrated); NaN without rows.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.size == 0:
        return float("nan")
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    # Stable: tied confidences keep row order, so the bins do not depend on which sort algorithm numpy picks.
    order = np.argsort(confidence, kind="stable")
    total = 0.0
    # Fewer rows than bins: one row per bin rather than empty bins (whose mean would be NaN).
    for chunk in np.array_split(order, min(bins, labels.size)):
        total += chunk.size * abs(correct[chunk].mean() - confidence[chunk].mean())
    return float(total / labels.size)


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over rows of Σ_k (p_k - 1[k = y])², in [0, 2]; NaN without rows. `labels` are class indices.

    Args:
        probs (`np.ndarray` of shape `(rows, classes)`):
            Probabilities of one head.
        labels (`np.ndarray` of shape `(rows,)`):
            Gold class index per row, in [0, classes); every row counts.

    Returns:
        `float`: The multi-class Brier score; 0 for a one-hot prediction of the gold class, 2 for a one-hot
        prediction of a wrong one.
    """
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), np.asarray(labels)] = 1.0
    return float(((probs - onehot) ** 2).sum(axis=1).mean()) if len(labels) else float("nan")


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean -ln p(gold) in nats; NaN without rows. Probabilities are floored at 1e-12, so one row adds at most 27.6.

    Args:
        probs (`np.ndarray` of shape `(rows, classes)`):
            Probabilities of one head.
        labels (`np.ndarray` of shape `(rows,)`):
            Gold class index per row; every row counts.

    Returns:
        `float`: The mean NLL, >= 0. For N classes, ln N is what a uniform prediction scores.
    """
    probs = np.asarray(probs, dtype=np.float64)
    picked = probs[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean()) if len(labels) else float("nan")


def calibration_figures(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, float]:
    """ECE (equal-mass bins), Brier score and NLL of one head's probabilities on its labelled rows.

    Args:
        probs (`np.ndarray` of shape `(rows, classes)`):
            Probabilities of one head, only for rows that carry a label for it.
        labels (`np.ndarray` of shape `(rows,)`):
            Gold class index per row (no -100: filter those rows out first).
        bins (`int`, *optional*, defaults to 15):
            Equal-mass bins of the ECE.

    Returns:
        `dict`: `ece`, `brier`, `nll` (floats, NaN without rows), `rows` (the row count) and `ece_bins` (a
        description such as `"15 equal-mass"`, for reports).
    """
    return {"ece": expected_calibration_error(probs, labels, bins), "brier": brier_score(probs, labels),
            "nll": negative_log_likelihood(probs, labels), "rows": int(len(labels)), "ece_bins": f"{bins} equal-mass"}


def reliability_curve(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """Per equal-mass bin: mean confidence and accuracy of the top-1 prediction (for a reliability diagram).

    Args:
        probs (`np.ndarray` of shape `(rows, classes)`):
            Probabilities of one head.
        labels (`np.ndarray` of shape `(rows,)`):
            Gold class index per row.
        bins (`int`, *optional*, defaults to 15):
            Number of bins, binned as in `expected_calibration_error`.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: `(confidence, accuracy)`, one value per bin in increasing confidence,
        both in [0, 1].

    Raises:
        `ValueError`: Without rows (numpy cannot split 0 rows into bins); check for labelled rows first.
    """
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    order = np.argsort(confidence, kind="stable")
    chunks = [chunk for chunk in np.array_split(order, min(bins, len(order))) if chunk.size]
    return (np.array([confidence[c].mean() for c in chunks]), np.array([correct[c].mean() for c in chunks]))


def softmax_with_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / temperature) along axis 1 of a (rows, classes) array, in float64.

    Args:
        logits (`np.ndarray` of shape `(rows, classes)`):
            Raw head outputs.
        temperature (`float`):
            T > 0 from `fit_temperature` (or the model's `config.calibration`); 1.0 leaves the softmax as it
            is.

    Returns:
        `np.ndarray` of shape `(rows, classes)`: Probabilities; rows sum to 1 and the argmax is that of
        `logits`.
    """
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1))


def joint_probabilities(pick_prob: np.ndarray, category_probs: np.ndarray) -> np.ndarray:
    """(rows, N+1): column 0 = P(Decline) = 1 - P(Pick), column 1 + c = P(Pick) · P(c | Pick); rows sum to 1.

    Decline comes first here; `metrics.joint_probs` puts it last (index N, the joint-label convention of the
    metrics).

    Args:
        pick_prob (`np.ndarray` of shape `(rows,)`):
            P(Pick) per row (any shape with `rows` elements is flattened).
        category_probs (`np.ndarray` of shape `(rows, N)`):
            P(category | Pick) per row; each row should sum to 1 for the result's rows to.

    Returns:
        `np.ndarray` of shape `(rows, N + 1)`, float64.
    """
    pick_prob = np.asarray(pick_prob, dtype=np.float64).reshape(-1, 1)
    return np.concatenate([1.0 - pick_prob, pick_prob * np.asarray(category_probs, dtype=np.float64)], axis=1)
