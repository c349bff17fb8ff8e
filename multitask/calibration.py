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
    """The temperature T minimising the NLL of softmax(logits / T) on (logits, labels); 1.0 without rows."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.size == 0:
        return 1.0

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[np.arange(labels.size), labels].mean())

    result = minimize_scalar(nll, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-1 probability over ``bins`` equal-mass bins (see the module docstring)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.size == 0:
        return float("nan")
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    order = np.argsort(confidence, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, min(bins, labels.size)):
        total += chunk.size * abs(correct[chunk].mean() - confidence[chunk].mean())
    return float(total / labels.size)


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), np.asarray(labels)] = 1.0
    return float(((probs - onehot) ** 2).sum(axis=1).mean()) if len(labels) else float("nan")


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    probs = np.asarray(probs, dtype=np.float64)
    picked = probs[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean()) if len(labels) else float("nan")


def calibration_figures(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, float]:
    """ECE (equal-mass bins), Brier score and NLL of one head's probabilities on its labelled rows."""
    return {"ece": expected_calibration_error(probs, labels, bins), "brier": brier_score(probs, labels),
            "nll": negative_log_likelihood(probs, labels), "rows": int(len(labels)), "ece_bins": f"{bins} equal-mass"}


def reliability_curve(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """Per equal-mass bin: mean confidence and accuracy of the top-1 prediction (for a reliability diagram)."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    order = np.argsort(confidence, kind="stable")
    chunks = [chunk for chunk in np.array_split(order, min(bins, len(order))) if chunk.size]
    return (np.array([confidence[c].mean() for c in chunks]), np.array([correct[c].mean() for c in chunks]))


def softmax_with_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1))


def joint_probabilities(pick_prob: np.ndarray, category_probs: np.ndarray) -> np.ndarray:
    """(rows, N+1): column 0 = P(Decline) = 1 - P(Pick), column 1 + c = P(Pick) · P(c | Pick); rows sum to 1."""
    pick_prob = np.asarray(pick_prob, dtype=np.float64).reshape(-1, 1)
    return np.concatenate([1.0 - pick_prob, pick_prob * np.asarray(category_probs, dtype=np.float64)], axis=1)
