"""Config and model: forward shapes, save/load round trips, encoder loading, Auto classes."""

import logging

import pytest
import torch
from transformers import AutoConfig, AutoModel, DebertaV2Model

from multitask.configuration import MultitaskConfig
from multitask.modeling import MultitaskModel, load_for_training, pool

from .conftest import CATEGORIES


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

    from multitask.modeling import build_config

    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32))
    model = MultitaskModel(build_config(bert.config, ["x", "y"], pooling="cls"), encoder=bert)
    assert model.encoder.pooler is None
    assert not any("pooler" in name for name, _ in model.named_parameters())
    outputs = model(torch.tensor([[2, 5, 6, 3]]), torch.tensor([[1, 1, 1, 1]]))
    assert outputs.category_logits.shape == (1, 2)


def test_invalid_pooling_rejected():
    with pytest.raises(ValueError, match="pooling"):
        MultitaskConfig(pooling="max")


def test_encoder_keeps_its_attention_implementation(tmp_path):
    from transformers import BertConfig, BertModel

    from multitask.modeling import build_config

    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, attn_implementation="sdpa"))
    model = MultitaskModel(build_config(bert.config, ["x", "y"]), encoder=bert)
    assert model.encoder.config._attn_implementation == "sdpa"  # not silently reset to eager
    model.save_pretrained(tmp_path)
    assert AutoModel.from_pretrained(tmp_path).encoder.config._attn_implementation == "sdpa"
