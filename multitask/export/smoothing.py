"""SmoothQuant-style smoothing of linear layers before int8 export (Xiao et al., ICML 2023).

Dynamic int8 quantizes each activation matrix with one scale. In BERT-style encoders a few input channels of the
linear layers carry values far larger than the rest, so that one scale is set by the outliers and every other
channel is rounded coarsely. Smoothing divides input channel j by s_j and multiplies the weight's column j by s_j:

    y = x Wᵀ + b = (x / s) (W · s)ᵀ + b,    s_j = max|x_j|^α / max|W_j|^(1−α)

which is exact in float32 and moves part of the outliers' range from the activations (quantized per batch, one
scale) into the weights (quantized per output channel with `--per_channel`). α is the migration strength: 0 leaves
the activations alone, 1 moves all of their range into the weights. max|x_j| is measured on calibration texts.

The division is a `SmoothedLinear` module (an elementwise multiply by 1/s before the linear), traced by the
exporter like any other layer; the weights are rescaled in PyTorch, so no ONNX graph is edited by hand.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

# Floors that keep a channel that is always 0 (or a weight column of zeros) from giving a 0 or infinite scale.
_MIN_MAGNITUDE = 1e-5


class SmoothedLinear(nn.Module):
    """`linear(x / scale)` with the weight's columns multiplied by `scale`: the same function as the original
    linear layer, whose input has a smaller range per channel."""

    def __init__(self, linear: nn.Linear, scale: torch.Tensor) -> None:
        super().__init__()
        self.linear = copy.deepcopy(linear)
        with torch.no_grad():
            self.linear.weight.mul_(scale[None, :].to(self.linear.weight))
        self.register_buffer("inverse_scale", (1.0 / scale).to(self.linear.weight).contiguous())

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden_states * self.inverse_scale)


def encoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The `nn.Linear` layers inside `model.encoder` (the heads read pooled vectors without outlier channels)."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.startswith("encoder.")
    }


@torch.no_grad()
def input_absmax(layers: dict[str, nn.Linear], run: Callable[[], object]) -> dict[str, torch.Tensor]:
    """max |x_j| per input channel of each layer in `layers`, over everything `run()` feeds the model they belong
    to. The hooks this places are removed again, also when `run` raises.

    Args:
        layers (`dict[str, nn.Linear]`):
            Name → layer to observe.
        run (`Callable[[], object]`):
            Runs the model on the calibration texts (e.g. `predict_scores` over them).

    Returns:
        `dict[str, torch.Tensor]`: Name → float32 vector of length `in_features`; a layer `run` never reached is
        missing.
    """
    maxima: dict[str, torch.Tensor] = {}

    def observe(name: str):
        def hook(module, inputs, output):
            values = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0).float()
            maxima[name] = torch.maximum(maxima[name], values) if name in maxima else values

        return hook

    handles = [layer.register_forward_hook(observe(name)) for name, layer in layers.items()]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return maxima


def smoothing_scale(activation_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|x_j|^α / max|W_j|^(1−α) per input channel j (`weight` is `[out, in]`, as in `nn.Linear`)."""
    weight_absmax = weight.detach().abs().amax(0).float().clamp(min=_MIN_MAGNITUDE)
    scale = activation_absmax.clamp(min=_MIN_MAGNITUDE) ** alpha / weight_absmax ** (1 - alpha)
    return scale.clamp(min=_MIN_MAGNITUDE)


def smoothed_copy(model: nn.Module, alpha: float, run: Callable[[nn.Module], object]) -> tuple[nn.Module, int]:
    """A copy of `model` whose encoder linear layers are `SmoothedLinear`s, scales measured by `run(model)`.

    Args:
        model (`nn.Module`):
            The model; left unchanged.
        alpha (`float`):
            Migration strength in [0, 1].
        run (`Callable[[nn.Module], object]`):
            Feeds the calibration texts through the model it is given.

    Returns:
        `tuple`: the smoothed copy (same outputs as `model` up to float rounding) and the number of layers
        smoothed.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"smoothing alpha {alpha}: between 0 and 1")
    maxima = input_absmax(encoder_linears(model), lambda: run(model))
    smoothed = copy.deepcopy(model)
    for name, absmax in maxima.items():
        parent_name, _, child = name.rpartition(".")
        parent = smoothed.get_submodule(parent_name)
        linear = getattr(parent, child)
        setattr(parent, child, SmoothedLinear(linear, smoothing_scale(absmax, linear.weight, alpha)))
    return smoothed, len(maxima)
