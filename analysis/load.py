"""Read prediction files (any format `multitask.io.tables` reads) and run directories into label-id arrays that
`multitask.scoring.metrics` understands.

Gold labels are read from the columns the model was trained with (a run directory's `model/config.json`), or the
ones named (`--pick_column`, `--category_column`), else `pick`/`category`, else run_predict.py's JSON Lines
records (`gold_pick`, `gold_category`). Predicted categories from `category_pred` (or `--prediction_column`).

Deliberately does not import `multitask.data.loading` (it pulls in torch and datasets): analysing a CSV should take
a second, on a machine without a GPU stack.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multitask.io.tables import DataError, parse_pick, read_table, unguard_formula
from multitask.labels import IGNORE_INDEX, is_missing_label, parse_top_k_cell

_TOP_K = re.compile(r"category_top(\d+)$")


class InputError(DataError):
    """A predictions file or run directory that cannot be analysed; the message names the file."""


@dataclass
class Predictions:
    """One predictions file as arrays aligned with its rows; a head the model lacks is None."""

    name: str
    path: Path
    rows: int
    gate_labels: np.ndarray | None  # 1 / 0 / -100
    pick_pred: np.ndarray | None  # 1 / 0, the file's decisions (its run's tuned threshold already applied)
    category_labels: np.ndarray | None  # ids / -100
    category_pred: np.ndarray | None  # ids
    category_scores: np.ndarray | None  # (n, N) rank scores: argmax = category_pred, then the top-k order
    top_k_listed: int  # how many ranks category_top{k} gave (1 when only category_pred is there)
    category_id2label: dict[int, str]
    train_counts: dict[str, int] | None  # from run_config.json's data_report.category_counts

    @property
    def unscored_rows(self) -> int:
        """Rows with no gold label for any head the file has."""
        labelled = np.zeros(self.rows, dtype=bool)
        for labels in (self.gate_labels, self.category_labels):
            if labels is not None:
                labelled |= labels != IGNORE_INDEX
        return int((~labelled).sum())


def _missing(path: Path, column: str, why: str) -> InputError:
    """The error for a column the analysis needs: file, column and what the column was wanted for."""
    return InputError(f"{path}: missing column '{column}' ({why})")


def _parse_top_k(cell: str) -> list[str]:
    """The category names of a `category_top<k>` cell, best first: the JSON pairs run_predict.py writes, its JSON
    Lines records, or the older `label:prob|label:prob` form."""
    return [label for label, _ in parse_top_k_cell(cell)]


def _first_present(columns: set[str], *candidates: str | None) -> str | None:
    """The first of `candidates` (None entries skipped) that is a column of the file, else None."""
    return next((column for column in candidates if column and column in columns), None)


def read_predictions(
    path: str | Path,
    name: str | None = None,
    id2label: dict[int, str] | None = None,
    train_counts: dict[str, int] | None = None,
    pick_column: str | None = None,
    category_column: str | None = None,
    prediction_column: str | None = None,
    file_format: str | None = None,
    formula_guard: bool = True,
) -> Predictions:
    """Parse one predictions file (CSV, TSV, JSON Lines, JSON or Parquet). Raises `InputError` naming the file
    and the missing column. In a CSV/TSV written with run_predict.py's `--csv_formula_guard` (the default; False
    when its metrics file says it was off), the `'` put before formula-like cells and column names is removed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    table = read_table(path, file_format)
    frame = table.frame
    if formula_guard and table.format in ("csv", "tsv"):
        frame = frame.rename(columns=unguard_formula)
        for column in frame.columns:
            frame[column] = frame[column].map(unguard_formula)
    columns = set(frame.columns)
    predicted_column = prediction_column or "category_pred"
    top_column = next((c for c in frame.columns if _TOP_K.match(c)), None)
    if top_column is None and "category_top" in columns:  # run_predict.py's JSON Lines records
        top_column = "category_top"
    has_gate = bool(columns & {"pick_pred", "pick_prob"})
    has_category = bool(columns & {predicted_column, "category_prob"}) or top_column is not None
    if not has_gate and not has_category:
        raise _missing(path, f"pick_pred' or '{predicted_column}", "not a predictions file")
    if has_gate and "pick_pred" not in columns:
        raise _missing(path, "pick_pred", "the file has gate scores")
    if has_category and predicted_column not in columns:
        raise _missing(path, predicted_column, "the file has category scores")
    gold_pick = _first_present(columns, pick_column, "pick", "gold_pick")
    gold_category = _first_present(columns, category_column, "category", "gold_category")
    gate_scored = has_gate and gold_pick is not None
    category_scored = has_category and gold_category is not None
    if not gate_scored and not category_scored:
        raise _missing(
            path, (pick_column or "pick") if has_gate else (category_column or "category"),
            "gold labels are needed to score predictions",
        )

    gate_labels = pick_pred = category_labels = category_pred = category_scores = None
    if gate_scored:
        gate_labels = np.asarray(parse_pick(frame[gold_pick], table, required=False, column=gold_pick), dtype=int)
        pick_pred = np.asarray(parse_pick(frame["pick_pred"], table, required=False, column="pick_pred"), dtype=int)
        if (pick_pred == IGNORE_INDEX).any():
            raise InputError(f"{table.where(int(np.argmax(pick_pred == IGNORE_INDEX)))}: empty 'pick_pred'")
    top_k_listed = 1
    id2label = dict(id2label or {})
    if category_scored:
        # A missing value written as text (NaN, None) is no gold category, as in training.
        gold = frame[gold_category].str.strip().map(lambda name: "" if is_missing_label(name) else name)
        predicted = frame[predicted_column].str.strip()
        if (predicted == "").any():
            raise InputError(f"{table.where(int(np.argmax(predicted == '')))}: empty '{predicted_column}'")
        top_lists = [_parse_top_k(cell) for cell in frame[top_column]] if top_column else []
        seen = set(gold[gold != ""]) | set(predicted) | {label for top in top_lists for label in top}
        if not id2label:
            id2label = dict(enumerate(sorted(seen)))
        # A label the run's label map lacks (e.g. a test file's new category) is appended, not an error.
        for label in sorted(seen - set(id2label.values())):
            id2label[len(id2label)] = label
        label2id = {label: i for i, label in id2label.items()}
        category_labels = np.array([label2id[g] if g else IGNORE_INDEX for g in gold], dtype=int)
        category_pred = np.array([label2id[p] for p in predicted], dtype=int)
        top_k_listed = 1
        if top_column and _TOP_K.match(top_column):
            top_k_listed = int(_TOP_K.match(top_column).group(1))
        elif top_lists:
            top_k_listed = max(1, max(len(top) for top in top_lists))
        category_scores = np.zeros((frame.shape[0], len(id2label)))
        for row, top in enumerate(top_lists):
            for rank, label in enumerate(top):
                # Rank scores, not probabilities: first listed k, last 1, unlisted 0 (so top-k accuracy can be computed).
                category_scores[row, label2id[label]] = top_k_listed - rank
        # category_pred is the file's decision: it wins even if top-k was rounded into a tie.
        category_scores[np.arange(frame.shape[0]), category_pred] = top_k_listed + 1
    return Predictions(
        name=name or path.stem,
        path=path,
        rows=int(frame.shape[0]),
        gate_labels=gate_labels,
        pick_pred=pick_pred,
        category_labels=category_labels,
        category_pred=category_pred,
        category_scores=category_scores,
        top_k_listed=top_k_listed,
        category_id2label=id2label,
        train_counts=train_counts,
    )


def _json(path: Path) -> dict:
    """A run directory's JSON file as a dict; {} when the file is absent (older runs lack some), an error when
    it is damaged."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error}); the run directory is damaged") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object; the run directory is damaged")
    return value


def load_input(
    path: str | Path,
    pick_column: str | None = None,
    category_column: str | None = None,
    prediction_column: str | None = None,
    file_format: str | None = None,
) -> list[Predictions]:
    """A predictions file, or every `predictions_*` file of a run (or run_predict.py output) directory, validation
    first: the CSVs, else the files of another supported format. Gold columns not named are the ones the run's
    model was trained with (`model/config.json`)."""
    path = Path(path)
    columns = {"pick_column": pick_column, "category_column": category_column,
               "prediction_column": prediction_column, "file_format": file_format}
    if path.is_file():
        # run_predict.py records the gold columns it read in metrics_<stem>.json beside predictions_<stem>.*
        recorded = _recorded_columns(path).get("columns") or {}
        columns["pick_column"] = pick_column or recorded.get("pick_column")
        columns["category_column"] = category_column or recorded.get("category_column")
        return [read_predictions(path, **columns, formula_guard=_formula_guard(path))]
    if not path.is_dir():
        raise InputError(f"{path}: no such file or directory")
    files = sorted(path.glob("predictions_*.csv"))
    for suffix in ("jsonl", "parquet", "json", "tsv"):
        files = files or sorted(path.glob(f"predictions_*.{suffix}"))
    files.sort(key=lambda p: (p.stem != "predictions_validation", p.name))
    if not files:
        raise InputError(f"{path}: no predictions_*.csv (or .jsonl, .parquet) in this run directory")
    label_map = _json(path / "label_map.json").get("category_id2label") or {}
    id2label = {int(key): value for key, value in label_map.items()}
    counts = _json(path / "run_config.json").get("data_report", {}).get("category_counts")
    model_config = _json(path / "model" / "config.json")
    columns["pick_column"] = pick_column or model_config.get("pick_column")
    columns["category_column"] = category_column or model_config.get("category_column")
    return [
        read_predictions(file, file.stem.removeprefix("predictions_"), id2label, counts, **columns,
                         formula_guard=_formula_guard(file))
        for file in files
    ]


def _recorded_columns(path: Path) -> dict:
    """The metrics_<stem>.json run_predict.py wrote beside predictions_<stem>.*, or {}."""
    if not path.name.startswith("predictions_"):
        return {}
    return _json(path.with_name(f"metrics_{path.stem.removeprefix('predictions_')}.json"))


def _formula_guard(path: Path) -> bool:
    """Whether `path` was written with formula-like cells quoted: yes unless its metrics file says it was off."""
    return _recorded_columns(path).get("csv_formula_guard", True) is not False
