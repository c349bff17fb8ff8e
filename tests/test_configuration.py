"""MultitaskConfig: label maps restored from JSON, the derived fields, the values it refuses, and the encoder's
attention implementation kept through a save/load."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, AutoModel

from multitask.data.demo import tiny_deberta_config
from multitask.model.configuration import MultitaskConfig
from multitask.model.modeling import MultitaskModel, build_config


def test_label_maps_restored_with_int_keys_and_derived_fields(tmp_path):
    config = build_config(tiny_deberta_config(100, hidden_size=32), ["economy", "sports"])
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded, MultitaskConfig)
    assert reloaded.category_id2label == {0: "economy", 1: "sports"}  # JSON's "0" keys back to ints
    assert reloaded.gate_id2label == {0: "Decline", 1: "Pick"}
    assert reloaded.category_label2id == {"economy": 0, "sports": 1}
    assert (reloaded.num_categories, reloaded.has_gate, reloaded.has_category, reloaded.hidden_size) == (2, True, True, 32)
    assert reloaded.id2label == {0: "economy", 1: "sports"}  # mirrored for Hub widgets and pipelines
    assert reloaded.gate_thresholds == {"default": 0.5} and reloaded.text_columns == ["title", "body"]


def test_single_head_configs():
    encoder = tiny_deberta_config(100)
    gate_only = build_config(encoder, None)
    assert gate_only.has_gate and not gate_only.has_category and gate_only.num_categories == 0
    category_only = build_config(encoder, ["a", "b"], with_gate=False)
    assert category_only.gate_id2label is None and not category_only.has_gate


def test_label_maps_hash_depends_on_the_maps_only():
    encoder = tiny_deberta_config(100)
    first = build_config(encoder, ["a", "b"])
    assert first.label_maps_hash() == build_config(encoder, ["a", "b"], pooling="cls").label_maps_hash()
    assert first.label_maps_hash() != build_config(encoder, ["b", "a"]).label_maps_hash()  # order is the ids
    assert len(first.label_maps_hash()) == 16


def test_head_temperature_defaults_to_one():
    config = MultitaskConfig(calibration={"gate_temperature": 1.5})
    assert config.head_temperature("gate") == 1.5 and config.head_temperature("category") == 1.0
    assert MultitaskConfig().head_temperature("gate") == 1.0


@pytest.mark.parametrize(("settings", "message"), [
    ({"pooling": "max"}, "pooling"),
    ({"gate_score": "nonsense"}, "gate_score must be one of"),
    ({"gate_score": "maha"}, "needs fitted gate statistics"),
    ({"truncation": "middle"}, "truncation"),
    ({"long_text": "split"}, "long_text"),
])
def test_invalid_values_rejected(settings, message):
    with pytest.raises(ValueError, match=message):
        MultitaskConfig(**settings)


def test_encoder_keeps_its_attention_implementation(tmp_path):
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, attn_implementation="sdpa"))
    model = MultitaskModel(build_config(bert.config, ["x", "y"]), encoder=bert)
    assert model.encoder.config._attn_implementation == "sdpa"  # not silently reset to eager
    model.save_pretrained(tmp_path)
    assert AutoModel.from_pretrained(tmp_path).encoder.config._attn_implementation == "sdpa"
