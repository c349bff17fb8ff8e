"""Layer-wise learning-rate decay (LLRD) parameter groups: a pure function of the model and the rates.

Layer k counted from the top of the encoder trains at lr·decay^k; the embeddings sit one step below the
bottom layer. Parameters that belong to the encoder but to no numbered layer (DeBERTa-v2's `rel_embeddings`
and `encoder.LayerNorm`, shared by every layer) train at the bottom layer's rate. Heads train at lr.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

_LAYER_INDEX = re.compile(r"\.(?:layer|layers)\.(\d+)\.")


def parameter_depth(name: str, num_layers: int, encoder_prefix: str = "encoder.") -> int:
    """How many decay steps below the top a parameter sits (0 = top layer or a head)."""
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
    """
    decay_names = set(decay_parameter_names)
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        depth = parameter_depth(name, num_layers)
        with_decay = name in decay_names
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
