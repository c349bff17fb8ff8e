"""The training record, the per-epoch log and dataset cartography (multitask.train.callbacks)."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from multitask.train.callbacks import CartographyCallback, EpochLogCallback, TrainingRecord, find_callback
from tests.conftest import make_trainer

LN3 = math.log(3.0)


def test_cartography_values_by_hand(tmp_path):
    import pandas as pd

    record = TrainingRecord()
    frame = pd.DataFrame({"row_id": [0, 1], "text": ["a", "b"], "gate_labels": [1, 0], "category_labels": [0, -100]})
    callback = CartographyCallback(record, frame, ["economy", "sports"])
    row_ids = torch.tensor([0, 1])
    # Epoch 1: row 0 gold Pick with P(Pick) = ¾ (right); row 1 gold Decline with P(Decline) = ¾ (right).
    record.add_predictions("gate", torch.tensor([[0.0, LN3], [LN3, 0.0]]), torch.tensor([1, 0]), row_ids)
    record.add_predictions("category", torch.tensor([[LN3, 0.0], [0.0, 0.0]]), torch.tensor([0, -100]), row_ids)
    callback.on_epoch_end(None, None, None)
    record.reset()
    # Epoch 2: row 0 P(Pick) = ¼ (wrong); row 1 P(Decline) = ¾ again.
    record.add_predictions("gate", torch.tensor([[LN3, 0.0], [LN3, 0.0]]), torch.tensor([1, 0]), row_ids)
    record.add_predictions("category", torch.tensor([[0.0, LN3], [0.0, 0.0]]), torch.tensor([0, -100]), row_ids)
    callback.on_epoch_end(None, None, None)

    table = callback.write(tmp_path, worst_k=1).set_index("row_id")
    # Row 0 gate: gold probs (¾, ¼) → confidence ½, variability (population std) ¼, correctness ½.
    assert table.loc[0, "gate_confidence"] == pytest.approx(0.5)
    assert table.loc[0, "gate_variability"] == pytest.approx(0.25)
    assert table.loc[0, "gate_correctness"] == pytest.approx(0.5)
    assert table.loc[1, "gate_confidence"] == pytest.approx(0.75) and table.loc[1, "gate_variability"] == 0
    assert table.loc[0, "category_confidence"] == pytest.approx(0.5)
    assert np.isnan(table.loc[1, "category_confidence"])  # no category label: no cartography for that task
    assert table.loc[0, "predicted_category"] == "sports" and table.loc[0, "gold_category"] == "economy"
    worst = (tmp_path / "worst_k.csv").read_text(encoding="utf-8").splitlines()
    assert len(worst) == 2 and worst[1].startswith("0,a,")


def test_epoch_log_has_documented_keys_and_epoch_means(model, tokenizer, csv_files, tmp_path):
    record = TrainingRecord()
    trainer = make_trainer(model, tokenizer, csv_files, tmp_path, num_train_epochs=2, eval_strategy="epoch",
                           logging_strategy="steps", logging_steps=1, per_device_train_batch_size=8)
    trainer.training_record = record
    callback = EpochLogCallback(record, tmp_path, {"gate": 0.4, "category": 1.0})
    trainer.add_callback(callback)
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "epoch_log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    for key in ("train_loss", "train_gate_loss", "train_category_loss", "train_gate_accuracy",
                "train_category_accuracy", "eval_loss", "eval_gate_loss", "eval_category_loss", "eval_gate_f1",
                "eval_category_macro_f1", "eval_category_top3_accuracy", "eval_joint_accuracy", "lambda_gate",
                "lambda_category", "grad_norm_mean", "grad_norm_max", "learning_rate"):
        assert key in rows[0], key
    # The train losses are means over the epoch's steps, not the last step's value.
    steps_per_epoch = rows[0]["step"]
    step_logs = [entry for entry in trainer.state.log_history if "gate_loss" in entry and "eval_loss" not in entry]
    first_epoch = [entry["gate_loss"] for entry in step_logs[:steps_per_epoch]]
    assert rows[0]["train_gate_loss"] == pytest.approx(np.mean(first_epoch), rel=1e-4)
    grad_norms = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry][:steps_per_epoch]
    assert rows[0]["grad_norm_max"] == pytest.approx(max(grad_norms), rel=1e-4)


def test_training_record_keeps_labelled_rows_with_gold_probability():
    record = TrainingRecord()
    assert record.task_arrays("gate") is None and record.train_accuracy("gate") is None
    # Row 0: P(Pick) = ¾, gold Pick (right); row 1 has no gate label; row 2: P(Pick) = ¾, gold Decline (wrong).
    logits = torch.tensor([[0.0, LN3], [0.0, 0.0], [0.0, LN3]])
    record.add_predictions("gate", logits, torch.tensor([1, -100, 0]), None)
    record.add_predictions("category", None, torch.tensor([0, 0, 0]), None)  # a head the model lacks
    arrays = record.task_arrays("gate")
    assert arrays["gold_prob"] == pytest.approx([0.75, 0.25])
    assert arrays["pred"].tolist() == [1, 1] and arrays["gold"].tolist() == [1, 0]
    assert arrays["row_id"].tolist() == [-1, -1]  # no row ids given
    assert record.train_accuracy("gate") == 0.5 and record.task_arrays("category") is None
    record.add_terms({"loss": 1.0, "gate_loss": 0.5})
    record.add_terms({"loss": 3.0, "gate_loss": 1.5})
    assert dict(record.loss_terms) == {"loss": [1.0, 3.0], "gate_loss": [0.5, 1.5]}
    record.reset()
    assert record.task_arrays("gate") is None and not record.loss_terms


def test_find_callback_returns_the_trainers_instance_or_none():
    cartography = CartographyCallback(TrainingRecord(), None, [])
    trainer = SimpleNamespace(callback_handler=SimpleNamespace(callbacks=[object(), cartography]))
    assert find_callback(trainer, CartographyCallback) is cartography
    assert find_callback(trainer, EpochLogCallback) is None
