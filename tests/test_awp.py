"""Adversarial weight perturbation: the step and its box worked out by hand, what is left alone, and a training run."""

import math

import pytest
import torch

from multitask.train.awp import AdversarialWeightPerturbation
from tests.conftest import make_trainer


def layer_with(weight, weight_grad, bias_grad=None):
    layer = torch.nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.zero_()
    layer.weight.grad = torch.tensor(weight_grad)
    if bias_grad is not None:
        layer.bias.grad = torch.tensor(bias_grad)
    return layer


def test_step_is_lr_times_weight_norm_along_the_unit_gradient():
    # w = (3, 4): ‖w‖ = 5; g = (0, 2): g/‖g‖ = (0, 1). Step = 0.1 · 5 · (0, 1) = (0, 0.5); the box ±1.0·|w| is wide.
    layer = layer_with([[3.0, 4.0]], [[0.0, 2.0]], bias_grad=[1.0])
    AdversarialWeightPerturbation(layer, adv_lr=0.1, adv_eps=1.0).perturb()
    assert layer.weight.tolist() == [[pytest.approx(3.0), pytest.approx(4.5, abs=1e-5)]]
    assert layer.bias.tolist() == [0.0]  # only names containing "weight" move


def test_step_is_clipped_to_the_box_around_each_weight():
    # Same step (0, 0.5), box ±0.05·|w| = ±(0.15, 0.2): the second weight stops at 4.2.
    layer = layer_with([[3.0, 4.0]], [[0.0, 2.0]])
    AdversarialWeightPerturbation(layer, adv_lr=0.1, adv_eps=0.05).perturb()
    assert layer.weight.tolist() == [[pytest.approx(3.0), pytest.approx(4.2)]]


@pytest.mark.parametrize("grad", [[[0.0, 0.0]], [[float("inf"), 1.0]], [[float("nan"), 1.0]]])
def test_zero_or_non_finite_gradient_leaves_the_weight_alone(grad):
    layer = layer_with([[3.0, 4.0]], grad)
    awp = AdversarialWeightPerturbation(layer, adv_lr=0.1, adv_eps=1.0)
    awp.perturb()
    assert layer.weight.tolist() == [[3.0, 4.0]]
    awp.restore()  # nothing was saved: still a no-op
    assert layer.weight.tolist() == [[3.0, 4.0]]


def test_frozen_or_gradient_free_weights_are_skipped():
    frozen = layer_with([[3.0, 4.0]], [[0.0, 2.0]])
    frozen.weight.requires_grad_(False)
    untouched = torch.nn.Linear(2, 1)
    before = untouched.weight.detach().clone()
    model = torch.nn.ModuleDict({"frozen": frozen, "untouched": untouched})
    AdversarialWeightPerturbation(model, adv_lr=0.1, adv_eps=1.0).perturb()
    assert frozen.weight.tolist() == [[3.0, 4.0]] and torch.equal(untouched.weight, before)


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
