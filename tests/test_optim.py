"""LLRD parameter groups: every trainable parameter in exactly one group at the expected rate."""

import logging

import pytest

from multitask.train.arguments import MultitaskTrainingArguments
from multitask.train.optim import llrd_parameter_groups, parameter_depth
from multitask.train.trainer import MultitaskTrainer


def test_parameter_depth_rules():
    assert parameter_depth("encoder.encoder.layer.1.attention.self.query_proj.weight", 2) == 0
    assert parameter_depth("encoder.encoder.layer.0.output.dense.weight", 2) == 1
    assert parameter_depth("encoder.encoder.rel_embeddings.weight", 2) == 1  # shared: bottom layer's rate
    assert parameter_depth("encoder.encoder.LayerNorm.weight", 2) == 1
    assert parameter_depth("encoder.embeddings.word_embeddings.weight", 2) == 2  # lowest
    assert parameter_depth("category_head.weight", 2) == 0


def test_every_parameter_in_exactly_one_group_with_expected_rate(model, tmp_path):
    args = MultitaskTrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, layerwise_lr_decay=0.5,
                                      weight_decay=0.01, use_cpu=True, eval_strategy="no", load_best_model_at_end=False)
    trainer = MultitaskTrainer(model=model, args=args)
    decay_names = trainer.get_decay_parameter_names(model)
    groups = llrd_parameter_groups(model, 1e-3, 0.5, 0.01, decay_names, num_layers=2)

    seen = [name for group in groups for name in group["param_names"]]
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert sorted(seen) == sorted(trainable) and len(seen) == len(set(seen))

    rate = {name: group["lr"] for group in groups for name in group["param_names"]}
    decay = {name: group["weight_decay"] for group in groups for name in group["param_names"]}
    assert rate["category_head.weight"] == pytest.approx(1e-3)
    assert rate["gate_head.bias"] == pytest.approx(1e-3)
    assert rate["encoder.encoder.layer.1.attention.self.query_proj.weight"] == pytest.approx(1e-3)
    assert rate["encoder.encoder.layer.0.attention.self.query_proj.weight"] == pytest.approx(5e-4)
    assert rate["encoder.encoder.rel_embeddings.weight"] == pytest.approx(5e-4)
    assert rate["encoder.encoder.LayerNorm.weight"] == pytest.approx(5e-4)
    assert rate["encoder.embeddings.word_embeddings.weight"] == pytest.approx(2.5e-4)
    assert min(rate.values()) == rate["encoder.embeddings.word_embeddings.weight"]
    # The Trainer's own rule: no decay on biases or LayerNorm.
    assert decay["encoder.encoder.LayerNorm.weight"] == 0.0 and decay["category_head.bias"] == 0.0
    assert decay["category_head.weight"] == 0.01


def test_trainer_optimizer_uses_llrd_groups(model, tmp_path, caplog):
    args = MultitaskTrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, layerwise_lr_decay=0.5,
                                      use_cpu=True, eval_strategy="no", load_best_model_at_end=False)
    with caplog.at_level(logging.INFO, logger="multitask.train.trainer"):
        optimizer = MultitaskTrainer(model=model, args=args).create_optimizer()
    rates = sorted({group["lr"] for group in optimizer.param_groups})
    assert rates == pytest.approx([2.5e-4, 5e-4, 1e-3])
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(model.parameters()))
    # The compounded rate is said once: two layers at 0.5 leave the embeddings at a quarter of the rate.
    said = [record.getMessage() for record in caplog.records if "layer-wise LR decay" in record.getMessage()]
    assert said == ["layer-wise LR decay 0.5 over 2 layers: the lowest trained group runs at 25.0% of "
                    "--learning_rate (--layerwise_lr_decay 1.0 turns it off)"]
