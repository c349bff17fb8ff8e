"""Adversarial weight perturbation (AWP; Wu et al., 2020), in the form common in Kaggle NLP solutions.

After the normal backward pass, each weight matrix is pushed along its gradient by `adv_lr`·‖w‖·g/‖g‖,
clipped to a box of ±`adv_eps`·|w| around the original; the loss at the perturbed point is back-propagated
too (its gradient adds to the normal one), then the weights are restored before the optimizer step.
"""

from __future__ import annotations

import torch
from torch import nn


class AdversarialWeightPerturbation:
    def __init__(self, model: nn.Module, adv_lr: float, adv_eps: float, name_filter: str = "weight") -> None:
        self.model = model
        self.adv_lr = adv_lr
        self.adv_eps = adv_eps
        self.name_filter = name_filter
        self._backup: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def perturb(self) -> None:
        for name, parameter in self.model.named_parameters():
            if not parameter.requires_grad or parameter.grad is None or self.name_filter not in name:
                continue
            grad_norm = parameter.grad.norm()
            if not torch.isfinite(grad_norm) or grad_norm == 0:
                continue
            original = parameter.detach().clone()
            self._backup[name] = original
            step = self.adv_lr * parameter.grad / (grad_norm + 1e-6) * (original.norm() + 1e-6)
            bound = self.adv_eps * original.abs()
            parameter.copy_(torch.minimum(torch.maximum(original + step, original - bound), original + bound))

    @torch.no_grad()
    def restore(self) -> None:
        for name, parameter in self.model.named_parameters():
            if name in self._backup:
                parameter.copy_(self._backup[name])
        self._backup = {}
