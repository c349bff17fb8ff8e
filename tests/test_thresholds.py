from __future__ import annotations

import numpy as np
import pytest

from multitask.scoring.metrics import gate_metrics
from multitask.scoring.thresholds import (
    candidate_thresholds,
    leak_upper_bound,
    resolve_threshold,
    search_gate_thresholds,
)

approx = pytest.approx

# 13 labelled rows, sorted by score (P = Pick, D = Decline; "x" = category head wrong), 6 P and 7 D,
# plus two unlabelled rows with extreme scores that must not matter.
# Taking the top m rows as Pick (TP, FP -> F1 = 2TP/(TP+FP+6), acc = (TP+7-FP)/13, leak = FP/7):
#   m=2  (.90 P)  TP2 FP0: F1 .500  acc 9/13   leak 0    end-to-end 2/6
#   m=5  (.70 P)  TP4 FP1: F1 .727  acc 10/13  leak 1/7  <- best accuracy
#   m=10 (.40 P)  TP6 FP4: F1 .750  acc 9/13   leak 4/7  <- best F1
# With max leak 0.05 only m <= 2 qualifies (FP = 0), and m=2 has the best end-to-end accuracy.
SCORES = np.array([0.95, 0.90, 0.85, 0.80, 0.70, 0.60, 0.55, 0.52, 0.50, 0.40, 0.30, 0.20, 0.10, 0.99, 0.01])
GOLD = np.array([1, 1, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, -100, -100])
CORRECT = np.array([1, 1, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1], dtype=bool)  # .80 P is "x"


def test_candidates_are_midpoints_with_outer_bounds():
    assert candidate_thresholds(np.array([0.2, 0.8, 0.2])) == approx([0.1, 0.5, 0.9])
    assert candidate_thresholds(np.array([0.0, 1.0])) == approx([0.0, 0.5, 1.0])


def test_three_criteria_differ_and_are_exact():
    result = search_gate_thresholds(SCORES, GOLD, category_correct=CORRECT, max_decline_leak=0.05)
    assert result["f1"]["threshold"] == approx(0.35)  # between .40 and .30
    assert result["f1"]["gate_f1"] == approx(0.75)
    assert result["acc"]["threshold"] == approx(0.65)  # between .70 and .60
    assert result["acc"]["gate_accuracy"] == approx(10 / 13)
    leak = result["leak"]
    assert leak["threshold"] == approx(0.875)  # between .90 and .85
    assert leak["gate_decline_leak"] == 0.0 and leak["met_target"] is True
    assert leak["category_accuracy_end_to_end"] == approx(2 / 6)
    assert "note" not in leak
    # Entries agree with the evaluation-time metrics at their threshold.
    for entry in result.values():
        metrics = gate_metrics(SCORES, GOLD, entry["threshold"])
        assert entry["gate_f1"] == approx(metrics["gate_f1"])
        assert entry["gate_decline_leak"] == approx(metrics["gate_decline_leak"])


def test_leak_target_loosened_moves_threshold_down():
    # 1/7 leak allowed: m=5 (FP=1) qualifies and has the best end-to-end accuracy (3/6).
    result = search_gate_thresholds(SCORES, GOLD, category_correct=CORRECT, max_decline_leak=0.15)
    assert result["leak"]["threshold"] == approx(0.65)
    assert result["leak"]["category_accuracy_end_to_end"] == approx(3 / 6)


def test_category_correct_ties_break_by_f1():
    # Scores .9 P ok, .8 D, .7 D, .65 D, .6 P wrong-category, .1 D; allowed leak 3/4.
    # End-to-end accuracy is 1/2 for m = 1..5 -> higher F1 wins: m=1 (2/3) over m=5 (4/7) -> 0.85.
    # Without category_correct, Pick recall decides: m=5 (recall 1) -> between .6 and .1 = 0.35.
    scores = np.array([0.9, 0.8, 0.7, 0.65, 0.6, 0.1])
    gold = np.array([1, 0, 0, 0, 1, 0])
    correct = np.array([1, 0, 0, 0, 0, 0], dtype=bool)
    with_category = search_gate_thresholds(scores, gold, correct, max_decline_leak=0.75)
    assert with_category["leak"]["threshold"] == approx(0.85)
    assert search_gate_thresholds(scores, gold, max_decline_leak=0.75)["leak"]["threshold"] == approx(0.35)


def test_grid_ties_take_lower_threshold():
    # Every grid point gives the same split -> lowest wins.
    result = search_gate_thresholds(np.array([0.9, 0.1]), np.array([1, 0]), grid=np.array([0.7, 0.2, 0.5]))
    assert {entry["threshold"] for entry in result.values()} == {0.2}


def test_leak_target_unreachable():
    # A Decline scored 1.0 is Pick at every threshold in [0, 1]: leak >= 1/2 everywhere.
    # Lowest leak (1/2) at 0.55, 0.9, 1.0 -> best recall (1) at 0.55.
    result = search_gate_thresholds(np.array([1.0, 0.8, 0.3]), np.array([0, 1, 0]), max_decline_leak=0.0)
    assert result["leak"]["met_target"] is False
    assert result["leak"]["threshold"] == approx(0.55)
    assert result["leak"]["gate_decline_leak"] == approx(0.5)
    # Same with a coarse grid on the main data: at 0.2 six of seven Declines pass, at 0.1 all.
    coarse = search_gate_thresholds(SCORES, GOLD, grid=np.array([0.1, 0.2]), max_decline_leak=0.05)
    assert coarse["leak"]["met_target"] is False and coarse["leak"]["threshold"] == approx(0.2)


def test_degenerate_labels_give_notes_not_crashes():
    no_decline = search_gate_thresholds(np.array([0.9, 0.4]), np.array([1, 1]))
    assert "Decline" in no_decline["f1"]["note"]
    assert no_decline["f1"]["threshold"] == approx(0.2)  # let everything through
    no_pick = search_gate_thresholds(np.array([0.9, 0.4]), np.array([0, 0]), category_correct=np.zeros(2))
    assert "Pick" in no_pick["acc"]["note"]
    assert no_pick["acc"]["threshold"] == approx(0.95)  # nothing through
    empty = search_gate_thresholds(np.array([0.3]), np.array([-100]))
    for entry in [*no_decline.values(), *no_pick.values(), *empty.values()]:
        assert 0.0 <= entry["threshold"] <= 1.0
    assert empty["leak"]["met_target"] is False and "note" in empty["f1"]


def test_search_matches_brute_force_on_random_scores():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, size=40)
    scores = np.clip(0.3 * gold + 0.7 * rng.random(40), 0, 1)
    result = search_gate_thresholds(scores, gold)
    # Every score as a threshold realises every split but "nothing Pick", which t = 1.0 adds.
    dense = [gate_metrics(scores, gold, t) for t in np.concatenate([scores, np.linspace(0, 1, 101)])]
    assert result["f1"]["gate_f1"] == approx(max(m["gate_f1"] for m in dense))
    assert result["acc"]["gate_accuracy"] == approx(max(m["gate_accuracy"] for m in dense))


def test_resolve_threshold():
    stored = {"default": 0.5, "f1": 0.43, "acc": 0.61}
    assert resolve_threshold("f1", stored) == 0.43
    assert resolve_threshold("default", stored) == 0.5
    assert resolve_threshold(0.7, stored) == 0.7
    assert resolve_threshold("0.25", None) == 0.25
    assert resolve_threshold(1, None) == 1.0
    with pytest.raises(ValueError, match="acc, default, f1"):
        resolve_threshold("leak", stored)
    with pytest.raises(ValueError, match="none"):
        resolve_threshold("f1", None)
    for bad in (1.5, -0.1, "2", "nan"):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            resolve_threshold(bad, stored)
    with pytest.raises(ValueError, match="stored threshold"):
        resolve_threshold("f1", {"f1": 1.2})


def test_cost_threshold_minimises_expected_cost_hand_checked():
    from multitask.scoring.thresholds import review_band  # noqa: F401  (same module)

    scores = np.array([0.9, 0.8, 0.6, 0.4, 0.7, 0.3])
    gold = np.array([1, 1, 1, 1, 0, 0])
    correct = np.array([True, True, False, True, False, False])
    # leak 10 per Decline let through, miss 1, wrong 1, share = validation's 2/6:
    # t=0.65 (Pick 0.9, 0.8, 0.7): leak 1/2, miss 2/4, wrong 0 -> 1/3*10*0.5 + 2/3*(0.5) = 2.0
    # t=0.75 (Pick 0.9, 0.8):      leak 0,   miss 2/4, wrong 0 -> 2/3*0.5 = 0.333
    # t=0.5  (0.9 0.8 0.6 0.7):    leak 1/2, miss 1/4, wrong 1/4 -> 1.667 + 2/3*0.5 = 2.0
    # t=0.85 (0.9):                leak 0, miss 3/4 -> 0.5
    result = search_gate_thresholds(scores, gold, correct, costs={"leak": 10.0, "miss": 1.0, "wrong": 1.0,
                                                                  "oos_share": None})
    assert result["cost"]["threshold"] == approx(0.75)
    assert result["cost"]["expected_cost"] == approx(1 / 3)
    # with Decline items rarer in use (share 1 %), letting 0.7 through is cheaper than declining 0.6
    cheap = search_gate_thresholds(scores, gold, correct, costs={"leak": 10.0, "miss": 1.0, "wrong": 0.0,
                                                                 "oos_share": 0.01})
    assert cheap["cost"]["threshold"] < 0.6
    assert "cost" not in search_gate_thresholds(scores, gold, correct)


def test_review_band_holds_the_share_around_the_threshold():
    from multitask.scoring.thresholds import review_band

    scores = np.arange(10) / 10  # 0.0 ... 0.9
    low, high = review_band(scores, 0.5, 0.4)  # 2 rows below 0.5 (0.3, 0.4) and 2 from it (0.5, 0.6)
    assert (low, high) == approx((0.25, 0.65))
    assert ((scores >= low) & (scores < high)).sum() == 4
    assert review_band(scores, 0.5, 0.0) == (0.5, 0.5)
    assert review_band(scores, 0.05, 0.4)[0] == 0.0  # clipped at the lowest score


def test_leak_upper_bound_by_hand():
    from multitask.scoring.thresholds import leak_upper_bound

    # No leaked row of 100: the bound solves (1 - p)^100 = 0.05.
    assert leak_upper_bound(np.array([0]), 100, 0.95)[0] == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-9)
    # All rows leaked, or no Decline row at all: nothing can be promised.
    assert leak_upper_bound(np.array([10]), 10, 0.95)[0] == 1.0
    assert leak_upper_bound(np.array([0]), 0, 0.95)[0] == 1.0
    bounds = leak_upper_bound(np.array([0, 5, 10]), 100, 0.95)
    assert np.all(np.diff(bounds) > 0) and np.all(bounds > np.array([0, 5, 10]) / 100)


def test_guaranteed_leak_threshold_is_stricter_and_says_what_it_rests_on():
    rng = np.random.default_rng(0)
    gold = np.array([1] * 300 + [0] * 100)
    scores = np.concatenate([rng.beta(5, 2, 300), rng.beta(2, 5, 100)])
    point = search_gate_thresholds(scores, gold, max_decline_leak=0.1)["leak"]
    sure = search_gate_thresholds(scores, gold, max_decline_leak=0.1, confidence=0.95)["leak"]
    assert sure["threshold"] > point["threshold"]
    assert sure["confidence"] == 0.95 and sure["decline_rows"] == 100 and sure["met_target"]
    assert sure["leak_upper_bound"] <= 0.1
    # Its point leak is well inside the target: the bound is what had to fit.
    assert sure["gate_decline_leak"] < point["gate_decline_leak"] <= 0.1
    # Too few Decline rows for the promise: not met, and the lowest bound is kept.
    few = search_gate_thresholds(scores[-20:], gold[-20:] * 0, max_decline_leak=0.05, confidence=0.95)["leak"]
    assert not few["met_target"] and few["leak_upper_bound"] > 0.05


def test_pick_declined_target_is_checked_beside_the_leak_target():
    # Pick rows 0.9 0.8 0.7 0.6 0.3, Decline rows 0.5 0.2 0.1 0.05. No Decline let through means a threshold above
    # 0.5, which declines the Pick row at 0.3: 1 of 5 = 0.2 of Pick rows.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.5, 0.2, 0.1, 0.05])
    gold = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0])
    met = search_gate_thresholds(scores, gold, max_decline_leak=0.0, max_pick_declined=0.2)["leak"]
    assert met["threshold"] == pytest.approx(0.55) and met["met_target"] and met["pick_declined_met"]
    assert met["max_pick_declined"] == 0.2 and met["pick_rows"] == 5
    missed = search_gate_thresholds(scores, gold, max_decline_leak=0.0, max_pick_declined=0.1)["leak"]
    # The two targets conflict: the Pick-declined one is dropped, the leak threshold stays what it was.
    assert missed["threshold"] == pytest.approx(0.55) and missed["met_target"] and not missed["pick_declined_met"]
    assert "pick_declined_upper_bound" not in missed  # no confidence, no bound


def test_two_guaranteed_targets_share_the_allowed_error():
    rng = np.random.default_rng(1)
    gold = np.array([1] * 300 + [0] * 100)
    scores = np.concatenate([rng.beta(5, 2, 300), rng.beta(2, 5, 100)])
    one = search_gate_thresholds(scores, gold, max_decline_leak=0.1, confidence=0.95)["leak"]
    both = search_gate_thresholds(scores, gold, max_decline_leak=0.1, confidence=0.95, max_pick_declined=0.5)["leak"]
    # Each bound at 97.5 %: together they hold with 95 % (union bound), and the leak bound is stricter.
    assert both["confidence"] == pytest.approx(0.975) and both["threshold"] >= one["threshold"]
    declined = int(round((1 - both["gate_recall"]) * 300))
    assert both["pick_declined_upper_bound"] == pytest.approx(leak_upper_bound(np.array([declined]), 300, 0.975)[0])
    assert both["pick_declined_met"] and both["pick_declined_upper_bound"] <= 0.5
