"""Label conventions shared by every module (no heavy imports, so CLIs that only read CSVs stay fast)."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence

IGNORE_INDEX = -100  # a row without a label for a task; the losses and metrics skip it
PICK_COLUMN = "pick"
CATEGORY_COLUMN = "category"
# Accepted spellings of the gate label (compared lower-cased and stripped).
PICK_VALUES = {"1": 1, "1.0": 1, "true": 1, "pick": 1, "0": 0, "0.0": 0, "false": 0, "decline": 0}
# How a missing value looks once a table went through `astype(str)` (pandas' NaN, None, pd.NA): a category cell
# holding one of these is read as empty, as a NaN cell of a JSON or Parquet file already is (`tables.cell_text`).
MISSING_SPELLINGS = {"nan", "none", "<na>"}


def is_missing_label(name: str) -> bool:
    """Whether a (stripped) label cell is a missing value written out as text (`NaN`, `nan`, `None`, `<NA>`)."""
    return name.lower() in MISSING_SPELLINGS


def label_problem(name: str) -> str | None:
    """Why `name` cannot be a category name, or None. Line breaks, tabs and other control characters are refused:
    every other Unicode string (separators such as `|` and `:`, quotes, any length) round-trips through the
    config, prediction files and reports."""
    for character in name:
        if unicodedata.category(character) == "Cc":
            return f"contains a control character ({character!r}); category names must be one line of text"
    return None


def markdown_cell(value: object) -> str:
    """`value` as one Markdown table cell: `|` escaped (it would split the cell), line breaks as spaces."""
    return " ".join(str(value).splitlines()).replace("|", "\\|")


def top_k_cell(labels: Sequence[str], probs: Sequence[float]) -> str:
    """One `category_top<k>` cell: a JSON list of `[label, probability]` pairs, best first (any label text
    round-trips; the old `label:prob|label:prob` form broke on a label holding `|`)."""
    return json.dumps([[label, round(float(prob), 4)] for label, prob in zip(labels, probs)], ensure_ascii=False)


def parse_top_k_cell(cell: str) -> list[tuple[str, float]]:
    """The `(label, probability)` pairs of a `category_top<k>` cell, best first.

    Args:
        cell (`str`):
            The JSON form `top_k_cell` writes, run_predict.py's JSON Lines records (`[{"label", "prob"}, …]`),
            or the `label:prob|label:prob` form of files written before (their labels cannot hold `|`).

    Returns:
        `list[tuple[str, float]]`: Items that cannot be read are left out; a probability that cannot be read is 0.
    """
    cell = str(cell)
    try:
        items = json.loads(cell)
    except ValueError:
        items = None
    pairs: list[tuple[str, float]] = []
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict) and "label" in item:
                pairs.append((str(item["label"]), _probability(item.get("prob"))))
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                pairs.append((str(item[0]), _probability(item[1])))
        return pairs
    for part in filter(None, cell.split("|")):
        # rpartition: a category name may contain ":", the formatted probability never does.
        label, colon, prob = part.rpartition(":")
        pairs.append((label, _probability(prob)) if colon else (part, 0.0))
    return pairs


def _probability(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
