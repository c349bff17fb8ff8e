"""Out-of-scope scores for the gate: what says "this item belongs to no category", besides the gate head.

Every score here is an *in-scope* score: higher means more like the training Pick rows. Raw scores:

- ``energy``: logsumexp of the category logits (Liu et al., NeurIPS 2020; the negative free energy at T = 1).
- ``maha``: minus the squared Mahalanobis distance of the pooled vector to the nearest category mean, under one
  covariance shared by all categories (Lee et al. 2018; Podolskiy et al., AAAI 2021 for intent classifiers).
- ``knn``: cosine similarity of the L2-normalised pooled vector to its k-th nearest training Pick row (Sun et al.,
  ICML 2022).

Raw scores live on unrelated scales, so the model reports each one squashed into (0, 1) with
``squash(raw) = sigmoid((raw - center) / scale)``, where ``center`` is the median and ``scale`` the normal-consistent
IQR (IQR / 1.349) of that raw score over the training Pick rows. The squash is monotone: rankings, AUROC and
which rows a threshold separates are those of the raw score; it only puts every score on the [0, 1] threshold
axis that the gate thresholds, `run_predict.py --threshold` and the reports already use (a training Pick row of
median typicality scores 0.5).

What is fitted (class means, shared precision, kNN bank, squash constants) comes from the training rows' pooled
vectors after training; `MultitaskModel` stores it as buffers and config fields, so it is saved, pushed and
applied by `run_predict.py` like any weight. This module holds the pure functions; it imports nothing from the
model.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import expit
from sklearn.covariance import LedoitWolf

# Raw in-scope scores the fitted statistics make available, and those that need no fitting.
FEATURE_SCORES = ("maha", "knn")
LOGIT_SCORES = ("pick", "joint", "msp", "energy")
# Products of the gate head's P(Pick) with a feature score: the head knows the Decline rows it was trained on,
# the feature score knows how far an item is from every category.
COMBINED_SCORES = {"pick_maha": ("pick", "maha"), "pick_knn": ("pick", "knn")}
ALL_SCORES = (*LOGIT_SCORES, *FEATURE_SCORES, *COMBINED_SCORES)
# Scores that are probabilities, for which the stored "default" threshold 0.5 means something; on the squashed
# scores 0.5 is the median training item, so their "default" becomes the `leak` threshold.
PROBABILITY_SCORES = ("pick", "joint", "msp")
# A robust scale of exactly 0 (all training rows alike) would divide by zero.
_MIN_SCALE = 1e-6


def energy(category_logits: torch.Tensor) -> torch.Tensor:
    """logsumexp over the category logits, shape (rows,). Higher = more in scope.

    Args:
        category_logits (`torch.Tensor` of shape `(rows, N)`):
            Raw category-head logits, before any calibration temperature (the squash constants are fitted on
            these).

    Returns:
        `torch.Tensor` of shape `(rows,)`, float32: the raw energy score, unbounded.
    """
    return torch.logsumexp(category_logits.float(), dim=-1)


def mahalanobis(features: torch.Tensor, class_means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Minus the smallest squared Mahalanobis distance to a class mean, shape (rows,). Higher = more in scope.

    ``(x-μ)ᵀP(x-μ) = xᵀPx - 2xᵀPμ + μᵀPμ`` for every (row, class) pair in three matmuls, without forming the
    (rows, classes, hidden) differences.

    Args:
        features (`torch.Tensor` of shape `(rows, hidden)`):
            Pooled encoder vectors, not normalised.
        class_means (`torch.Tensor` of shape `(N, hidden)`):
            Per-category means of the training vectors (`fit_feature_statistics`).
        precision (`torch.Tensor` of shape `(hidden, hidden)`):
            The shared precision matrix (inverse covariance).

    Returns:
        `torch.Tensor` of shape `(rows,)`, float32: values <= 0 up to rounding (the expansion can leave a
        small positive value for a vector at a class mean).
    """
    features, class_means, precision = features.float(), class_means.float(), precision.float()
    projected = features @ precision
    squared = (
        (projected * features).sum(dim=1, keepdim=True)
        - 2.0 * projected @ class_means.T
        + ((class_means @ precision) * class_means).sum(dim=1)
    )
    return -squared.min(dim=1).values


def knn_similarity(
    features: torch.Tensor, bank: torch.Tensor, k: int, skip_self: bool = False, all_up_to_k: bool = False
) -> torch.Tensor:
    """Cosine similarity to the k-th nearest row of ``bank`` (rows of the bank already L2-normalised).

    Args:
        features (`torch.Tensor` of shape `(rows, hidden)`):
            Pooled encoder vectors; L2-normalised here.
        bank (`torch.Tensor` of shape `(bank_rows, hidden)`):
            L2-normalised training vectors (`fit_feature_statistics`'s ``bank``).
        k (`int`):
            Which neighbour, >= 1; a bank with fewer rows gives its farthest row instead.
        skip_self (`bool`, *optional*, defaults to `False`):
            The rows are themselves in the bank, so their own entry (similarity 1) is passed over: the
            (k+1)-th neighbour is taken. It assumes the own entry ranks first, so only pass it for rows that
            are in the bank.
        all_up_to_k (`bool`, *optional*, defaults to `False`):
            Return the similarities of every neighbour up to that one instead of the last.

    Returns:
        `torch.Tensor`: Cosines in [-1, 1], float32: shape `(rows,)`, or `(rows, min(k + skip_self,
        bank_rows))` sorted in decreasing similarity with ``all_up_to_k``.
    """
    normalised = torch.nn.functional.normalize(features.float(), dim=1)
    similarity = normalised @ bank.float().T
    # topk refuses k above the bank size; a small bank gives its farthest row instead.
    k = min(k + int(skip_self), bank.shape[0])
    nearest = similarity.topk(k, dim=1).values
    return nearest if all_up_to_k else nearest[:, -1]


def squash(raw: torch.Tensor | np.ndarray, center: float, scale: float):
    """``sigmoid((raw - center) / scale)``: a raw in-scope score mapped monotonically into (0, 1).

    Args:
        raw (`torch.Tensor` or `np.ndarray`):
            Raw scores of any shape (`energy`, `mahalanobis` or `knn_similarity` output).
        center (`float`):
            The raw score that maps to 0.5 (the training median, `robust_center_scale`).
        scale (`float`):
            Raw units per logit unit, > 0; a raw score one ``scale`` above ``center`` maps to about 0.73.

    Returns:
        The same kind as ``raw``: a float32 tensor, or a float64 numpy array.
    """
    if isinstance(raw, np.ndarray):
        return expit((raw - center) / scale)
    return torch.sigmoid((raw.float() - center) / scale)


def robust_center_scale(raw: np.ndarray) -> tuple[float, float]:
    """Median and IQR / 1.349 (the normal-consistent interquartile range) of a raw score over training rows.

    Args:
        raw (`np.ndarray`):
            One raw score per training Pick row; must not be empty.

    Returns:
        `tuple[float, float]`: `(center, scale)`. When the IQR is below 1e-6 (e.g. half the rows or more tie)
        the scale falls back to the standard deviation, and it never goes below 1e-6.

    Raises:
        `IndexError`: For an empty ``raw`` (numpy has no percentile of nothing).
    """
    raw = np.asarray(raw, dtype=np.float64)
    q25, median, q75 = np.percentile(raw, [25, 50, 75])
    scale = (q75 - q25) / 1.349
    if not np.isfinite(scale) or scale < _MIN_SCALE:  # half the rows or more tie: the IQR is 0, the std is not
        scale = max(float(np.std(raw)), _MIN_SCALE)
    return float(median), float(scale)


def fit_feature_statistics(
    features: np.ndarray, category_labels: np.ndarray, num_categories: int, bank_size: int = 10000, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Class means, the shared precision matrix and the kNN bank from training Pick rows' pooled vectors.

    The shared covariance is Ledoit–Wolf on the class-centred vectors (well conditioned even when rows <
    hidden, as in small runs; on CLINC150's 15,000 rows it is close to the sample covariance). A category with
    no row gets the overall mean (it then attracts nothing it should not: it is as typical as the average
    item).

    Args:
        features (`np.ndarray` of shape `(rows, hidden)`):
            Pooled vectors of the training rows with a category label (Decline rows are not passed).
        category_labels (`np.ndarray` of shape `(rows,)`):
            Category index per row, in [0, `num_categories`).
        num_categories (`int`):
            N, the width of the category head.
        bank_size (`int`, *optional*, defaults to 10000):
            At most this many rows go into the kNN bank (`--knn_bank_size`).
        seed (`int`, *optional*, defaults to 0):
            Seed of the bank's row sample.

    Returns:
        `dict[str, torch.Tensor]`: ``class_means`` `(N, hidden)`, ``precision`` `(hidden, hidden)` and
        ``bank`` `(min(bank_size, rows), hidden)`, L2-normalised rows, all float32; ``bank_rows``: the sorted
        int64 row indices sampled into the bank.
    """
    # float64 for the means and covariance: the precision matrix is an inverse, sensitive to rounding.
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(category_labels)
    overall = features.mean(axis=0)
    means = np.tile(overall, (num_categories, 1))
    for category in np.unique(labels):
        means[category] = features[labels == category].mean(axis=0)
    centred = features - means[labels]
    # assume_centered: the rows are already centred per class; removing their overall mean again would be wrong.
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(features), size=min(bank_size, len(features)), replace=False))
    bank = torch.nn.functional.normalize(torch.from_numpy(features[chosen]).float(), dim=1)
    return {
        "class_means": torch.from_numpy(means).float(),
        "precision": torch.from_numpy(precision).float(),
        "bank": bank,
        "bank_rows": torch.from_numpy(chosen),
    }


def fit_gate_statistics(
    features: np.ndarray,
    category_logits: np.ndarray,
    category_labels: np.ndarray,
    num_categories: int,
    bank_size: int = 10000,
    knn_k: int = 10,
    seed: int = 0,
    chunk_rows: int = 2048,
) -> dict:
    """Everything ``in_scope_scores`` needs, fitted on training Pick rows: statistics plus squash constants.

    The squash constants are the robust center/scale of each raw score over the same rows; a row that is in the
    kNN bank skips its own entry, so its kNN score is not the trivial similarity 1 to itself.

    Args:
        features (`np.ndarray` of shape `(rows, hidden)`):
            Pooled vectors of the training rows with a category label.
        category_logits (`np.ndarray` of shape `(rows, N)`):
            Raw category logits of the same rows (for the ``energy`` constants).
        category_labels (`np.ndarray` of shape `(rows,)`):
            Category index per row.
        num_categories (`int`):
            N, the width of the category head.
        bank_size (`int`, *optional*, defaults to 10000):
            Most rows kept in the kNN bank.
        knn_k (`int`, *optional*, defaults to 10):
            The neighbour whose similarity is the ``knn`` score (`--knn_k`).
        seed (`int`, *optional*, defaults to 0):
            Seed of the bank's row sample.
        chunk_rows (`int`, *optional*, defaults to 2048):
            Rows scored per step; bounds memory to a (chunk_rows, bank rows) similarity matrix.

    Returns:
        `dict`: `fit_feature_statistics`'s tensors plus ``squash`` (``{"energy" | "maha" | "knn": (center,
        scale)}``) and ``knn_k``; `MultitaskModel.attach_gate_statistics` stores it in the model.
    """
    fitted = fit_feature_statistics(features, category_labels, num_categories, bank_size, seed)
    in_bank = np.zeros(len(features), dtype=bool)
    in_bank[fitted["bank_rows"].numpy()] = True
    raw = {"energy": [], "maha": [], "knn": []}
    with torch.inference_mode():
        for start in range(0, len(features), chunk_rows):  # the similarity matrix of all rows would be large
            rows = slice(start, start + chunk_rows)
            chunk = torch.as_tensor(features[rows], dtype=torch.float32)
            raw["energy"].append(energy(torch.as_tensor(category_logits[rows])).numpy())
            raw["maha"].append(mahalanobis(chunk, fitted["class_means"], fitted["precision"]).numpy())
            # One top-(k+1): a row in the bank skips its own entry (the (k+1)-th), any other row takes the k-th.
            nearest = knn_similarity(chunk, fitted["bank"], knn_k, skip_self=True, all_up_to_k=True).numpy()
            raw["knn"].append(np.where(in_bank[rows], nearest[:, -1], nearest[:, min(knn_k, nearest.shape[1]) - 1]))
    fitted["squash"] = {name: robust_center_scale(np.concatenate(values)) for name, values in raw.items()}
    fitted["knn_k"] = int(knn_k)
    return fitted


def ood_metrics(in_scope_score: np.ndarray, is_in_scope: np.ndarray) -> dict[str, float]:
    """Threshold-free separation of in-scope from out-of-scope rows by one score.

    Args:
        in_scope_score (`np.ndarray` of shape `(rows,)`):
            Any in-scope score (higher = more in scope); only its ranking matters for ``auroc`` and
            ``aupr_out``.
        is_in_scope (`np.ndarray` of shape `(rows,)`):
            True for gold-Pick rows, False for gold-Decline rows.

    Returns:
        `dict[str, float]`: ``auroc``: P(a random in-scope row scores above a random out-of-scope row), ties
        counting half. ``aupr_out``: average precision of finding out-of-scope rows with the score reversed.
        ``fpr_at_95tpr``: share of out-of-scope rows still accepted at the threshold that keeps 95 % of
        in-scope rows (lower is better). All three are NaN when only one class is present.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    score = np.asarray(in_scope_score, dtype=np.float64)
    positive = np.asarray(is_in_scope, dtype=bool)
    if positive.all() or not positive.any():
        return {"auroc": float("nan"), "aupr_out": float("nan"), "fpr_at_95tpr": float("nan")}
    # The threshold keeping 95 % of in-scope rows: their 5th percentile (rows at it are kept).
    # method="lower": an observed score, so at least 95 % of in-scope rows are >= cut (interpolating may not).
    cut = np.quantile(score[positive], 0.05, method="lower")
    return {
        "auroc": float(roc_auc_score(positive, score)),
        "aupr_out": float(average_precision_score(~positive, -score)),
        "fpr_at_95tpr": float((score[~positive] >= cut).mean()),
    }


def in_scope_scores(
    gate_logits: torch.Tensor | None,
    category_logits: torch.Tensor | None,
    features: torch.Tensor | None = None,
    fitted: dict | None = None,
    gate_temperature: float = 1.0,
    category_temperature: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Every in-scope score in [0, 1] the inputs allow, by name (see ``ALL_SCORES``), shape (rows,) each.

    ``pick`` = P(Pick) of the gate head; ``msp`` = max P(category) of the category head (maximum softmax
    probability, Hendrycks & Gimpel 2017); ``joint`` = pick · msp, the probability of the best
    Pick-and-category decision. ``energy``, ``maha`` and ``knn`` are squashed with the training constants in
    ``fitted["squash"]``; combined scores multiply their parts. The probabilities use the calibration
    temperatures; ``energy`` keeps the raw logits its constants were fitted on.

    Args:
        gate_logits (`torch.Tensor` of shape `(rows, 2)`, *optional*):
            Gate-head logits; None for a model without a gate (no ``pick``, ``joint`` or combined scores).
        category_logits (`torch.Tensor` of shape `(rows, N)`, *optional*):
            Category-head logits; None leaves only ``pick``.
        features (`torch.Tensor` of shape `(rows, hidden)`, *optional*):
            Pooled vectors (`output_features=True`); needed, with ``fitted``, for the feature scores.
        fitted (`dict`, *optional*):
            ``class_means``, ``precision``, ``bank``, ``knn_k`` and ``squash`` (`fit_gate_statistics`, or the
            model's buffers and ``config.gate_statistics``); None gives the logit scores only.
        gate_temperature (`float`, *optional*, defaults to 1.0):
            Divides the gate logits before the softmax.
        category_temperature (`float`, *optional*, defaults to 1.0):
            Divides the category logits before the softmax (not for ``energy``).

    Returns:
        `dict[str, torch.Tensor]`: float32 scores by name, each of shape `(rows,)`; a score whose inputs are
        missing is absent, not NaN.
    """
    scores: dict[str, torch.Tensor] = {}
    if gate_logits is not None:
        scores["pick"] = torch.softmax(gate_logits.float() / gate_temperature, dim=-1)[:, 1]
    if category_logits is not None:
        scores["msp"] = torch.softmax(category_logits.float() / category_temperature, dim=-1).max(dim=-1).values
        if "pick" in scores:
            scores["joint"] = scores["pick"] * scores["msp"]
    # The feature scores need the fitted statistics, the category logits (energy) and the pooled vectors.
    if fitted is None or category_logits is None or features is None:
        return scores
    raw = {
        "energy": energy(category_logits),
        "maha": mahalanobis(features, fitted["class_means"], fitted["precision"]),
        "knn": knn_similarity(features, fitted["bank"], int(fitted["knn_k"])),
    }
    for name, value in raw.items():
        center, scale = fitted["squash"][name]
        scores[name] = squash(value, center, scale)
    for name, (first, second) in COMBINED_SCORES.items():
        if first in scores and second in scores:
            scores[name] = scores[first] * scores[second]
    return scores
