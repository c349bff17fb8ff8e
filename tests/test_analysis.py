from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from analysis import InputError, read_predictions
from analysis.__main__ import main

approx = pytest.approx

# Category head, hand-checked. Gold → predicted:
#   A ×4 → A, A, B, C     B ×3 → B, B, A     C ×2 → A, A     D ×1 → D     E ×1 → B (E is never predicted)
# plus one row without a gold label. Predicted counts: A 5, B 4, C 1, D 1.
#   A: TP 2, P 2/5, R 2/4     B: TP 2, P 2/4, R 2/3     C: P 0, R 0     D: P 1, R 1     E: P 0, R 0
PAIRS = [("A", "A")] * 2 + [("A", "B"), ("A", "C")] + [("B", "B")] * 2 + [("B", "A")]
PAIRS += [("C", "A")] * 2 + [("D", "D"), ("E", "B"), ("", "A")]
LABELS = ["A", "B", "C", "D", "E"]
TRAIN_COUNTS = {"A": 100, "B": 50, "C": 10, "D": 5, "E": 1}


def f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def top3(pred: str) -> str:
    others = [label for label in LABELS if label != pred][:2]
    return f"{pred}:0.6000|{others[0]}:0.3000|{others[1]}:0.1000"


def category_frame(pairs=PAIRS) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "title": [f"t{i}" for i in range(len(pairs))],
            "category": [gold for gold, _ in pairs],
            "category_pred": [pred for _, pred in pairs],
            "category_prob": 0.6,
            "category_top3": [top3(pred) for _, pred in pairs],
            "decision": [pred for _, pred in pairs],
        }
    )


def make_run(path: Path, frame: pd.DataFrame, counts: dict | None = TRAIN_COUNTS) -> Path:
    path.mkdir(parents=True)
    frame.to_csv(path / "predictions_validation.csv", index=False, encoding="utf-8")
    (path / "label_map.json").write_text(json.dumps({"category_id2label": dict(enumerate(LABELS))}))
    if counts is not None:
        (path / "run_config.json").write_text(json.dumps({"data_report": {"category_counts": counts}}))
    return path


def test_per_class_confusions_and_bands(tmp_path, capsys):
    run = make_run(tmp_path / "run", category_frame())
    report = main([str(run)])["inputs"]["run"]["splits"]["validation"]

    rows = {row["label"]: row for row in report["per_class"]}
    assert [row["label"] for row in report["per_class"]] == ["A", "B", "C", "D", "E"]  # support, then label
    assert [row["support"] for row in report["per_class"]] == [4, 3, 2, 1, 1]
    assert rows["A"]["precision"] == approx(2 / 5) and rows["A"]["recall"] == approx(0.5)
    assert rows["A"]["f1"] == approx(f1(2 / 5, 1 / 2))
    assert rows["B"]["f1"] == approx(f1(1 / 2, 2 / 3))
    assert (rows["C"]["f1"], rows["D"]["f1"], rows["E"]["f1"]) == (0.0, 1.0, 0.0)

    assert report["confusions"]["A"] == [
        {"label": "B", "count": 1, "share": 0.25},
        {"label": "C", "count": 1, "share": 0.25},
    ]
    assert report["confusions"]["C"] == [{"label": "A", "count": 2, "share": 1.0}]
    assert report["confusions"]["D"] == []

    # Train counts [100, 50, 10, 5, 1]: cuts ≈ 6.7 and ≈ 36.7 → A, B High; C Mid; D, E Low.
    assert report["band_source"].startswith("training rows")
    assert {r["label"]: r["band"] for r in report["per_class"]} == dict(
        zip(LABELS, ["High", "High", "Mid", "Low", "Low"])
    )
    assert rows["A"]["band_count"] == 100
    assert list(report["bands"]) == ["High", "Mid", "Low"]
    assert report["bands"]["High"]["classes"] == 2
    assert report["bands"]["High"]["mean_recall"] == approx((1 / 2 + 2 / 3) / 2)
    assert report["bands"]["Low"]["mean_f1"] == approx(0.5)

    assert report["unscored_rows"] == 1
    headline = report["headline"]
    assert headline["category_accuracy"] == approx(5 / 11)
    assert headline["category_support"] == 11
    assert headline["category_top2_accuracy"] == approx(8 / 11)  # A→B, A→C and B→A rows have their gold 2nd
    assert not any(key.startswith(("gate_", "joint_")) for key in headline)

    for name in ("analysis.md", "analysis.json", "analysis_confusion_validation.png"):
        assert (run / name).stat().st_size > 0
    assert not (run / "safety.json").exists()  # category-only and no --allow_label
    printed = capsys.readouterr().out
    assert "1 row without a gold label was not scored." in printed
    assert "| A | High | 100 | 4 | 0.400 | 0.500 | 0.444 |" in printed
    assert printed.strip() == (run / "analysis.md").read_text(encoding="utf-8").strip()
    assert "NaN" not in (run / "analysis.json").read_text(encoding="utf-8")


def test_bands_fall_back_to_gold_support_and_custom_cuts(tmp_path):
    run = make_run(tmp_path / "run", category_frame(), counts=None)
    report = main([str(run), "--bands", "0.5,0.9"])["inputs"]["run"]["splits"]["validation"]
    assert report["band_source"].startswith("gold support")
    # Support [4, 3, 2, 1, 1]: cuts 2 and 3.6 → A High, B Mid, C/D/E Low.
    assert [row["band"] for row in report["per_class"]] == ["High", "Mid", "Low", "Low", "Low"]


def test_comparison_orders_deltas_by_size(tmp_path):
    first = make_run(tmp_path / "first", category_frame())
    # Second run fixes C (C→C twice) and breaks D (D→A): D −1.0, C +0.8 (P 2/3, R 1), A +0.056, B/E 0.
    better = [(g, "C" if g == "C" else ("A" if g == "D" else p)) for g, p in PAIRS]
    second = make_run(tmp_path / "second", category_frame(better))
    out = tmp_path / "out"
    result = main([str(first), str(second), "--out", str(out)])
    comparison = result["comparison"]
    assert comparison["inputs"] == ["first", "second"]
    assert comparison["headline"]["category_accuracy"] == [approx(5 / 11), approx(6 / 11)]
    deltas = comparison["f1_deltas"]["second"]
    magnitudes = [abs(row["delta"]) for row in deltas]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert [row["label"] for row in deltas] == ["D", "C", "A", "B", "E"]
    assert deltas[0]["delta"] == approx(-1.0) and deltas[1]["delta"] == approx(f1(2 / 3, 1.0))
    for name in ("comparison.md", "comparison.json", "first_analysis.md", "second_analysis.json"):
        assert (out / name).is_file()


def test_gate_only_multitask_and_japanese_names(tmp_path, capsys):
    gate = pd.DataFrame(
        {
            "title": list("abcdef"),
            "pick": ["1", "Pick", "true", "0", "decline", ""],
            "pick_prob": [0.9, 0.8, 0.3, 0.7, 0.1, 0.5],
            "pick_pred": [1, 1, 0, 1, 0, 1],
            "decision": ["Pick", "Pick", "Decline", "Pick", "Decline", "Pick"],
        }
    )
    path = tmp_path / "予測.csv"
    gate.to_csv(path, index=False, encoding="utf-8")
    result = main([str(path)])["inputs"]["予測"]
    report = result["splits"]["予測"]
    assert report["heads"] == ["gate"] and "per_class" not in report
    assert report["headline"]["gate_accuracy"] == approx(3 / 5)
    assert report["headline"]["gate_decline_leak"] == approx(1 / 2)
    assert result["safety"]["予測"]["gate"]["decline_as_pick"]["rate"] == approx(1 / 2)
    for name in ("予測_analysis.md", "予測_analysis.json", "予測_safety.json"):
        assert (tmp_path / name).is_file()
    assert not list(tmp_path.glob("*.png"))
    markdown = capsys.readouterr().out
    assert "Per-class" not in markdown and "Top confusions" not in markdown

    # Joint file with Japanese categories: gate + category + joint keys, UTF-8 JSON without escapes.
    joint = pd.DataFrame(
        {
            "pick": ["1", "1", "0"],
            "category": ["政治", "経済", ""],
            "pick_pred": [1, 1, 0],
            "category_pred": ["政治", "政治", "経済"],
            "category_prob": 0.9,
            "decision": ["政治", "政治", "Decline"],
        }
    )
    joint.to_csv(tmp_path / "joint.csv", index=False, encoding="utf-8")
    report = main([str(tmp_path / "joint.csv")])["inputs"]["joint"]["splits"]["joint"]
    assert report["headline"]["joint_accuracy"] == approx(2 / 3)
    assert "category_top2_accuracy" not in report["headline"]  # no top-k column: ranks unknown
    assert report["confusions"]["経済"] == [{"label": "政治", "count": 1, "share": 1.0}]
    assert "経済" in (tmp_path / "joint_analysis.json").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("columns", "missing"),
    [
        ({"title": ["x"], "category": ["A"], "category_prob": [0.5]}, "category_pred"),
        ({"title": ["x"], "pick_pred": [1]}, "pick"),
        ({"title": ["x"], "category": ["A"]}, "pick_pred' or 'category_pred"),
    ],
)
def test_missing_column_error_names_file_and_column(tmp_path, columns, missing):
    path = tmp_path / "bad.csv"
    pd.DataFrame(columns).to_csv(path, index=False)
    with pytest.raises(InputError, match=rf"bad\.csv: missing column '{missing}'"):
        read_predictions(path)


def test_cli_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in (
        "--out",
        "--bands",
        "--allow_label",
        "--critical_labels",
        "--cost_matrix",
        "--bootstrap",
        "--seed",
    ):
        assert flag in text
