"""Agreement between an exported model's scores and PyTorch's, by hand on small arrays."""

import numpy as np
import pytest

from multitask.export import agreement
from multitask.serve.predict import Scores


def test_agreement_counts_changed_decisions():
    reference = Scores(np.array([0.2, 0.6, 0.9]), np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]]))
    other = Scores(np.array([0.2, 0.4, 0.95]), np.array([[0.7, 0.3], [0.6, 0.4], [0.45, 0.55]]))
    result = agreement.agreement(reference, other, {"default": 0.5, "low": 0.1})
    assert result["max_abs_pick_prob_diff"] == pytest.approx(0.2)
    assert result["category_top1_agreement"] == pytest.approx(1 / 3)
    assert result["gate_decisions_changed"] == {"default": 1, "low": 0}
    # default: row 2 Pick→Decline, row 3's category changed; low: rows 2 and 3 change category.
    assert result["decisions_changed"] == {"default": 2, "low": 2}


def test_output_change_by_hand():
    reference = Scores(np.array([0.2, 0.6]), np.array([[0.7, 0.3], [0.4, 0.6]]))
    other = Scores(np.array([0.3, 0.6]), np.array([[0.5, 0.5], [0.4, 0.6]]))
    # Total variation 0.2 and 0 → mean 0.1; |Δ pick| 0.1 and 0 → mean 0.05.
    assert agreement.output_change(reference, other) == pytest.approx(0.15)
    gate_only = Scores(np.array([0.2, 0.6]), None)
    assert agreement.output_change(gate_only, Scores(np.array([0.2, 0.2]), None)) == pytest.approx(0.2)


def test_split_halves_are_seeded_disjoint_and_cover_every_row():
    first, second = agreement.split_halves(11)
    assert len(first) == 5 and len(second) == 6
    assert sorted([*first, *second]) == list(range(11)) and list(first) == sorted(first)
    assert np.array_equal(agreement.split_halves(11)[0], first)  # same seed, same halves
    assert not np.array_equal(agreement.split_halves(11, seed=1)[0], first)


def test_scores_rows_takes_every_field():
    scores = Scores(np.array([0.1, 0.9, 0.5]), np.eye(3), {"maha": np.array([1.0, 2.0, 3.0])})
    taken = scores.rows(np.array([2, 0]))
    assert taken.pick_prob.tolist() == [0.5, 0.1] and taken.category_probs.tolist() == [[0, 0, 1], [1, 0, 0]]
    assert taken.gate_scores["maha"].tolist() == [3.0, 1.0] and taken.features is None


def test_meets_targets_by_hand():
    good = {"rows": 200, "category_top1_agreement": 0.995, "gate_decisions_changed": {"a": 0, "b": 1}}
    assert agreement.meets_targets(good, 0.995, 0.005)  # 1 of 200 = 0.5 % at the worst threshold
    assert not agreement.meets_targets({**good, "gate_decisions_changed": {"a": 2}}, 0.995, 0.005)
    assert not agreement.meets_targets(good, 0.996, None)
    assert agreement.meets_targets({"rows": 5}, 0.995, 0.0)  # no heads' figures: nothing to miss
