"""How far an exported model's outputs are from the PyTorch model's on the same rows: the figures
`python -m multitask.export` prints and records in `agreement.json`, and the row halves int8 calibration fits on and
is judged on.

- `agreement`: max |Δ score|, top-1 category agreement, and the gate (and end-to-end) decisions changed at each
  stored threshold, between two `Scores` of the same rows;
- `meets_targets`: whether such a result meets top-1 and changed-decision targets;
- `output_change`: one number for how far outputs moved (the float-layer search ranks layers by it);
- `check_agreement` / `format_agreement`: score texts with both models, and the printed summary;
- `split_halves`: the seeded calibration and held-out halves of the check rows.
"""

from __future__ import annotations

import numpy as np

from multitask.model.modeling import MultitaskModel
from multitask.serve.onnx_backend import OnnxMultitaskModel
from multitask.serve.predict import Scores, predict_scores


def split_halves(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two seeded, disjoint, sorted halves of `range(rows)`: int8 calibration (smoothing scales, float-layer search)
    fits on the first, and the agreement that vouches for it is measured on the second (the first half is the
    smaller when odd)."""
    order = np.random.default_rng(seed).permutation(rows)
    return np.sort(order[: rows // 2]), np.sort(order[rows // 2 :])


def meets_targets(result: dict, min_top1_agreement: float | None, max_gate_changed: float | None) -> bool:
    """Whether an `agreement` result meets the int8 targets: top-1 category agreement ≥ `min_top1_agreement` and
    gate decisions changed ≤ `max_gate_changed` as a share of rows at every stored threshold (the worst one). A
    target left None is not checked; a figure the model cannot give (no gate, or no category head) counts as met."""
    top1 = result.get("category_top1_agreement", 1.0)
    changed = max(result.get("gate_decisions_changed", {}).values(), default=0) / max(result["rows"], 1)
    return (min_top1_agreement is None or top1 >= min_top1_agreement) and (
        max_gate_changed is None or changed <= max_gate_changed
    )


def output_change(reference: Scores, other: Scores) -> float:
    """How far `other`'s outputs moved from `reference`'s: the mean total-variation distance between category
    distributions plus the mean |Δ pick_prob| (each in [0, 1]; a head the model lacks adds 0)."""
    change = 0.0
    if reference.category_probs is not None:
        change += 0.5 * float(np.abs(reference.category_probs - other.category_probs).sum(1).mean())
    if reference.pick_prob is not None:
        change += float(np.abs(reference.pick_prob - other.pick_prob).mean())
    return change


def agreement(reference: Scores, other: Scores, thresholds: dict[str, float]) -> dict:
    """How far `other` is from `reference` on the same rows.

    Reports max |Δ pick_prob| (the score the thresholds apply to), max |Δ| of every gate score and category
    probability, top-1 category agreement, and the gate decisions and end-to-end decisions (Decline or the
    category) changed at each stored threshold.

    Args:
        reference (`Scores`):
            Scores of the PyTorch model.
        other (`Scores`):
            Scores of the exported model on the same rows, in the same order, with the same heads.
        thresholds (`dict[str, float]`):
            The model's stored gate thresholds by name.

    Returns:
        `dict`: `rows`; with a gate `max_abs_pick_prob_diff`, `max_abs_gate_score_diff`, `thresholds`,
        `gate_decisions_changed` (and, with a category head too, `decisions_changed`); with a category head
        `max_abs_category_prob_diff` and `category_top1_agreement` (a share). "Changed" figures are row
        counts, not shares.
    """
    result: dict = {
        "rows": int(len(reference.pick_prob if reference.pick_prob is not None else reference.category_probs))
    }
    if reference.pick_prob is not None:
        result["max_abs_pick_prob_diff"] = float(np.abs(reference.pick_prob - other.pick_prob).max())
        result["max_abs_gate_score_diff"] = {
            name: float(np.abs(value - other.gate_scores[name]).max())
            for name, value in reference.gate_scores.items()
        }
    if reference.category_probs is not None:
        result["max_abs_category_prob_diff"] = float(
            np.abs(reference.category_probs - other.category_probs).max()
        )
        result["category_top1_agreement"] = float(
            (reference.category_probs.argmax(1) == other.category_probs.argmax(1)).mean()
        )
    if reference.pick_prob is not None:
        gate_changed, decisions_changed = {}, {}
        for name, threshold in thresholds.items():
            # `>=` as in prediction_table: a score exactly at the threshold is a Pick.
            picked, other_picked = reference.pick_prob >= threshold, other.pick_prob >= threshold
            gate_changed[name] = int((picked != other_picked).sum())
            if reference.category_probs is not None:
                # -1 stands for Decline: a changed gate and a changed category both count as changed.
                decision = np.where(picked, reference.category_probs.argmax(1), -1)
                other_decision = np.where(other_picked, other.category_probs.argmax(1), -1)
                decisions_changed[name] = int((decision != other_decision).sum())
        result["thresholds"] = dict(thresholds)
        result["gate_decisions_changed"] = gate_changed
        if decisions_changed:
            result["decisions_changed"] = decisions_changed
    return result


def check_agreement(
    model: MultitaskModel,
    tokenizer,
    exported: OnnxMultitaskModel,
    texts: list[str],
    batch_size: int = 64,
    max_length: int | None = None,
    held_out: np.ndarray | None = None,
    reference: Scores | None = None,
) -> dict:
    """Score `texts` with the PyTorch model (fp32) and the exported one; `agreement` of the two.

    Args:
        model (`MultitaskModel`):
            The PyTorch model, in float32 (as `export_model` leaves it).
        tokenizer (`PreTrainedTokenizerBase`):
            Tokenizer shared by both models.
        exported (`OnnxMultitaskModel`):
            The loaded export.
        texts (`list[str]`):
            Model-input texts (`check_texts`).
        batch_size (`int`, *optional*, defaults to 64):
            Rows per forward pass, for both models.
        max_length (`int`, *optional*):
            Token length the inputs are cut to; None uses the length stored in the model.
        held_out (`np.ndarray`, *optional*):
            Row indices the export's float-layer choice did not see; their agreement is reported separately.
        reference (`Scores`, *optional*):
            The PyTorch model's scores of `texts`, when the caller has them already (same batching and length).

    Returns:
        `dict`: `gate_score` and `precision` (of the export), then the `agreement` keys over all rows, and with
        `held_out` a `held_out` entry holding the `agreement` on those rows.
    """
    if reference is None:
        reference = predict_scores(model, tokenizer, texts, batch_size, max_length)
    other = predict_scores(exported, tokenizer, texts, batch_size, max_length)
    result = {
        "gate_score": model.config.gate_score,
        "precision": exported.precision,
        **agreement(reference, other, model.config.gate_thresholds),
    }
    if held_out is not None:
        result["held_out"] = agreement(
            reference.rows(held_out), other.rows(held_out), model.config.gate_thresholds
        )
    return result


def format_agreement(result: dict) -> str:
    """The `check_agreement` result as the few lines `main` prints (the held-out rows' block too, when present).

    Args:
        result (`dict`):
            A `check_agreement` result, optionally with `kept_float` (module names) added.

    Returns:
        `str`: Newline-joined lines, no trailing newline.
    """
    lines = [f"agreement of the {result['precision']} ONNX model with PyTorch fp32 on {result['rows']} rows:"]
    if "max_abs_pick_prob_diff" in result:
        lines.append(f"  max |Δ pick_prob| ({result['gate_score']}): {result['max_abs_pick_prob_diff']:.2e}")
    lines += _agreement_lines(result)
    if "held_out" in result:
        lines.append(
            f"on the {result['held_out']['rows']} held-out rows (not used to choose the float32 layers):"
        )
        lines += _agreement_lines(result["held_out"])
    if result.get("kept_float"):
        lines.append(f"kept in float32: {', '.join(result['kept_float'])}")
    return "\n".join(lines)


def _agreement_lines(result: dict) -> list[str]:
    """Top-1 agreement and the changed decisions at each threshold of one `agreement` result."""
    lines = []
    if "category_top1_agreement" in result:
        lines.append(
            f"  top-1 category agreement: {result['category_top1_agreement']:.4%}  "
            f"(max |Δ category prob| {result['max_abs_category_prob_diff']:.2e})"
        )
    for name, changed in result.get("gate_decisions_changed", {}).items():
        extra = (
            f", decisions changed: {result['decisions_changed'][name]}"
            if "decisions_changed" in result
            else ""
        )
        lines.append(
            f"  threshold {name} = {result['thresholds'][name]:.4f}: gate decisions changed: "
            f"{changed} of {result['rows']}{extra}"
        )
    return lines
