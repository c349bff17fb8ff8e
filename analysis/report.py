"""Per-class tables, confusions, frequency bands, headline metrics and run comparison, as dicts and Markdown.

All numbers come from `multitask.scoring.metrics`; this module only selects rows, joins labels and formats.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from multitask.labels import markdown_cell
from multitask.scoring.metrics import (
    band_f1,
    band_recall,
    compute_all,
    confusion_top,
    frequency_bands,
    per_class_metrics,
)

from .load import IGNORE_INDEX, Predictions

BAND_SOURCE_TRAIN = "training rows (run_config.json data_report.category_counts)"
BAND_SOURCE_GOLD = "gold support in this file (no run_config.json category_counts)"


def band_names(cuts: Sequence[float]) -> tuple[str, ...]:
    """Low/Mid/High for two cut points, else B1 (rarest) … Bk."""
    return ("Low", "Mid", "High") if len(cuts) == 2 else tuple(f"B{i + 1}" for i in range(len(cuts) + 1))


def headline(pred: Predictions) -> dict[str, float]:
    """Gate, category and joint metrics recomputed from the file's own decisions.

    pick_pred (0/1) stands in for pick_prob at threshold 0.5, so the run's tuned threshold is respected.
    """
    metrics = compute_all(
        None if pred.pick_pred is None else pred.pick_pred.astype(float),
        pred.category_scores,
        pred.gate_labels,
        pred.category_labels,
        threshold=0.5,
    )
    # Ranks beyond what category_top{k} listed are unknown, not wrong.
    for key in list(metrics):
        match = re.fullmatch(r"category_top(\d+)_accuracy", key)
        if match and int(match.group(1)) > pred.top_k_listed:
            del metrics[key]
    return metrics


def analyse(pred: Predictions, cuts: Sequence[float] = (1 / 3, 2 / 3)) -> dict:
    """Everything reported for one predictions file, as a JSON-ready dict (heads the file lacks are absent)."""
    report: dict = {
        "file": str(pred.path),
        "rows": pred.rows,
        "unscored_rows": pred.unscored_rows,
        "heads": [
            head
            for head, labels in (("gate", pred.gate_labels), ("category", pred.category_labels))
            if labels is not None
        ],
        "headline": headline(pred),
    }
    if pred.category_labels is None:
        return report
    id2label = pred.category_id2label
    mask = pred.category_labels != IGNORE_INDEX
    y_true, y_pred = pred.category_labels[mask], pred.category_pred[mask]
    per_class = per_class_metrics(y_true, y_pred, id2label)
    # Bands by training frequency when the run recorded it; a bare predictions file can only use its own gold counts.
    if pred.train_counts is not None:
        counts = [int(pred.train_counts.get(id2label[i], 0)) for i in sorted(id2label)]
        report["band_source"] = BAND_SOURCE_TRAIN
    else:
        counts = np.bincount(y_true, minlength=len(id2label)).tolist()
        report["band_source"] = BAND_SOURCE_GOLD
    names = band_names(cuts)
    bands = dict(zip(sorted(id2label), frequency_bands(counts, cuts, names), strict=True))
    band_count = dict(zip(sorted(id2label), counts, strict=True))
    for row in per_class:
        row.update(band=bands[row["id"]], band_count=band_count[row["id"]])
    recall, f1 = band_recall(per_class, bands), band_f1(per_class, bands)
    report["band_cuts"] = list(cuts)
    report["per_class"] = per_class
    report["confusions"] = confusion_top(y_true, y_pred, id2label, k=3)
    report["bands"] = {
        band: {
            "classes": sum(1 for b in bands.values() if b == band),
            "scored_classes": sum(1 for row in per_class if row["band"] == band and row["support"] > 0),
            "mean_recall": recall.get(band),
            "mean_f1": f1.get(band),
        }
        for band in reversed(names)
    }
    return report


def compare(named: Sequence[tuple[str, dict]]) -> dict:
    """Headline metrics side by side and per-class F1 deltas of each input vs the first.

    Deltas cover classes with gold support in both files, largest |delta| first; the rest are listed with
    a None delta at the end.
    """
    keys = list(dict.fromkeys(key for _, report in named for key in report["headline"]))
    base_name, base = named[0]
    base_f1 = {row["label"]: row for row in base.get("per_class", [])}
    deltas = {}
    for name, report in named[1:]:
        rows, other_f1 = [], {row["label"]: row for row in report.get("per_class", [])}
        for label in dict.fromkeys([*base_f1, *other_f1]):
            first, other = base_f1.get(label), other_f1.get(label)
            both = first and other and first["support"] > 0 and other["support"] > 0
            rows.append(
                {
                    "label": label,
                    "f1_first": first["f1"] if first and first["support"] else None,
                    "f1": other["f1"] if other and other["support"] else None,
                    "delta": other["f1"] - first["f1"] if both else None,
                }
            )
        rows.sort(key=lambda row: (row["delta"] is None, -abs(row["delta"] or 0.0), row["label"]))
        deltas[name] = rows
    return {
        "inputs": [name for name, _ in named],
        "headline": {key: [report["headline"].get(key) for _, report in named] for key in keys},
        "f1_deltas_vs": base_name,
        "f1_deltas": deltas,
    }


# ---------------------------------------------------------------- Markdown


def _fmt(value) -> str:
    """A table cell: None as an en dash, floats to 3 decimals, `|` escaped so it cannot split the cell."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return markdown_cell(value)


def table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub Markdown table; None shows as an en dash, floats with 3 decimals."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _rate(entry: dict) -> str:
    """A safety rate as "rate = count/rows (95% CI low–high, method)"; the CI is left out when there is none."""
    interval = entry["ci95"]
    method = f", {entry['ci_method']}" if entry.get("ci_method") else ""
    ci = f" (95% CI {interval[0]:.3f}–{interval[1]:.3f}{method})" if interval else ""
    return f"{_fmt(entry['rate'])} = {entry['count']}/{entry['rows']}{ci}"


def _cost(category: dict) -> str:
    """The mean cost with its bootstrap interval, when there is one."""
    interval = category.get("mean_cost_ci95")
    ci = f" (95% CI {interval[0]:.3f}–{interval[1]:.3f}, {category['mean_cost_ci_method']})" if interval else ""
    return f"{_fmt(category['mean_cost'])}{ci}"


def render(title: str, report: dict) -> str:
    """Markdown for one predictions file's report (plus its safety section and heatmap, when present)."""
    parts = [f"## {title}", f"{report['rows']} rows; heads: {', '.join(report['heads'])}."]
    if report["unscored_rows"]:
        count = report["unscored_rows"]
        noun, verb = ("row", "was") if count == 1 else ("rows", "were")
        parts.append(f"{count} {noun} without a gold label {verb} not scored.")
    parts += ["### Headline metrics", table(["metric", "value"], list(report["headline"].items()))]
    if "per_class" in report:
        parts += [
            "### Per-class (category head)",
            f"Frequency bands from {report['band_source']}, cut at quantiles {report['band_cuts']}.",
            table(
                ["category", "band", "band count", "support", "precision", "recall", "F1"],
                [
                    [
                        r["label"],
                        r["band"],
                        r["band_count"],
                        r["support"],
                        r["precision"],
                        r["recall"],
                        r["f1"],
                    ]
                    for r in report["per_class"]
                ],
            ),
            "### Top confusions (gold → predicted: count, share of gold)",
            table(
                ["gold", "1st", "2nd", "3rd"],
                [
                    [
                        label,
                        *[f"{d['label']}: {d['count']} ({d['share']:.0%})" for d in dests],
                        *[None] * (3 - len(dests)),
                    ]
                    for label, dests in report["confusions"].items()
                    if dests
                ],
            ),
            "### Frequency bands",
            table(
                ["band", "classes", "scored classes", "mean recall", "mean F1"],
                [
                    [band, b["classes"], b["scored_classes"], b["mean_recall"], b["mean_f1"]]
                    for band, b in report["bands"].items()
                ],
            ),
        ]
    if report.get("heatmap"):
        parts.append(f"![confusion heatmap]({report['heatmap']})")
    safety = report.get("safety")
    if safety:
        parts.append("### Safety")
        if "category" in safety:
            cat = safety["category"]
            parts += [
                f"Allow label {cat['allow_label']!r}, critical {cat['critical_labels']}; {cat['rows']} rows.",
                table(
                    ["metric", "value"],
                    [
                        ["accuracy", cat["accuracy"]],
                        ["macro-F1", cat["macro_f1"]],
                        ["critical-as-allowed rate", _rate(cat["critical_as_allowed"])],
                        *([["mean cost", _cost(cat)]] if cat["mean_cost"] is not None else []),
                        *[[f"F1 {label}", f1] for label, f1 in cat["per_class_f1"].items()],
                    ],
                ),
            ]
        if "gate" in safety:
            parts.append(f"Decline rows let through as Pick: {_rate(safety['gate']['decline_as_pick'])}.")
    return "\n\n".join(parts) + "\n"


def render_comparison(comparison: dict) -> str:
    """Markdown for `compare`'s output."""
    names = comparison["inputs"]
    parts = ["## Comparison", table(["metric", *names], [[k, *v] for k, v in comparison["headline"].items()])]
    for name, rows in comparison["f1_deltas"].items():
        if not rows:  # neither file has a category head
            continue
        parts += [
            f"### Per-class F1: {name} vs {comparison['f1_deltas_vs']} (largest changes first)",
            table(
                ["category", "F1 first", "F1", "delta"],
                [[r["label"], r["f1_first"], r["f1"], r["delta"]] for r in rows],
            ),
        ]
    return "\n\n".join(parts) + "\n"
