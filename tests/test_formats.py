"""Data in the shapes users have, end to end: prepare → train → predict → analysis in every format, with the
column names of the data (stored in the model and reused without flags)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import analysis.__main__ as analysis_cli
import run_finetune
import run_predict
from multitask import prepare
from multitask.io.tables import read_table
from tests.conftest import CATEGORIES, SENTENCES

QUICK = ["--max_steps", "2", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--use_cpu", "true",
         "--threshold_cv", "0", "--report_to", "none"]


def raw_rows() -> list[dict]:
    """text/label/pick rows as a seed export has them: each sentence twice (one exact copy, one full-width)."""
    rows = []
    for category in [*CATEGORIES, "junk"]:
        for index, sentence in enumerate(SENTENCES[category]):
            label, pick = ("", 0) if category == "junk" else (category, 1)
            rows.append({"text": sentence, "label": label, "pick": pick, "id": f"{category}-{index}"})
            rows.append({"text": f"{sentence} (update {index})", "label": label, "pick": pick, "id": f"{category}+{index}"})
    rows.append({**rows[0], "id": "copy"})  # an exact duplicate prepare removes
    return rows


def write_raw(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    else:
        pd.DataFrame(rows).to_csv(path, index=False, encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl", "json", "parquet"])
def test_prepare_train_predict_analyse_in_every_format(tmp_path, encoder_dir, kind):
    raw = write_raw(tmp_path / ("raw.jsonl" if kind in ("jsonl", "json") else "raw.csv"), raw_rows())
    report = prepare.main(["--input_files", str(raw), "--output_prefix", str(tmp_path / "data" / "clean"),
                           "--text_columns", "text", "--category_column", "label", "--no_near_dedup",
                           "--test_size", "0.2", "--validation_size", "0.2", "--output_format", kind])
    assert report["duplicates_count"]["exact"] == 1
    files = {split: tmp_path / "data" / f"clean_{split}.{kind}" for split in ("train", "validation", "test")}
    assert all(path.is_file() for path in files.values())

    # The outputs train as they are: the data's own column names, given once, stored in the model.
    run = tmp_path / "run"
    run_finetune.main(["--model_name_or_path", str(encoder_dir), "--train_file", str(files["train"]),
                       "--validation_file", str(files["validation"]), "--test_files", str(files["test"]),
                       "--text_columns", "text", "--label_column", "label", "--output_dir", str(run), *QUICK])
    config = json.loads((run / "model" / "config.json").read_text(encoding="utf-8"))
    assert (config["text_columns"], config["category_column"], config["pick_column"]) == (["text"], "label", "pick")
    assert sorted(config["category_id2label"].values()) == CATEGORIES and config["gate_id2label"]
    run_config = json.loads((run / "run_config.json").read_text(encoding="utf-8"))
    assert str(files["train"]) in run_config["data_files"]
    assert run_config["data_report"]["columns"]["category_column"] == "label"

    # Prediction reads the same columns with no flag, and scores the gold labels it finds there.
    preds = tmp_path / "preds"
    metrics = run_predict.main(["--model", str(run), "--input_files", str(files["test"]), "--output_dir", str(preds)])
    assert metrics["clean_test"]["category_support"] > 0 and metrics["clean_test"]["gate_support"] > 0
    table = pd.read_csv(preds / "predictions_clean_test.csv", dtype=str, keep_default_na=False)
    assert table["id"].tolist() == read_table(files["test"]).frame["id"].tolist()  # input columns and order kept

    # Analysis reads the run directory, the predictions CSV (its recorded columns) and the JSON Lines records.
    for source in (run, preds / "predictions_clean_test.csv", preds / "predictions_clean_test.jsonl"):
        result = analysis_cli.main([str(source), "--out", str(tmp_path / "analysis" / source.name)])
        splits = list(result["inputs"].values())[0]["splits"]
        split = splits["clean_test" if source == run else source.stem]
        assert split["heads"] == ["gate", "category"] and split["rows"] == len(table)
        assert split["unscored_rows"] == 0  # every gold label found, in the data's own columns


def test_column_mapping_is_stored_and_reused(tmp_path, encoder_dir, capsys):
    """A category-only model on `headline`/`topic` columns; prediction and analysis need no column flag."""
    rows = [{"headline": text, "topic": category} for category in CATEGORIES for text in SENTENCES[category]]
    train = tmp_path / "train.parquet"
    pd.DataFrame(rows * 2).to_parquet(train)
    config_file = tmp_path / "config.yaml"  # the alias works as a config-file key too
    config_file.write_text(
        f"model_name_or_path: {encoder_dir}\ntrain_file: {train}\ntext_columns: [headline]\nlabel_column: topic\n"
        f"output_dir: {tmp_path / 'run'}\nvalidation_split: 0.4\nmax_steps: 1\nuse_cpu: true\nreport_to: none\n"
        "threshold_cv: 0\nmax_train_samples: 6\npreprocessing_num_workers: 2\n", encoding="utf-8")
    run_finetune.main([str(config_file)])
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text(encoding="utf-8"))
    assert config["category_column"] == "topic" and config["gate_id2label"] is None
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert "a stratified sample of 6 of" in log

    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps({"headline": text, "topic": category}) + "\n"
                           for category in CATEGORIES for text in SENTENCES[category][:2]), encoding="utf-8")
    metrics = run_predict.main(["--model", str(tmp_path / "run"), "--input_files", str(new),
                                "--output_dir", str(tmp_path / "preds")])
    assert metrics["new"]["category_support"] == 6 and metrics["new"]["columns"]["category_column"] == "topic"
    result = analysis_cli.main([str(tmp_path / "preds" / "predictions_new.csv")])
    split = result["inputs"]["predictions_new"]["splits"]["predictions_new"]
    assert split["heads"] == ["category"] and split["rows"] == 6 and split["unscored_rows"] == 0


def test_analysis_of_another_tools_jsonl(tmp_path):
    """An evaluation file of another pipeline (e.g. SO8T's four_class_*.jsonl): gold and predicted columns named."""
    path = tmp_path / "four_class_eval.jsonl"
    records = [{"prompt": f"q{i}", "label": gold, "prediction": pred}
               for i, (gold, pred) in enumerate([("ALLOW", "ALLOW"), ("DENY", "ALLOW"), ("DENY", "DENY"),
                                                 ("REFUSE", "REFUSE"), ("ESCALATION", "DENY")])]
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    result = analysis_cli.main([str(path), "--category_column", "label", "--prediction_column", "prediction",
                                "--allow_label", "ALLOW", "--critical_labels", "DENY,REFUSE"])
    split = result["inputs"]["four_class_eval"]["splits"]["four_class_eval"]
    assert split["rows"] == 5 and split["unscored_rows"] == 0
    safety = result["inputs"]["four_class_eval"]["safety"]["four_class_eval"]["category"]
    assert safety["rows"] == 5 and safety["critical_labels"] == ["DENY", "REFUSE"]
    assert (tmp_path / "four_class_eval_analysis.md").is_file()
