"""Reading labelled CSVs: the error type, encodings, the gate label's spellings.

Only pandas here, so tools that just read CSVs (the analysis CLI) stay light; `data.py` builds on it.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import re
from pathlib import Path

import pandas as pd

from .errors import DataError, UsageError, one_line
from .labels import IGNORE_INDEX, PICK_COLUMN, PICK_VALUES

__all__ = ["DataError", "where", "read_csv", "require_columns", "parse_pick", "check_encoding"]

# Leading bytes of files people save as ".csv" by mistake, and what they are.
_MAGIC = {
    b"PK\x03\x04": "an Excel workbook (.xlsx) or another zip archive: save it as CSV (UTF-8)",
    b"\xd0\xcf\x11\xe0": "an old Excel workbook (.xls): save it as CSV (UTF-8)",
    b"%PDF": "a PDF document",
    b"\x1f\x8b": "gzip-compressed: name it .csv.gz or decompress it",
    b"SQLite format 3": "an SQLite database",
}
_DELIMITERS = {"\t": "tabs (a TSV file)", ";": "semicolons", "|": "vertical bars"}
_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def where(path: str | Path, row_index: int | None = None, column: str | None = None) -> str:
    # row_index is the 0-based data row; +2 turns it into the spreadsheet row (header is row 1).
    parts = [str(path)]
    if row_index is not None:
        parts.append(f"row {row_index + 2}")
    if column is not None:
        parts.append(f"column '{column}'")
    return ", ".join(parts)


def check_encoding(encoding: str | None, flag: str = "--encoding") -> None:
    """A `UsageError` for an encoding name Python does not know."""
    if encoding:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise UsageError(f"{flag} {encoding!r}: unknown encoding (e.g. utf-8, utf-8-sig, cp932, latin-1)") from None


def check_readable_file(path: str | Path, flag: str | None = None) -> Path:
    """The path of an existing, readable regular file, else a `DataError` saying what is there instead."""
    path = Path(path)
    label = f"{flag} {path}" if flag else str(path)
    if path.is_dir():
        raise DataError(f"{label}: is a directory, expected a CSV file")
    if not path.exists():
        hint = ""
        if path.parent.is_dir():
            near = difflib.get_close_matches(path.name, [p.name for p in path.parent.iterdir()], n=1, cutoff=0.75)
            hint = f" (did you mean {path.parent / near[0]}?)" if near else ""
        raise DataError(f"{label}: file not found{hint}")
    if not path.is_file():
        raise DataError(f"{label}: not a regular file")
    try:
        with path.open("rb"):
            pass
    except OSError as error:
        raise DataError(f"{label}: cannot be read ({error.strerror or error})") from error
    return path


def _sniff(path: Path, encoding: str | None) -> str:
    """Refuse files that are not comma-separated text before pandas misreads them; returns the header line."""
    with path.open("rb") as handle:
        head = handle.read(65536)
    if not head.strip():
        raise DataError(f"{path}: the file is empty (expected a header row, then one row per item)")
    for magic, what in _MAGIC.items():
        if head.startswith(magic) and not (magic == b"\x1f\x8b" and path.suffix == ".gz"):
            raise DataError(f"{path}: not a CSV file: this looks like {what}")
    if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path}: not a CSV text file (it contains NUL bytes); save it as CSV (UTF-8)")
    text = head.decode(encoding or "utf-8", errors="replace").lstrip("\ufeff")
    header = text.splitlines()[0] if text.splitlines() else ""
    if header.lstrip().startswith(("{", "[")):
        raise DataError(f"{path}: this looks like JSON or JSON Lines; a CSV file with a header row is expected")
    if "," not in header:
        for delimiter, name in _DELIMITERS.items():
            if delimiter in header:
                raise DataError(
                    f"{path}, row 1: the header is separated by {name}, not commas; save the file as "
                    "comma-separated CSV (e.g. pandas: pd.read_csv(path, sep=...).to_csv(new_path, index=False))"
                )
    return header


def _duplicate_columns(path: Path, header: str) -> None:
    names = next(csv.reader([header]), [])
    seen: dict[str, int] = {}
    for index, name in enumerate(names, start=1):
        key = name.strip().lstrip("\ufeff")
        if key and key in seen:
            raise DataError(f"{path}, row 1: column {key!r} appears twice (columns {seen[key]} and {index})")
        seen.setdefault(key, index)


def read_csv(path: str | Path, encoding: str | None = None, allow_empty: bool = False) -> pd.DataFrame:
    """Read a CSV as strings (empty cells stay ""). Without `encoding`: UTF-8 (BOM or not), then CP932.

    Every way a file can be unreadable is a `DataError` naming the file (and the row where pandas stopped):
    missing, a directory, empty, only a header (unless `allow_empty`), a spreadsheet or JSON file, another
    delimiter than commas (the one seen is named), a row with more fields than the header, undecodable bytes.
    """
    path = check_readable_file(path)
    check_encoding(encoding)
    header = _sniff(path, encoding)
    encodings = [encoding] if encoding else ["utf-8-sig", "cp932"]
    for candidate in encodings:
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding=candidate)
            break
        except UnicodeDecodeError:
            continue
        except pd.errors.EmptyDataError as error:
            raise DataError(f"{path}: the file is empty (expected a header row, then one row per item)") from error
        except pd.errors.ParserError as error:
            fields = _FIELDS.search(str(error))
            if fields:
                expected, line, seen = fields.groups()
                raise DataError(
                    f"{path}, row {line}: {seen} fields where the header has {expected}; quote text cells that "
                    "contain commas (\"like, this\")"
                ) from error
            raise DataError(f"{path}: not a readable CSV ({one_line(str(error))})") from error
    else:
        raise DataError(f"{path}: cannot decode as {' or '.join(encodings)}; pass --encoding")
    _duplicate_columns(path, header)
    if frame.empty and not allow_empty:
        raise DataError(f"{path}: no data rows, only the header row ({', '.join(map(str, frame.columns))})")
    return frame


def require_columns(frame: pd.DataFrame, path: str | Path, columns: list[str]) -> None:
    """A `DataError` naming the missing columns, the ones found, and the closest match for each."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        found = [str(c) for c in frame.columns]
        hints = []
        for column in missing:
            near = [c for c in found if c.strip().lower() == column.lower()] or difflib.get_close_matches(
                column, found, n=1, cutoff=0.7
            )
            if near:
                hints.append(f"{near[0]!r} for {column!r}")
        hint = f"; did you mean {', '.join(hints)}?" if hints else ""
        raise DataError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} "
            f"(found: {', '.join(repr(c) for c in found)}){hint}"
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
