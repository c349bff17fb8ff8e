"""MultitaskModel: forward shapes, pooling, multi-sample dropout, save/load round trips, encoder loading, Auto
classes, and freezing the word embeddings (--freeze_embeddings). The config's own rules are in test_configuration.py."""

import logging

import pytest
import torch
from transformers import AutoConfig, AutoModel, DebertaV2Model

from multitask.model.configuration import MultitaskConfig
from multitask.model.modeling import (
    MultitaskModel,
    build_config,
    freeze_word_embeddings,
    load_for_training,
    parameter_counts,
    pool,
)
from multitask.train.arguments import MultitaskTrainingArguments
from multitask.train.trainer import MultitaskTrainer
from tests.conftest import CATEGORIES, no_dropout

WORD = "encoder.embeddings.word_embeddings.weight"


def batch(tokenizer):
    encoded = tokenizer(["stock market rally", "選挙の結果が出た", "buy pills"], padding=True, return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


def test_forward_shapes_and_loss(model, tokenizer):
    input_ids, attention_mask = batch(tokenizer)
    outputs = model(input_ids, attention_mask)
    assert outputs.gate_logits.shape == (3, 2) and outputs.category_logits.shape == (3, len(CATEGORIES))
    assert outputs.loss is None
    labelled = model(input_ids, attention_mask, gate_labels=torch.tensor([1, 1, 0]),
                     category_labels=torch.tensor([0, -100, -100]))
    assert labelled.loss.ndim == 0 and torch.isfinite(labelled.loss)


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert pool(hidden, torch.tensor([[1, 1, 0]]), "mean").tolist() == [[2.0, 3.0]]
    assert pool(hidden, torch.tensor([[1, 1, 0]]), "cls").tolist() == [[1.0, 2.0]]


def test_save_load_round_trip_exact(model, tokenizer, tmp_path):
    model.config.gate_thresholds = {"default": 0.5, "f1": 0.37}
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = AutoModel.from_pretrained(tmp_path)  # registered with the Auto classes
    assert isinstance(reloaded, MultitaskModel)
    assert reloaded.config.category_id2label == {0: "economy", 1: "politics", 2: "sports"}  # int keys restored
    assert reloaded.config.gate_id2label == {0: "Decline", 1: "Pick"}
    assert reloaded.config.gate_thresholds["f1"] == 0.37
    assert reloaded.config.label_maps_hash() == model.config.label_maps_hash()
    model.eval(), reloaded.eval()
    input_ids, attention_mask = batch(tokenizer)
    first, second = model(input_ids, attention_mask), reloaded(input_ids, attention_mask)
    assert torch.equal(first.gate_logits, second.gate_logits)
    assert torch.equal(first.category_logits, second.category_logits)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MultitaskConfig)


def test_plain_encoder_checkpoint_loads_all_encoder_weights(encoder_dir, caplog):
    with caplog.at_level(logging.WARNING):
        model = load_for_training(str(encoder_dir), CATEGORIES)
    reference = DebertaV2Model.from_pretrained(encoder_dir)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], tensor), name
    assert model.encoder.encoder.rel_embeddings is not None and model.encoder.encoder.LayerNorm is not None
    assert "newly initialized" not in caplog.text and "not initialized" not in caplog.text


def test_stage1_model_initialises_stage2(encoder_dir, tmp_path):
    stage1 = load_for_training(str(encoder_dir), None)  # gate-only
    assert stage1.category_head is None and stage1.config.has_gate
    stage1.save_pretrained(tmp_path)
    stage2 = load_for_training(str(tmp_path), CATEGORIES)
    assert torch.equal(stage2.gate_head.weight, stage1.gate_head.weight)
    for name, tensor in stage1.encoder.state_dict().items():
        assert torch.equal(stage2.encoder.state_dict()[name], tensor)
    assert stage2.config.num_categories == 3


def test_saved_model_with_other_labels_gets_a_fresh_category_head(model, tmp_path):
    model.save_pretrained(tmp_path)
    renamed = load_for_training(str(tmp_path), ["a", "b", "c"])
    assert not torch.equal(renamed.category_head.weight, model.category_head.weight)
    same = load_for_training(str(tmp_path), CATEGORIES)
    assert torch.equal(same.category_head.weight, model.category_head.weight)


def test_bert_style_pooler_is_dropped():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32))
    model = MultitaskModel(build_config(bert.config, ["x", "y"], pooling="cls"), encoder=bert)
    assert model.encoder.pooler is None
    assert not any("pooler" in name for name, _ in model.named_parameters())
    outputs = model(torch.tensor([[2, 5, 6, 3]]), torch.tensor([[1, 1, 1, 1]]))
    assert outputs.category_logits.shape == (1, 2)


def test_multi_sample_dropout(encoder_dir, tokenizer):
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


@pytest.fixture
def bert_model():
    """A tiny BERT (the architecture of multilingual-e5): it has position and token-type embeddings."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    encoder = BertModel(config, add_pooling_layer=False)
    return MultitaskModel(build_config(encoder.config, CATEGORIES), encoder=encoder)


def test_only_word_embeddings_are_frozen(bert_model):
    trainable_before, total = parameter_counts(bert_model)
    frozen = freeze_word_embeddings(bert_model)
    assert frozen == 500 * 32
    assert parameter_counts(bert_model) == (trainable_before - frozen, total)
    grads = {name: p.requires_grad for name, p in bert_model.named_parameters()}
    assert grads[WORD] is False
    for name in ("encoder.embeddings.position_embeddings.weight", "encoder.embeddings.token_type_embeddings.weight",
                 "encoder.embeddings.LayerNorm.weight", "category_head.weight", "gate_head.weight"):
        assert grads[name] is True, name
    assert freeze_word_embeddings(bert_model) == 0  # idempotent


@pytest.mark.parametrize("layerwise_lr_decay", [0.5, 1.0])  # our LLRD groups, and the Trainer's own optimizer
def test_frozen_matrix_is_not_in_the_optimizer_and_does_not_move(model, tmp_path, layerwise_lr_decay):
    freeze_word_embeddings(model)
    args = MultitaskTrainingArguments(output_dir=str(tmp_path), learning_rate=1e-2, layerwise_lr_decay=layerwise_lr_decay,
                                      weight_decay=0.1, use_cpu=True, eval_strategy="no", load_best_model_at_end=False)
    optimizer = MultitaskTrainer(model=model, args=args).create_optimizer()
    in_groups = {id(p) for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    assert id(named[WORD]) not in in_groups
    assert in_groups == {id(p) for p in model.parameters() if p.requires_grad}

    before = {name: p.detach().clone() for name, p in named.items()}
    model.train()
    output = model(input_ids=torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 2, 0]]),
                   attention_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]),
                   gate_labels=torch.tensor([1, 0]), category_labels=torch.tensor([2, -100]))
    output.loss.backward()
    optimizer.step()
    assert torch.equal(named[WORD], before[WORD])
    assert not torch.equal(named["encoder.embeddings.LayerNorm.weight"], before["encoder.embeddings.LayerNorm.weight"])
    assert not torch.equal(named["category_head.weight"], before["category_head.weight"])


def test_parameter_counts_count_a_shared_tensor_once():
    shared = torch.nn.Linear(3, 2)  # 6 weights + 2 biases
    frozen = torch.nn.Linear(2, 1)  # 2 + 1, frozen below
    frozen.requires_grad_(False)
    assert parameter_counts(torch.nn.ModuleDict({"a": shared, "b": shared, "c": frozen})) == (8, 11)


def test_split_stacked_gives_the_two_rdrop_passes():
    """A forward on the batch stacked twice comes back as two outputs, first half then second, None kept None."""
    from multitask.model.modeling import MultitaskOutput

    gate = torch.arange(8.0).reshape(4, 2)
    first, second = MultitaskOutput(gate_logits=gate, category_logits=None).split_stacked()
    assert torch.equal(first.gate_logits, gate[:2]) and torch.equal(second.gate_logits, gate[2:])
    assert first.category_logits is None and second.features is None
