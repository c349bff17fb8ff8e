"""SmoothQuant smoothing: the smoothed layer computes the same function, the scales are the formula's, and a
smoothed copy of a model gives the model's outputs while leaving the model itself alone."""

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from multitask.export import smoothing
from multitask.model.modeling import MultitaskModel, build_config
from tests.conftest import CATEGORIES


@pytest.fixture(scope="module")
def bert_model(tokenizer):
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=64, max_position_embeddings=64))
    return MultitaskModel(build_config(encoder.config, CATEGORIES), encoder=encoder).eval()


def test_smoothing_scale_by_hand():
    activation = torch.tensor([4.0, 1.0])
    weight = torch.tensor([[1.0, -4.0], [0.5, 2.0]])  # column maxima 1 and 4
    # alpha 0.5: sqrt(4)/sqrt(1) = 2, sqrt(1)/sqrt(4) = 0.5; alpha 1: the activation maxima; alpha 0: 1/weight maxima.
    assert torch.allclose(smoothing.smoothing_scale(activation, weight, 0.5), torch.tensor([2.0, 0.5]))
    assert torch.allclose(smoothing.smoothing_scale(activation, weight, 1.0), activation)
    assert torch.allclose(smoothing.smoothing_scale(activation, weight, 0.0), torch.tensor([1.0, 0.25]))
    # A channel that never fires gets a small positive scale, not 0 (which would divide by zero).
    assert (smoothing.smoothing_scale(torch.tensor([0.0, 1.0]), weight, 0.5) > 0).all()


def test_smoothed_linear_is_the_same_function_with_a_smaller_input_range():
    torch.manual_seed(1)
    linear = nn.Linear(3, 2)
    x = torch.randn(5, 3) * torch.tensor([100.0, 1.0, 1.0])  # one outlier channel
    scale = torch.tensor([10.0, 1.0, 0.5])
    smoothed = smoothing.SmoothedLinear(linear, scale)
    assert torch.allclose(smoothed(x), linear(x), atol=1e-4)
    assert (x * smoothed.inverse_scale).abs().amax(0)[0] < x.abs().amax(0)[0] / 9
    assert torch.equal(linear.weight, smoothed.linear.weight / scale)  # the original layer is not modified


def test_input_absmax_observes_every_layer_and_removes_its_hooks():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    layers = {"0": model[0], "2": model[2]}
    batches = [torch.tensor([[1.0, -5.0]]), torch.tensor([[-3.0, 2.0]])]
    maxima = smoothing.input_absmax(layers, lambda: [model(batch) for batch in batches])
    assert torch.equal(maxima["0"], torch.tensor([3.0, 5.0]))
    assert maxima["2"].shape == (3,) and not model[0]._forward_hooks and not model[2]._forward_hooks


def test_smoothed_copy_keeps_the_outputs_and_leaves_the_model_alone(bert_model, tokenizer):
    inputs = tokenizer(["stock market rally lifts shares", "a b"], padding=True, return_tensors="pt")

    def run(model):
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])

    smoothed, count = smoothing.smoothed_copy(bert_model, 0.85, run)
    assert count == len(smoothing.encoder_linears(bert_model)) == 2 * 6  # 6 linears per BERT layer
    before, after = run(bert_model), run(smoothed)
    assert torch.allclose(before.category_logits, after.category_logits, atol=1e-5)
    assert torch.allclose(before.gate_logits, after.gate_logits, atol=1e-5)
    assert isinstance(bert_model.encoder.encoder.layer[0].output.dense, nn.Linear)
    assert isinstance(smoothed.encoder.encoder.layer[0].output.dense, smoothing.SmoothedLinear)
    assert isinstance(smoothed.category_head, nn.Linear)  # heads are not smoothed
    with pytest.raises(ValueError, match="between 0 and 1"):
        smoothing.smoothed_copy(bert_model, 1.5, run)
