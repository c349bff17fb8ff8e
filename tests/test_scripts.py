"""End to end: the real run_finetune.py then run_predict.py on its output, plus --help and failure marking."""

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
import yaml

import run_finetune
import run_predict
from multitask.data.loading import DataError
from multitask.errors import UsageError
from multitask.train.trainer import MultitaskTrainer
from tests.conftest import CATEGORIES, SENTENCES, finetune_args, seed_tables, write_csv


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, encoder_dir):
    # Module-scoped, so it cannot use the function-scoped csv_files fixture: the same CSVs are built here.
    root = tmp_path_factory.mktemp("e2e")
    files = seed_tables(root, task2_body="")
    run_dir = root / "run"
    metrics = run_finetune.main(finetune_args(encoder_dir, files, run_dir))
    return run_dir, files, metrics


def test_run_directory_is_complete(trained_run):
    run_dir, files, metrics = trained_run
    for name in ("model/config.json", "model/model.safetensors", "model/tokenizer.json", "label_map.json",
                 "run_config.json", "metrics.json", "train.log", "thresholds.json", "predictions_ニュース_test.csv",
                 "predictions_f1_ニュース_test.csv", "predictions_validation.csv", "epoch_log.jsonl",
                 "val_per_class_metrics.json", "hierarchy_stats.json", "cartography.csv", "worst_k.csv",
                 "plots/task1_loss.png", "plots/task2_accuracy.png", "plots/band_recall.png",
                 "plots/confusion_heatmap.png", "plots/cartography_category.png"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "run_status.json").read_text())["status"] == "complete"
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert "eval_category_macro_f1" in saved["validation"] and "eval_gate_f1" in saved["validation"]
    assert set(saved["test"]["ニュース_test"]) >= {"default", "f1", "acc", "leak"}
    config = json.loads((run_dir / "run_config.json").read_text())
    assert config["versions"]["transformers"] and len(config["data_files"]) == 4
    assert config["arguments"]["MultitaskTrainingArguments"]["gate_loss_weight"] == 0.4
    model_config = json.loads((run_dir / "model/config.json").read_text())
    assert set(model_config["gate_thresholds"]) == {"default", "f1", "acc", "leak"}
    assert model_config["category_id2label"] == {"0": "economy", "1": "politics", "2": "sports"}
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "rows_in_both_files" in log and "gate thresholds" in log
    assert "parallelism: single process over 1 process(es); this rank holds 100.0% of the parameter elements" in log
    assert f"run complete: {run_dir}" in log


def test_run_predict_on_trained_run(trained_run, tmp_path):
    run_dir, files, _ = trained_run
    out = tmp_path / "preds"
    metrics = run_predict.main(["--model", str(run_dir), "--input_files", str(files["test"]), str(files["val"]),
                                "--output_dir", str(out), "--threshold", "f1"])
    table = pd.read_csv(out / "predictions_ニュース_test.csv", dtype=str, keep_default_na=False)
    original = pd.read_csv(files["test"], dtype=str, keep_default_na=False)
    assert list(table.columns[: len(original.columns)]) == list(original.columns)
    assert table["source_id"].tolist() == original["source_id"].tolist()  # input order kept
    for column in ("pick_prob", "pick_pred", "category_pred", "category_prob", "category_top3", "decision"):
        assert column in table.columns
    assert set(table["pick_pred"]) <= {"0", "1"}
    top3 = json.loads(table["category_top3"][0])  # [label, probability] pairs, best first
    assert len(top3) == 3 and top3[0][0] == table["category_pred"][0] and top3[0][1] >= top3[1][1] >= top3[2][1]
    decline = table["pick_pred"] == "0"
    assert (table.loc[decline, "decision"] == "Decline").all()
    assert (table.loc[~decline, "decision"] == table.loc[~decline, "category_pred"]).all()
    assert (out / "metrics_ニュース_test.json").is_file() and (out / "predictions_val.csv").is_file()
    assert metrics["ニュース_test"]["threshold"] == json.loads((run_dir / "model/config.json").read_text())["gate_thresholds"]["f1"]
    assert metrics["ニュース_test"]["dtype"] == "float32"  # auto on CPU

    bf16 = run_predict.main(["--model", str(run_dir), "--input_files", str(files["test"]), "--output_dir",
                             str(tmp_path / "bf16"), "--threshold", "f1", "--dtype", "bfloat16"])
    assert bf16["ニュース_test"]["dtype"] == "bfloat16"
    bf16_table = pd.read_csv(tmp_path / "bf16/predictions_ニュース_test.csv", keep_default_na=False)
    assert np.allclose(bf16_table["pick_prob"], table["pick_prob"].astype(float), atol=2e-2)


def test_run_predict_bad_file_writes_nothing(trained_run, tmp_path):
    run_dir, files, _ = trained_run
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"title": ["ok", ""], "body": ["", ""]}).to_csv(bad, index=False)
    out = tmp_path / "preds"
    with pytest.raises(DataError, match=r"bad.csv, row 3"):
        run_predict.main(["--model", str(run_dir / "model"), "--input_files", str(files["test"]), str(bad),
                          "--output_dir", str(out)])
    assert not out.exists()


def test_unknown_threshold_name(trained_run, tmp_path):
    run_dir, files, _ = trained_run
    with pytest.raises(ValueError, match="f2"):
        run_predict.main(["--model", str(run_dir), "--input_files", str(files["test"]), "--output_dir",
                          str(tmp_path), "--threshold", "f2"])


def test_bad_data_is_refused_before_the_run_directory_exists(encoder_dir, csv_files, tmp_path):
    bad = tmp_path / "bad_task1.csv"
    pd.DataFrame({"pick": ["1", "perhaps"], "title": ["a", "b"], "body": ["", ""]}).to_csv(bad, index=False)
    files = dict(csv_files, task1=bad)
    with pytest.raises(DataError, match="bad_task1.csv, row 3, column 'pick'"):
        run_finetune.main(finetune_args(encoder_dir, files, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_failure_during_training_is_marked_failed(encoder_dir, csv_files, tmp_path, monkeypatch):
    def broken_train(self, *args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(MultitaskTrainer, "train", broken_train)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_finetune.main(finetune_args(encoder_dir, csv_files, tmp_path / "run"))
    status = json.loads((tmp_path / "run" / "run_status.json").read_text())
    assert status["status"] == "failed" and "disk on fire" in status["error"]
    assert not (tmp_path / "run" / "metrics.json").exists()
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert "run failed: RuntimeError: disk on fire" in log and "Traceback" in log  # a bug keeps its traceback
    assert "data: rows_in_both_files" in log  # lines held back until the start reach train.log


def test_bad_metric_name_fails_before_training(encoder_dir, csv_files, tmp_path):
    with pytest.raises(ValueError, match="not a validation metric"):
        run_finetune.main(finetune_args(encoder_dir, csv_files, tmp_path / "run", "--metric_for_best_model", "f1_macro"))


def test_config_file_as_only_argument(encoder_dir, csv_files, tmp_path):
    config = {"model_name_or_path": str(encoder_dir), "task1_file": str(csv_files["task1"]),
              "task2_file": str(csv_files["task2"]), "test_files": [str(csv_files["test"])],
              "output_dir": str(tmp_path / "run"), "max_steps": 1, "per_device_train_batch_size": 8,
              "eval_strategy": "no", "save_strategy": "no", "load_best_model_at_end": False, "use_cpu": True}
    for suffix in (".json", ".yaml"):
        config["output_dir"] = str(tmp_path / f"run{suffix}")
        path = tmp_path / f"config{suffix}"
        path.write_text(json.dumps(config) if suffix == ".json" else yaml.safe_dump(config))
        run_finetune.main([str(path)])
        assert json.loads((tmp_path / f"run{suffix}" / "run_status.json").read_text())["status"] == "complete"


def test_help_documents_every_flag():
    for module in (run_finetune, run_predict):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit):
            module.main(["--help"])
        text = buffer.getvalue()
        assert "--help" in text
    from transformers import HfArgumentParser

    from multitask.train.arguments import DataArguments, ModelArguments, MultitaskTrainingArguments

    for dataclass_type in (ModelArguments, DataArguments, MultitaskTrainingArguments, run_predict.PredictArguments):
        for field in dataclass_type.__dataclass_fields__.values():
            if field.init and not field.name.startswith("_"):
                assert field.metadata.get("help"), f"{dataclass_type.__name__}.{field.name} has no help"
    assert HfArgumentParser((ModelArguments, DataArguments, MultitaskTrainingArguments))


def test_predictions_jsonl_and_unknown_labels(trained_run, tmp_path):
    run_dir, files, _ = trained_run
    unknown = tmp_path / "unknown.csv"
    pd.DataFrame({"title": ["stock market rally", "home team wins"], "body": ["", ""],
                  "pick": ["1", "1"], "category": ["economy", "culture"]}).to_csv(unknown, index=False)
    with pytest.raises(DataError, match=r"unknown.csv, row 3, column 'category': category 'culture'"):
        run_predict.main(["--model", str(run_dir), "--input_files", str(unknown), "--output_dir", str(tmp_path / "a")])
    metrics = run_predict.main(["--model", str(run_dir), "--input_files", str(unknown), "--output_dir",
                                str(tmp_path / "b"), "--allow_unknown_labels", "true"])
    assert metrics["unknown"]["unscored_unknown_categories"] == {"culture": 1}
    assert metrics["unknown"]["category_support"] == 1
    records = [json.loads(line) for line in (tmp_path / "b" / "predictions_unknown.jsonl").read_text().splitlines()]
    assert len(records) == 2 and "category_correct" in records[0] and "category_correct" not in records[1]
    assert records[0]["pick_correct"] in (True, False)


def _single_head_files(root):
    task1 = root / "gate.csv"
    pd.DataFrame({"pick": ["1", "0"] * 8, "title": [f"news item {i}" if i % 2 == 0 else f"spam offer {i}"
                                                    for i in range(16)], "body": [""] * 16}).to_csv(task1, index=False)
    labels = ["ALLOW", "ESCALATION", "DENY", "REFUSE"]
    task2 = root / "moderation.csv"
    pd.DataFrame({"category": [labels[i % 4] for i in range(24)],
                  "title": [f"{labels[i % 4].lower()} request number {i}" for i in range(24)],
                  "body": [""] * 24}).to_csv(task2, index=False)
    return task1, task2


@pytest.mark.parametrize("head", ["gate", "category"])
def test_single_head_runs(encoder_dir, tmp_path, head):
    task1, task2 = _single_head_files(tmp_path)
    data_flag = ["--task1_file", str(task1)] if head == "gate" else ["--task2_file", str(task2)]
    run_dir = tmp_path / "run"
    metrics = run_finetune.main(["--model_name_or_path", str(encoder_dir), *data_flag, "--output_dir", str(run_dir),
                                 "--num_train_epochs", "1", "--validation_split", "0.25", "--use_cpu", "true",
                                 "--per_device_train_batch_size", "8"])
    validation = metrics["validation"]
    assert all(np.isfinite(v) for v in validation.values() if isinstance(v, float))
    if head == "gate":
        assert "eval_gate_f1" in validation and not any("category" in key for key in validation)
        assert json.loads((run_dir / "model/config.json").read_text())["category_id2label"] == {}
    else:
        assert "eval_category_macro_f1" in validation and not any("gate" in key for key in validation)
        assert not (run_dir / "thresholds.json").exists()
    source = task1 if head == "gate" else task2
    out = tmp_path / "preds"
    predicted = run_predict.main(["--model", str(run_dir), "--input_files", str(source), "--output_dir", str(out)])
    table = pd.read_csv(out / f"predictions_{source.stem}.csv", dtype=str, keep_default_na=False)
    if head == "gate":
        assert "category_pred" not in table and set(table["decision"]) <= {"Pick", "Decline"}
        assert "gate_accuracy" in predicted[source.stem] and "joint_accuracy" not in predicted[source.stem]
    else:
        assert "pick_prob" not in table and set(table["decision"]) <= {"ALLOW", "ESCALATION", "DENY", "REFUSE"}
        assert "category_accuracy" in predicted[source.stem] and "gate_f1" not in predicted[source.stem]


def test_resume_restores_cartography_and_epoch_log(encoder_dir, csv_files, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(UsageError, match="no checkpoint-"):
        run_finetune.main(finetune_args(encoder_dir, csv_files, tmp_path / "empty", "--resume_from_checkpoint", "true"))
    run_finetune.main(finetune_args(encoder_dir, csv_files, run_dir, "--num_train_epochs", "1",
                                    "--save_strategy", "epoch", "--save_total_limit", "1"))
    (checkpoint,) = run_dir.glob("checkpoint-*")
    assert (checkpoint / "cartography_history.json").is_file()
    # An interrupted run leaves status "failed"/"running"; take it up again for a second epoch.
    (run_dir / "run_status.json").write_text(json.dumps({"status": "failed"}))
    run_finetune.main(finetune_args(encoder_dir, csv_files, run_dir, "--num_train_epochs", "2",
                                    "--save_strategy", "epoch", "--save_total_limit", "1",
                                    "--resume_from_checkpoint", "true"))
    cartography = pd.read_csv(run_dir / "cartography.csv")
    epochs = cartography["gate_epochs"].fillna(cartography["category_epochs"])
    assert (epochs == 2).all()  # epoch 1 from the checkpoint, epoch 2 from the resumed run
    logged = [json.loads(line)["epoch"] for line in (run_dir / "epoch_log.jsonl").read_text().splitlines()]
    assert logged == [1, 2]
    assert json.loads((run_dir / "run_status.json").read_text())["status"] == "complete"
    # The Trainer's train_loss covers only the resumed steps: labelled, and the whole run's mean given beside it.
    train = json.loads((run_dir / "metrics.json").read_text())["train"]
    assert train["train_loss_scope"].startswith("resumed part only: optimizer steps")
    assert train["train_loss_resumed_part"] == train["train_loss"]
    history = json.loads(next(run_dir.glob("checkpoint-*/trainer_state.json")).read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 2 and train["train_loss_whole_run"] == pytest.approx(sum(losses) / 2, rel=1e-3)


def test_auto_gate_score_cross_validated_and_applied_by_run_predict(encoder_dir, tmp_path):
    """--gate_score auto: feature scores fitted after training, the choice and thresholds made on validation with a
    held-out-fold report, all stored in the model and applied unchanged by run_predict.py."""
    from multitask.model.ood import ALL_SCORES

    pick_rows = [(t, 1) for c in CATEGORIES for t in SENTENCES[c]] + [(t, 0) for t in SENTENCES["junk"]]
    cat_rows = [(t, c) for c in CATEGORIES for t in SENTENCES[c]]
    eval_rows = [(SENTENCES[c][i], "1", c) for c in CATEGORIES for i in (0, 1, 2)] + [
        (t, "0", "") for t in SENTENCES["junk"][:4]]
    files = {
        "task1": write_csv(tmp_path / "task1.csv", {"pick": [p for _, p in pick_rows], "title": [t for t, _ in pick_rows]}),
        "task2": write_csv(tmp_path / "task2.csv", {"category": [c for _, c in cat_rows], "title": [t for t, _ in cat_rows]}),
        "val": write_csv(tmp_path / "val.csv", {"pick": [p for _, p, _ in eval_rows],
                                                "category": [c for _, _, c in eval_rows],
                                                "title": [t for t, _, _ in eval_rows]}),
    }
    run_dir = tmp_path / "run"
    metrics = run_finetune.main(
        ["--model_name_or_path", str(encoder_dir), "--task1_file", str(files["task1"]), "--task2_file",
         str(files["task2"]), "--validation_file", str(files["val"]), "--text_columns", "title",
         "--output_dir", str(run_dir), "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
         "--use_cpu", "true", "--gate_score", "auto", "--threshold_cv", "2", "--target_oos_recall", "0.75",
         "--knn_k", "3", "--cartography", "false", "--leak_cost", "5", "--review_share", "0.3"])
    cv = json.loads((run_dir / "gate_cv.json").read_text())
    assert cv["folds"] == 2 and len(cv["chosen_per_fold"]) == 2 and cv["max_decline_leak"] == pytest.approx(0.25)
    assert set(cv["per_score"]) == set(ALL_SCORES)
    assert metrics["gate_cv"]["leak"]["oos_recall"]["interval_95"][0] <= metrics["gate_cv"]["leak"]["oos_recall"]["held_out"]
    config = json.loads((run_dir / "model/config.json").read_text())
    assert config["gate_score"] in ALL_SCORES and config["gate_statistics"]["knn_k"] == 3
    assert json.loads((run_dir / "thresholds.json").read_text())["gate_score"] == config["gate_score"]
    assert set(config["calibration"]) == {"gate_temperature", "category_temperature"}
    assert metrics["calibration"]["gate"]["after"]["nll"] <= metrics["calibration"]["gate"]["before"]["nll"] + 1e-9
    assert (run_dir / "plots" / "reliability_category.png").is_file()
    assert "eval_category_ece" in json.loads((run_dir / "epoch_log.jsonl").read_text().splitlines()[0])
    card = (run_dir / "model" / "README.md").read_text(encoding="utf-8")
    assert f"Gate score: `{config['gate_score']}`" in card and "held-out folds of validation" in card
    assert "## Calibration (validation)" in card

    thresholds = json.loads((run_dir / "thresholds.json").read_text())
    assert "expected_cost" in thresholds["cost"] and set(config["review_bands"]) >= {"leak", "cost"}
    assert 0 < thresholds["review"]["leak"]["review_share"] <= 0.5

    reviewed = tmp_path / "reviewed"
    run_predict.main(["--model", str(run_dir), "--input_files", str(files["val"]), "--output_dir", str(reviewed),
                      "--threshold", "leak", "--review", "true"])
    assert "review" in set(pd.read_csv(reviewed / "predictions_val.csv")["decision"])
    with pytest.raises(ValueError, match="no review band for --threshold 0.5"):
        run_predict.main(["--model", str(run_dir), "--input_files", str(files["val"]), "--output_dir",
                          str(tmp_path / "none"), "--threshold", "0.5", "--review", "true"])

    out = tmp_path / "preds"
    run_predict.main(["--model", str(run_dir), "--input_files", str(files["val"]), "--output_dir", str(out),
                      "--threshold", "leak"])
    table = pd.read_csv(out / "predictions_val.csv")
    run_table = pd.read_csv(run_dir / "predictions_leak_validation.csv")
    # the same chosen score and threshold in the run and in run_predict: the same decisions
    assert table["decision"].tolist() == run_table["decision"].tolist()
    assert table["pick_prob"].to_numpy() == pytest.approx(run_table["pick_prob"].to_numpy(), abs=1e-5)


def test_stage2_from_a_stage1_model_says_what_it_reused(trained_run, tmp_path):
    run_dir, files, _ = trained_run
    stage2 = tmp_path / "stage2"
    run_finetune.main(finetune_args(run_dir / "model", files, stage2, "--max_steps", "1"))
    log = (stage2 / "train.log").read_text(encoding="utf-8")
    assert f"loaded the saved multitask model {run_dir / 'model'}" in log
    assert "reused encoder, gate head, category head; new: none" in log
