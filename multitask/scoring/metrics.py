"""Evaluation metrics for the gate (Pick/Decline) and category heads, and their joint (N+1)-way view.

Conventions: label arrays use ``-100`` where a row has no label for that task; ``pick_prob`` has shape
``(n,)`` and holds P(Pick); ``category_probs`` has shape ``(n, N)`` and holds P(category | Pick). The
decision rule everywhere is *Pick iff pick_prob >= threshold*.

Every function returns ``{}`` (or omits keys) rather than NaN when there is nothing to measure, so the
Trainer's logs and ``metric_for_best_model`` never see NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from multitask.data.text_encoding import aggregate_windows
from multitask.errors import UsageError, closest
from multitask.labels import IGNORE_INDEX
from multitask.scoring.calibration import expected_calibration_error

HEADS = ("gate", "category")


def _to_numpy(array: Any) -> np.ndarray:
    """Accept numpy arrays, lists and torch tensors (bf16 included) without importing torch."""
    if hasattr(array, "detach"):
        # .float(): numpy has no bfloat16.
        array = array.detach().float().cpu().numpy()
    return np.asarray(array)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis (float64 so fp16/bf16 logits do not overflow).

    Args:
        logits (`np.ndarray`):
            Logits of any shape (a list or torch tensor works too); the classes are the last axis.

    Returns:
        `np.ndarray`: float64 probabilities of the same shape, summing to 1 along the last axis.
    """
    logits = _to_numpy(logits).astype(np.float64)
    # Subtracting the row maximum keeps exp() from overflowing and leaves the result unchanged.
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _present_macro(values: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean of per-class ``values`` over the classes that occur in gold OR predictions.

    sklearn's macro average with ``labels=range(N)`` would count every absent class as F1 = 0 and so
    depend on N rather than on the data; averaging over observed classes keeps indices aligned (we
    still pass ``labels=range(N)``) while not punishing a model for classes the split does not contain.
    """
    observed = np.union1d(y_true, y_pred).astype(int)
    return float(values[observed].mean()) if observed.size else 0.0


def gate_metrics(pick_prob: np.ndarray, gate_labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Binary gate metrics (Pick = positive class) over rows with a gate label; ``{}`` if there are none.

    ``gate_decline_leak`` is the share of gold-Decline rows predicted Pick; it is 0.0 when there is no
    gold-Decline row (nothing could leak).

    Args:
        pick_prob (`np.ndarray` of shape `(rows,)`):
            The gate score per row (P(Pick) or another in-scope score in [0, 1]).
        gate_labels (`np.ndarray` of shape `(rows,)`):
            1 (Pick), 0 (Decline) or -100 (row skipped).
        threshold (`float`, *optional*, defaults to 0.5):
            A row is predicted Pick when its score is >= this.

    Returns:
        `dict[str, float]`: ``gate_accuracy``, ``gate_precision``, ``gate_recall``, ``gate_f1`` (Pick class;
        0.0 where undefined, as sklearn's ``zero_division=0``), ``gate_decline_leak`` and ``gate_support``
        (the labelled row count, an int).
    """
    pick_prob = _to_numpy(pick_prob).reshape(-1)
    gate_labels = _to_numpy(gate_labels).reshape(-1)
    mask = gate_labels != IGNORE_INDEX
    if not mask.any():
        return {}
    y_true = gate_labels[mask].astype(int)
    y_pred = (pick_prob[mask] >= threshold).astype(int)
    # labels=[1]: the Pick class's own figures, 0.0 (zero_division) in a split without Pick rows.
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=[1], average=None, zero_division=0
    )
    declines = y_true == 0
    leak = float(y_pred[declines].mean()) if declines.any() else 0.0
    return {
        "gate_accuracy": float(accuracy_score(y_true, y_pred)),
        "gate_precision": float(precision[0]),
        "gate_recall": float(recall[0]),
        "gate_f1": float(f1[0]),
        "gate_decline_leak": leak,
        "gate_support": int(mask.sum()),
    }


def _top_k_accuracy(probs: np.ndarray, y_true: np.ndarray, k: int) -> float:
    """Share of rows whose gold id is among the k most probable classes (ties: lower index first)."""
    # Not sklearn's top_k_accuracy_score: it rejects (n, 2) scores for two classes and breaks ties
    # towards the *higher* index, so its top-1 would disagree with argmax (lower index) on equal probs.
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((order == y_true[:, None]).any(axis=1).mean())


def category_metrics(
    category_probs: np.ndarray, category_labels: np.ndarray, top_k: Sequence[int] = (1, 2, 3)
) -> dict[str, float]:
    """Category-head metrics over rows with a category label; ``{}`` if there are none.

    ``category_macro_f1`` averages per-class F1 over the classes present in gold OR predictions (see
    ``_present_macro``); ``category_weighted_f1`` weights by gold support.

    Args:
        category_probs (`np.ndarray` of shape `(rows, N)`):
            P(category | Pick) per row; only the ranking within a row matters.
        category_labels (`np.ndarray` of shape `(rows,)`):
            Gold category index per row, -100 for none (skipped).
        top_k (`Sequence[int]`, *optional*, defaults to `(1, 2, 3)`):
            The k of each ``category_top{k}_accuracy``; a k above N is left out. Ties between equal
            probabilities go to the lower class index, as argmax.

    Returns:
        `dict[str, float]`: ``category_accuracy``, ``category_macro_f1``, ``category_weighted_f1``, one
        ``category_top{k}_accuracy`` per usable k, and ``category_support`` (an int).
    """
    category_probs = _to_numpy(category_probs)
    category_labels = _to_numpy(category_labels).reshape(-1)
    mask = category_labels != IGNORE_INDEX
    if not mask.any():
        return {}
    num_classes = category_probs.shape[-1]
    # Every class index, so position c of the per-class arrays is class c whatever this split holds.
    labels = list(range(num_classes))
    probs = category_probs[mask]
    y_true = category_labels[mask].astype(int)
    y_pred = probs.argmax(axis=-1)
    _, _, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    result = {
        "category_accuracy": float(accuracy_score(y_true, y_pred)),
        "category_macro_f1": _present_macro(f1, y_true, y_pred),
        "category_weighted_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
        ),
    }
    for k in top_k:
        if k <= num_classes:
            result[f"category_top{k}_accuracy"] = _top_k_accuracy(probs, y_true, k)
    result["category_support"] = int(mask.sum())
    return result


def joint_probs(pick_prob: np.ndarray, category_probs: np.ndarray) -> np.ndarray:
    """(n, N+1) distribution over the joint decision: column c = P(Pick)·P(c|Pick), column N = 1 - P(Pick).

    Its argmax matches the threshold-0.5 rule only approximately (a row with P(Pick) = 0.6 spread over
    many categories has argmax Decline); decisions always use the threshold rule, these are for reporting.

    Args:
        pick_prob (`np.ndarray` of shape `(n,)`):
            P(Pick) per row.
        category_probs (`np.ndarray` of shape `(n, N)`):
            P(category | Pick) per row.

    Returns:
        `np.ndarray` of shape `(n, N + 1)`, float64; Decline last (`calibration.joint_probabilities` puts it
        first).
    """
    pick_prob = _to_numpy(pick_prob).reshape(-1, 1).astype(np.float64)
    category_probs = _to_numpy(category_probs).astype(np.float64)
    return np.concatenate([pick_prob * category_probs, 1.0 - pick_prob], axis=1)


def joint_labels(gate_labels: np.ndarray, category_labels: np.ndarray, num_categories: int) -> np.ndarray:
    """Gold joint label per row.

    N (Decline) for gate 0; the category for a category-labelled row whose gate is 1 or missing (a category
    label implies Pick); -100 otherwise (gate 1 without a category, or no label at all).

    Args:
        gate_labels (`np.ndarray` of shape `(n,)`):
            1, 0 or -100 per row.
        category_labels (`np.ndarray` of shape `(n,)`):
            Category index or -100 per row.
        num_categories (`int`):
            N; the Decline label.

    Returns:
        `np.ndarray` of shape `(n,)`, int: labels in [0, N], or -100.
    """
    gate_labels = _to_numpy(gate_labels).reshape(-1).astype(int)
    category_labels = _to_numpy(category_labels).reshape(-1).astype(int)
    gold = np.full(gate_labels.shape, IGNORE_INDEX, dtype=int)
    has_category = category_labels != IGNORE_INDEX
    gold[has_category & (gate_labels != 0)] = category_labels[has_category & (gate_labels != 0)]
    # Last: a Decline row that also carries a category is gold Decline (the category is overwritten).
    gold[gate_labels == 0] = num_categories
    return gold


def joint_predictions(
    pick_prob: np.ndarray, category_probs: np.ndarray, threshold: float = 0.5
) -> np.ndarray:
    """Predicted joint label per row: N (Decline) if pick_prob < threshold, else the argmax category.

    Args:
        pick_prob (`np.ndarray` of shape `(n,)`):
            The gate score per row.
        category_probs (`np.ndarray` of shape `(n, N)`):
            Category probabilities (or logits: only the argmax is used).
        threshold (`float`, *optional*, defaults to 0.5):
            Pick iff the score is >= this.

    Returns:
        `np.ndarray` of shape `(n,)`, int: a category index in [0, N) or N.
    """
    pick_prob = _to_numpy(pick_prob).reshape(-1)
    category_probs = _to_numpy(category_probs)
    return np.where(pick_prob >= threshold, category_probs.argmax(axis=-1), category_probs.shape[-1])


def joint_metrics(
    pick_prob: np.ndarray,
    category_probs: np.ndarray,
    gate_labels: np.ndarray,
    category_labels: np.ndarray,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Accuracy and macro-F1 of the (N+1)-way decision (Decline = index N).

    Macro-F1 averages over the classes present in gold OR predictions.

    Args:
        pick_prob (`np.ndarray` of shape `(n,)`):
            The gate score per row.
        category_probs (`np.ndarray` of shape `(n, N)`):
            Category probabilities per row.
        gate_labels (`np.ndarray` of shape `(n,)`):
            1, 0 or -100 per row.
        category_labels (`np.ndarray` of shape `(n,)`):
            Category index or -100 per row.
        threshold (`float`, *optional*, defaults to 0.5):
            Pick iff the score is >= this.

    Returns:
        `dict[str, float]`: ``joint_accuracy``, ``joint_macro_f1`` and ``joint_support`` (rows with a gold
        joint label, see ``joint_labels``); ``{}`` if there are none.
    """
    category_probs = _to_numpy(category_probs)
    num_categories = category_probs.shape[-1]
    gold = joint_labels(gate_labels, category_labels, num_categories)
    mask = gold != IGNORE_INDEX
    if not mask.any():
        return {}
    y_true = gold[mask]
    y_pred = joint_predictions(pick_prob, category_probs, threshold)[mask]
    _, _, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(num_categories + 1)), average=None, zero_division=0
    )
    return {
        "joint_accuracy": float(accuracy_score(y_true, y_pred)),
        "joint_macro_f1": _present_macro(f1, y_true, y_pred),
        "joint_support": int(mask.sum()),
    }


def _int_keys(id2label: Mapping[Any, str]) -> dict[int, str]:
    # Label maps that went through JSON have string keys.
    return {int(key): value for key, value in id2label.items()}


def per_class_metrics(y_true: np.ndarray, y_pred: np.ndarray, id2label: Mapping[int, str]) -> list[dict]:
    """Precision, recall, F1 and support of every class of ``id2label``.

    Args:
        y_true (`np.ndarray` of shape `(n,)`):
            Gold class ids; rows at -100 are ignored.
        y_pred (`np.ndarray` of shape `(n,)`):
            Predicted class ids; a prediction outside ``id2label`` counts against recall only.
        id2label (`Mapping[int, str]`):
            The classes to report; string keys (from JSON) are accepted.

    Returns:
        `list[dict]`: One dict per class (``label``, ``id``, ``support``, ``precision``, ``recall``, ``f1``),
        sorted by support descending then label; zero-support classes are listed with zeros.
    """
    id2label = _int_keys(id2label)
    y_true = _to_numpy(y_true).reshape(-1).astype(int)
    y_pred = _to_numpy(y_pred).reshape(-1).astype(int)
    mask = y_true != IGNORE_INDEX
    ids = sorted(id2label)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true[mask], y_pred[mask], labels=ids, average=None, zero_division=0
    )
    rows = [
        {
            "label": id2label[class_id],
            "id": class_id,
            "support": int(support[i]),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
        }
        for i, class_id in enumerate(ids)
    ]
    return sorted(rows, key=lambda row: (-row["support"], row["label"]))


def frequency_bands(
    train_counts: Sequence[int] | np.ndarray,
    quantiles: Sequence[float] = (1 / 3, 2 / 3),
    names: Sequence[str] = ("Low", "Mid", "High"),
) -> list[str]:
    """Band name of each class (by index) from its training count.

    Cut points are ``np.quantile(train_counts, quantiles)`` (linear interpolation); band i holds counts
    in ``(cut[i-1], cut[i]]``, so a count equal to a cut point goes to the lower band and equal counts
    always share a band (no dependence on class order). With a long tail of equal small counts this keeps
    them all in the lowest band.

    Args:
        train_counts (`Sequence[int]` or `np.ndarray`):
            Training rows per class, by class index.
        quantiles (`Sequence[float]`, *optional*, defaults to `(1 / 3, 2 / 3)`):
            Cut quantiles in (0, 1) (`--frequency_band_quantiles`); sorted here.
        names (`Sequence[str]`, *optional*, defaults to `("Low", "Mid", "High")`):
            Band names from rarest to most frequent; one more than ``quantiles``.

    Returns:
        `list[str]`: One band name per class; ``[]`` without classes.

    Raises:
        `ValueError`: When ``len(names) != len(quantiles) + 1``.
    """
    if len(names) != len(quantiles) + 1:
        raise ValueError(
            f"need len(names) == len(quantiles) + 1, got {len(names)} names, {len(quantiles)} quantiles"
        )
    counts = np.asarray(train_counts, dtype=np.float64).reshape(-1)
    if counts.size == 0:
        return []
    cuts = np.quantile(counts, sorted(quantiles))
    # side="left": a count equal to a cut point lands in the lower band.
    return [names[i] for i in np.searchsorted(cuts, counts, side="left")]


def _band_mean(per_class: list[dict], bands: Sequence[str] | Mapping[int, str], key: str) -> dict[str, float]:
    """Per band, the unweighted mean of `key` over its classes with validation support (a band with none is left
    out); `bands` gives each class id's band, as a list indexed by id or a mapping."""
    band_of = dict(enumerate(bands)) if not isinstance(bands, Mapping) else _int_keys(bands)
    values: dict[str, list[float]] = {}
    for row in per_class:
        if row["support"] > 0 and row["id"] in band_of:
            values.setdefault(band_of[row["id"]], []).append(row[key])
    # Keep the bands' own order (e.g. Low, Mid, High) rather than the per-class sort order.
    order = list(dict.fromkeys(band_of[i] for i in sorted(band_of)))
    return {band: float(np.mean(values[band])) for band in order if band in values}


def band_recall(per_class: list[dict], bands: Sequence[str] | Mapping[int, str]) -> dict[str, float]:
    """Mean recall per band over classes with support > 0; bands with no such class are omitted.

    Args:
        per_class (`list[dict]`):
            `per_class_metrics` rows.
        bands (`Sequence[str]` or `Mapping[int, str]`):
            Each class id's band, as a list indexed by id or an id -> band dict (e.g. `frequency_bands`).

    Returns:
        `dict[str, float]`: Band -> unweighted mean recall of its classes, in the bands' own order.
    """
    return _band_mean(per_class, bands, "recall")


def band_f1(per_class: list[dict], bands: Sequence[str] | Mapping[int, str]) -> dict[str, float]:
    """Mean F1 per band over classes with support > 0; same conventions as ``band_recall``.

    Args:
        per_class (`list[dict]`):
            `per_class_metrics` rows.
        bands (`Sequence[str]` or `Mapping[int, str]`):
            Each class id's band.

    Returns:
        `dict[str, float]`: Band -> unweighted mean F1 of its classes.
    """
    return _band_mean(per_class, bands, "f1")


def confusion_top(
    y_true: np.ndarray, y_pred: np.ndarray, id2label: Mapping[int, str], k: int = 3
) -> dict[str, list[dict]]:
    """The top-k wrong predicted classes of every class of ``id2label``.

    Args:
        y_true (`np.ndarray` of shape `(n,)`):
            Gold class ids; rows at -100 are ignored.
        y_pred (`np.ndarray` of shape `(n,)`):
            Predicted class ids.
        id2label (`Mapping[int, str]`):
            Every class that can occur, gold or predicted (add ``{N: "Decline"}`` for the joint view). A row
            whose gold or predicted id it lacks is left out entirely, support included.
        k (`int`, *optional*, defaults to 3):
            Most confusions listed per class.

    Returns:
        `dict[str, list[dict]]`: Label -> up to k dicts with ``label`` (the predicted class), ``count`` and
        ``share`` (count / that class's gold support), by count descending then label; ``[]`` for a class
        without errors.
    """
    id2label = _int_keys(id2label)
    y_true = _to_numpy(y_true).reshape(-1).astype(int)
    y_pred = _to_numpy(y_pred).reshape(-1).astype(int)
    mask = y_true != IGNORE_INDEX
    ids = sorted(id2label)
    matrix = confusion_matrix(y_true[mask], y_pred[mask], labels=ids)
    result: dict[str, list[dict]] = {}
    for i, class_id in enumerate(ids):
        support = int(matrix[i].sum())
        wrong = [
            {"label": id2label[other], "count": int(matrix[i, j]), "share": float(matrix[i, j] / support)}
            for j, other in enumerate(ids)
            if j != i and matrix[i, j] > 0
        ]
        result[id2label[class_id]] = sorted(wrong, key=lambda row: (-row["count"], row["label"]))[:k]
    return result


def compute_all(
    pick_prob: np.ndarray | None,
    category_probs: np.ndarray | None,
    gate_labels: np.ndarray | None,
    category_labels: np.ndarray | None,
    threshold: float = 0.5,
    prefix: str = "",
) -> dict[str, float]:
    """Gate, category and joint metrics merged into one dict.

    Args:
        pick_prob (`np.ndarray` of shape `(n,)`, *optional*):
            The gate score per row; None for a model without a gate.
        category_probs (`np.ndarray` of shape `(n, N)`, *optional*):
            Category probabilities; None for a model without a category head.
        gate_labels (`np.ndarray` of shape `(n,)`, *optional*):
            1, 0 or -100 per row; None when the data has no gate labels.
        category_labels (`np.ndarray` of shape `(n,)`, *optional*):
            Category index or -100 per row; None when the data has no categories.
        threshold (`float`, *optional*, defaults to 0.5):
            Pick iff the score is >= this.
        prefix (`str`, *optional*, defaults to `""`):
            Joined with ``_`` as the Trainer's ``metric_key_prefix`` does (``prefix="test"`` gives
            ``test_gate_f1``); a trailing ``_`` is not doubled.

    Returns:
        `dict[str, float]`: `gate_metrics`, `category_metrics` and `joint_metrics` keys. A head whose
        probabilities (or labels) are None contributes no keys, and the joint keys need both.
    """
    result: dict[str, float] = {}
    has_gate = pick_prob is not None and gate_labels is not None
    has_category = category_probs is not None and category_labels is not None
    if has_gate:
        result.update(gate_metrics(pick_prob, gate_labels, threshold))
    if has_category:
        result.update(category_metrics(category_probs, category_labels))
    if has_gate and has_category:
        result.update(joint_metrics(pick_prob, category_probs, gate_labels, category_labels, threshold))
    if prefix:
        # rstrip: "test" and "test_" both give test_gate_f1.
        result = {f"{prefix.rstrip('_')}_{key}": value for key, value in result.items()}
    return result


def gate_pick_prob(gate_logits: np.ndarray) -> np.ndarray:
    """P(Pick) from gate logits: softmax column 1 for (n, 2) logits, sigmoid for (n,) or (n, 1).

    Args:
        gate_logits (`np.ndarray`):
            Gate logits of shape `(n, 2)`, `(n,)` or `(n, 1)`.

    Returns:
        `np.ndarray` of shape `(n,)`, float64.

    Raises:
        `ValueError`: For any other shape.
    """
    gate_logits = _to_numpy(gate_logits).astype(np.float64)
    if gate_logits.ndim == 2 and gate_logits.shape[1] == 2:
        return softmax(gate_logits)[:, 1]
    if gate_logits.ndim == 1 or (gate_logits.ndim == 2 and gate_logits.shape[1] == 1):
        # expit rather than 1 / (1 + exp(-x)): no overflow warning for large negative logits.
        return expit(gate_logits.reshape(-1))
    raise ValueError(f"gate logits must have shape (n,), (n, 1) or (n, 2), got {gate_logits.shape}")


def gate_two_class(gate_logits: np.ndarray) -> np.ndarray:
    """(n, 2) probabilities [P(Decline), P(Pick)] from gate logits of any shape `gate_pick_prob` accepts.

    Args:
        gate_logits (`np.ndarray`):
            Gate logits of shape `(n, 2)`, `(n,)` or `(n, 1)`.

    Returns:
        `np.ndarray` of shape `(n, 2)`, float64 (the layout the calibration figures expect).
    """
    pick = gate_pick_prob(gate_logits)
    return np.stack([1.0 - pick, pick], axis=1)


def _as_tuple(value: Any) -> tuple:
    """The Trainer passes one array or a tuple of them (one per output / label name): always a tuple."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def band_recall_metrics(
    category_probs: np.ndarray, category_labels: np.ndarray, category_bands: Sequence[str]
) -> dict[str, float]:
    """`category_recall_<band>`: mean per-class recall of each training-frequency band (rows with a label).

    Args:
        category_probs (`np.ndarray` of shape `(n, N)`):
            Category probabilities per row.
        category_labels (`np.ndarray` of shape `(n,)`):
            Category index or -100 per row.
        category_bands (`Sequence[str]`):
            The band of each category, by index (length N).

    Returns:
        `dict[str, float]`: e.g. ``category_recall_high``; band names are lower-cased, and a band none of
        whose classes occurs in the labels is left out. ``{}`` without labelled rows.
    """
    y_true = _to_numpy(category_labels)
    labelled = y_true != IGNORE_INDEX
    if not labelled.any():
        return {}
    y_pred = np.asarray(category_probs)[labelled].argmax(axis=1)
    # Placeholder names: only the class ids matter for the band means.
    per_class = per_class_metrics(y_true[labelled], y_pred, dict(enumerate(map(str, range(len(category_bands))))))
    return {f"category_recall_{band.lower()}": value for band, value in band_recall(per_class, category_bands).items()}


def hierarchy_stats(
    pick_prob: np.ndarray,
    category_probs: np.ndarray,
    threshold: float = 0.5,
    pick_low_levels: Sequence[float] = (0.3, 0.5),
    decline_high_levels: Sequence[float] = (0.5, 0.8),
) -> dict[str, Any]:
    """How well the two heads agree.

    Counts gate-Pick rows whose top category probability is below each level (the category head is unsure of
    an item the gate let in), and gate-Decline rows whose top category probability is above each level (the
    category head is sure of an item the gate refused). Uses predictions only, no gold labels.

    Args:
        pick_prob (`np.ndarray` of shape `(n,)`):
            The gate score per row.
        category_probs (`np.ndarray` of shape `(n, N)`):
            Category probabilities per row.
        threshold (`float`, *optional*, defaults to 0.5):
            The gate decision rule: Pick iff the score is >= this.
        pick_low_levels (`Sequence[float]`, *optional*, defaults to `(0.3, 0.5)`):
            Levels for gate-Pick rows (`--pick_low_confidence_levels`).
        decline_high_levels (`Sequence[float]`, *optional*, defaults to `(0.5, 0.8)`):
            Levels for gate-Decline rows (`--decline_high_confidence_levels`).

    Returns:
        `dict[str, Any]`: ``threshold``, ``gate_pick_rows``, ``gate_decline_rows``,
        ``pick_with_category_max_prob_below`` and ``decline_with_category_max_prob_above``, the last two keyed
        by ``str(level)`` with ``{"count", "share"}`` (share of that gate decision's rows; 0.0 when it has
        none).
    """
    pick = np.asarray(pick_prob) >= threshold
    top = np.asarray(category_probs).max(axis=1)

    def shares(mask: np.ndarray, hits: Callable[[float], np.ndarray], levels: Sequence[float]) -> dict:
        total = int(mask.sum())
        return {
            str(level): {"count": int((mask & hits(level)).sum()),
                         "share": float((mask & hits(level)).sum() / total) if total else 0.0}
            for level in levels
        }

    return {
        "threshold": float(threshold),
        "gate_pick_rows": int(pick.sum()),
        "gate_decline_rows": int((~pick).sum()),
        "pick_with_category_max_prob_below": shares(pick, lambda level: top < level, pick_low_levels),
        "decline_with_category_max_prob_above": shares(~pick, lambda level: top > level, decline_high_levels),
    }


def _per_document(label_ids: Any, logits: dict[str, Any], aggregation: str) -> tuple[Any, dict[str, np.ndarray]]:
    """Window rows → document rows: logits by `aggregation`, labels (equal across a document's windows) taken
    once. The document index is the last label array."""
    *labels, documents = _as_tuple(label_ids)
    if not labels:
        raise ValueError('chunked evaluation needs label_names ending with "document" and the head labels before it')
    documents = _to_numpy(documents).reshape(-1)
    logits = {head: aggregate_windows(_to_numpy(value), documents, aggregation)[1] for head, value in logits.items()}
    labels = [aggregate_windows(_to_numpy(value), documents, "max")[1].astype(np.int64) for value in labels]
    return (tuple(labels) if len(labels) > 1 else labels[0]), logits


def build_compute_metrics(
    threshold: float = 0.5,
    *,
    heads: Sequence[str] = HEADS,
    category_bands: Sequence[str] | None = None,
    chunk_aggregation: str | None = None,
) -> Callable[[Any], dict[str, float]]:
    """``compute_metrics`` for the HF Trainer (keys without prefix; the Trainer adds ``eval_``).

    ``eval_pred.predictions``: ``(gate_logits, category_logits)``, either may be None. The Trainer drops
    None model outputs and unwraps a 1-tuple into a bare array, so when a model has only one head pass
    ``heads=("gate",)`` or ``heads=("category",)``: arrays are matched to ``heads`` in order and extra
    trailing outputs (hidden states, …) are ignored. Gate logits may be (n, 2) (softmax) or (n,)/(n, 1)
    (sigmoid).

    ``eval_pred.label_ids``: ``(gate_labels, category_labels)`` when ``label_names`` has both names (set
    it explicitly). A bare array is taken as the labels of the single head in ``heads``, or split column
    by column if it has shape (n, 2) and both heads are used; anything else is a ``ValueError``, since
    guessing which head a lone label array belongs to would silently report wrong numbers.

    Args:
        threshold (`float`, *optional*, defaults to 0.5):
            The threshold of the gate and joint figures (`build_trainer` keeps 0.5: thresholds are tuned only
            after training).
        heads (`Sequence[str]`, *optional*, defaults to `("gate", "category")`):
            The heads the model has, in output order; a non-empty subset of `HEADS`.
        category_bands (`Sequence[str]`, *optional*):
            The training-frequency band of each category; adds ``category_recall_<band>``.
        chunk_aggregation (`str`, *optional*):
            ``"mean"``/``"max"``, for ``--long_text chunk``: each row is a window of a document, and the last
            label array is the document index of each row (``label_names`` ends with ``"document"``); logits
            are recombined per document (`multitask.data.text_encoding.aggregate_windows`) before any metric, so
            every figure counts documents, not windows.

    Returns:
        `Callable[[EvalPrediction], dict[str, float]]`: The `compute_all` keys, plus
        ``category_recall_<band>`` and an uncalibrated ``gate_ece`` / ``category_ece`` (15 equal-mass bins)
        for each head with labelled rows.

    Raises:
        `ValueError`: Here for ``heads`` that are empty or name an unknown head; from the returned function
        for fewer logit arrays than ``heads``, an unexpected number or shape of label arrays, or (chunked) no
        label array before the document index.
    """
    heads = tuple(heads)
    unknown = set(heads) - set(HEADS)
    if not heads or unknown:
        raise ValueError(f"heads must be a non-empty subset of {HEADS} in order, got {heads}")

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        predictions = _as_tuple(eval_pred.predictions)
        if len(predictions) < len(heads):
            raise ValueError(
                f"expected logits for heads {heads}, got {len(predictions)} array(s); "
                "pass heads=(...) to build_compute_metrics for a single-head model"
            )
        # Trailing extra outputs (hidden states, attentions) are ignored.
        logits = dict(zip(heads, predictions[: len(heads)], strict=True))
        label_ids = eval_pred.label_ids
        if chunk_aggregation is not None:
            label_ids, logits = _per_document(label_ids, logits, chunk_aggregation)
        if isinstance(label_ids, (tuple, list)):
            if len(label_ids) not in (2, len(heads)):
                raise ValueError(f"expected 2 label arrays (gate, category), got {len(label_ids)}")
            # Two label arrays are always (gate, category), the label_names order, even for a one-head model.
            label_heads = HEADS if len(label_ids) == 2 else heads
            labels = dict(zip(label_heads, label_ids, strict=True))
        else:
            label_ids = _to_numpy(label_ids)
            if len(heads) == 1:
                labels = {heads[0]: label_ids}
            elif label_ids.ndim == 2 and label_ids.shape[1] == 2:
                labels = {"gate": label_ids[:, 0], "category": label_ids[:, 1]}
            else:
                raise ValueError(
                    "got a single label array for two heads; set "
                    'label_names=["gate_labels", "category_labels"] in the training arguments'
                )
        gate_logits, category_logits = logits.get("gate"), logits.get("category")
        category_probs = softmax(category_logits) if category_logits is not None else None
        results = compute_all(
            gate_pick_prob(gate_logits) if gate_logits is not None else None,
            category_probs,
            labels.get("gate"),
            labels.get("category"),
            threshold=threshold,
        )
        if category_bands is not None and category_probs is not None and labels.get("category") is not None:
            results.update(band_recall_metrics(category_probs, labels["category"], category_bands))
        # Uncalibrated ECE per epoch (15 equal-mass bins); run_finetune calibrates the final model once.
        for head, probs in (("gate", None if gate_logits is None else gate_two_class(gate_logits)),
                            ("category", category_probs)):
            if probs is not None and labels.get(head) is not None:
                gold = _to_numpy(labels[head]).reshape(-1)
                labelled = gold != IGNORE_INDEX
                if labelled.any():
                    results[f"{head}_ece"] = expected_calibration_error(probs[labelled], gold[labelled])
        return results

    return compute_metrics


def check_metric_name(name: str | None, compute_metrics: Callable[[Any], dict[str, float]], num_categories: int,
                      heads: Sequence[str], chunked: bool = False) -> None:
    """Refuse at start-up, not after training, a `--metric_for_best_model` that `compute_metrics` does not return.

    The keys are found by calling `compute_metrics` once on a fake 4-row `EvalPrediction` shaped as the Trainer
    passes it (a bare array for a one-head model; a trailing document index for `--long_text chunk`), so the list
    can never drift from what is computed.

    Args:
        name (`str`, *optional*):
            The `--metric_for_best_model` value; may carry the Trainer's `eval_` prefix. None, `loss` and
            `eval_loss` always pass.
        compute_metrics (`Callable`):
            The function `build_compute_metrics` returned for this run.
        num_categories (`int`):
            N, the width of the fake category logits (at least 1 is used).
        heads (`Sequence[str]`):
            The heads the model has, as given to `build_compute_metrics`.
        chunked (`bool`, *optional*, defaults to `False`):
            Whether `compute_metrics` expects a trailing document-index label array.

    Raises:
        `UsageError`: For a name `compute_metrics` does not return; the message names the closest valid key
        and lists them all.
    """
    if not name or name in ("loss", "eval_loss"):
        return
    from transformers import EvalPrediction

    rows = 4
    gate = np.zeros((rows, 2), dtype=np.float32)
    # At least one column: argmax over a zero-width array raises.
    category = np.zeros((rows, max(num_categories, 1)), dtype=np.float32)
    # Both gate classes present, so every gate key (precision, decline leak, …) is produced.
    by_head = {"gate": (gate, np.array([0, 1, 0, 1])), "category": (category, np.zeros(rows, dtype=np.int64))}
    # Shaped as the Trainer passes them: a bare array when the model has one head.
    predictions = tuple(by_head[head][0] for head in heads)
    labels = tuple(by_head[head][1] for head in heads)
    if chunked:
        labels = (*labels, np.arange(rows))
    if len(heads) == 1:
        predictions = predictions[0]
        labels = labels if chunked else labels[0]
    keys = compute_metrics(EvalPrediction(predictions=predictions, label_ids=labels)).keys()
    bare = name[len("eval_"):] if name.startswith("eval_") else name
    if bare not in keys:
        raise UsageError(f"--metric_for_best_model {name!r} is not a validation metric{closest(bare, keys)}; "
                         f"choose one of: {', '.join(sorted(keys))}")
