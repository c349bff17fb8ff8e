from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis.__main__ import main
from analysis.safety import category_safety, gate_safety, load_cost_matrix, mean_cost
from multitask.errors import DataError, UsageError

approx = pytest.approx

# 5 critical rows (DENY ×4, REFUSE ×1); 3 of them predicted ALLOW → critical-as-allowed = 3/5.
GOLD = ["DENY", "DENY", "DENY", "DENY", "REFUSE", "ALLOW", "ALLOW", "ALLOW"]
PRED = ["ALLOW", "ALLOW", "DENY", "REFUSE", "ALLOW", "ALLOW", "ALLOW", "DENY"]
COSTS = "gold,ALLOW,DENY,REFUSE\nALLOW,0,1,1\nDENY,10,0,2\nREFUSE,5,2,0\n"


def test_critical_as_allowed_rate_and_interval():
    result = category_safety(GOLD, PRED, "ALLOW", ["DENY", "REFUSE"], resamples=2000, seed=3)
    rate = result["critical_as_allowed"]
    assert (rate["rate"], rate["count"], rate["rows"]) == (approx(0.6), 3, 5)
    # Clopper-Pearson 3 of 5: Beta(0.025; 3, 3) and Beta(0.975; 4, 2) (R: binom.test(3, 5)$conf.int).
    assert rate["ci95"] == approx([0.1466328, 0.9472550], abs=1e-6)
    assert rate["ci_method"] == "Clopper-Pearson exact"
    wilson = category_safety(GOLD, PRED, "ALLOW", ["DENY", "REFUSE"], interval="wilson")["critical_as_allowed"]
    assert wilson["ci95"] == approx([0.2307, 0.8824], abs=1e-4) and wilson["ci_method"] == "Wilson score"
    assert result["accuracy"] == approx(3 / 8)
    # ALLOW: TP 2, P 2/5, R 2/3; DENY: TP 1, P 1/2, R 1/4; REFUSE: P 0, R 0.
    assert result["per_class_f1"]["ALLOW"] == approx(2 * 0.4 * (2 / 3) / (0.4 + 2 / 3))
    assert result["per_class_f1"]["DENY"] == approx(1 / 3)
    assert result["macro_f1"] == approx((result["per_class_f1"]["ALLOW"] + 1 / 3 + 0) / 3)
    assert result["mean_cost"] is None


def test_cost_matrix_mean_cost_by_hand(tmp_path):
    path = tmp_path / "costs.csv"
    path.write_text(COSTS, encoding="utf-8")
    costs = load_cost_matrix(path)
    # Row costs: 10, 10, 0, 2, 5, 0, 0, 1 → 28 / 8.
    assert mean_cost(GOLD, PRED, costs) == approx(28 / 8)
    unnamed = tmp_path / "unnamed.csv"
    unnamed.write_text(COSTS.replace("gold,", ",", 1), encoding="utf-8")
    assert mean_cost(GOLD, PRED, load_cost_matrix(unnamed)) == approx(28 / 8)
    with pytest.raises(DataError, match=r"costs\.csv: no row \(gold\) for label\(s\) 'OTHER'"):
        mean_cost([*GOLD, "OTHER"], [*PRED, "ALLOW"], costs, str(path))


def test_unknown_allow_label_is_an_error():
    with pytest.raises(UsageError, match="'ALOW'"):
        category_safety(GOLD, PRED, "ALOW", ["DENY"])


def test_gate_decline_as_pick():
    result = gate_safety(np.array([0, 0, 0, 0, 1]), np.array([1, 0, 0, 1, 1]))
    assert result["decline_as_pick"]["rate"] == approx(0.5)
    assert result["decline_as_pick"]["rows"] == 4


def test_cli_writes_safety_json(tmp_path, capsys):
    frame = pd.DataFrame(
        {"text": list("abcdefgh"), "category": GOLD, "category_pred": PRED, "category_prob": 0.9}
    )
    csv = tmp_path / "preds.csv"
    frame.to_csv(csv, index=False)
    (tmp_path / "costs.csv").write_text(COSTS, encoding="utf-8")
    argv = [str(csv), "--allow_label", "ALLOW", "--critical_labels", "DENY,REFUSE"]
    main(
        [
            *argv,
            "--cost_matrix",
            str(tmp_path / "costs.csv"),
            "--bootstrap",
            "0",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    safety = json.loads((tmp_path / "o" / "preds_safety.json").read_text(encoding="utf-8"))
    category = safety["splits"]["preds"]["category"]
    assert category["critical_as_allowed"] == {"rate": approx(0.6), "count": 3, "rows": 5,
                                               "ci95": approx([0.1466328, 0.9472550], abs=1e-6),
                                               "ci_method": "Clopper-Pearson exact"}
    assert category["mean_cost"] == approx(3.5) and category["mean_cost_ci95"] is None  # --bootstrap 0
    assert "gate" not in safety["splits"]["preds"]
    assert "critical-as-allowed rate | 0.600 = 3/5 (95% CI 0.147–0.947, Clopper-Pearson exact)" in (
        capsys.readouterr().out
    )
    with pytest.raises(UsageError, match="go together"):
        main([str(csv), "--allow_label", "ALLOW"])
