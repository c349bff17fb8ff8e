"""Choosing the gate score and its thresholds on validation, and estimating how they do on rows never used to choose.

A threshold chosen and reported on the same validation rows is an optimistic estimate: with 100 out-of-scope rows,
the threshold that happens to catch 70 of *those* is fitted to their noise. `cross_validate_gate` therefore
splits the validation rows into K folds stratified by Pick/Decline; on each K-1 folds it chooses the score (when
several are candidates) and the thresholds exactly as the final model will (`search_gate_thresholds`), and applies
them to the held-out fold. Every held-out decision is thus made by a threshold that never saw its row; the pooled
out-of-fold figures (with a bootstrap interval) and the per-fold mean ± sd are what a user should expect on new
data drawn like validation. The final choice is then refitted on all of validation (`choose_gate`).

What the folds do not remove: the checkpoint (best epoch) and the calibration temperature were chosen on all of
validation before the split (a simulation put the temperature's effect on held-out figures below 0.05 pp); and
both intervals treat the out-of-fold decisions as fixed independent trials, so they leave out the variance of the
threshold choice itself and are somewhat narrow.

Conditional rates (in-scope accuracy, out-of-scope recall, the share of in-scope rows declined) do not depend on
how many out-of-scope rows the validation file happens to hold; joint accuracy and decline precision do, and
`reweighted_figures` gives them at other out-of-scope shares.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold

from multitask.labels import IGNORE_INDEX
from multitask.model.ood import ood_metrics
from multitask.scoring.stats import proportion_interval
from multitask.scoring.thresholds import THRESHOLD_NAMES, search_gate_thresholds

# The out-of-scope shares `reweighted_figures` reports besides validation's own (CLINC150's test split: 18 %).
DEFAULT_SHARES = (0.05, 0.18, 0.3, 0.5)


def decision_figures(pick: np.ndarray, gold: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """Figures of one set of gate decisions.

    ``in_scope_accuracy``: share of gold-Pick rows let through with the right category (``correct``);
    ``oos_recall``: share of gold-Decline rows declined; ``false_decline_rate``: share of gold-Pick rows declined;
    ``gate_accuracy``: share of rows whose gate decision is right.

    Args:
        pick (`np.ndarray` of shape `(rows,)`):
            Boolean gate decision per row (True = let through).
        gold (`np.ndarray` of shape `(rows,)`):
            Gold gate label per row, 1 (Pick) or 0 (Decline); -100 rows must be removed first (they would
            count as Decline).
        correct (`np.ndarray` of shape `(rows,)`):
            Boolean per row: the category head's argmax is the gold category (all True to measure the gate
            alone).

    Returns:
        `dict[str, float]`: The four shares in [0, 1]; a rate with no row to count is NaN.
    """
    is_pick = gold == 1
    decline = ~is_pick

    def share(numerator: np.ndarray, mask: np.ndarray) -> float:
        return float(numerator[mask].mean()) if mask.any() else float("nan")

    return {
        "in_scope_accuracy": share(pick & correct, is_pick),
        "oos_recall": share(~pick, decline),
        "false_decline_rate": share(~pick, is_pick),
        "gate_accuracy": float((pick == is_pick).mean()) if gold.size else float("nan"),
    }


def choose_gate(
    scores: dict[str, np.ndarray],
    gold: np.ndarray,
    correct: np.ndarray,
    candidates: list[str],
    max_decline_leak: float,
    costs: dict | None = None,
    confidence: float | None = None,
    max_pick_declined: float | None = None,
) -> tuple[str, dict]:
    """The candidate score whose `leak` threshold gives the best in-scope accuracy, and its threshold search.

    A score that meets the decline-leak target beats one that does not; among those that do, the highest
    end-to-end in-scope accuracy wins; ties go to the earlier candidate. Among scores that all miss the target,
    the one with the lowest leak wins.

    Args:
        scores (`dict[str, np.ndarray]`):
            In-scope scores by name (`Scores.gate_scores`), each of shape `(rows,)` and aligned with `gold`;
            must hold every name in `candidates`.
        gold (`np.ndarray` of shape `(rows,)`):
            Gate labels, 1/0; rows at -100 are ignored by the searches.
        correct (`np.ndarray` of shape `(rows,)`):
            Whether the category head's argmax is right per row; None makes in-scope accuracy Pick recall.
        candidates (`list[str]`):
            The score names to choose among, in order of preference for ties.
        max_decline_leak (`float`):
            Target share of gold-Decline rows let through (`--max_decline_leak`).
        costs (`dict`, *optional*):
            Per-item costs; adds the ``cost`` threshold to each search (see `search_gate_thresholds`).
        confidence (`float`, *optional*):
            Choose ``leak`` thresholds with the guarantee of `search_gate_thresholds`.
        max_pick_declined (`float`, *optional*):
            A second target of ``leak``: the largest share of gold-Pick rows declined (`search_gate_thresholds`).

    Returns:
        `tuple[str, dict]`: The chosen name and its `search_gate_thresholds` result (fitted on all given
        rows).

    Raises:
        `KeyError`: When no row has a gate label: the searches then hold no leak figures to compare.
    """
    per_score = per_score_confidence(confidence, len(candidates))
    searches = {name: search_gate_thresholds(scores[name], gold, correct, max_decline_leak, costs=costs,
                                             confidence=per_score, max_pick_declined=max_pick_declined)
                for name in candidates}
    name = best_of(searches)
    return name, searches[name]


def per_score_confidence(confidence: float | None, candidates: int) -> float | None:
    """The confidence each candidate score's bound must reach so the chosen one keeps `confidence` overall.

    The choice among K scores reads the same validation rows as their bounds: a union (Bonferroni) bound spreads
    the allowed error 1 - confidence over the K tests, so whichever score wins, its leak bound holds with
    probability at least `confidence`.

    Args:
        confidence (`float`, *optional*): The overall confidence (`--oos_recall_confidence`); None: no guarantee.
        candidates (`int`): How many scores the choice is made among.

    Returns:
        `float | None`: 1 - (1 - confidence) / candidates, or None.
    """
    if confidence is None:
        return None
    return 1.0 - (1.0 - confidence) / max(candidates, 1)


def best_of(searches: dict[str, dict]) -> str:
    """The `choose_gate` rule applied to threshold searches already run, one per candidate (in candidate order).

    Args:
        searches (`dict[str, dict]`):
            `search_gate_thresholds` results by score name; dict order is the tie-breaking order.

    Returns:
        `str`: The winning score name.
    """
    def key(name: str) -> tuple:
        leak = searches[name]["leak"]
        if leak["met_target"]:
            # Without category_correct a search has no end-to-end figure; Pick recall stands in.
            return True, leak.get("category_accuracy_end_to_end", leak["gate_recall"])
        # Tuples compare their first item first: every score meeting the target outranks every one that misses
        # it, and among those -leak makes max() take the lowest leak.
        return False, -leak["gate_decline_leak"]

    return max(searches, key=key)  # max keeps the first of equal keys: ties go to the earlier candidate


def _bootstrap_interval(
    pick: np.ndarray, gold: np.ndarray, correct: np.ndarray, rounds: int, seed: int, level: float = 0.95
) -> dict[str, list[float]]:
    """Percentile bootstrap over rows (stratified by gold, so every resample keeps both classes' counts)."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(gold == value) for value in (0, 1)]
    draws: dict[str, list[float]] = {}
    for _ in range(rounds):
        rows = np.concatenate([rng.choice(group, size=group.size) for group in groups if group.size])
        for key, value in decision_figures(pick[rows], gold[rows], correct[rows]).items():
            draws.setdefault(key, []).append(value)
    tail = (1.0 - level) / 2 * 100
    # nanpercentile: a resample can still give NaN for a rate whose class has no row (e.g. no Decline rows at all).
    return {key: [float(v) for v in np.nanpercentile(values, [tail, 100 - tail])] for key, values in draws.items()}


def _exact_intervals(pick: np.ndarray, is_pick: np.ndarray, correct: np.ndarray) -> dict[str, list[float] | None]:
    """Clopper–Pearson 95 % intervals of in-scope accuracy, OOS recall and false-decline rate, each decision one
    trial (`pick`: let through; `is_pick`: gold Pick; `correct`: right category)."""
    return {
        "in_scope_accuracy": proportion_interval(int((pick & correct & is_pick).sum()), int(is_pick.sum())),
        "oos_recall": proportion_interval(int((~pick & ~is_pick).sum()), int((~is_pick).sum())),
        "false_decline_rate": proportion_interval(int((~pick & is_pick).sum()), int(is_pick.sum())),
    }


def fixed_threshold_figures(
    scores: np.ndarray, gate_labels: np.ndarray, category_correct: np.ndarray | None, thresholds: dict[str, float]
) -> dict:
    """Figures of thresholds already chosen, on rows that no choice read (the `--report_split` rows).

    Nothing is fitted here: each threshold is applied as stored, so the figures carry no selection optimism, and
    their Clopper–Pearson intervals are honest ones for new rows like these.

    Args:
        scores (`np.ndarray` of shape `(rows,)`):
            The gate score the thresholds apply to.
        gate_labels (`np.ndarray` of shape `(rows,)`):
            1 (Pick), 0 (Decline) or -100 (the row is left out).
        category_correct (`np.ndarray` of shape `(rows,)`, *optional*):
            Whether the category head's argmax is right per row; None makes in-scope accuracy Pick recall.
        thresholds (`dict[str, float]`):
            Threshold by kind (`config.gate_thresholds`).

    Returns:
        `dict`: ``rows``, ``oos_rows`` and, per kind, ``{"threshold", "figures" (`decision_figures`),
        "exact_interval" (Clopper–Pearson 95 % of in-scope accuracy, OOS recall and false-decline rate)}`` under
        ``operating_points``.
    """
    gate_labels = np.asarray(gate_labels).reshape(-1)
    mask = gate_labels != IGNORE_INDEX
    gold = gate_labels[mask].astype(int)
    kept = np.asarray(scores, dtype=np.float64).reshape(-1)[mask]
    correct = (np.ones(gold.size, dtype=bool) if category_correct is None
               else np.asarray(category_correct, dtype=bool).reshape(-1)[mask])
    is_pick = gold == 1
    points = {}
    for kind, threshold in thresholds.items():
        pick = kept >= threshold
        points[kind] = {
            "threshold": float(threshold),
            "figures": decision_figures(pick, gold, correct),
            "exact_interval": _exact_intervals(pick, is_pick, correct),
        }
    return {"rows": int(gold.size), "oos_rows": int((~is_pick).sum()), "operating_points": points}


def reweighted_figures(figures: dict[str, float], shares: tuple[float, ...]) -> list[dict[str, float]]:
    """Joint accuracy and decline precision if out-of-scope rows made up each share of the traffic.

    From the conditional rates, which do not depend on that share: joint accuracy = (1-p)·in-scope accuracy +
    p·OOS recall; decline precision = p·OOS recall / (p·OOS recall + (1-p)·false-decline rate).

    Args:
        figures (`dict[str, float]`):
            `decision_figures` output: needs ``in_scope_accuracy``, ``oos_recall`` and ``false_decline_rate``.
        shares (`tuple[float, ...]`):
            Out-of-scope shares p to report, each in [0, 1].

    Returns:
        `list[dict[str, float]]`: One row per share, in the given order: ``oos_share``, ``joint_accuracy`` and
        ``decline_precision`` (NaN when nothing would be declined).
    """
    rows = []
    for share in shares:
        caught = share * figures["oos_recall"]
        wrongly = (1 - share) * figures["false_decline_rate"]
        rows.append({
            "oos_share": float(share),
            "joint_accuracy": float((1 - share) * figures["in_scope_accuracy"] + caught),
            "decline_precision": float(caught / (caught + wrongly)) if caught + wrongly > 0 else float("nan"),
        })
    return rows


def cross_validate_gate(
    scores: dict[str, np.ndarray],
    gate_labels: np.ndarray,
    category_correct: np.ndarray | None,
    candidates: list[str],
    max_decline_leak: float,
    folds: int = 5,
    seed: int = 0,
    bootstrap_rounds: int = 1000,
    shares: tuple[float, ...] = DEFAULT_SHARES,
    costs: dict | None = None,
    confidence: float | None = None,
    max_pick_declined: float | None = None,
) -> dict:
    """Held-out-fold estimate of the gate's operating points; see the module docstring.

    Folds are stratified by gate label and capped at the smaller class's row count (StratifiedKFold needs
    every class in every fold), so the result's ``folds`` can be below the one asked for.

    Args:
        scores (`dict[str, np.ndarray]`):
            In-scope scores by name, each of shape `(rows,)` and aligned with ``gate_labels``.
        gate_labels (`np.ndarray` of shape `(rows,)`):
            1 (Pick), 0 (Decline) or -100 (ignored).
        category_correct (`np.ndarray` of shape `(rows,)`, *optional*):
            Per row, whether the category head's argmax is the gold category; None makes in-scope accuracy
            Pick recall.
        candidates (`list[str]`):
            The scores the choice may pick from (one name = no choice); each fold re-runs the choice.
        max_decline_leak (`float`):
            Target of the ``leak`` threshold.
        folds (`int`, *optional*, defaults to 5):
            K, the number of folds asked for (`--threshold_cv`).
        seed (`int`, *optional*, defaults to 0):
            Seed of the fold assignment and of the bootstrap.
        bootstrap_rounds (`int`, *optional*, defaults to 1000):
            Resamples of the percentile-bootstrap ``interval``.
        shares (`tuple[float, ...]`, *optional*, defaults to `DEFAULT_SHARES`):
            Out-of-scope shares for ``reweighted``, reported after validation's own share.
        costs (`dict`, *optional*):
            Per-item costs; adds the ``cost`` operating point.
        confidence (`float`, *optional*):
            Each fold chooses its ``leak`` threshold with the guarantee of `search_gate_thresholds`.
        max_pick_declined (`float`, *optional*):
            Each fold's ``leak`` threshold also targets this share of gold-Pick rows declined.

    Returns:
        `dict`: ``folds``, ``seed``, ``rows``, ``oos_rows``, ``candidates``, ``chosen_per_fold``,
        ``max_decline_leak``; ``operating_points``: per threshold kind, ``pooled`` (`decision_figures` of all
        out-of-fold decisions), ``interval`` (bootstrap), ``exact_interval`` (Clopper–Pearson on the pooled
        counts), ``fold_mean`` and ``fold_sd`` (sd with ddof=1, NaN-skipping); ``per_score``: per candidate,
        ``auroc``, ``aupr_out``, ``fpr_at_95tpr`` and ``leak_pooled`` (each score with its own ``leak``
        thresholds); ``reweighted``: per kind, `reweighted_figures`; ``intervals``: a description of both
        intervals. Or ``{"note": ...}`` alone when validation lacks two rows of each gate class.
    """
    gate_labels = np.asarray(gate_labels).reshape(-1)
    mask = gate_labels != IGNORE_INDEX
    gold = gate_labels[mask].astype(int)
    correct = (np.ones(gold.size, dtype=bool) if category_correct is None
               else np.asarray(category_correct, dtype=bool).reshape(-1)[mask])
    kept = {name: np.asarray(scores[name], dtype=np.float64).reshape(-1)[mask] for name in scores}
    smallest = min(int((gold == 0).sum()), int((gold == 1).sum()))
    if smallest < 2:
        return {"note": f"cross-validation needs at least 2 Pick and 2 Decline validation rows; the smaller class "
                        f"has {smallest}"}
    folds = min(folds, smallest)  # StratifiedKFold needs every class in every fold
    kinds = (*THRESHOLD_NAMES, "cost") if costs else THRESHOLD_NAMES
    # shuffle: otherwise folds are contiguous blocks of validation, often sorted by date or label.
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    out_of_fold = {kind: np.zeros(gold.size, dtype=bool) for kind in kinds}
    per_score_leak = {name: np.zeros(gold.size, dtype=bool) for name in candidates}
    fold_figures: dict[str, list[dict]] = {kind: [] for kind in kinds}
    chosen_per_fold = []
    # X is a placeholder: StratifiedKFold splits on `gold` and reads only X's length.
    per_score = per_score_confidence(confidence, len(candidates))
    for fit, held in splitter.split(np.zeros(gold.size), gold):
        # Every candidate's search on the fitting folds, once: the choice and the per-score table both use it.
        searches = {other: search_gate_thresholds(kept[other][fit], gold[fit], correct[fit], max_decline_leak,
                                                  costs=costs, confidence=per_score,
                                                  max_pick_declined=max_pick_declined)
                    for other in candidates}
        name = best_of(searches)
        search = searches[name]
        chosen_per_fold.append(name)
        for kind in kinds:
            pick = kept[name][held] >= search[kind]["threshold"]
            out_of_fold[kind][held] = pick
            fold_figures[kind].append(decision_figures(pick, gold[held], correct[held]))
        for other in candidates:  # each score on its own, for the per-score table
            per_score_leak[other][held] = kept[other][held] >= searches[other]["leak"]["threshold"]

    operating_points, reweighted = {}, {}
    for kind in kinds:
        pooled = decision_figures(out_of_fold[kind], gold, correct)
        table = {key: [row[key] for row in fold_figures[kind]] for key in pooled}
        pick, is_pick = out_of_fold[kind], gold == 1
        operating_points[kind] = {
            "pooled": pooled,
            "interval": _bootstrap_interval(out_of_fold[kind], gold, correct, bootstrap_rounds, seed),
            # Clopper–Pearson on the pooled held-out counts, treating each held-out decision as one trial.
            "exact_interval": _exact_intervals(pick, is_pick, correct),
            "fold_mean": {key: float(np.nanmean(values)) for key, values in table.items()},
            "fold_sd": {key: float(np.nanstd(values, ddof=1)) for key, values in table.items()},
        }
        # Validation's own out-of-scope share first, so the table starts from the figures actually measured.
        reweighted[kind] = reweighted_figures(pooled, (float((gold == 0).mean()), *shares))
    per_score = {}
    for name in candidates:
        per_score[name] = {**ood_metrics(kept[name], gold == 1),
                           "leak_pooled": decision_figures(per_score_leak[name], gold, correct)}
    return {
        "folds": folds,
        "seed": seed,
        "rows": int(gold.size),
        "oos_rows": int((gold == 0).sum()),
        "candidates": list(candidates),
        "chosen_per_fold": chosen_per_fold,
        "max_decline_leak": float(max_decline_leak),
        "operating_points": operating_points,
        "per_score": per_score,
        "reweighted": reweighted,
        "intervals": f"interval: percentile bootstrap, {bootstrap_rounds} resamples of the out-of-fold decisions, "
                     "stratified by gold gate; exact_interval: Clopper–Pearson 95 % on the pooled held-out counts",
    }
