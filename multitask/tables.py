"""Reading labelled CSVs: the error type, encodings, the gate label's spellings.

Only pandas here, so tools that just read CSVs (the analysis CLI) stay light; `data.py` builds on it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .labels import IGNORE_INDEX, PICK_COLUMN, PICK_VALUES


class DataError(ValueError):
    """Bad input data; the message names file, row and column."""


def where(path: str | Path, row_index: int | None = None, column: str | None = None) -> str:
    # row_index is the 0-based data row; +2 turns it into the spreadsheet row (header is row 1).
    parts = [str(path)]
    if row_index is not None:
        parts.append(f"row {row_index + 2}")
    if column is not None:
        parts.append(f"column '{column}'")
    return ", ".join(parts)


def read_csv(path: str | Path, encoding: str | None = None) -> pd.DataFrame:
    """Read a CSV as strings (empty cells stay ""). Without `encoding`: UTF-8 (BOM or not), then CP932."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    encodings = [encoding] if encoding else ["utf-8-sig", "cp932"]
    for candidate in encodings:
        try:
            return pd.read_csv(path, dtype=str, keep_default_na=False, encoding=candidate)
        except UnicodeDecodeError:
            continue
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise DataError(f"{path}: not a readable CSV ({error})") from error
    raise DataError(f"{path}: cannot decode as {' or '.join(encodings)}; pass --encoding")


def require_columns(frame: pd.DataFrame, path: str | Path, columns: list[str]) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} (found: {', '.join(frame.columns)})"
        )


def parse_pick(values: pd.Series, path: str | Path, required: bool, column: str = PICK_COLUMN) -> list[int]:
    """Gate labels (1/0); an empty cell is -100 unless `required`, anything else unknown an error naming the row."""
    labels = []
    for row_index, raw in enumerate(values):
        value = raw.strip().lower()
        if value == "" and not required:
            labels.append(IGNORE_INDEX)
        elif value in PICK_VALUES:
            labels.append(PICK_VALUES[value])
        else:
            raise DataError(
                f"{where(path, row_index, column)}: {raw!r} is not a pick label "
                "(expected 1/0, true/false or Pick/Decline)"
            )
    return labels
