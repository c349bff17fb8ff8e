"""How far a run's gate operating point moved on new labelled data, against what the run promised.

`python -m analysis PREDICTIONS --promise RUN_DIR`: PREDICTIONS is run_predict.py's output on a labelled sample of
new data (it holds `pick_prob`, the score the thresholds apply to, and the gold `pick`/`category` columns).
RUN_DIR is the training run that made the model: its thresholds.json holds the threshold and the recall target,
its gate_cv.json the held-out-fold promise (pooled figures and 95 % intervals).

On the sample, at the run's threshold: out-of-scope recall (Decline rows stopped), the Pick-declined rate (Pick rows
stopped) and in-scope accuracy (Pick rows let through with the right category), each with a Clopper–Pearson 95 %
interval, beside the promise; and the threshold that would restore the recall target on this sample (chosen on
the sample itself: its own figures there are optimistic, so check it on further new data).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from multitask.errors import DataError, UsageError
from multitask.io.tables import parse_pick, read_table
from multitask.labels import IGNORE_INDEX, is_missing_label
from multitask.scoring.stats import proportion_interval
from multitask.scoring.thresholds import search_gate_thresholds

FIGURES = (("oos_recall", "out-of-scope recall"), ("false_decline_rate", "Pick rows declined"),
           ("in_scope_accuracy", "in-scope accuracy"))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise UsageError(f"--promise: {path}: not readable JSON ({error})") from error


def load_promise(run_dir: str | Path, kind: str) -> dict:
    """The threshold of `kind` and what the run promised at it, from a run directory.

    Returns:
        `dict`: `threshold`, `max_decline_leak` (the recall target's complement), `confidence` (if the threshold
        was chosen with a guarantee) and `promise` (`{figure: {"value", "interval"}}` from gate_cv.json's held-out
        folds; empty when the run had no --threshold_cv).

    Raises:
        `UsageError`: When `run_dir` is not a run directory with thresholds.json, or has no `kind` threshold.
    """
    run_dir = Path(run_dir)
    thresholds = _read_json(run_dir / "thresholds.json")
    if not isinstance(thresholds, dict):
        raise UsageError(f"--promise {run_dir}: no thresholds.json; give the training run directory of the model")
    if not isinstance(thresholds.get(kind), dict) or "threshold" not in thresholds[kind]:
        kinds = sorted(k for k, v in thresholds.items() if isinstance(v, dict) and "threshold" in v)
        raise UsageError(f"--promise_threshold {kind}: the run stores no such threshold; it has {', '.join(kinds)}")
    entry = thresholds[kind]
    leak = thresholds.get("leak", {})
    promise = {}
    cv = _read_json(run_dir / "gate_cv.json")
    if isinstance(cv, dict) and kind in cv.get("operating_points", {}):
        point = cv["operating_points"][kind]
        promise = {name: {"value": point["pooled"].get(name), "interval": point.get("interval", {}).get(name)}
                   for name, _ in FIGURES if name in point["pooled"]}
    return {"kind": kind, "threshold": float(entry["threshold"]), "gate_score": thresholds.get("gate_score"),
            "max_decline_leak": leak.get("max_decline_leak"), "confidence": leak.get("confidence"),
            "promise": promise}


def figures_at(pick_prob: np.ndarray, gate: np.ndarray, correct: np.ndarray | None, threshold: float) -> dict:
    """Out-of-scope recall, Pick-declined rate and in-scope accuracy at `threshold` (Pick iff score >= it), each
    with its count, row total and Clopper–Pearson 95 % interval (None without such rows)."""
    stopped = pick_prob < threshold
    decline, pick = gate == 0, gate == 1
    right = ~stopped & (correct if correct is not None else True)
    counts = {"oos_recall": (int((stopped & decline).sum()), int(decline.sum())),
              "false_decline_rate": (int((stopped & pick).sum()), int(pick.sum())),
              "in_scope_accuracy": (int((right & pick).sum()), int(pick.sum()))}
    if correct is None:
        counts.pop("in_scope_accuracy")
    return {name: {"value": hits / total if total else None, "hits": hits, "rows": total,
                   "interval": proportion_interval(hits, total)} for name, (hits, total) in counts.items()}


def shift_report(predictions: str | Path, run_dir: str | Path, kind: str = "leak", pick_column: str = "pick",
                 category_column: str = "category") -> dict:
    """Compare the operating point on a labelled sample of new data with the run's promise (module docstring).

    Args:
        predictions (`str` or `Path`): run_predict.py's predictions file (CSV, JSONL, …) of the sample.
        run_dir (`str` or `Path`): The training run directory of the model.
        kind (`str`, *optional*, defaults to `"leak"`): The stored threshold to check.
        pick_column, category_column (`str`): Gold columns of the sample.

    Returns:
        `dict`: `threshold`, `sample` (figures at it), `promise`, `moved` (sample minus promise, per figure),
        `outside_promise` (figures whose sample value lies outside the promised interval) and `suggested` (the
        threshold restoring the recall target on the sample, with its figures there), plus the rows counted.

    Raises:
        `DataError`: A sample without `pick_prob` or gold gate labels, or without a Decline row.
    """
    settings = load_promise(run_dir, kind)
    table = read_table(predictions)
    frame = table.frame
    for column in ("pick_prob", pick_column):
        if column not in frame.columns:
            raise DataError(f"{predictions}: no {column!r} column (run run_predict.py on a labelled sample; "
                            "--pick_column names another gold column)")
    # The training reader's spellings (1/0, true/false, Pick/Decline, …); an empty cell is an unlabelled row.
    gate = np.asarray(parse_pick(frame[pick_column], table, required=False, column=pick_column))
    keep = gate != IGNORE_INDEX
    frame, gate = frame[keep], gate[keep]
    if not (gate == 0).any():
        raise DataError(f"{predictions}, column {pick_column!r}: no Decline row; out-of-scope recall needs some")
    pick_prob = frame["pick_prob"].astype(float).to_numpy()
    correct = None
    if category_column in frame.columns and "category_pred" in frame.columns:
        gold = frame[category_column].astype(str)
        # A Pick row without a gold category counts as right when let through, as training's figures count it.
        unknown = gold.map(lambda name: not name.strip() or is_missing_label(name)).to_numpy()
        correct = (frame["category_pred"].astype(str) == gold).to_numpy() | unknown
    sample = figures_at(pick_prob, gate, correct, settings["threshold"])
    moved, outside = {}, []
    for name, promised in settings["promise"].items():
        if name in sample and sample[name]["value"] is not None and promised["value"] is not None:
            moved[name] = sample[name]["value"] - promised["value"]
            low, high = promised["interval"] or (promised["value"], promised["value"])
            if not low <= sample[name]["value"] <= high:
                outside.append(name)
    suggested = None
    if settings["max_decline_leak"] is not None:
        search = search_gate_thresholds(pick_prob, gate, correct, settings["max_decline_leak"],
                                        confidence=settings["confidence"])["leak"]
        suggested = {"threshold": search["threshold"], "met_target": search["met_target"],
                     "sample": figures_at(pick_prob, gate, correct, search["threshold"])}
    return {"predictions": str(predictions), "run": str(run_dir), **settings, "sample": sample, "moved": moved,
            "outside_promise": outside, "suggested": suggested, "rows": int(gate.size)}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _interval(interval: list[float] | None) -> str:
    return "–" if not interval else f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def render_shift(report: dict) -> str:
    """Markdown of `shift_report`."""
    target = report["max_decline_leak"]
    lines = [f"# Operating point on new data: {report['predictions']}", "",
             f"Run {report['run']}: `{report['kind']}` threshold {report['threshold']:.4g} on gate score "
             f"`{report['gate_score']}`" + (f"; recall target {_pct(1 - target)}" if target is not None else "")
             + (f", chosen with {100 * report['confidence']:.0f} % confidence" if report.get("confidence") else "")
             + f". Sample: {report['rows']} labelled rows.", "",
             "| figure | promised (held-out folds) | 95 % interval | on the sample | 95 % interval | moved |",
             "|---|---|---|---|---|---|"]
    for name, label in FIGURES:
        if name not in report["sample"]:
            continue
        promised = report["promise"].get(name, {})
        got = report["sample"][name]
        moved = report["moved"].get(name)
        flag = " (outside the promise)" if name in report["outside_promise"] else ""
        lines.append(f"| {label} | {_pct(promised.get('value'))} | {_interval(promised.get('interval'))} | "
                     f"{_pct(got['value'])} ({got['hits']}/{got['rows']}) | {_interval(got['interval'])} | "
                     f"{'–' if moved is None else f'{100 * moved:+.1f} pp'}{flag} |")
    suggested = report.get("suggested")
    if suggested:
        figures = suggested["sample"]
        lines += ["", f"Threshold that restores the recall target on this sample: {suggested['threshold']:.4g} "
                  f"(out-of-scope recall {_pct(figures['oos_recall']['value'])}, Pick rows declined "
                  f"{_pct(figures['false_decline_rate']['value'])}"
                  + (f", in-scope accuracy {_pct(figures['in_scope_accuracy']['value'])}"
                     if "in_scope_accuracy" in figures else "")
                  + ("" if suggested["met_target"] else "; the target is not reachable on this sample")
                  + "). Chosen on this sample, so these figures are optimistic: check it on further new data, then "
                  "predict with `run_predict.py --threshold <value>`."]
    return "\n".join(lines) + "\n"
