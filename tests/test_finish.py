"""Everything after train() (multitask.train.finish): no false success, the outputs of a finished run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from pytest import approx
from transformers.trainer_utils import TrainOutput

from multitask.errors import UserError
from multitask.io.rundir import RunDirectory
from multitask.train.build import build_model, build_trainer
from multitask.train.finish import check_trained, finish_run
from multitask.train.inputs import data_file_hashes, prepare_inputs
from tests.conftest import finetune_args, parsed_finetune_args


def fake_trainer(global_step: int, initial_step: int = 0, log_history: list | None = None):
    return SimpleNamespace(state=SimpleNamespace(global_step=global_step, log_history=log_history or []),
                           _initial_global_step=initial_step)


def test_check_trained_refuses_a_run_without_a_step():
    with pytest.raises(UserError, match="0 optimizer steps"):
        check_trained(fake_trainer(0), TrainOutput(0, 0.0, {}), None)


def test_check_trained_labels_the_loss_of_a_resumed_run():
    history = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}]
    result = TrainOutput(4, 0.5, {"train_loss": 0.5})
    assert check_trained(fake_trainer(4, 2, history), result, "/runs/x/checkpoint-2") is None
    assert result.metrics["train_loss_scope"] == "resumed part only: optimizer steps 3-4 (resumed from checkpoint-2 at step 2)"
    assert result.metrics["train_loss_resumed_part"] == 0.5
    assert result.metrics["train_loss_whole_run"] == pytest.approx((2.0 + 1.0 + 0.5 * 2) / 4)


def test_check_trained_notes_a_resume_with_nothing_left():
    result = TrainOutput(2, 0.0, {})
    note = check_trained(fake_trainer(2, 2), result, "/runs/x/checkpoint-2")
    assert note.startswith("resumed from checkpoint-2: no optimizer step was left")
    assert "train_loss_whole_run" not in result.metrics  # no loss of this call to combine


def test_finish_run_writes_the_outputs_and_stores_the_settings(encoder_dir, csv_files, tmp_path):
    run_dir = tmp_path / "run"
    model_args, data_args, training_args = parsed_finetune_args(
        encoder_dir, csv_files, run_dir, "--max_steps", "2", "--report_to", "none", "--calibration", "temperature")
    inputs = prepare_inputs(model_args, data_args, training_args, run_dir)
    trainer = build_trainer(build_model(model_args, data_args, training_args, inputs), data_args, training_args,
                            inputs, run_dir)
    run = RunDirectory(run_dir).start()
    try:
        metrics = finish_run(trainer, trainer.train(), run, model_args, data_args, inputs,
                             data_file_hashes(data_args, None))
    finally:
        run.close()
    assert set(metrics) >= {"train", "validation", "test", "calibration"} and metrics["test"]
    assert json.loads((run_dir / "metrics.json").read_text())["validation"] == metrics["validation"]
    for name in ("thresholds.json", "predictions_validation.csv", "val_per_class_metrics.json", "cartography.csv",
                 "model/config.json", "model/README.md", "model/tokenizer.json"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert set(config["gate_thresholds"]) == {"default", "f1", "acc", "leak"} and config["calibration"]


def run_two_steps(encoder_dir, csv_files, run_dir, caplog, *flags):
    """run_finetune.py for two optimizer steps on `csv_files` plus `flags`, its log captured in `caplog`."""
    import logging

    import run_finetune

    argv = finetune_args(encoder_dir, csv_files, run_dir, "--max_steps", "2", "--report_to", "none", *flags)
    with caplog.at_level(logging.INFO, logger="run_finetune"):
        run_finetune.main(argv)


def test_guaranteed_leak_threshold_is_recorded_and_logged(encoder_dir, csv_files, tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_two_steps(encoder_dir, csv_files, run_dir, caplog,
                  "--target_oos_recall", "0.5", "--oos_recall_confidence", "0.9", "--threshold_cv", "0")
    thresholds = json.loads((run_dir / "thresholds.json").read_text())
    leak, guarantee = thresholds["leak"], thresholds["guarantee"]
    # The fixture's validation has one Decline row: no threshold can promise anything with 90 % confidence.
    assert leak["decline_rows"] == 1 and not leak["met_target"] and not guarantee["met"]
    # The overall 90 % is split over the candidate scores the choice was made among (a union bound).
    candidates = guarantee["candidate_scores"]
    assert guarantee["confidence"] == 0.9
    assert leak["confidence"] == pytest.approx(1 - 0.1 / candidates) == guarantee["per_score_confidence"]
    assert "shift" in guarantee["does_not_cover"]
    assert any("guarantee at the leak threshold" in r.getMessage() and "not for a shift" in r.getMessage()
               for r in caplog.records)
    assert json.loads((run_dir / "model" / "config.json").read_text())["gate_guarantee"] == guarantee
    card = (run_dir / "model" / "README.md").read_text()
    assert "Guarantee at the `leak` threshold" in card and "does not cover a shift" in card


def test_report_rows_are_scored_at_the_stored_thresholds_beside_the_promise(encoder_dir, csv_files, tmp_path, caplog):
    import pandas as pd

    from tests.conftest import CATEGORIES, SENTENCES

    # A validation file with 15 Pick rows and 5 Decline rows, so both parts of a 40 % report split have both.
    rows = [(text, "1", c) for c in CATEGORIES for text in SENTENCES[c]] + [(t, "0", "") for t in SENTENCES["junk"]]
    pd.DataFrame({"pick": [p for _, p, _ in rows], "category": [c for _, _, c in rows],
                  "title": [t for t, _, _ in rows], "body": [""] * len(rows)}).to_csv(csv_files["val"], index=False)
    run_dir = tmp_path / "run"
    run_two_steps(encoder_dir, csv_files, run_dir, caplog,
                  "--report_split", "0.4", "--threshold_cv", "2", "--max_pick_declined", "0.5")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    report = metrics["report"]
    assert report["rows"] == 8 and report["oos_rows"] == 2
    thresholds = json.loads((run_dir / "model" / "config.json").read_text())["gate_thresholds"]
    assert {kind: point["threshold"] for kind, point in report["operating_points"].items()} == thresholds
    # The promise (held-out folds of the 12 rows choices were made on) and the gap to the report rows.
    leak = report["operating_points"]["leak"]
    assert report["gap"]["leak"]["oos_recall"] == approx(report["promise"]["leak"]["oos_recall"]
                                                         - leak["figures"]["oos_recall"])
    assert len(pd.read_csv(run_dir / "predictions_leak_validation_report.csv")) == 8
    assert len(pd.read_csv(run_dir / "predictions_validation.csv")) == 12  # choices read only the other rows
    assert "pick_declined_met" in json.loads((run_dir / "thresholds.json").read_text())["leak"]
    assert any(r.getMessage().startswith("report rows (8, 2 Decline; no choice read them)") for r in caplog.records)
    assert "### Report rows: validation rows no choice read" in (run_dir / "model" / "README.md").read_text()
