"""Per-epoch log, cartography, and the optional recipe pieces (MSD, AWP, uncertainty weighting)."""

import json
import math

import numpy as np
import pytest
import torch

from multitask.awp import AdversarialWeightPerturbation
from multitask.callbacks import CartographyCallback, EpochLogCallback, TrainingRecord
from multitask.modeling import MultitaskModel, build_config

from .test_trainer import make_trainer, no_dropout

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


def test_multi_sample_dropout(encoder_dir, tokenizer):
    from transformers import DebertaV2Model

    encoder = DebertaV2Model.from_pretrained(encoder_dir)
    model = MultitaskModel(build_config(encoder.config, ["a", "b"], msd_samples=4), encoder=encoder)
    inputs = tokenizer(["stock market rally"], return_tensors="pt")
    model.eval()
    reference = model(**inputs).category_logits
    model.train()
    no_dropout(model)
    assert torch.allclose(model(**inputs).category_logits, reference, atol=1e-6)  # p=0: mean of equal samples
    model.dropout.p = 0.5
    torch.manual_seed(0)
    assert not torch.allclose(model(**inputs).category_logits, reference)


def test_awp_perturbs_within_bound_and_restores():
    layer = torch.nn.Linear(3, 2)
    layer.weight.grad = torch.ones_like(layer.weight)
    original = layer.weight.detach().clone()
    awp = AdversarialWeightPerturbation(layer, adv_lr=1.0, adv_eps=0.01)
    awp.perturb()
    change = (layer.weight - original).abs()
    assert (change <= 0.01 * original.abs() + 1e-7).all() and change.sum() > 0
    awp.restore()
    assert torch.equal(layer.weight, original)


def test_awp_training_runs(model, tokenizer, csv_files, tmp_path):
    trainer = make_trainer(model, tokenizer, csv_files, tmp_path, awp_lr=1.0, awp_start_epoch=0.0, max_steps=2)
    result = trainer.train()
    assert math.isfinite(result.training_loss)


def test_uncertainty_weighting(encoder_dir, tokenizer, csv_files, tmp_path):
    from transformers import DebertaV2Model

    encoder = DebertaV2Model.from_pretrained(encoder_dir)
    model = no_dropout(MultitaskModel(build_config(encoder.config, ["economy", "politics", "sports"],
                                                   uncertainty_weighting=True), encoder=encoder))
    trainer = make_trainer(model, tokenizer, csv_files, tmp_path, uncertainty_weighting=True,
                           gate_class_weighting=False, category_class_weighting=False)
    batch = next(iter(trainer.get_train_dataloader()))
    loss = trainer.compute_loss(model, batch)
    terms = {name: values[-1] for name, values in trainer._logged_terms["train"].items()}
    # s = (0, 0): e^0·L_gate + 0 + e^0·L_category + 0 — λ1/λ2 are not applied.
    assert loss.item() == pytest.approx(terms["gate_loss"] + terms["category_loss"], rel=1e-5)
    loss.backward()
    assert model.task_log_variances.grad is not None and model.task_log_variances.grad.abs().sum() > 0
