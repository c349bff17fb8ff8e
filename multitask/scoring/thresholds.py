"""Gate threshold search on validation scores (never on test), and resolving a threshold by name.

Decision rule everywhere: Pick iff ``pick_prob >= threshold``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from multitask.scoring.metrics import IGNORE_INDEX, _to_numpy, gate_metrics

THRESHOLD_NAMES = ("f1", "acc", "leak")


def candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    """One threshold per distinct Pick/Decline split of ``scores``.

    Midpoints between consecutive unique scores, with 0 and 1 as outer bounds (so "everything Pick" and, if
    max < 1, "nothing Pick" are included). Midpoints rather than the scores themselves leave a margin on both
    sides, which matters when the same model is re-run in another precision.

    Args:
        scores (`np.ndarray`):
            Validation scores in [0, 1] (values outside are clipped), any shape (flattened).

    Returns:
        `np.ndarray`: Ascending float64 thresholds, one more than there are distinct scores (`[0.5]` for no
        score).
    """
    unique = np.unique(np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0))
    bounds = np.concatenate([[0.0], unique, [1.0]])
    lower, upper = bounds[:-1], bounds[1:]
    mids = lower + (upper - lower) / 2
    # Two adjacent floats can round their midpoint down onto the lower score, which would flip its split.
    return np.where((mids <= lower) & (upper > lower), upper, mids)


def _count_at_least(sorted_scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold, how many of ``sorted_scores`` are >= it (i.e. predicted Pick)."""
    # side="left": a score equal to the threshold counts as Pick, as the >= rule says.
    return sorted_scores.size - np.searchsorted(sorted_scores, thresholds, side="left")


def _ratio(numerator: np.ndarray, denominator: np.ndarray | int) -> np.ndarray:
    # 0 where the denominator is 0, as sklearn's zero_division=0.
    denominator = np.broadcast_to(np.asarray(denominator, dtype=np.float64), numerator.shape)
    return np.divide(numerator, denominator, out=np.zeros(numerator.shape), where=denominator > 0)


def _best(keys: list[np.ndarray]) -> int:
    """Index maximising ``keys[0]``, ties broken by ``keys[1]``, … (all maximised)."""
    # np.lexsort sorts by the last key first, ascending; reverse the order and negate to maximise.
    return int(np.lexsort([-key for key in reversed(keys)])[0])


def leak_upper_bound(leaked: np.ndarray, declines: int, confidence: float) -> np.ndarray:
    """One-sided Clopper–Pearson upper bounds on the true decline leak, one per count of leaked Decline rows.

    With probability at least ``confidence`` over a draw of ``declines`` exchangeable Decline rows, the leak on
    new such rows is at most the bound (Clopper & Pearson 1934); a threshold whose bound meets the target then
    meets it on new data with that confidence (the risk-controlling choice of Bates et al. 2021, as leak falls
    monotonically with the threshold).

    Args:
        leaked (`np.ndarray`): Decline rows let through (score >= threshold), per candidate threshold.
        declines (`int`): Decline rows in all.
        confidence (`float`): In (0, 1), e.g. 0.95.

    Returns:
        `np.ndarray`: Bounds in [0, 1], 1 where there is no Decline row.
    """
    from scipy.stats import beta

    leaked = np.asarray(leaked, dtype=np.float64)
    if declines == 0:
        return np.ones_like(leaked)
    bound = beta.ppf(confidence, leaked + 1, np.maximum(declines - leaked, 1e-12))
    return np.where(leaked >= declines, 1.0, bound)


def search_gate_thresholds(
    pick_prob: np.ndarray,
    gate_labels: np.ndarray,
    category_correct: np.ndarray | None = None,
    max_decline_leak: float = 0.05,
    grid: np.ndarray | None = None,
    costs: Mapping[str, float | None] | None = None,
    confidence: float | None = None,
    max_pick_declined: float | None = None,
) -> dict[str, dict]:
    """Search gate thresholds on validation scores; rows whose gate label is -100 are ignored.

    Candidates: ``candidate_thresholds(pick_prob)`` (covers every achievable split exactly), or ``grid`` if
    given. "Lower threshold" as the last tie rule below lets more rows through when nothing measured
    distinguishes the candidates.

    Args:
        pick_prob (`np.ndarray` of shape `(rows,)`):
            The score the thresholds apply to (`config.gate_score`; P(Pick) by default), in [0, 1]; a list or
            a torch tensor works too.
        gate_labels (`np.ndarray` of shape `(rows,)`):
            1 (Pick), 0 (Decline) or -100 (no gate label: the row is left out).
        category_correct (`np.ndarray` of shape `(rows,)`, *optional*):
            Per row, whether the category head's argmax is the gold category; only gold-Pick rows are read.
            None counts every gold-Pick row as right, so end-to-end accuracy becomes Pick recall.
        max_decline_leak (`float`, *optional*, defaults to 0.05):
            Target of the ``leak`` threshold: the largest acceptable share of gold-Decline rows predicted
            Pick.
        grid (`np.ndarray`, *optional*):
            Explicit candidate thresholds (clipped to [0, 1]) instead of ``candidate_thresholds``.
        costs (`Mapping[str, float | None]`, *optional*):
            Per-item costs ``leak``, ``miss`` and ``wrong`` (all three required) and ``oos_share``; adds the
            ``cost`` threshold.
        confidence (`float`, *optional*):
            Make ``leak`` a guarantee: a threshold is feasible only when the one-sided Clopper–Pearson upper
            bound of its leak at this confidence (`leak_upper_bound`) is <= ``max_decline_leak``, so the leak
            on new exchangeable Decline rows is within the target with that probability. The entry adds
            ``confidence``, ``decline_rows`` and ``leak_upper_bound``.
        max_pick_declined (`float`, *optional*):
            A second target of ``leak``: the largest acceptable share of gold-Pick rows declined. A threshold is
            then feasible only when it meets both targets (with ``confidence``, both by their upper bounds, each
            at 1 - (1 - confidence) / 2 so that both hold together with ``confidence``: a union bound). When no
            threshold meets both, the Pick-declined target is dropped and ``leak`` is chosen as without it. The
            entry adds ``max_pick_declined``, ``pick_declined_met``, ``pick_rows`` and, with ``confidence``,
            ``pick_declined_upper_bound``.

    Returns:
        `dict[str, dict]`: ``{"f1": entry, "acc": entry, "leak": entry}``, plus ``"cost"`` with ``costs``.
        Each entry holds ``threshold`` and the gate metrics there (``gate_f1``, ``gate_accuracy``,
        ``gate_precision``, ``gate_recall``, ``gate_decline_leak``, ``gate_support``), plus
        ``category_accuracy_end_to_end`` when ``category_correct`` is given and a ``note`` when the data is
        degenerate (no Pick or no Decline rows). With no gate-labelled row at all, every entry is
        ``{"threshold": 0.5, "note": ...}`` (``leak`` with ``met_target`` False).

        - ``f1``: maximises Pick F1; ties → higher accuracy → lower threshold.
        - ``acc``: maximises accuracy; ties → higher F1 → lower threshold.
        - ``leak``: among thresholds with decline leak <= ``max_decline_leak``, maximises end-to-end category
          accuracy (share of gold-Pick rows predicted Pick AND ``category_correct``; Pick recall when
          ``category_correct`` is None); ties → higher F1 → lower threshold. ``met_target`` says whether any
          threshold met the target; if none did, the lowest-leak threshold is returned (ties → higher
          end-to-end accuracy → higher F1 → lower threshold). The entry also records ``max_decline_leak``.
        - ``cost`` (only with ``costs``): minimises the expected cost per item, ``p·leak·(Decline rows let
          through) + (1-p)·(miss·(Pick rows declined) + wrong·(Pick rows let through with the wrong
          category))`` as rates, where ``p`` is ``costs["oos_share"]`` (the Decline share expected in use;
          None = validation's own) and ``leak``, ``miss``, ``wrong`` are ``costs``' per-item costs. Ties →
          lower threshold. The entry adds ``expected_cost`` and a copy of ``costs``.
    """
    pick_prob = _to_numpy(pick_prob).astype(np.float64).reshape(-1)
    gate_labels = _to_numpy(gate_labels).reshape(-1)
    mask = gate_labels != IGNORE_INDEX
    scores, gold = pick_prob[mask], gate_labels[mask].astype(int)
    correct = None if category_correct is None else np.asarray(category_correct, dtype=bool).reshape(-1)[mask]

    if scores.size == 0:
        entry = {"threshold": 0.5, "note": "no gate-labelled rows; threshold left at 0.5"}
        names = (*THRESHOLD_NAMES, "cost") if costs else THRESHOLD_NAMES
        return {name: dict(entry, met_target=False) if name == "leak" else dict(entry) for name in names}

    thresholds = (
        candidate_thresholds(scores) if grid is None else np.clip(np.asarray(grid, dtype=np.float64), 0, 1)
    )
    thresholds = np.unique(thresholds)  # sorted ascending, so "lower threshold" = lower index
    is_pick = gold == 1
    n_pick, n_decline = int(is_pick.sum()), int((~is_pick).sum())
    true_pick = _count_at_least(np.sort(scores[is_pick]), thresholds)
    false_pick = _count_at_least(np.sort(scores[~is_pick]), thresholds)
    # Without `category_correct` every gold-Pick row counts as right: end-to-end accuracy is then Pick recall.
    hits = correct[is_pick] if correct is not None else np.ones(n_pick, dtype=bool)
    through_right = _count_at_least(np.sort(scores[is_pick][hits]), thresholds)  # let through, right category
    end_to_end = _ratio(through_right, n_pick)
    # Every count is a vector over the thresholds: one pass gives all of them. Pick F1 = 2TP / (2TP + FP + FN).
    f1 = _ratio(2 * true_pick, 2 * true_pick + false_pick + (n_pick - true_pick))
    accuracy = (true_pick + (n_decline - false_pick)) / scores.size
    leak = _ratio(false_pick, n_decline)
    # Maximised as the last tie key: the negated index prefers the lower threshold.
    lower_first = -np.arange(thresholds.size)

    chosen = {
        "f1": _best([f1, accuracy, lower_first]),
        "acc": _best([accuracy, f1, lower_first]),
    }
    # The guarantee bounds the leak from above; without it the point estimate must meet the target. With a second
    # target each bound gets half the allowed error, so both hold together with `confidence` (union bound).
    each = confidence if confidence is None or max_pick_declined is None else 1.0 - (1.0 - confidence) / 2
    bound = leak_upper_bound(false_pick, n_decline, each) if confidence is not None else leak
    feasible = bound <= max_decline_leak + 1e-12  # tolerance: 1/20 must meet a 0.05 target
    declined = n_pick - true_pick  # Pick rows declined, per threshold (rises with the threshold)
    miss_bound = None
    if max_pick_declined is not None:
        miss_bound = leak_upper_bound(declined, n_pick, each) if confidence is not None else _ratio(declined, n_pick)
        both = feasible & (miss_bound <= max_pick_declined + 1e-12)
        pick_declined_met = bool(both.any())
        if pick_declined_met:
            feasible = both
    met_target = bool(feasible.any())
    if met_target:
        chosen["leak"] = _best([np.where(feasible, 1.0, -1.0), end_to_end, f1, lower_first])  # feasible ones first
    else:
        chosen["leak"] = _best([-bound, end_to_end, f1, lower_first])

    if costs:
        share = costs.get("oos_share")
        share = n_decline / scores.size if share is None else float(share)
        expected_cost = (
            share * costs["leak"] * leak
            + (1 - share) * (costs["miss"] * _ratio(n_pick - true_pick, n_pick)
                             + costs["wrong"] * _ratio(true_pick - through_right, n_pick))
        )
        chosen["cost"] = _best([-expected_cost, lower_first])

    note = None
    if n_decline == 0:
        note = "no gold-Decline rows: decline leak is 0 by definition and every threshold meets the target"
    elif n_pick == 0:
        note = "no gold-Pick rows: Pick F1, recall and end-to-end accuracy are 0 for every threshold"

    result: dict[str, dict] = {}
    for name, index in chosen.items():
        threshold = float(thresholds[index])
        # Report with the same sklearn-based function used at evaluation, so the numbers match eval logs.
        entry: dict = {"threshold": threshold}
        entry.update(gate_metrics(scores, gold, threshold))
        if correct is not None:
            entry["category_accuracy_end_to_end"] = float(end_to_end[index])
        if name == "leak":
            entry["max_decline_leak"] = float(max_decline_leak)
            entry["met_target"] = met_target
            if confidence is not None:
                entry.update(confidence=float(each), decline_rows=n_decline, leak_upper_bound=float(bound[index]))
            if max_pick_declined is not None:
                entry.update(max_pick_declined=float(max_pick_declined), pick_declined_met=pick_declined_met,
                             pick_rows=n_pick)
                if confidence is not None:
                    entry["pick_declined_upper_bound"] = float(miss_bound[index])
        if name == "cost":
            entry["expected_cost"] = float(expected_cost[index])
            entry["costs"] = {key: value for key, value in costs.items()}
        if note:
            entry["note"] = note
        result[name] = entry
    return result


def resolve_threshold(spec: str | float, stored: Mapping[str, float] | None) -> float:
    """Turn ``spec`` into a threshold in [0, 1].

    A stored name wins over parsing as a number, so a threshold stored under a numeric-looking name is still
    found.

    Args:
        spec (`str` or `float`):
            A name stored in the config's ``gate_thresholds`` (``"default"``, ``"f1"``, ``"acc"``, ``"leak"``,
            ``"cost"``; surrounding spaces ignored), or a number / numeric string (`run_predict.py
            --threshold`).
        stored (`Mapping[str, float]`, *optional*):
            The model's ``config.gate_thresholds``; None means no names are known.

    Returns:
        `float`: The threshold; an item is Picked when its score is >= it.

    Raises:
        `ValueError`: An unknown name (the message lists the stored ones), a bool, or a value outside [0, 1]
        (NaN included).
    """
    stored = dict(stored or {})
    if isinstance(spec, str) and spec.strip() in stored:
        name = spec.strip()
        value, source = stored[name], f"stored threshold {name!r}"
    elif isinstance(spec, bool):
        raise ValueError(f"threshold must be a name or a number in [0, 1], got {spec!r}")
    elif isinstance(spec, (int, float, np.floating, np.integer)):
        value, source = spec, "threshold"
    else:
        try:
            value, source = float(spec), "threshold"
        except (TypeError, ValueError):
            names = ", ".join(sorted(stored)) or "none"
            raise ValueError(
                f"unknown threshold name {spec!r}; stored names: {names}; or give a number in [0, 1]"
            ) from None
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{source} must be in [0, 1], got {value}")
    return value


def review_band(scores: np.ndarray, threshold: float, share: float) -> tuple[float, float]:
    """The score interval [low, high) around ``threshold`` holding about ``share`` of ``scores``, half on each side.

    Items whose score falls in it are the least certain ones at that operating point: `run_predict.py --review`
    sends them to a person (decision ``review``) instead of deciding. Bounds are midpoints between neighbouring
    validation scores, as thresholds are.

    Args:
        scores (`np.ndarray`):
            Validation scores of the gate-labelled rows, in the scale the threshold applies to; flattened.
        threshold (`float`):
            The operating point the band surrounds.
        share (`float`):
            Fraction of validation rows wanted in the band (`--review_share`): round(share·rows / 2) rows on
            each side, at least one; fewer where the threshold is near either end of the scores.

    Returns:
        `tuple[float, float]`: `(low, high)`. ``share`` 0 or no scores gives the empty band ``(threshold,
        threshold)``; a band reaching the lowest score starts at that score, one reaching the highest ends
        just above 1.
    """
    ordered = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    if share <= 0 or ordered.size == 0:
        return float(threshold), float(threshold)
    # At least one row per side: a positive share never gives an empty band.
    half = max(1, int(round(share * ordered.size / 2)))
    split = int(np.searchsorted(ordered, threshold, side="left"))  # rows below the threshold: [0, split)
    low_index, high_index = max(split - half, 0), min(split + half, ordered.size)
    low = ordered[low_index] if low_index == 0 else (ordered[low_index - 1] + ordered[low_index]) / 2
    high = np.inf if high_index >= ordered.size else (ordered[high_index - 1] + ordered[high_index]) / 2
    # Capped just above 1, not at 1: the band is [low, high), and a score of exactly 1 must still fall inside it.
    return float(low), float(min(high, 1.0 + 1e-9))
