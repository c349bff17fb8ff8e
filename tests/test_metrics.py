from __future__ import annotations

import math

import numpy as np
import pytest
from transformers import EvalPrediction

from multitask.errors import UsageError
from multitask.scoring.metrics import (
    band_f1,
    band_recall,
    build_compute_metrics,
    category_metrics,
    check_metric_name,
    compute_all,
    confusion_top,
    frequency_bands,
    gate_metrics,
    joint_metrics,
    joint_probs,
    per_class_metrics,
    softmax,
)

approx = pytest.approx

# Gate: rows 6-7 have no gate label. At threshold 0.5 the labelled rows predict [1,1,0,1,0,0]
# against gold [1,1,1,0,0,0]: TP=2 FP=1 FN=1 TN=2.
PICK_PROB = np.array([0.9, 0.8, 0.4, 0.6, 0.2, 0.1, 0.7, 0.3])
GATE_LABELS = np.array([1, 1, 1, 0, 0, 0, -100, -100])

# Category, N=4, class 2 absent from gold and predictions; row 6 has no category label.
CATEGORY_PROBS = np.array(
    [
        [0.7, 0.2, 0.0, 0.1],  # gold 0, pred 0
        [0.1, 0.6, 0.0, 0.3],  # gold 1, pred 1
        [0.5, 0.3, 0.0, 0.2],  # gold 1, pred 0 (top-2 hit)
        [0.2, 0.1, 0.0, 0.7],  # gold 3, pred 3
        [0.4, 0.1, 0.0, 0.5],  # gold 0, pred 3 (top-2 hit)
        [0.3, 0.3, 0.0, 0.4],  # gold 1, pred 3; 0 and 1 tie, lower index first -> top-2 {3,0} miss, top-3 hit
        [0.1, 0.1, 0.8, 0.0],  # unlabelled
    ]
)
CATEGORY_LABELS = np.array([0, 1, 1, 3, 0, 1, -100])


def test_softmax_is_stable_and_exact():
    assert softmax(np.array([0.0, math.log(3.0)])) == approx([0.25, 0.75])
    huge = softmax(np.array([[1000.0, 1000.0], [-1000.0, 0.0]]))
    assert np.isfinite(huge).all()
    assert huge[0] == approx([0.5, 0.5])
    assert huge.sum(axis=-1) == approx([1.0, 1.0])


def test_gate_metrics_by_hand():
    result = gate_metrics(PICK_PROB, GATE_LABELS)
    # acc = (2+2)/6; P = 2/3; R = 2/3; F1 = 2/3; leak = 1 of 3 Declines predicted Pick.
    assert result == approx(
        {
            "gate_accuracy": 4 / 6,
            "gate_precision": 2 / 3,
            "gate_recall": 2 / 3,
            "gate_f1": 2 / 3,
            "gate_decline_leak": 1 / 3,
            "gate_support": 6,
        }
    )
    # threshold 0.4: score 0.4 counts as Pick (>=). TP=3 FP=1: P=3/4, R=1, F1=6/7, acc=5/6.
    lower = gate_metrics(PICK_PROB, GATE_LABELS, threshold=0.4)
    assert lower["gate_precision"] == approx(3 / 4)
    assert lower["gate_recall"] == approx(1.0)
    assert lower["gate_f1"] == approx(6 / 7)
    assert lower["gate_accuracy"] == approx(5 / 6)


def test_gate_metrics_empty_and_degenerate_never_nan():
    assert gate_metrics(PICK_PROB, np.full(8, -100)) == {}
    assert gate_metrics(np.array([]), np.array([])) == {}
    # Only Pick rows, nothing predicted Pick: precision/F1 fall back to 0, leak to 0.
    only_pick = gate_metrics(np.array([0.1, 0.2]), np.array([1, 1]))
    assert all(math.isfinite(v) for v in only_pick.values())
    assert only_pick["gate_precision"] == 0.0 and only_pick["gate_decline_leak"] == 0.0


def test_category_metrics_by_hand_with_absent_class():
    result = category_metrics(CATEGORY_PROBS, CATEGORY_LABELS)
    # Gold counts {0:2, 1:3, 3:1}; preds {0:2, 1:1, 3:3}; correct rows 0,1,3 -> acc 3/6.
    # F1: class 0 P=1/2 R=1/2 -> 1/2; class 1 P=1 R=1/3 -> 1/2; class 3 P=1/3 R=1 -> 1/2.
    # Macro over present classes {0,1,3} = 1/2 (sklearn over all 4 would be 1.5/4); weighted = 1/2.
    # Top-2 misses only row 5 -> 5/6; top-3 hits all -> 1.
    assert result == approx(
        {
            "category_accuracy": 0.5,
            "category_macro_f1": 0.5,
            "category_weighted_f1": 0.5,
            "category_top1_accuracy": 0.5,
            "category_top2_accuracy": 5 / 6,
            "category_top3_accuracy": 1.0,
            "category_support": 6,
        }
    )
    assert category_metrics(CATEGORY_PROBS, np.full(7, -100)) == {}


def test_category_top_k_limited_to_num_classes():
    probs = np.array([[0.6, 0.4], [0.3, 0.7]])
    result = category_metrics(probs, np.array([1, 1]))
    assert "category_top3_accuracy" not in result
    assert result["category_top1_accuracy"] == approx(0.5)
    assert result["category_top2_accuracy"] == approx(1.0)


JOINT_PICK = np.array([0.9, 0.7, 0.3, 0.6, 0.8, 0.4, 0.9, 0.2])
JOINT_CATEGORY = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.2, 0.7, 0.1],
        [0.1, 0.1, 0.8],
        [0.1, 0.2, 0.7],
        [0.1, 0.8, 0.1],
        [0.6, 0.3, 0.1],
        [0.3, 0.3, 0.4],
        [0.3, 0.3, 0.4],
    ]
)
JOINT_GATE = np.array([1, 1, 0, 0, -100, 1, 1, -100])
JOINT_CATEGORY_LABELS = np.array([0, 2, -100, -100, 1, 0, -100, -100])


def test_joint_metrics_by_hand():
    # Gold joint (Decline = 3): [0, 2, 3, 3, 1 (category-only row counts as Pick), 0, excl, excl].
    # Pred at 0.5:              [0, 1, 3, 2, 1, 3 (0.4 < 0.5 -> Decline)]  -> 3 of 6 right.
    # F1: class 0 P=1 R=1/2 -> 2/3; class 1 P=1/2 R=1 -> 2/3; class 2 -> 0; Decline P=1/2 R=1/2 -> 1/2.
    # Macro over the 4 present classes = (2/3 + 2/3 + 0 + 1/2) / 4 = 11/24.
    result = joint_metrics(JOINT_PICK, JOINT_CATEGORY, JOINT_GATE, JOINT_CATEGORY_LABELS)
    assert result == approx({"joint_accuracy": 0.5, "joint_macro_f1": 11 / 24, "joint_support": 6})
    # threshold 0.35: row 5 (0.4) becomes Pick -> argmax 0, correct -> 4/6.
    lower = joint_metrics(JOINT_PICK, JOINT_CATEGORY, JOINT_GATE, JOINT_CATEGORY_LABELS, threshold=0.35)
    assert lower["joint_accuracy"] == approx(4 / 6)
    assert joint_metrics(JOINT_PICK, JOINT_CATEGORY, np.full(8, -100), np.full(8, -100)) == {}


def test_joint_probs_columns_and_argmax_caveat():
    probs = joint_probs(np.array([0.9, 0.6]), np.array([[0.8, 0.1, 0.1], [0.34, 0.33, 0.33]]))
    assert probs[0] == approx([0.72, 0.09, 0.09, 0.1])
    assert probs.sum(axis=1) == approx([1.0, 1.0])
    # P(Pick) = 0.6 >= 0.5 picks by the threshold rule, yet the joint argmax is Decline.
    assert probs[1].argmax() == 3


def test_per_class_metrics_sorted_and_aligned():
    y_true = CATEGORY_LABELS
    y_pred = CATEGORY_PROBS.argmax(axis=1)
    id2label = {"0": "alpha", "1": "beta", "2": "gamma", "3": "delta"}  # JSON-style string keys
    rows = per_class_metrics(y_true, y_pred, id2label)
    assert [row["label"] for row in rows] == ["beta", "alpha", "delta", "gamma"]  # support 3, 2, 1, 0
    by_id = {row["id"]: row for row in rows}
    assert by_id[1] == approx(
        {"label": "beta", "id": 1, "support": 3, "precision": 1.0, "recall": 1 / 3, "f1": 0.5}
    )
    assert by_id[3]["precision"] == approx(1 / 3) and by_id[3]["recall"] == 1.0
    assert by_id[2] == {"label": "gamma", "id": 2, "support": 0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    # Equal support sorts by label.
    tied = per_class_metrics(np.array([0, 1]), np.array([0, 1]), {0: "zeta", 1: "eta"})
    assert [row["label"] for row in tied] == ["eta", "zeta"]


def test_frequency_bands_known_counts():
    # Sorted [1,1,1,1,2,3,10,50,100]: cuts at positions 8/3 -> 1 and 16/3 -> 3 + 7/3 = 5.33.
    # Counts equal to a cut go to the lower band, so the four 1s are all Low.
    counts = [100, 1, 3, 1, 50, 2, 1, 10, 1]
    assert frequency_bands(counts) == ["High", "Low", "Mid", "Low", "High", "Mid", "Low", "High", "Low"]
    # [1..6]: cuts 2.67 and 4.33.
    assert frequency_bands(np.array([6, 5, 4, 3, 2, 1])) == ["High", "High", "Mid", "Mid", "Low", "Low"]
    assert frequency_bands([5, 5, 5]) == ["Low", "Low", "Low"]
    assert frequency_bands([3, 9], quantiles=(0.5,), names=("rare", "common")) == ["rare", "common"]
    with pytest.raises(ValueError):
        frequency_bands([1, 2], names=("a", "b"))


def test_band_recall_and_f1():
    per_class = [
        {"id": 0, "label": "a", "support": 4, "recall": 0.5, "f1": 0.4},
        {"id": 1, "label": "b", "support": 2, "recall": 1.0, "f1": 0.8},
        {"id": 2, "label": "c", "support": 0, "recall": 0.0, "f1": 0.0},  # no support: excluded
        {"id": 3, "label": "d", "support": 1, "recall": 0.0, "f1": 0.0},
    ]
    bands = ["High", "Mid", "Low", "Mid"]
    assert band_recall(per_class, bands) == approx({"High": 0.5, "Mid": 0.5})  # (1.0 + 0.0) / 2
    assert band_f1(per_class, dict(enumerate(bands))) == approx({"High": 0.4, "Mid": 0.4})


def test_confusion_top_crafted():
    id2label = {0: "a", 1: "b", 2: "c", 3: "d"}
    y_true = np.array([0, 0, 0, 0, 0, 1, 1, 3, -100])
    y_pred = np.array([0, 1, 1, 2, 3, 0, 1, 3, 2])
    # a (support 5): b x2 = 0.4, then c and d x1 = 0.2 each (label order); k=2 keeps b, c.
    result = confusion_top(y_true, y_pred, id2label, k=2)
    assert result["a"] == [
        {"label": "b", "count": 2, "share": approx(0.4)},
        {"label": "c", "count": 1, "share": approx(0.2)},
    ]
    assert result["b"] == [{"label": "a", "count": 1, "share": approx(0.5)}]
    assert result["c"] == [] and result["d"] == []


def test_compute_all_keys_and_absent_heads():
    full = compute_all(JOINT_PICK, JOINT_CATEGORY, JOINT_GATE, JOINT_CATEGORY_LABELS)
    assert list(full) == [
        "gate_accuracy",
        "gate_precision",
        "gate_recall",
        "gate_f1",
        "gate_decline_leak",
        "gate_support",
        "category_accuracy",
        "category_macro_f1",
        "category_weighted_f1",
        "category_top1_accuracy",
        "category_top2_accuracy",
        "category_top3_accuracy",
        "category_support",
        "joint_accuracy",
        "joint_macro_f1",
        "joint_support",
    ]
    no_gate = compute_all(None, JOINT_CATEGORY, None, JOINT_CATEGORY_LABELS)
    assert set(no_gate) == {key for key in full if key.startswith("category_")}
    no_category = compute_all(JOINT_PICK, None, JOINT_GATE, None, prefix="test")
    assert set(no_category) == {"test_" + key for key in full if key.startswith("gate_")}


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def test_build_compute_metrics_tuple_predictions():
    category_probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.3, 0.6, 0.1], [0.25, 0.25, 0.5]])
    pick = np.array([0.8, 0.3, 0.6, 0.55])
    gate_labels = np.array([1, 0, 1, -100])
    category_labels = np.array([0, -100, 0, 2])
    expected = compute_all(pick, category_probs, gate_labels, category_labels, threshold=0.5)
    # Per-epoch ECE, one row per bin with 3 labelled rows: gate top-1 confidences 0.8, 0.7, 0.6, all right ->
    # (0.2 + 0.3 + 0.4) / 3; category: 0.5 right, 0.6 wrong, 0.5 right -> (0.5 + 0.6 + 0.5) / 3.
    expected.update(gate_ece=0.3, category_ece=1.6 / 3)

    two_class_gate = np.stack([np.zeros(4), _logit(pick)], axis=1)  # softmax column 1 = sigmoid(logit)
    eval_pred = EvalPrediction(
        predictions=(two_class_gate, np.log(category_probs) + 3.0),  # shift: softmax is invariant
        label_ids=(gate_labels, category_labels),
    )
    result = build_compute_metrics()(eval_pred)
    assert result == approx(expected)
    assert all(math.isfinite(value) for value in result.values())

    # A single gate logit per row is read through a sigmoid.
    single_logit = EvalPrediction(
        predictions=(_logit(pick)[:, None], np.log(category_probs)), label_ids=(gate_labels, category_labels)
    )
    assert build_compute_metrics()(single_logit) == approx(expected)

    # A head reported as None drops its keys and the joint ones.
    no_category = EvalPrediction(predictions=(two_class_gate, None), label_ids=(gate_labels, category_labels))
    assert set(build_compute_metrics()(no_category)) == {k for k in expected if k.startswith("gate_")}


def test_build_compute_metrics_single_arrays():
    category_probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    category_labels = np.array([0, 0, -100])
    # What the Trainer passes for a category-only model: bare arrays, not tuples.
    eval_pred = EvalPrediction(predictions=np.log(category_probs), label_ids=category_labels)
    result = build_compute_metrics(heads=("category",))(eval_pred)
    assert result["category_accuracy"] == approx(0.5) and result["category_support"] == 2
    assert not any(key.startswith(("gate_", "joint_")) for key in result)

    # Both heads but one bare label array: refuse rather than guess.
    ambiguous = EvalPrediction(predictions=(np.zeros((3, 2)), np.zeros((3, 2))), label_ids=category_labels)
    with pytest.raises(ValueError, match="label_names"):
        build_compute_metrics()(ambiguous)
    # Stacked (n, 2) labels are split into gate and category columns.
    stacked = EvalPrediction(
        predictions=(np.zeros((3, 2)), np.log(category_probs)),
        label_ids=np.array([[1, 0], [0, -100], [-100, 1]]),
    )
    assert build_compute_metrics()(stacked)["gate_support"] == 2
    with pytest.raises(ValueError):
        build_compute_metrics(heads=("gate", "other"))


def test_compute_metrics_scores_documents_from_windows():
    """--long_text chunk: window logits are recombined per document (given as the last label array, in any order)
    before any figure; two windows of document 0 disagree and their mean decides."""
    gate = np.array([[0.0, 3.0], [2.0, 0.0], [0.0, 0.1], [0.0, 2.0]], dtype=np.float32)  # rows 0 and 2: document 0
    category = np.array([[2.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 3.0]], dtype=np.float32)
    labels = (np.array([1, 0, 1, 1]), np.array([0, -100, 0, 1]), np.array([0, 1, 0, 2]))
    metrics = build_compute_metrics(chunk_aggregation="mean")(EvalPrediction((gate, category), labels))
    assert metrics["joint_support"] == 3  # three documents
    assert metrics["category_accuracy"] == 1.0  # document 0: mean logits (1.0, 0.5) → category 0
    assert metrics["gate_accuracy"] == 1.0
    by_max = build_compute_metrics(chunk_aggregation="max")(EvalPrediction((gate, category), labels))
    assert by_max["category_accuracy"] == 1.0  # max logits (2.0, 1.0) → category 0 as well


def test_check_metric_name_knows_the_computed_keys():
    compute = build_compute_metrics(heads=("gate",))
    check_metric_name("eval_gate_f1", compute, 0, ("gate",))
    check_metric_name("eval_loss", compute, 0, ("gate",))
    with pytest.raises(UsageError, match="'eval_category_macro_f1' is not a validation metric"):
        check_metric_name("eval_category_macro_f1", compute, 0, ("gate",))
    chunked = build_compute_metrics(chunk_aggregation="mean")  # labels end with the document index
    check_metric_name("category_macro_f1", chunked, 3, ("gate", "category"), chunked=True)
