"""int8 quantization of an exported graph with ONNX Runtime's `quantize_dynamic`, optionally in mixed precision.

Dynamic quantization rounds each weight matrix to int8 and each activation to uint8 with one scale per batch. On
BERT-style encoders the error is not spread evenly: a handful of linear layers (on MiniLM-L6 the feed-forward pair
of the first layers, whose inputs carry a few outlier channels) cause most of the changed predictions. Keeping just
those in float32 buys back most of the agreement for part of the speed. This module names the linear layers of a
graph by the module they came from, quantizes with some of them kept float, and chooses which to keep:

- `linear_layers`: quantizable MatMul/Gemm nodes of a dynamo-exported graph → module names (`encoder.encoder.
  layer.0.output.dense`), read from the exporter's `namespace` node metadata;
- `quantize_int8`: `quantize_dynamic` with `keep_float` nodes excluded;
- `choose_float_layers`: the fewest layers to keep float so that a caller's agreement test passes: layers ordered by
  their own sensitivity (the output change when only that layer is quantized), then the most sensitive kept float
  one more at a time. The caller supplies both measurements (see `multitask.export.onnx_export`), so this module
  knows nothing of models or data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

# The dynamo exporter's node metadata: "<path>: <class>/<path>: <class>/…/<op>: <aten op>"; the segment before the
# op is the module that issued it.
_NAMESPACE_KEY = "namespace"
# _ExportedForward holds the model as `model`; module names are given relative to the MultitaskModel.
_WRAPPER_PREFIX = "model."
# multitask.export.smoothing wraps a smoothed nn.Linear as `<name>.linear` inside this class.
_SMOOTHED_WRAPPER = "SmoothedLinear"


def linear_layers(path: str | Path) -> dict[str, str]:
    """The quantizable linear layers of an ONNX graph: MatMul/Gemm nodes whose weight is a stored initializer.

    Matrix products of two activations (attention scores) are not listed: dynamic quantization leaves them alone.

    Args:
        path (`str` or `Path`):
            A float32 `.onnx` graph written by `multitask.export.onnx_export.export_onnx` (external data is not loaded).

    Returns:
        `dict[str, str]`: Node name → module name (e.g. `encoder.encoder.layer.0.output.dense`, `category_head`),
        in graph order. A node without exporter metadata is named by its node name.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {tensor.name for tensor in graph.initializer}
    layers = {}
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        namespace = next((p.value for p in node.metadata_props if p.key == _NAMESPACE_KEY), "")
        segments = namespace.split("/")
        module = segments[-2].split(": ")[0] if len(segments) >= 2 else node.name
        if len(segments) >= 3 and segments[-3].endswith(_SMOOTHED_WRAPPER):
            # A smoothed layer is named as before smoothing, so --keep_float patterns mean the same with or without.
            module = segments[-3].split(": ")[0]
        layers[node.name] = module.removeprefix(_WRAPPER_PREFIX)
    return layers


def matching_layers(layers: dict[str, str], patterns: Iterable[str]) -> list[str]:
    """Node names whose module name matches any regular expression in `patterns` (`re.search`).

    Raises:
        `ValueError`: A pattern that is not a valid regular expression, or matches no layer (a typo would
        otherwise quantize everything silently); the message lists a few module names.
    """
    chosen = []
    for pattern in patterns:
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"--keep_float {pattern!r}: not a regular expression ({error})") from None
        matched = [node for node, module in layers.items() if compiled.search(module)]
        if not matched:
            examples = ", ".join(list(layers.values())[:3])
            raise ValueError(f"--keep_float {pattern!r} matches no linear layer (they are named like {examples})")
        chosen += [node for node in matched if node not in chosen]
    return chosen


def quantize_int8(
    source: str | Path,
    target: str | Path,
    per_channel: bool = False,
    keep_float: Iterable[str] = (),
    only: Iterable[str] | None = None,
) -> Path:
    """ONNX Runtime dynamic quantization: linear weights to int8, activations to uint8 per batch at run time.

    Args:
        source (`str` or `Path`):
            A float32 `.onnx` graph.
        target (`str` or `Path`):
            The graph to write.
        per_channel (`bool`, *optional*, defaults to `False`):
            One weight scale per output channel instead of one per tensor.
        keep_float (`Iterable[str]`, *optional*):
            Node names left in float32.
        only (`Iterable[str]`, *optional*):
            When given, quantize these nodes and nothing else (how the layer search measures one layer alone).

    Returns:
        `Path`: `target`.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        Path(source),
        Path(target),
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        nodes_to_exclude=list(keep_float),
        nodes_to_quantize=None if only is None else list(only),
    )
    return Path(target)


def choose_float_layers(
    layers: list[str],
    sensitivity: Callable[[str], float],
    passes: Callable[[list[str]], bool],
    already_float: Iterable[str] = (),
) -> tuple[list[str], dict[str, float], int]:
    """The fewest layers to keep in float32 so that `passes` holds, most sensitive first.

    Each layer's `sensitivity` is measured once; the layers are ordered by it, and k = 0, 1, 2, … of the most
    sensitive are kept float until `passes(already_float + those k)` holds. A scan, not a bisection: near the
    targets the pass/fail answer is noisy (a few rows whose score sits at a threshold flip either way), so it is
    not monotone in k, and a bisection could land far above the smallest k that passes. The smallest passing k is
    itself chosen on the rows `passes` sees, so the caller checks the result on other rows. Keeping every layer
    float is the fp32 graph, which is assumed to pass without being tried.

    Args:
        layers (`list[str]`):
            Candidate node names (those not already kept float).
        sensitivity (`Callable[[str], float]`):
            How far the outputs move when only this node is quantized (larger: keep it float first).
        passes (`Callable[[list[str]], bool]`):
            Whether the graph with these nodes kept float meets the caller's agreement targets.
        already_float (`Iterable[str]`, *optional*):
            Nodes kept float whatever the search finds (`--keep_float`).

    Returns:
        `tuple`: the nodes to keep float (including `already_float`), every candidate's sensitivity, and the
        number of `passes` calls made.
    """
    already_float = list(already_float)
    scores = {node: float(sensitivity(node)) for node in layers}
    order = sorted(layers, key=lambda node: -scores[node])
    for count in range(len(order)):
        if passes(already_float + order[:count]):
            return already_float + order[:count], scores, count + 1
    return already_float + order, scores, len(order)
