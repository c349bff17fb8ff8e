"""Adversarial weight perturbation (AWP; Wu et al., 2020), in the form common in Kaggle NLP solutions.

After the normal backward pass, each weight matrix is pushed along its gradient by `adv_lr`·‖w‖·g/‖g‖,
clipped to a box of ±`adv_eps`·|w| around the original; the loss at the perturbed point is back-propagated
too (its gradient adds to the normal one), then the weights are restored before the optimizer step.
"""

from __future__ import annotations

import torch
from torch import nn


class AdversarialWeightPerturbation:
    """Perturbs `model`'s weights in place along their gradients and puts them back.

    Only parameters whose name contains `name_filter` ("weight": so biases and LayerNorm shifts stay put, though
    LayerNorm scales named `weight` are perturbed) and that have a finite, non-zero gradient are touched. One
    object serves one training step: `perturb()` after the normal backward, `restore()` before the optimizer step.
    A second `perturb()` before `restore()` would back up the already perturbed weights, so don't nest them.

    Args:
        model (`nn.Module`):
            The model being trained. Its parameters are overwritten in place; their `.grad` is only read, so
            the adversarial backward adds to the gradients already there.
        adv_lr (`float`):
            Step length relative to each tensor's own norm (`--awp_lr`): the step is `adv_lr`·‖w‖ along the
            unit gradient. 0 moves nothing, though the weights are still copied and restored.
        adv_eps (`float`):
            Half-width of the box around each element, relative to that element's magnitude (`--awp_eps`): an
            element stays within w ± `adv_eps`·|w| whatever `adv_lr` asks for.
        name_filter (`str`, *optional*, defaults to `"weight"`):
            Substring a parameter's name (as `model.named_parameters()` spells it) must contain to be
            perturbed.
    """

    def __init__(self, model: nn.Module, adv_lr: float, adv_eps: float, name_filter: str = "weight") -> None:
        self.model = model
        self.adv_lr = adv_lr
        self.adv_eps = adv_eps
        self.name_filter = name_filter
        self._backup: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def perturb(self) -> None:
        """Move each selected weight w to clip(w + adv_lr·(‖w‖+ε)·g/(‖g‖+ε), w ± adv_eps·|w|), keeping a copy of w.

        The norms are per parameter tensor (Frobenius), the box is per element; a zero weight element cannot
        move. ε is 1e-6. Only the gradient's direction is used, so gradients still multiplied by an fp16 loss
        scale give the same step; a step whose gradient overflowed (inf/NaN norm) leaves that tensor alone.
        """
        for name, parameter in self.model.named_parameters():
            if not parameter.requires_grad or parameter.grad is None or self.name_filter not in name:
                continue
            grad_norm = parameter.grad.norm()
            # An inf/nan gradient (fp16 overflow step) or a zero one has no direction to push along.
            if not torch.isfinite(grad_norm) or grad_norm == 0:
                continue
            # clone: `detach()` alone shares storage with the parameter, which `copy_` below overwrites.
            original = parameter.detach().clone()
            self._backup[name] = original
            step = self.adv_lr * parameter.grad / (grad_norm + 1e-6) * (original.norm() + 1e-6)
            bound = self.adv_eps * original.abs()
            parameter.copy_(torch.minimum(torch.maximum(original + step, original - bound), original + bound))

    @torch.no_grad()
    def restore(self) -> None:
        """Copy back every weight saved by the last `perturb()` and forget the copies; a no-op without one.

        Call it before the optimizer step (in a `finally`, as `MultitaskTrainer.training_step` does): the
        optimizer must update the original weights with the summed gradients, never the perturbed ones.
        """
        for name, parameter in self.model.named_parameters():
            if name in self._backup:
                parameter.copy_(self._backup[name])
        self._backup = {}
