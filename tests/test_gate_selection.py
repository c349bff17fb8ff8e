"""Choosing the gate score and thresholds on validation, and the held-out-fold estimate."""

import numpy as np
from pytest import approx

from multitask.scoring.gate_selection import (
    choose_gate,
    cross_validate_gate,
    decision_figures,
    reweighted_figures,
)


def test_decision_figures_hand_checked():
    gold = np.array([1, 1, 1, 1, 0, 0])
    pick = np.array([True, True, False, True, False, True])
    correct = np.array([True, False, True, True, False, False])
    figures = decision_figures(pick, gold, correct)
    assert figures["in_scope_accuracy"] == approx(2 / 4)  # rows 0 and 3: let through and right
    assert figures["oos_recall"] == approx(1 / 2)
    assert figures["false_decline_rate"] == approx(1 / 4)
    assert figures["gate_accuracy"] == approx(4 / 6)


def test_reweighted_figures_formula():
    rows = reweighted_figures({"in_scope_accuracy": 0.9, "oos_recall": 0.7, "false_decline_rate": 0.02}, (0.2,))
    assert rows[0]["joint_accuracy"] == approx(0.8 * 0.9 + 0.2 * 0.7)
    assert rows[0]["decline_precision"] == approx(0.14 / (0.14 + 0.8 * 0.02))


def _data(seed=0, n_pick=200, n_oos=40):
    rng = np.random.default_rng(seed)
    gold = np.array([1] * n_pick + [0] * n_oos)
    good = np.where(gold == 1, rng.uniform(0.4, 1.0, gold.size), rng.uniform(0.0, 0.5, gold.size))
    noise = rng.uniform(0, 1, gold.size)
    correct = (gold == 1) & (rng.uniform(0, 1, gold.size) < 0.9)
    return {"good": good, "noise": noise}, gold, correct


def test_choose_gate_prefers_the_separating_score():
    scores, gold, correct = _data()
    name, search = choose_gate(scores, gold, correct, ["noise", "good"], max_decline_leak=0.3)
    assert name == "good"
    assert search["leak"]["met_target"]
    # a single candidate is returned as is
    assert choose_gate(scores, gold, correct, ["noise"], 0.3)[0] == "noise"


def test_cross_validation_is_held_out_and_reports_intervals():
    scores, gold, correct = _data()
    gold_with_ignored = np.concatenate([gold, [-100]])
    scores = {name: np.concatenate([value, [0.5]]) for name, value in scores.items()}
    correct = np.concatenate([correct, [False]])
    cv = cross_validate_gate(scores, gold_with_ignored, correct, ["noise", "good"], 0.3, folds=4, seed=0,
                             bootstrap_rounds=200)
    assert cv["folds"] == 4 and cv["rows"] == 240 and cv["oos_rows"] == 40
    assert cv["chosen_per_fold"] == ["good"] * 4
    leak = cv["operating_points"]["leak"]
    low, high = leak["interval"]["oos_recall"]
    assert low <= leak["pooled"]["oos_recall"] <= high
    # the good score separates perfectly above 0.5 / below 0.4: held-out recall high, in-scope accuracy ~ 0.9
    assert leak["pooled"]["oos_recall"] >= 0.7
    assert leak["pooled"]["in_scope_accuracy"] == approx(correct[:200].mean(), abs=0.1)
    assert cv["per_score"]["good"]["auroc"] > 0.9 > cv["per_score"]["noise"]["auroc"]
    assert cv["reweighted"]["leak"][0]["oos_share"] == approx(40 / 240)


def test_held_out_estimate_is_less_optimistic_than_same_rows():
    """On pure noise, a threshold fitted and reported on the same rows looks better than it is; held out it does not."""
    rng = np.random.default_rng(3)
    gold = np.array([1] * 300 + [0] * 30)
    correct = gold == 1
    noise = {"noise": rng.uniform(0, 1, gold.size)}
    same_rows = choose_gate(noise, gold, correct, ["noise"], 0.3)[1]["leak"]
    assert 1 - same_rows["gate_decline_leak"] >= 0.7  # the target, met on the rows that chose the threshold
    held_out = cross_validate_gate(noise, gold, correct, ["noise"], 0.3, folds=5, bootstrap_rounds=50)
    assert held_out["operating_points"]["leak"]["pooled"]["oos_recall"] < 1 - same_rows["gate_decline_leak"]


def test_too_few_rows_for_cross_validation():
    cv = cross_validate_gate({"s": np.array([0.1, 0.9, 0.8])}, np.array([0, 1, 1]), None, ["s"], 0.3)
    assert "note" in cv


def test_guarantee_is_split_over_the_candidate_scores():
    from multitask.scoring.gate_selection import per_score_confidence

    assert per_score_confidence(None, 8) is None
    assert per_score_confidence(0.95, 1) == approx(0.95)
    assert per_score_confidence(0.95, 8) == approx(1 - 0.05 / 8)
    rng = np.random.default_rng(1)
    gold = np.array([1] * 200 + [0] * 200)
    scores = {name: np.concatenate([rng.beta(5, 2, 200), rng.beta(2, 5, 200)]) for name in ("a", "b")}
    correct = np.ones(400, dtype=bool)
    _, search = choose_gate(scores, gold, correct, ["a", "b"], 0.2, confidence=0.9)
    assert search["leak"]["confidence"] == approx(0.95)


def test_fixed_thresholds_are_scored_as_stored_with_exact_intervals():
    from multitask.scoring.gate_selection import fixed_threshold_figures

    scores = np.array([0.9, 0.4, 0.8, 0.2, 0.7])
    gold = np.array([1, 1, 0, 0, -100])  # the unlabelled row is left out
    correct = np.array([True, True, False, False, True])
    result = fixed_threshold_figures(scores, gold, correct, {"a": 0.5, "b": 0.1})
    assert result["rows"] == 4 and result["oos_rows"] == 2
    a = result["operating_points"]["a"]
    assert a["threshold"] == 0.5
    # Let through: 0.9 (Pick, right) and 0.8 (Decline): in-scope 1/2, OOS recall 1/2, 1 of 2 Pick rows declined.
    assert a["figures"] == approx({"in_scope_accuracy": 0.5, "oos_recall": 0.5, "false_decline_rate": 0.5,
                                   "gate_accuracy": 0.5})
    low, high = a["exact_interval"]["oos_recall"]
    # Clopper–Pearson of 1 in 2: Beta(1, 2) and Beta(2, 1) quantiles, 1 - sqrt(0.975) and sqrt(0.975).
    assert low == approx(1 - 0.975 ** 0.5) and high == approx(0.975 ** 0.5)
    b = result["operating_points"]["b"]["figures"]
    assert b["in_scope_accuracy"] == 1.0 and b["oos_recall"] == 0.0
