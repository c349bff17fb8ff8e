"""analysis.shift: the gate's operating point on a labelled sample of new data against a run's promise."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import analysis.__main__ as analysis_cli
from analysis.shift import figures_at, shift_report
from multitask.errors import UsageError


def write_run(run_dir, threshold=0.5, confidence=None):
    run_dir.mkdir()
    leak = {"threshold": threshold, "max_decline_leak": 0.3, "met_target": True}
    if confidence:
        leak["confidence"] = confidence
    (run_dir / "thresholds.json").write_text(json.dumps({"gate_score": "pick", "leak": leak}))
    pooled = {"in_scope_accuracy": 0.9, "oos_recall": 0.8, "false_decline_rate": 0.05}
    interval = {"in_scope_accuracy": [0.85, 0.95], "oos_recall": [0.7, 0.9], "false_decline_rate": [0.02, 0.08]}
    (run_dir / "gate_cv.json").write_text(json.dumps(
        {"operating_points": {"leak": {"pooled": pooled, "interval": interval}}}))
    return run_dir


def write_sample(path, decline_probs, pick_probs, wrong_category=0):
    rows = [{"title": f"d{i}", "pick": 0, "category": "", "pick_prob": p, "category_pred": "a"}
            for i, p in enumerate(decline_probs)]
    rows += [{"title": f"p{i}", "pick": 1, "category": "a", "pick_prob": p,
              "category_pred": "b" if i < wrong_category else "a"} for i, p in enumerate(pick_probs)]
    frame = pd.DataFrame(rows)
    frame["pick_pred"] = (frame["pick_prob"] >= 0.5).astype(int)  # as run_predict.py writes it
    frame.to_csv(path, index=False)
    return path


def test_figures_at_counts_by_hand():
    pick_prob = np.array([0.1, 0.6, 0.7, 0.4, 0.9])
    gate = np.array([0, 0, 1, 1, 1])
    correct = np.array([False, False, True, True, False])
    figures = figures_at(pick_prob, gate, correct, 0.5)
    assert figures["oos_recall"]["value"] == 0.5  # one of two Decline rows stopped
    assert figures["false_decline_rate"]["value"] == pytest.approx(1 / 3)  # the 0.4 Pick row
    assert figures["in_scope_accuracy"]["value"] == pytest.approx(1 / 3)  # only 0.7 passes and is right
    assert figures["oos_recall"]["interval"][0] < 0.5 < figures["oos_recall"]["interval"][1]


def test_shift_report_flags_a_recall_drop_and_suggests_a_threshold(tmp_path):
    run = write_run(tmp_path / "run")
    # Out-of-scope items now score higher: at 0.5 only 40 of 100 are stopped (promised 80 %).
    declines = [0.3] * 40 + [0.6] * 40 + [0.8] * 20
    sample = write_sample(tmp_path / "new.csv", declines, [0.95] * 100, wrong_category=5)
    report = shift_report(sample, run)
    assert report["sample"]["oos_recall"]["value"] == 0.4
    assert report["moved"]["oos_recall"] == pytest.approx(-0.4)
    assert "oos_recall" in report["outside_promise"]
    assert report["sample"]["in_scope_accuracy"]["value"] == 0.95
    suggested = report["suggested"]
    # Restoring recall >= 70 %: the threshold must stop the 0.6 rows too, and still let the 0.95 Pick rows through.
    assert 0.6 < suggested["threshold"] < 0.95 and suggested["met_target"]
    assert suggested["sample"]["oos_recall"]["value"] >= 0.8


def test_analysis_cli_writes_the_shift_files(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    sample = write_sample(tmp_path / "new.csv", [0.1] * 30 + [0.9] * 10, [0.9] * 40)
    results = analysis_cli.main([str(sample), "--promise", str(run), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "new_shift.md").is_file() and (tmp_path / "out" / "new_shift.json").is_file()
    assert results["shift"]["new"]["sample"]["oos_recall"]["value"] == 0.75
    assert "Operating point on new data" in capsys.readouterr().out


def test_promise_needs_a_run_with_thresholds(tmp_path):
    sample = write_sample(tmp_path / "new.csv", [0.1], [0.9])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no thresholds.json"):
        shift_report(sample, tmp_path / "empty")
    with pytest.raises(UsageError, match="no such threshold"):
        shift_report(sample, write_run(tmp_path / "run"), kind="cost")
    with pytest.raises(UsageError, match="not a directory"):
        analysis_cli.main([str(sample), "--promise", str(tmp_path / "nope")])
