"""Layer-wise learning-rate decay (LLRD) parameter groups: a pure function of the model and the rates.

Layer k counted from the top of the encoder trains at lr·decay^k; the embeddings sit one step below the
bottom layer. Parameters that belong to the encoder but to no numbered layer (DeBERTa-v2's `rel_embeddings`
and `encoder.LayerNorm`, shared by every layer) train at the bottom layer's rate. Heads train at lr.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

# BERT and DeBERTa name their layer list `layer`, other encoders `layers`; N is the index in it.
_LAYER_INDEX = re.compile(r"\.(?:layer|layers)\.(\d+)\.")


def parameter_depth(name: str, num_layers: int, encoder_prefix: str = "encoder.") -> int:
    """How many decay steps below the top a parameter sits (0 = top layer or a head, `num_layers` = embeddings).

    Args:
        name (`str`):
            The parameter's name as `model.named_parameters()` spells it on the `MultitaskModel` itself (not
            on a peft wrapper, whose names gain a prefix); the layer index is read from `.layer.N.` /
            `.layers.N.`.
        num_layers (`int`):
            The encoder's number of layers (`encoder_config.num_hidden_layers`).
        encoder_prefix (`str`, *optional*, defaults to `"encoder."`):
            Prefix of every encoder parameter; a name without it (a head, the task log-variances) is depth 0.

    Returns:
        `int`: `num_layers - 1 - N` for layer N, `num_layers` for the embeddings, and `num_layers - 1` (the
        bottom layer's depth) for encoder parameters shared by all layers.
    """
    if not name.startswith(encoder_prefix):
        return 0  # heads, pooler, anything outside the encoder
    match = _LAYER_INDEX.search(name)
    if match:
        return num_layers - 1 - int(match.group(1))
    if ".embeddings." in name or name.startswith(encoder_prefix + "embeddings."):
        return num_layers
    return num_layers - 1  # shared encoder parameters (rel_embeddings, encoder.LayerNorm, conv)


def llrd_parameter_groups(
    model: nn.Module,
    learning_rate: float,
    layerwise_lr_decay: float,
    weight_decay: float,
    decay_parameter_names: Iterable[str],
    num_layers: int,
) -> list[dict]:
    """Optimizer groups: one per (depth, decay or not). Each group records its `name` for inspection.

    `decay_parameter_names` comes from `Trainer.get_decay_parameter_names`, so biases and LayerNorm weights
    get no weight decay exactly as in a plain Trainer run.

    Args:
        model (`nn.Module`):
            The `MultitaskModel` (unwrapped from DDP and peft); frozen parameters (`requires_grad=False`) are
            left out of every group.
        learning_rate (`float`):
            The heads' rate and that of the top encoder layer (`--learning_rate`).
        layerwise_lr_decay (`float`):
            Factor per layer going down, in (0, 1] (`--layerwise_lr_decay`); 1 gives every group
            `learning_rate`.
        weight_decay (`float`):
            Weight decay of the groups whose parameters are in `decay_parameter_names`; the others get 0.0.
        decay_parameter_names (`Iterable[str]`):
            Names (as `model.named_parameters()` spells them) that take weight decay.
        num_layers (`int`):
            The encoder's number of layers; see `parameter_depth`.

    Returns:
        `list[dict]`: Groups sorted by depth (no-decay before decay within one), each with `name` (e.g.
        `"depth3_decay"`), `params`, `param_names` (parallel to `params`; `MultitaskTrainer.create_optimizer`
        pops it before building the optimizer), `lr` = `learning_rate`·`layerwise_lr_decay`^depth and
        `weight_decay`. Depths with no trainable parameter get no group.
    """
    decay_names = set(decay_parameter_names)
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        depth = parameter_depth(name, num_layers)
        with_decay = name in decay_names
        # Decay and no-decay parameters of one depth need two groups: weight_decay is set per group.
        key = (depth, with_decay)
        if key not in groups:
            groups[key] = {
                "name": f"depth{depth}_{'decay' if with_decay else 'no_decay'}",
                "params": [],
                "param_names": [],
                "lr": learning_rate * layerwise_lr_decay**depth,
                "weight_decay": weight_decay if with_decay else 0.0,
            }
        groups[key]["params"].append(parameter)
        groups[key]["param_names"].append(name)
    return [groups[key] for key in sorted(groups)]
