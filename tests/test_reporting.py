"""multitask.train.reporting: which validation rows each report sees, and the gate tuning built on them (values by hand)."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset

from multitask.serve.predict import Scores
from multitask.train.reporting import calibrate_heads, category_bands, summarize_gate_cv, tune_gate

# Gold: three Pick rows (categories 0, 1 and none), two Decline rows, one row without a gate label.
VALIDATION = Dataset.from_dict({"gate_labels": [1, 1, 1, 0, 0, -100], "category_labels": [0, 1, -100, -100, -100, -100]})
PICK = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.5])
# Argmax category 0 everywhere: right on row 0, wrong on row 1; row 2 has no category, so it counts as right.
CATEGORY_PROBS = np.array([[0.9, 0.1], [0.8, 0.2]] + [[0.5, 0.5]] * 4)


def scores() -> Scores:
    return Scores(PICK, CATEGORY_PROBS, {"pick": PICK})


def test_category_bands_count_only_rows_with_a_category():
    # Counts (3, 2, 1): quantile cuts 1.67 and 2.33 put them in High, Mid, Low.
    assert category_bands([0, 0, 0, 1, 1, 2, -100, -100], 3, [1 / 3, 2 / 3]) == ["High", "Mid", "Low"]


def test_tune_gate_thresholds_and_default_on_a_probability_score():
    result = tune_gate(scores(), VALIDATION, "pick", ["pick"], max_decline_leak=0.0, folds=0)
    assert result["gate_score"] == "pick" and result["cv"] is None and result["review_bands"] == {}
    assert result["default_threshold"] == 0.5 and result["default_source"].startswith("0.5")
    leak = result["search"]["leak"]
    # 0.5 separates the five labelled rows; two of the three Pick rows also get the right category.
    assert leak["threshold"] == 0.5 and leak["gate_decline_leak"] == 0.0 and leak["gate_support"] == 5
    assert leak["category_accuracy_end_to_end"] == pytest.approx(2 / 3)


def test_unavailable_gate_score_falls_back_to_pick(caplog):
    assert tune_gate(scores(), VALIDATION, "maha", ["pick"], 0.0, folds=0)["gate_score"] == "pick"
    assert "not available" in caplog.text


def test_review_band_figures_by_hand():
    bands = tune_gate(scores(), VALIDATION, "pick", ["pick"], 0.0, folds=0, review_share=0.4)["review_bands"]
    # 40 % of the 5 labelled rows around 0.5: scores 0.7 and 0.3 go to review, band [0.25, 0.75).
    # Right without review: rows 0, 2 (Pick, right category), 3, 4 (declined) = 4 of 5; row 1 has the wrong category.
    # Decided rows 0, 1, 4: 2 of 3 right.
    assert bands["default"] == {"band": [0.25, 0.75], "review_share": pytest.approx(0.4),
                                "accuracy_on_rest": pytest.approx(2 / 3), "accuracy_without_review": pytest.approx(0.8)}
    assert set(bands) == {"f1", "acc", "leak", "default"}


def test_summarize_gate_cv_rounds_and_keeps_a_note():
    assert summarize_gate_cv({"note": "too few rows"}) == {"note": "too few rows"}
    point = {"pooled": {"in_scope_accuracy": 0.912345, "oos_recall": 0.8},
             "interval": {"in_scope_accuracy": [0.85, 0.95], "oos_recall": [0.7, 0.9]},
             "fold_mean": {"in_scope_accuracy": 0.9, "oos_recall": 0.81}, "fold_sd": {"in_scope_accuracy": 0.02,
                                                                                      "oos_recall": 0.05}}
    summary = summarize_gate_cv({"folds": 5, "chosen_per_fold": ["pick"] * 5, "operating_points": {"leak": point}})
    assert summary["folds"] == 5 and summary["leak"]["in_scope_accuracy"] == {
        "held_out": 0.9123, "interval_95": [0.85, 0.95], "fold_mean_sd": [0.9, 0.02]}


def test_calibrate_heads_uses_labelled_rows_of_each_head_only():
    # Gate logits 4 nats apart, right on 3 of the 4 labelled rows: over-confident, so T > 1.
    gate_logits = np.array([[0.0, 4.0], [0.0, 4.0], [0.0, 4.0], [0.0, 4.0], [0.0, 4.0], [9.0, -9.0]])
    validation = Dataset.from_dict({"gate_labels": [1, 1, 1, 0, -100, -100], "category_labels": [-100] * 6})
    report = calibrate_heads(Scores(None, None, gate_logits=gate_logits, category_logits=np.zeros((6, 2))), validation)
    assert set(report) == {"temperatures", "reliability", "gate"}  # no category labels: no category entry
    assert report["gate"]["before"]["rows"] == 4 and report["temperatures"]["gate_temperature"] > 1
    assert report["gate"]["after"]["nll"] < report["gate"]["before"]["nll"]
