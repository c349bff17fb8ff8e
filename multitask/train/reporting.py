"""What a finished training run writes besides the model: thresholds, predictions, per-class and hierarchy
reports, plots. Every function takes scores already computed; none trains or re-reads the data.

The numbers themselves come from `metrics`, `thresholds`, `gate_selection` and `calibration`; this module only
chooses which rows they see (labelled ones, per head) and where the results go in the run directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from datasets import Dataset

from multitask.data.loading import IGNORE_INDEX, LabeledFile
from multitask.io.rundir import write_json
from multitask.io.tables import guard_formulas
from multitask.model.configuration import MultitaskConfig
from multitask.model.ood import PROBABILITY_SCORES
from multitask.scoring.calibration import (
    calibration_figures,
    fit_temperature,
    reliability_curve,
    softmax_with_temperature,
)
from multitask.scoring.gate_selection import choose_gate, cross_validate_gate, fixed_threshold_figures
from multitask.scoring.metrics import (
    compute_all,
    confusion_top,
    frequency_bands,
    hierarchy_stats,
    per_class_metrics,
)
from multitask.scoring.thresholds import review_band
from multitask.serve.predict import Scores, WindowOutputs, prediction_table, scores_from_outputs

logger = logging.getLogger(__name__)


def category_bands(train_category_labels: list[int], num_categories: int, quantiles: list[float]) -> list[str]:
    """The High/Mid/Low training-frequency band of each category id (rows without a category are not counted)."""
    labels = np.asarray(train_category_labels)
    counts = np.bincount(labels[labels != IGNORE_INDEX], minlength=num_categories)
    return frequency_bands(counts, quantiles=tuple(quantiles))


def _category_correct(scores: Scores, dataset: Dataset) -> np.ndarray | None:
    """Per row: the category head's argmax is the gold category. A Pick row without a category label cannot be
    judged: it counts as right when let through (its in-scope accuracy is then its Pick recall)."""
    if scores.category_probs is None:
        return None
    category_labels = np.asarray(dataset["category_labels"])
    unlabelled_pick = (np.asarray(dataset["gate_labels"]) == 1) & (category_labels == IGNORE_INDEX)
    # `&` binds tighter than `|`: (right category and labelled) or an unlabelled Pick row.
    return ((scores.category_probs.argmax(axis=1) == category_labels) & (category_labels != IGNORE_INDEX)
            | unlabelled_pick)


def tune_gate(
    scores: Scores,
    dataset: Dataset,
    gate_score: str,
    candidates: list[str],
    max_decline_leak: float,
    folds: int = 5,
    seed: int = 0,
    costs: dict | None = None,
    review_share: float = 0.0,
    confidence: float | None = None,
    max_pick_declined: float | None = None,
) -> dict:
    """Choose the gate score and its thresholds on validation, with a held-out-fold estimate of how they hold.

    ``gate_score="auto"`` chooses among the ``candidates`` the model can give (`gate_selection.choose_gate`);
    a named score that the model cannot give (e.g. ``maha`` on a gate-only model) falls back to ``pick`` with a
    warning. ``costs`` adds the cost-chosen ``cost`` threshold; ``review_share`` > 0 adds, per threshold, the band
    of scores around it holding that share of validation rows (``review_bands``) with the share of rows sent to
    review and the end-to-end accuracy on the rest. ``confidence`` and ``max_pick_declined`` shape the ``leak``
    threshold (`thresholds.search_gate_thresholds`). Returns ``{"gate_score", "candidates" (the scores chosen among), "search" (thresholds fitted on all of
    validation), "cv" (or None), "review_bands", "default_threshold", "default_source"}``. The ``default``
    threshold stays 0.5 on a probability score (`ood.PROBABILITY_SCORES`) and is the ``leak`` one on a squashed
    score, where 0.5 is the median training item, not a decision boundary.
    """
    available = list(scores.gate_scores)
    if gate_score == "auto":
        names = [name for name in candidates if name in available] or ["pick"]
    elif gate_score in available:
        names = [gate_score]
    else:
        logger.warning("gate score %r is not available for this model (it gives %s): using pick", gate_score, available)
        names = ["pick"]
    gate_labels = np.asarray(dataset["gate_labels"])
    correct = _category_correct(scores, dataset)
    name, search = choose_gate(scores.gate_scores, gate_labels, correct, names, max_decline_leak, costs, confidence,
                               max_pick_declined)
    cv = None
    if folds >= 2:
        cv = cross_validate_gate(scores.gate_scores, gate_labels, correct, names, max_decline_leak, folds, seed,
                                 costs=costs, confidence=confidence, max_pick_declined=max_pick_declined)
    probability = name in PROBABILITY_SCORES
    default = 0.5 if probability else search["leak"]["threshold"]
    bands = {}
    if review_share > 0:
        chosen = scores.gate_scores[name]
        labelled = gate_labels != IGNORE_INDEX
        thresholds = {kind: entry["threshold"] for kind, entry in search.items()} | {"default": default}
        for kind, threshold in thresholds.items():
            low, high = review_band(chosen[labelled], threshold, review_share)
            review = (chosen >= low) & (chosen < high)
            decided = labelled & ~review
            pick = chosen >= threshold
            # A Pick row is right when let through with the right category; a Decline row when stopped.
            right = np.where(gate_labels == 1, pick & (correct if correct is not None else True), ~pick)
            # accuracy_on_rest is NaN, not 0, when the band takes every labelled row: no rest to judge.
            bands[kind] = {"band": [low, high], "review_share": float(review[labelled].mean()),
                           "accuracy_on_rest": float(right[decided].mean()) if decided.any() else float("nan"),
                           "accuracy_without_review": float(right[labelled].mean())}
    return {"gate_score": name, "candidates": names, "search": search, "cv": cv, "review_bands": bands,
            "default_threshold": default, "default_source": "0.5 (a probability score)" if probability else "the leak threshold (a squashed score)"}


def choose_chunk_aggregation(model, raw: WindowOutputs, dataset: Dataset, batch_size: int = 64) -> str:
    """`mean` or `max`: how window logits become a document's (`--long_text chunk --chunk_aggregation auto`),
    whichever gives the higher validation accuracy of the decision the model makes (joint if it has both heads,
    else its one head's), at the 0.5 P(Pick) rule; a tie keeps `mean`. `raw`: the validation windows' outputs.

    Chosen and measured on the same rows (one binary choice; the gate's held-out-fold protocol does not cover it).
    """
    gate_labels, category_labels = np.asarray(dataset["gate_labels"]), np.asarray(dataset["category_labels"])
    accuracy = {}
    for how in ("mean", "max"):
        scores = scores_from_outputs(model, raw.per_document(how), batch_size)
        figures = compute_all(scores.gate_scores.get("pick"), scores.category_probs,
                              gate_labels if scores.gate_scores.get("pick") is not None else None,
                              category_labels if scores.category_probs is not None else None)
        key = next(k for k in ("joint_accuracy", "category_accuracy", "gate_accuracy") if k in figures)
        accuracy[how] = figures[key]
    choice = "max" if accuracy["max"] > accuracy["mean"] else "mean"
    logger.info("--long_text chunk: validation %s by aggregation %s; chosen: %s", key,
                {how: round(value, 4) for how, value in accuracy.items()}, choice)
    return choice


def calibrate_heads(scores: Scores, dataset: Dataset, bins: int = 15) -> dict:
    """Temperature per head fitted on validation logits (``scores`` from ``predict_scores(..., return_features=True)``
    with the model uncalibrated), and each head's ECE / Brier / NLL before and after (`multitask.scoring.calibration`).

    Returns ``{"temperatures": {"gate_temperature", "category_temperature"}, "gate": {...}, "category": {...},
    "reliability": {head: {"before": (confidence, accuracy), "after": ...}}}`` for the heads with labelled rows.
    """
    report: dict = {"temperatures": {}, "reliability": {}}
    for head, logits, labels in (("gate", scores.gate_logits, dataset["gate_labels"]),
                                 ("category", scores.category_logits, dataset["category_labels"])):
        if logits is None:
            continue
        labels = np.asarray(labels)
        labelled = labels != IGNORE_INDEX
        if not labelled.any():
            continue
        temperature = fit_temperature(logits[labelled], labels[labelled])
        before = softmax_with_temperature(logits[labelled], 1.0)
        after = softmax_with_temperature(logits[labelled], temperature)
        report["temperatures"][f"{head}_temperature"] = temperature
        report[head] = {"temperature": temperature,
                        "before": calibration_figures(before, labels[labelled], bins),
                        "after": calibration_figures(after, labels[labelled], bins)}
        report["reliability"][head] = {"before": reliability_curve(before, labels[labelled], bins),
                                       "after": reliability_curve(after, labels[labelled], bins)}
    return report


def score_report_rows(scores: Scores, dataset: Dataset, thresholds: dict[str, float], cv_summary: dict | None) -> dict:
    """`--report_split` figures: the stored thresholds on the rows no choice read, beside the held-out-fold
    promise made on the other validation rows (`summarize_gate_cv`'s output); ``gap`` = promise minus report, per
    kind and figure (positive: the choices on validation flattered it; one draw of that, with the report rows'
    own noise).

    Returns `gate_selection.fixed_threshold_figures`' dict, plus ``promise`` and ``gap`` when the summary has
    folds."""
    result = fixed_threshold_figures(scores.pick_prob, np.asarray(dataset["gate_labels"]),
                                     _category_correct(scores, dataset), thresholds)
    if cv_summary and "folds" in cv_summary:
        promised = {kind: {key: cv_summary[kind][key]["held_out"] for key in ("in_scope_accuracy", "oos_recall")}
                    for kind in result["operating_points"] if kind in cv_summary}
        result["promise"] = promised
        result["gap"] = {kind: {key: promised[kind][key] - result["operating_points"][kind]["figures"][key]
                                for key in ("in_scope_accuracy", "oos_recall")} for kind in promised}
    return result


def summarize_gate_cv(cv: dict) -> dict:
    """The headline of `gate_cv.json` for metrics.json and the log: per operating point, the pooled held-out
    in-scope accuracy and OOS recall with their 95 % bootstrap intervals, and the per-fold mean ± sd."""
    if "note" in cv:
        return {"note": cv["note"]}
    summary: dict = {"folds": cv["folds"], "chosen_per_fold": cv["chosen_per_fold"]}
    for kind, point in cv["operating_points"].items():
        summary[kind] = {
            key: {
                "held_out": round(point["pooled"][key], 4),
                "interval_95": [round(value, 4) for value in point["interval"][key]],
                "fold_mean_sd": [round(point["fold_mean"][key], 4), round(point["fold_sd"][key], 4)],
            }
            for key in ("in_scope_accuracy", "oos_recall")
        }
    return summary


def write_predictions(
    run_dir: Path, stem: str, labeled: LabeledFile, scores: Scores, config: MultitaskConfig, metrics: dict | None
) -> dict | None:
    """predictions_<stem>.csv at the default threshold, plus predictions_<kind>_<stem>.csv per tuned threshold.

    With `metrics` (a dict), each kind's metrics on this file are added to it (keyed by threshold kind) and
    returned. A category-only model writes the first file only.
    """
    gate_labels = list(labeled.dataset["gate_labels"])
    category_labels = list(labeled.dataset["category_labels"])
    for kind, threshold in config.gate_thresholds.items():
        name = f"predictions_{stem}.csv" if kind == "default" else f"predictions_{kind}_{stem}.csv"
        # Cells that a spreadsheet would run as formulas are quoted, as run_predict.py does by default.
        table = prediction_table(labeled.frame, scores, config, threshold, source=str(labeled.path))
        guard_formulas(table).to_csv(run_dir / name, index=False, encoding="utf-8")
        if metrics is not None:
            result = compute_all(scores.pick_prob, scores.category_probs, gate_labels, category_labels, threshold)
            if result:
                metrics[kind] = {"threshold": threshold, **result}
        if not config.has_gate:
            break  # without a gate there is no threshold to vary
    return metrics


def write_validation_reports(
    run_dir: Path,
    scores: Scores,
    validation: Dataset,
    config: MultitaskConfig,
    bands: list[str] | None,
    pick_low_levels: list[float],
    decline_high_levels: list[float],
) -> None:
    """`val_per_class_metrics.json`, `hierarchy_stats.json` and the confusion heatmap of the final model."""
    if scores.category_probs is not None:
        gold = np.asarray(validation["category_labels"])
        labelled = gold != IGNORE_INDEX
        predicted = scores.category_probs.argmax(axis=1)
        per_class = per_class_metrics(gold[labelled], predicted[labelled], config.category_id2label)
        for row in per_class:
            row["band"] = bands[row["id"]] if bands else None
        write_json(run_dir / "val_per_class_metrics.json", per_class)
        confusions = confusion_top(gold[labelled], predicted[labelled], config.category_id2label, k=3)
        write_json(run_dir / "val_confusions.json", confusions)
        try:
            from multitask.scoring.plots import plot_confusion_heatmap

            (run_dir / "plots").mkdir(exist_ok=True)
            plot_confusion_heatmap(
                gold[labelled], predicted[labelled], config.category_id2label,
                run_dir / "plots" / "confusion_heatmap.png", "Validation: most-confused categories (final model)",
            )
        except Exception as error:  # a figure must never cost the user a finished run
            logger.warning("confusion heatmap not drawn: %s", error)
    if scores.category_probs is not None and scores.pick_prob is not None:
        stats = hierarchy_stats(
            scores.pick_prob, scores.category_probs, config.gate_thresholds.get("default", 0.5),
            pick_low_levels, decline_high_levels,
        )
        write_json(run_dir / "hierarchy_stats.json", stats)
