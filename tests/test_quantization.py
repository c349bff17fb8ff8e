"""Mixed-precision int8: naming the linear layers of an exported graph, quantizing with some kept float, and the
search for the fewest to keep (with stand-in measurements, so the search itself is checked exactly)."""

import onnx
import pytest
import torch
from transformers import BertConfig, BertModel

from multitask.export import quantization
from multitask.export.onnx_export import export_onnx
from multitask.model.modeling import MultitaskModel, build_config
from tests.conftest import CATEGORIES


@pytest.fixture(scope="module")
def bert_graph(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    encoder = BertModel(
        BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, max_position_embeddings=64)
    )
    model = MultitaskModel(build_config(encoder.config, CATEGORIES), encoder=encoder).eval()
    path = tmp_path_factory.mktemp("graph") / "model.onnx"
    return export_onnx(model, tokenizer, path), model


def test_linear_layers_are_named_by_their_modules(bert_graph):
    path, model = bert_graph
    layers = quantization.linear_layers(path)
    linear_modules = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    # Every nn.Linear of the model, and nothing else (the attention-score MatMuls have no stored weight).
    assert sorted(layers.values()) == sorted(linear_modules)
    assert "encoder.encoder.layer.1.output.dense" in layers.values() and "category_head" in layers.values()


def test_the_export_traces_eager_attention_and_restores_the_encoders(bert_graph):
    path, model = bert_graph
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "IsNaN" not in ops  # SDPA's decomposition guards every softmax with IsNaN/Where
    assert model.encoder.config._attn_implementation == "sdpa"  # restored after tracing


def test_matching_layers_by_regular_expression():
    layers = {"n1": "encoder.layer.0.output.dense", "n2": "encoder.layer.1.output.dense", "n3": "category_head"}
    assert quantization.matching_layers(layers, [r"layer\.0\.", "head"]) == ["n1", "n3"]
    assert quantization.matching_layers(layers, ["output", "layer.1"]) == ["n1", "n2"]  # no duplicates
    with pytest.raises(ValueError, match="matches no linear layer"):
        quantization.matching_layers(layers, ["attention"])
    with pytest.raises(ValueError, match="not a regular expression"):
        quantization.matching_layers(layers, ["(unclosed"])


def test_quantize_int8_keeps_the_named_nodes_float(bert_graph, tmp_path):
    path, _ = bert_graph
    layers = quantization.linear_layers(path)
    kept = quantization.matching_layers(layers, [r"layer\.0\.intermediate"])
    target = quantization.quantize_int8(path, tmp_path / "int8.onnx", per_channel=True, keep_float=kept)
    nodes = onnx.load(str(target)).graph.node
    quantized = [node for node in nodes if node.op_type == "MatMulInteger"]
    assert len(quantized) == len(layers) - 1
    assert any(node.name == kept[0] and node.op_type == "MatMul" for node in nodes)
    only = quantization.quantize_int8(path, tmp_path / "one.onnx", only=kept)
    assert sum(node.op_type == "MatMulInteger" for node in onnx.load(str(only)).graph.node) == 1


def test_choose_float_layers_keeps_the_fewest_most_sensitive():
    sensitivity = {"a": 0.1, "b": 0.5, "c": 0.3, "d": 0.0}
    tried = []

    def passes(keep):
        tried.append(list(keep))
        return {"b", "c"} <= set(keep)  # agreement holds once the two most sensitive are float

    chosen, scores, calls = quantization.choose_float_layers(list(sensitivity), sensitivity.get, passes)
    assert chosen == ["b", "c"] and scores == sensitivity
    assert tried == [[], ["b"], ["b", "c"]] and calls == 3  # most sensitive first, one more at a time


def test_choose_float_layers_takes_the_first_pass_when_noise_makes_it_non_monotone():
    # Passing at 1 but failing at 2 (rows flipping at a threshold): the scan stops at 1, a bisection would not.
    answers = {0: False, 1: True, 2: False, 3: True}
    chosen, _, calls = quantization.choose_float_layers(
        ["a", "b", "c", "d"], {"a": 4, "b": 3, "c": 2, "d": 1}.get, lambda keep: answers.get(len(keep), True)
    )
    assert chosen == ["a"] and calls == 2


def test_choose_float_layers_stops_when_full_int8_passes_and_keeps_the_forced_ones():
    chosen, _, calls = quantization.choose_float_layers(["a", "b"], lambda node: 1.0, lambda keep: True, ["x"])
    assert chosen == ["x"] and calls == 1
    # Nothing but all-float passes: every candidate is kept (the fp32 graph, never tried itself).
    chosen, _, calls = quantization.choose_float_layers(["a", "b", "c"], {"a": 3, "b": 2, "c": 1}.get,
                                                        lambda keep: len(keep) == 4, ["x"])
    assert chosen == ["x", "a", "b", "c"] and calls == 3


def test_smoothed_layers_keep_their_names_in_the_graph(bert_graph, tokenizer, tmp_path):
    from multitask.export.smoothing import smoothed_copy

    path, model = bert_graph
    inputs = tokenizer(["an example"], return_tensors="pt")
    smoothed, _ = smoothed_copy(model, 0.5, lambda each: each(**inputs))
    smoothed_path = export_onnx(smoothed, tokenizer, tmp_path / "smoothed.onnx")
    # `--keep_float` patterns mean the same layers with and without smoothing.
    assert sorted(quantization.linear_layers(smoothed_path).values()) == sorted(
        quantization.linear_layers(path).values()
    )
