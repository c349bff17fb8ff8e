"""`python -m analysis <run dir or predictions file> [more…]`: per-class tables, confusions, bands, comparison.

A predictions file may be CSV, TSV, JSON Lines, JSON or Parquet (e.g. run_predict.py's predictions_<stem>.jsonl, or
another tool's evaluation file with gold and predicted columns named by --category_column/--prediction_column).

Writes analysis.md / analysis.json / a confusion PNG (and safety.json) in a run directory, or
`<stem>_analysis.*` beside a CSV, or everything in --out; prints the Markdown. Every input is read and
analysed before anything is written, and the files appear together (written under temporary names, then
moved into place). A mistake ends in one `error: …` line (exit status 2; `--debug` adds the traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from multitask.errors import cli, raise_usage_errors
from multitask.io.rundir import StagedFiles, check_output_dir, staged_files
from multitask.io.tables import FORMATS, ReadLimits, set_read_limits
from multitask.scoring.stats import PROPORTION_METHODS

from .load import IGNORE_INDEX, Predictions, load_input
from .plots import confusion_heatmap
from .report import analyse, compare, render, render_comparison
from .safety import category_safety, gate_safety, load_cost_matrix
from .shift import render_shift, shift_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line; a mistake is a `UsageError`. `bands` comes back as a list of floats and
    `critical_labels` as a list of names (both are comma-separated strings on the command line)."""
    # argparse rather than HfArgumentParser: positional inputs, and no transformers import for a CSV report.
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    parser.add_argument(
        "inputs", nargs="+",
        help="Run directories and/or predictions files (CSV, TSV, JSONL, JSON, Parquet); the first is the baseline.",
    )
    parser.add_argument(
        "--category_column", "--label_column", default=None,
        help="Column of gold categories. Empty: the run's model column (run directories), else category, else "
        "gold_category (run_predict.py's JSON Lines records).",
    )
    parser.add_argument(
        "--pick_column", default=None,
        help="Column of gold gate labels. Empty: the run's model column, else pick, else gold_pick.",
    )
    parser.add_argument(
        "--prediction_column", default=None, help="Column of predicted categories. Empty: category_pred."
    )
    parser.add_argument(
        "--format", default=None, choices=list(FORMATS),
        help="Format of predictions files whose extension does not say it.",
    )
    parser.add_argument("--out", default=None, help="Write every output here instead of next to each input.")
    parser.add_argument(
        "--bands", default="0.333,0.667", help="Quantile cut points of training counts (Low/Mid/High)."
    )
    parser.add_argument("--allow_label", default=None, help="Safety: the category that lets a row through.")
    parser.add_argument(
        "--critical_labels", default=None, help="Safety: comma-separated categories that must not pass."
    )
    parser.add_argument(
        "--cost_matrix", default=None, help="Safety: CSV of costs, rows = gold, columns = predicted."
    )
    parser.add_argument(
        "--interval",
        default="exact",
        choices=sorted(PROPORTION_METHODS),
        help="95%% interval of the safety rates (proportions): exact = Clopper-Pearson, wilson = Wilson score.",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="Bootstrap resamples for the mean-cost interval (no closed form; 0: none).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the bootstrap.")
    parser.add_argument(
        "--promise", default=None,
        help="A training run directory: for each predictions file (run_predict.py on a labelled sample of new data) "
        "report how far the gate's operating point moved from what the run promised (held-out folds), with "
        "intervals, and the threshold that would restore the recall target on the sample (<stem>_shift.md/json).",
    )
    parser.add_argument(
        "--promise_threshold", default="leak", help="With --promise: the stored threshold to check (default leak)."
    )
    parser.add_argument(
        "--debug", action="store_true", help="On an error, print the traceback too (or MULTITASK_DEBUG=1)."
    )
    raise_usage_errors(parser)
    args = parser.parse_args(argv)
    if args.bootstrap < 0:
        parser.error(f"--bootstrap must be >= 0, got {args.bootstrap}")
    try:
        args.bands = [float(cut) for cut in args.bands.split(",") if cut.strip()]
    except ValueError:
        parser.error(f"--bands must be comma-separated numbers, got {args.bands!r}")
    if not args.bands or sorted(args.bands) != args.bands or not all(0 < cut < 1 for cut in args.bands):
        parser.error(f"--bands must be increasing quantiles strictly between 0 and 1, got {args.bands}")
    args.critical_labels = [
        label.strip() for label in (args.critical_labels or "").split(",") if label.strip()
    ]
    if args.promise and not Path(args.promise).is_dir():
        parser.error(f"--promise {args.promise}: not a directory; give the training run directory of the model")
    if args.promise and all(Path(source).is_dir() for source in args.inputs):
        parser.error("--promise: give predictions files of new labelled data (run_predict.py's output), not run "
                     "directories")
    if bool(args.allow_label) != bool(args.critical_labels):
        parser.error("--allow_label and --critical_labels go together")
    return args


def _safety(pred: Predictions, args: argparse.Namespace, costs: Any) -> dict:
    """Category safety when asked for (--allow_label), gate safety whenever the file scores the gate."""
    result = {}
    if args.allow_label and pred.category_labels is not None:
        mask = pred.category_labels != IGNORE_INDEX
        names = pred.category_id2label
        result["category"] = category_safety(
            [names[i] for i in pred.category_labels[mask]],
            [names[i] for i in pred.category_pred[mask]],
            args.allow_label,
            args.critical_labels,
            costs,
            args.bootstrap,
            args.seed,
            str(args.cost_matrix),
            args.interval,
        )
    if pred.gate_labels is not None:
        mask = pred.gate_labels != IGNORE_INDEX
        result["gate"] = gate_safety(pred.gate_labels[mask], pred.pick_pred[mask], args.interval)
    return result


def _write_json(path: Path, payload: Any) -> None:
    """Indented UTF-8 JSON with a final newline; a NaN or inf raises `ValueError`."""
    # allow_nan=False: a NaN reaching the output is a bug to surface, not a value to write.
    path.write_text(
        json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8"
    )


def main(argv: list[str] | None = None) -> dict:
    """Analyse each input, write its files, compare inputs when there are several; returns what was written."""
    args = parse_args(argv)
    set_read_limits(ReadLimits.max_input_bytes, ReadLimits.max_cell_chars)  # the defaults, whatever ran before
    out = check_output_dir(args.out, "--out") if args.out else None
    costs = load_cost_matrix(args.cost_matrix) if args.cost_matrix else None
    with staged_files() as stage:  # all files appear at the end, or none (a bad input, a crash)
        results, markdown = _analyse_all(args, out, costs, stage)
    print("\n".join(markdown))
    return results


def _analyse_all(
    args: argparse.Namespace, out: Path | None, costs: Any, stage: StagedFiles
) -> tuple[dict, list[str]]:
    """Analyse every input into `stage` (nothing is in place until the stage commits); returns the results that
    `main` returns and the Markdown sections to print. The first input is the comparison's baseline."""
    results: dict[str, Any] = {"inputs": {}}
    markdown: list[str] = []
    baselines: list[tuple[str, dict]] = []
    for source in map(Path, args.inputs):
        is_run = source.is_dir()
        name = source.resolve().name if is_run else source.stem
        name = name if name not in results["inputs"] else str(source)
        # Several run dirs in one --out would all write analysis.md: prefix them with their name.
        prefix = f"{source.stem}_" if not is_run else (f"{name}_" if out and len(args.inputs) > 1 else "")
        folder = out or (source if is_run else source.parent)
        splits, safety, sections = {}, {}, [f"# Analysis of {source}"]
        for pred in load_input(source, args.pick_column, args.category_column, args.prediction_column, args.format):
            report = analyse(pred, args.bands)
            title = name if name == pred.name else f"{name} — {pred.name}"
            if pred.category_labels is not None and (pred.category_labels != IGNORE_INDEX).any():
                mask = pred.category_labels != IGNORE_INDEX
                png = folder / f"{prefix}analysis_confusion{'_' + pred.name if is_run else ''}.png"
                confusion_heatmap(
                    pred.category_labels[mask],
                    pred.category_pred[mask],
                    pred.category_id2label,
                    stage.path(png),
                    f"{title}: most-confused categories",
                )
                report["heatmap"] = png.name
            report["safety"] = _safety(pred, args, costs) or None
            sections.append(render(title, report))
            safety[pred.name] = report.pop("safety")
            splits[pred.name] = report
        files = {"markdown": folder / f"{prefix}analysis.md", "json": folder / f"{prefix}analysis.json"}
        stage.path(files["markdown"]).write_text("\n".join(sections), encoding="utf-8")
        _write_json(stage.path(files["json"]), {"input": str(source), "splits": splits})
        if any(safety.values()):
            files["safety"] = folder / f"{prefix}safety.json"
            _write_json(stage.path(files["safety"]), {"input": str(source), "splits": safety})
        if args.promise and not is_run:
            shift = shift_report(source, args.promise, args.promise_threshold, args.pick_column or "pick",
                                 args.category_column or "category")
            text = render_shift(shift)
            files["shift_markdown"] = folder / f"{prefix}shift.md"
            files["shift_json"] = folder / f"{prefix}shift.json"
            stage.path(files["shift_markdown"]).write_text(text, encoding="utf-8")
            _write_json(stage.path(files["shift_json"]), shift)
            sections.append(text)
            results["shift"] = {**results.get("shift", {}), name: shift}
        markdown += sections
        results["inputs"][name] = {
            "files": {k: str(v) for k, v in files.items()},
            "splits": splits,
            "safety": safety,
        }
        baselines.append((name, next(iter(splits.values()))))
    if len(baselines) > 1:
        comparison = compare(baselines)
        folder = out or (
            Path(args.inputs[0]) if Path(args.inputs[0]).is_dir() else Path(args.inputs[0]).parent
        )
        text = render_comparison(comparison)
        stage.path(folder / "comparison.md").write_text(text, encoding="utf-8")
        _write_json(stage.path(folder / "comparison.json"), comparison)
        markdown.append(text)
        results["comparison"] = comparison
    return results, markdown


if __name__ == "__main__":
    sys.exit(cli(main))
