"""MultitaskTrainer: evaluation keys, loss composition (incl. uncertainty weighting), gradient accumulation, R-Drop,
checkpoints."""

import copy

import pytest
import torch

from multitask.model.modeling import MultitaskModel, build_config
from tests.conftest import make_trainer, no_dropout


def test_evaluate_returns_loss_and_metrics(model, tokenizer, csv_files, tmp_path):
    metrics = make_trainer(model, tokenizer, csv_files, tmp_path).evaluate()
    for key in ("eval_loss", "eval_gate_f1", "eval_category_macro_f1", "eval_joint_accuracy",
                "eval_gate_loss", "eval_category_loss"):
        assert key in metrics, key
    assert metrics["eval_gate_support"] == 7 and metrics["eval_category_support"] == 6


def test_loss_is_weighted_sum_of_terms(model, tokenizer, csv_files, tmp_path):
    trainer = make_trainer(no_dropout(model), tokenizer, csv_files, tmp_path, gate_loss_weight=0.4,
                           category_loss_weight=1.0, gate_class_weighting=False, category_class_weighting=False)
    batch = next(iter(trainer.get_train_dataloader()))
    loss = trainer.compute_loss(model, batch)
    terms = {name: values[-1] for name, values in trainer._logged_terms["train"].items()}
    assert loss.item() == pytest.approx(0.4 * terms["gate_loss"] + 1.0 * terms["category_loss"], rel=1e-5)


def test_batch_without_labels_gives_zero_not_nan(model, tokenizer, csv_files, tmp_path):
    trainer = make_trainer(model, tokenizer, csv_files, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    batch["gate_labels"][:] = -100
    batch["category_labels"][:] = -100
    loss = trainer.compute_loss(model, batch)
    assert loss.item() == 0.0
    loss.backward()
    assert model.category_head.weight.grad is not None  # still on the graph


def test_gradient_accumulation_matches_large_batch(model, tokenizer, csv_files, tmp_path):
    # Sequential order; every micro-batch of 4 holds the same number of labelled rows per task only if
    # labels are dense, so give every row both labels here.
    def step(batch_size, accumulation):
        trainer = make_trainer(no_dropout(copy.deepcopy(model)), tokenizer, csv_files, tmp_path,
                               per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                               max_steps=1, optim="sgd", learning_rate=0.5, warmup_steps=0,
                               train_sampling_strategy="sequential", layerwise_lr_decay=1.0,
                               gate_class_weighting=False, category_class_weighting=False,
                               category_label_smoothing=0.0)
        dense = trainer.train_dataset.filter(lambda row: row["gate_labels"] != -100 and row["category_labels"] != -100)
        trainer.train_dataset = dense
        trainer.train()
        return trainer.model.category_head.weight.detach().clone()

    assert torch.allclose(step(8, 1), step(4, 2), atol=1e-6)


def test_rdrop_kl_is_zero_without_dropout(model, tokenizer, csv_files, tmp_path):
    trainer = make_trainer(no_dropout(model), tokenizer, csv_files, tmp_path, rdrop=True, rdrop_alpha_gate=0.3)
    model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.compute_loss(model, batch)
    assert trainer._logged_terms["train"]["rdrop_category_kl"][-1] == pytest.approx(0.0, abs=1e-7)
    assert trainer._logged_terms["train"]["rdrop_gate_kl"][-1] == pytest.approx(0.0, abs=1e-7)


def test_rdrop_kl_positive_with_dropout(model, tokenizer, csv_files, tmp_path):
    model.dropout.p = 0.5
    trainer = make_trainer(model, tokenizer, csv_files, tmp_path, rdrop=True)
    model.train()
    trainer.compute_loss(model, next(iter(trainer.get_train_dataloader())))
    assert trainer._logged_terms["train"]["rdrop_category_kl"][-1] > 0


def test_hierarchy_term_logged(model, tokenizer, csv_files, tmp_path):
    trainer = make_trainer(model, tokenizer, csv_files, tmp_path, hierarchy_weight=0.2, pick_consistency_weight=0.1,
                           train_sampling_strategy="sequential", per_device_train_batch_size=32)
    model.train()
    trainer.compute_loss(model, next(iter(trainer.get_train_dataloader())))
    assert trainer._logged_terms["train"]["hierarchy_loss"][-1] > 0
    assert "pick_consistency_loss" in trainer._logged_terms["train"]


def test_train_logs_per_task_losses_and_checkpoint_reloads(model, tokenizer, csv_files, tmp_path):
    trainer = make_trainer(model, tokenizer, csv_files, tmp_path, save_strategy="epoch", eval_strategy="epoch",
                           num_train_epochs=2)
    trainer.train()
    history = trainer.state.log_history
    assert any("gate_loss" in entry and "category_loss" in entry and "loss" in entry for entry in history)
    assert any("eval_gate_loss" in entry for entry in history)
    checkpoint = max((tmp_path / "run").glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    reloaded = MultitaskModel.from_pretrained(checkpoint).eval()
    trainer.model.eval()
    inputs = tokenizer(["stock market rally"], return_tensors="pt")
    assert torch.allclose(reloaded(**inputs).category_logits, trainer.model(**inputs).category_logits, atol=1e-6)
    # Resuming from the checkpoint runs (optimizer and scheduler state restored).
    resumed = make_trainer(copy.deepcopy(model), tokenizer, csv_files, tmp_path, save_strategy="epoch",
                           num_train_epochs=3)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.epoch == pytest.approx(3.0)


@pytest.mark.parametrize("rdrop", [False, True])
def test_contrastive_term_weighted_into_the_loss(model, tokenizer, csv_files, tmp_path, rdrop):
    trainer = make_trainer(no_dropout(model), tokenizer, csv_files, tmp_path, contrastive_weight=0.5,
                           per_device_train_batch_size=16, rdrop=rdrop)
    model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    loss = trainer.compute_loss(model, batch)
    terms = {name: values[-1] for name, values in trainer._logged_terms["train"].items()}
    assert terms["contrastive_loss"] > 0  # 16 rows over 3 categories: positive pairs exist
    expected = 0.4 * terms["gate_loss"] + 1.0 * terms["category_loss"] + 0.5 * terms["contrastive_loss"]
    if rdrop:
        expected += 0.5 * terms["rdrop_category_kl"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)


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


def test_length_grouped_sampler_is_seeded_alike_and_reshuffles(model, tokenizer, csv_files, tmp_path):
    """The default sampler groups by length from a generator seeded with --seed: two trainers (two DDP processes)
    draw the same order, and a second epoch draws a new one."""
    first = make_trainer(model, tokenizer, csv_files, tmp_path, per_device_train_batch_size=2)._get_train_sampler()
    second = make_trainer(model, tokenizer, csv_files, tmp_path, per_device_train_batch_size=2)._get_train_sampler()
    assert first.generator is not None
    epoch_one = list(first)
    assert epoch_one == list(second)
    assert sorted(epoch_one) == list(range(len(epoch_one)))  # every row once
    assert list(first) != epoch_one  # the next epoch reshuffles


def test_pseudo_label_term_acts_on_pick_rows_without_a_category(model, tokenizer, csv_files, tmp_path):
    # The fixture's task2 texts differ from task1's, so every task1 Pick row is a Pick without a category.
    trainer = make_trainer(model, tokenizer, csv_files, tmp_path, max_steps=2, logging_steps=1,
                           pseudo_label_weight=1.0, pseudo_label_threshold=0.0)
    trainer.train()
    logged = [entry["pseudo_label_loss"] for entry in trainer.state.log_history if "pseudo_label_loss" in entry]
    assert logged and all(value > 0 for value in logged)  # threshold 0: every such row is pseudo-labelled
