"""Read prediction CSVs and run directories into label-id arrays that `multitask.metrics` understands.

Deliberately does not import `multitask.data` (it pulls in torch and datasets): analysing a CSV should take
a second, on a machine without a GPU stack.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multitask.labels import IGNORE_INDEX
from multitask.tables import DataError, parse_pick, read_csv

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
    return InputError(f"{path}: missing column '{column}' ({why})")


def _parse_top_k(cell: str) -> list[str]:
    # "label:prob|label:prob"; rsplit keeps labels that themselves contain ':'.
    return [part.rsplit(":", 1)[0] for part in cell.split("|") if part]


def read_predictions(
    path: str | Path,
    name: str | None = None,
    id2label: dict[int, str] | None = None,
    train_counts: dict[str, int] | None = None,
) -> Predictions:
    """Parse one predictions CSV. Raises `InputError` naming the file and the missing column."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    frame = read_csv(path)
    columns = set(frame.columns)
    top_column = next((c for c in frame.columns if _TOP_K.match(c)), None)
    has_gate = bool(columns & {"pick_pred", "pick_prob"})
    has_category = bool(columns & {"category_pred", "category_prob"}) or top_column is not None
    if not has_gate and not has_category:
        raise _missing(path, "pick_pred' or 'category_pred", "not a predictions file")
    if has_gate and "pick_pred" not in columns:
        raise _missing(path, "pick_pred", "the file has gate scores")
    if has_category and "category_pred" not in columns:
        raise _missing(path, "category_pred", "the file has category scores")
    gate_scored = has_gate and "pick" in columns
    category_scored = has_category and "category" in columns
    if not gate_scored and not category_scored:
        raise _missing(
            path, "pick" if has_gate else "category", "gold labels are needed to score predictions"
        )

    gate_labels = pick_pred = category_labels = category_pred = category_scores = None
    if gate_scored:
        gate_labels = np.asarray(parse_pick(frame["pick"], path, required=False), dtype=int)
        pick_pred = np.asarray(parse_pick(frame["pick_pred"], path, required=False, column="pick_pred"), dtype=int)
        if (pick_pred == IGNORE_INDEX).any():
            raise InputError(
                f"{path}, row {int(np.argmax(pick_pred == IGNORE_INDEX)) + 2}: empty 'pick_pred'"
            )
    top_k_listed = 1
    id2label = dict(id2label or {})
    if category_scored:
        gold = frame["category"].str.strip()
        predicted = frame["category_pred"].str.strip()
        if (predicted == "").any():
            raise InputError(f"{path}, row {int(np.argmax(predicted == '')) + 2}: empty 'category_pred'")
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
        top_k_listed = int(_TOP_K.match(top_column).group(1)) if top_column else 1
        category_scores = np.zeros((frame.shape[0], len(id2label)))
        for row, top in enumerate(top_lists):
            for rank, label in enumerate(top):
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
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error}); the run directory is damaged") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object; the run directory is damaged")
    return value


def load_input(path: str | Path) -> list[Predictions]:
    """A predictions CSV, or every `predictions_*.csv` of a run directory (validation first)."""
    path = Path(path)
    if path.is_file():
        return [read_predictions(path)]
    if not path.is_dir():
        raise InputError(f"{path}: no such file or directory")
    files = sorted(path.glob("predictions_*.csv"), key=lambda p: (p.stem != "predictions_validation", p.name))
    if not files:
        raise InputError(f"{path}: no predictions_*.csv in this run directory")
    label_map = _json(path / "label_map.json").get("category_id2label") or {}
    id2label = {int(key): value for key, value in label_map.items()}
    counts = _json(path / "run_config.json").get("data_report", {}).get("category_counts")
    return [
        read_predictions(file, file.stem.removeprefix("predictions_"), id2label, counts) for file in files
    ]
