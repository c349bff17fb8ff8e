"""The one reader of labelled tables, the one text builder, and the gate label's spellings.

Every command (training, prediction, prepare, analysis) reads its data here:

- **Formats** by extension, or named with `--format`: CSV (`.csv`), TSV (`.tsv`, `.tab`), JSON Lines (`.jsonl`,
  `.ndjson`), JSON (`.json`: a list of objects, `{"data": [...]}`, or columns of equal length) and Parquet
  (`.parquet`, `.pq`); a `.gz`/`.bz2`/`.xz` suffix is decompressed. Any other extension is read as CSV.
- **Encodings**: UTF-8 with or without BOM, then CP932/Shift-JIS (Japanese Excel exports); or `--encoding`.
- **Cells** become strings, as a CSV shows them: a missing value is "", `1.0` is "1", `true` is "true".
- **Where** (`Table.where`) is said as the user sees the file: the spreadsheet row for CSV/TSV (header = row 1),
  the line for JSON Lines, the record (1-based) for JSON, Parquet and Hub datasets.

- **Spreadsheet safety** (`guard_formulas`): text cells written to a CSV for people to open are neutralised
  against formula injection, as OWASP recommends; `unguard_formula` reads them back.

Only pandas here (pyarrow for Parquet), so tools that just read tables (the analysis CLI) stay light; `data.py`
builds training data on it and `prepare.py` deduplicates with the same texts. Not here: label maps, categories
and the merge of Task1/Task2 rows (`data.py`), Hub downloads (`hub.py`), writing tables (`prepare.py`).
"""

from __future__ import annotations

import bz2
import codecs
import csv
import difflib
import gzip
import io
import json
import lzma
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from multitask.errors import DataError, UsageError, excerpt, one_line
from multitask.labels import IGNORE_INDEX, PICK_COLUMN, PICK_VALUES

__all__ = [
    "DataError", "FORMATS", "Table", "where", "read_table", "read_csv", "table_format", "require_columns",
    "parse_pick", "pick_value", "check_encoding", "check_format", "build_text", "build_texts", "cell_text",
    "guard_formulas", "formula_safe", "unguard_formula", "READ_LIMITS", "set_read_limits",
]  # fmt: skip

FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")
_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
             ".parquet": "parquet", ".pq": "parquet"}  # fmt: skip
_DECOMPRESS: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# UTF-8 first: it is strict, so CP932 bytes almost never decode as UTF-8 by accident (the reverse is common).
DEFAULT_ENCODINGS = ("utf-8-sig", "cp932")
# The separator of texts built outside a tokenizer (prepare's deduplication, reports); training and prediction
# pass the tokenizer's own (" [SEP] ").
PLAIN_SEPARATOR = "\n"

# Leading bytes of files people save as ".csv" by mistake, and what they are.
_MAGIC = {
    b"PK\x03\x04": "an Excel workbook (.xlsx) or another zip archive: save it as CSV (UTF-8)",
    b"\xd0\xcf\x11\xe0": "an old Excel workbook (.xls): save it as CSV (UTF-8)",
    b"%PDF": "a PDF document",
    b"\x1f\x8b": "gzip-compressed: name it .csv.gz or decompress it",
    b"SQLite format 3": "an SQLite database",
    b"PAR1": "a Parquet file: name it .parquet (or pass --format parquet)",
}
_DELIMITERS = {",": "commas", "\t": "tabs (a TSV file)", ";": "semicolons", "|": "vertical bars"}
_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


# ------------------------------------------------------------------------------------------------- limits
@dataclass
class ReadLimits:
    """How much one input may hold: a small compressed file can expand to gigabytes (a "zip bomb"), and one huge
    cell is more likely a broken export than a text. Every reader here checks them; the CLIs set them from
    `--max_input_bytes` / `--max_cell_chars` (`set_read_limits`)."""

    max_input_bytes: int = 2 * 1024**3  # 2 GiB, after decompression
    max_cell_chars: int = 1_000_000


READ_LIMITS = ReadLimits()


def read_limit_fields() -> dict[str, Any]:
    """The `--max_input_bytes` and `--max_cell_chars` dataclass fields, one spelling for every CLI that reads data
    (`DataArguments`, `PredictArguments`): `max_input_bytes: int = read_limit_fields()["max_input_bytes"]`."""
    return {
        "max_input_bytes": field(default=ReadLimits.max_input_bytes, metadata={
            "help": "Refuse an input file larger than this many bytes once decompressed (.gz/.bz2/.xz are read only "
                    "up to it, so a small archive that expands hugely is refused quickly). Default 2 GiB."}),
        "max_cell_chars": field(default=ReadLimits.max_cell_chars, metadata={
            "help": "Refuse an input file with a cell longer than this many characters (more likely a broken export "
                    "than a text). Error lines quote at most 80 characters of any cell."}),
    }


def set_read_limits(max_input_bytes: int | None = None, max_cell_chars: int | None = None) -> None:
    """Set the limits every later read checks (None keeps the current value); a value below 1 is a `UsageError`."""
    for flag, value in (("--max_input_bytes", max_input_bytes), ("--max_cell_chars", max_cell_chars)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value}: must be a whole number >= 1")
    if max_input_bytes is not None:
        READ_LIMITS.max_input_bytes = int(max_input_bytes)
    if max_cell_chars is not None:
        READ_LIMITS.max_cell_chars = int(max_cell_chars)


def _check_cells(frame: pd.DataFrame, source: str, numbers: Sequence[int] | np.ndarray, unit: str) -> None:
    """A `DataError` naming the first cell longer than `READ_LIMITS.max_cell_chars` (its length, not its text)."""
    limit = READ_LIMITS.max_cell_chars
    for column in frame.columns:
        lengths = frame[column].str.len()
        if len(lengths) and lengths.max() > limit:
            position = int(lengths.to_numpy().argmax())
            raise DataError(f"{source}, {unit} {int(numbers[position])}, column '{column}': a cell of "
                            f"{int(lengths.iloc[position]):,} characters, over the limit of {limit:,} "
                            "(--max_cell_chars); a broken export, or raise the limit")


# ------------------------------------------------------------------------------------------------ the table
@dataclass
class Table:
    """One input as strings (every cell a `str`, "" when missing) and where each row came from.

    Attributes:
        frame (`pd.DataFrame`):
            The rows, column names as strings, in file order.
        source (`str`):
            The file path (or a Hub split's name) used in messages.
        format (`str`):
            One of `FORMATS`, or `"records"` for an in-memory frame (`table_from_frame`).
        numbers (`np.ndarray` of shape `(rows,)`):
            `numbers[i]` is row i's number as the user sees it, in `unit`; kept through `take`, so a subset
            still points at the original rows.
        unit (`str`, *optional*, defaults to `"row"`):
            "row" (CSV/TSV, header = row 1), "line" (JSON Lines) or "record" (JSON, Parquet, Hub datasets;
            1-based).
        nested (`dict[str, int]`, *optional*):
            Column -> the number (in `unit`) of its first cell that held a list or an object (JSON, Parquet);
            such a column is refused as text or label (`column`, `build_texts`), never read as its JSON form.
    """

    frame: pd.DataFrame
    source: str
    format: str
    numbers: np.ndarray
    unit: str = "row"
    nested: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def columns(self) -> list[str]:
        """Column names as strings, in file order."""
        return [str(column) for column in self.frame.columns]

    def where(self, index: int | None = None, column: str | None = None) -> str:
        """"<source>, <unit> <number>, column '<column>'" for 0-based frame position `index`; parts left out if None.

        Args:
            index (`int`, *optional*):
                0-based position in `frame` (not the displayed number).
            column (`str`, *optional*):
                Column name to add.

        Returns:
            `str`: e.g. `"data/train.csv, row 7, column 'category'"`.
        """
        parts = [self.source]
        if index is not None:
            parts.append(f"{self.unit} {int(self.numbers[index])}")
        if column is not None:
            parts.append(f"column '{column}'")
        return ", ".join(parts)

    def require_columns(self, columns: Sequence[str], flags: Mapping[str, str] | None = None) -> None:
        """A `DataError` naming the missing columns, the ones found, the closest match, and the flag that maps it.

        Args:
            columns (`Sequence[str]`):
                Columns that must exist.
            flags (`Mapping[str, str]`, *optional*):
                Column -> the flag that names another column for that role, quoted in the message.

        Raises:
            `DataError`: When any of `columns` is missing.
        """
        require_columns(self.frame, self.source, columns, flags)

    def column(self, name: str) -> list[str]:
        """The cells of column `name` as a list of strings (a `KeyError` if absent; check with `require_columns`).

        A column that held lists or objects is a `DataError` (see `check_flat`).
        """
        self.check_flat([name])
        return self.frame[name].tolist()

    def check_flat(self, columns: Sequence[str]) -> None:
        """A `DataError` naming the file, row and column when one of `columns` held a list or an object (a Parquet
        list column, a JSON array): its text would be the JSON form, which no model should learn or be scored on."""
        for name in columns:
            if name in self.nested:
                raise DataError(f"{self.source}, {self.unit} {self.nested[name]}, column '{name}': holds a list or "
                                "an object, not text; give one string per row (e.g. join the items first)")

    def take(self, positions: Sequence[int] | np.ndarray) -> Table:
        """The rows at 0-based `positions`, in that order, keeping each row's original number for error messages.

        Args:
            positions (`Sequence[int]` or `np.ndarray`):
                Positions in `frame`; repeats are allowed.

        Returns:
            `Table`: A new table with a fresh 0-based index; `self` is unchanged.
        """
        positions = np.asarray(positions, dtype=np.int64)
        return Table(self.frame.iloc[positions].reset_index(drop=True), self.source, self.format,
                     self.numbers[positions], self.unit, dict(self.nested))


def where(path: str | Path, row_index: int | None = None, column: str | None = None) -> str:
    """File, spreadsheet row and column of a CSV cell: `row_index` is the 0-based data row (header = row 1).

    Args:
        path (`str` or `Path`):
            The file, as named in the message.
        row_index (`int`, *optional*):
            0-based data row; shown as `row_index + 2`.
        column (`str`, *optional*):
            Column name to add.

    Returns:
        `str`: e.g. `"train.csv, row 2, column 'pick'"` for the first data row.
    """
    parts = [str(path)]
    if row_index is not None:
        parts.append(f"row {row_index + 2}")
    if column is not None:
        parts.append(f"column '{column}'")
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------- arguments
def check_encoding(encoding: str | None, flag: str = "--encoding") -> None:
    """A `UsageError` for an encoding name Python does not know.

    Args:
        encoding (`str`, *optional*):
            A codec name (`utf-8`, `cp932`, `latin-1`, …); None or "" pass.
        flag (`str`, *optional*, defaults to `"--encoding"`):
            The flag named in the message.

    Raises:
        `UsageError`: For an unknown codec.
    """
    if encoding:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise UsageError(f"{flag} {encoding!r}: unknown encoding (e.g. utf-8, utf-8-sig, cp932, latin-1)") from None


def check_format(file_format: str | None, flag: str = "--format") -> None:
    """A `UsageError` unless `file_format` is empty/None or one of `FORMATS` (any case).

    Args:
        file_format (`str`, *optional*):
            `--format` as given.
        flag (`str`, *optional*, defaults to `"--format"`):
            The flag named in the message.

    Raises:
        `UsageError`: For a format outside `FORMATS`.
    """
    if file_format and file_format.lower() not in FORMATS:
        raise UsageError(f"{flag} {file_format!r}: unknown format; choose one of {', '.join(FORMATS)}")


def table_format(path: str | Path, file_format: str | None = None) -> str:
    """`file_format` if given, else the format named by the extension (a compression suffix skipped); CSV otherwise.

    Args:
        path (`str` or `Path`):
            The data file; only its name is read (e.g. `train.jsonl.gz` -> `"jsonl"`).
        file_format (`str`, *optional*):
            An explicit format; wins over the extension.

    Returns:
        `str`: One of `FORMATS`, lower case.

    Raises:
        `UsageError`: For an explicit `file_format` outside `FORMATS`.
    """
    if file_format:
        check_format(file_format)
        return file_format.lower()
    suffixes = [suffix.lower() for suffix in Path(path).suffixes]
    if suffixes and suffixes[-1] in _DECOMPRESS:
        suffixes = suffixes[:-1]
    return _SUFFIXES.get(suffixes[-1] if suffixes else "", "csv")


def check_readable_file(path: str | Path, flag: str | None = None) -> Path:
    """The path of an existing, readable regular file, else a `DataError` saying what is there instead.

    Args:
        path (`str` or `Path`):
            The file to check; it is opened (and closed) but not read.
        flag (`str`, *optional*):
            The flag that named it, quoted before the path in the message.

    Returns:
        `Path`: `path` as a `Path`.

    Raises:
        `DataError`: A directory, a missing file (with a close file name from the same folder when there is
        one), something that is not a regular file, or a file that cannot be opened.
    """
    path = Path(path)
    label = f"{flag} {path}" if flag else str(path)
    if path.is_dir():
        raise DataError(f"{label}: is a directory, expected a data file ({', '.join(FORMATS)})")
    if not path.exists():
        hint = ""
        if path.parent.is_dir():
            # 0.75: a typo or a wrong extension, not just any file in the folder.
            near = difflib.get_close_matches(path.name, [p.name for p in path.parent.iterdir()], n=1, cutoff=0.75)
            hint = f" (did you mean {path.parent / near[0]}?)" if near else ""
        raise DataError(f"{label}: file not found{hint}")
    if not path.is_file():
        raise DataError(f"{label}: not a regular file")
    try:
        # Opening is the only sure test: exists() and is_file() also pass for a file without read permission.
        with path.open("rb"):
            pass
    except OSError as error:
        raise DataError(f"{label}: cannot be read ({error.strerror or error})") from error
    return path


# ---------------------------------------------------------------------------------------------------- cells
def cell_text(value: Any) -> str:
    """A cell as text, the way a CSV shows it: missing is "", 1.0 is "1", True is "true", lists/objects as JSON.

    Args:
        value (`Any`):
            A cell from pandas, JSON or Parquet (numpy scalars and arrays included).

    Returns:
        `str`: The text; bytes are decoded as UTF-8 with replacement characters, a non-integral float keeps
        its `repr` (`0.1` stays "0.1").
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, str):
        return value
    # Before int: True is an int in Python, and must read "true", not "1".
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        # pandas fills missing JSON/Parquet cells with NaN: the same as an empty CSV cell.
        if math.isnan(value):
            return ""
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _as_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with str column names and every cell through `cell_text`, so JSON/Parquet read like a CSV."""
    frame = frame.copy()
    frame.columns = [str(column) for column in frame.columns]
    for column in frame.columns:
        frame[column] = [cell_text(value) for value in frame[column].tolist()]
    return frame.astype(str)  # the dtype pandas gives a CSV read with dtype=str


def _nested_cells(frame: pd.DataFrame, numbers: Sequence[int] | np.ndarray) -> dict[str, int]:
    """Column -> the number (from `numbers`) of its first cell holding a list, array or object, before
    `_as_strings` turns such cells into JSON text."""
    nested = {}
    for column in frame.columns:
        for position, value in enumerate(frame[column].tolist()):
            if isinstance(value, (list, tuple, dict, np.ndarray)):
                nested[str(column)] = int(numbers[position])
                break
    return nested


# ------------------------------------------------------------------------------------------------- reading
def read_table(
    path: str | Path,
    file_format: str | None = None,
    encoding: str | None = None,
    allow_empty: bool = False,
    flag: str | None = None,
) -> Table:
    """Read one data file (format by extension or `file_format`) into a `Table` of strings.

    Every way a file can be unreadable is a `DataError` naming the file and, where it applies, the row or line:
    missing, a directory, empty, no data rows (unless `allow_empty`), another format than its name says (a
    spreadsheet, JSON given as CSV, a TSV named .csv, …), a row with more fields than the header, duplicate
    columns, invalid JSON, undecodable bytes.

    Args:
        path (`str` or `Path`):
            The data file; a `.gz`, `.bz2` or `.xz` suffix is decompressed in memory.
        file_format (`str`, *optional*):
            One of `FORMATS`; None reads the format from the extension (CSV when unknown).
        encoding (`str`, *optional*):
            Text encoding; None tries UTF-8 (with or without BOM), then CP932. Not used for Parquet.
        allow_empty (`bool`, *optional*, defaults to `False`):
            Accept a file with a header (or an empty JSON list) but no rows.
        flag (`str`, *optional*):
            The flag that named the file, quoted in the messages about the file itself (missing, a directory,
            …).

    Returns:
        `Table`: Cells as strings, with each row's number as the user sees it.

    Raises:
        `DataError`: See above.
        `UsageError`: An unknown `encoding` or `file_format`.
    """
    path = check_readable_file(path, flag)
    check_encoding(encoding)
    kind = table_format(path, file_format)
    if kind in ("csv", "tsv"):
        frame = _read_delimited(path, encoding, kind, allow_empty)
        # Row 1 is the header, so data row i (0-based) is spreadsheet row i + 2.
        numbers = np.arange(2, len(frame) + 2)
        _check_cells(frame, str(path), numbers, "row")
        return Table(frame, str(path), kind, numbers, "row")
    if kind == "parquet":
        raw_frame = _read_parquet(path, allow_empty)
        numbers = np.arange(1, len(raw_frame) + 1)
        frame = _as_strings(raw_frame)
        _check_cells(frame, str(path), numbers, "record")
        return Table(frame, str(path), kind, numbers, "record", _nested_cells(raw_frame, numbers))
    text = _decode(path, _read_bytes(path), encoding)
    if kind == "jsonl":
        records, numbers = _parse_jsonl(path, text)
        unit = "line"
    else:
        records, numbers, unit = _parse_json(path, text)
    if not records and not allow_empty:
        raise DataError(f"{path}: no records (expected one JSON object per {'line' if unit == 'line' else 'record'})")
    raw_frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    numbers = np.asarray(numbers, dtype=np.int64)
    frame = _as_strings(raw_frame)
    _check_cells(frame, str(path), numbers, unit)
    return Table(frame, str(path), kind, numbers, unit, _nested_cells(raw_frame, numbers))


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when its last suffix is .gz/.bz2/.xz (whole file in memory); more than
    `READ_LIMITS.max_input_bytes` (after decompression) is a `DataError`, found without reading past the limit."""
    limit = READ_LIMITS.max_input_bytes
    too_large = (f"{path}: more than {limit:,} bytes{{}}, over the limit (--max_input_bytes); split the file, or "
                 "raise the limit")
    decompress = _DECOMPRESS.get(path.suffix.lower())
    if decompress is None:
        if path.stat().st_size > limit:
            raise DataError(too_large.format(""))
        return path.read_bytes()
    try:
        with decompress(path, "rb") as handle:
            data = handle.read(limit + 1)
    # Damaged or truncated archives: gzip raises OSError/EOFError, bz2 OSError/ValueError, xz LZMAError.
    except (OSError, EOFError, lzma.LZMAError, ValueError) as error:
        raise DataError(f"{path}: cannot decompress ({one_line(str(error))})") from error
    if len(data) > limit:
        raise DataError(too_large.format(" once decompressed"))
    return data


def _bom_encoding(data: bytes, encoding: str | None) -> str | None:
    """`encoding`, or "utf-16" when none is given and `data` starts with a UTF-16 byte-order mark (Excel's
    "Unicode text" and PowerShell's default): unambiguous, so such a file is read without --encoding."""
    if encoding is None and data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return encoding


def _decode(path: Path, data: bytes, encoding: str | None) -> str:
    """Text of `data` in `encoding`, else the first of `DEFAULT_ENCODINGS` that decodes it; a BOM is dropped."""
    encoding = _bom_encoding(data, encoding)
    encodings = [encoding] if encoding else list(DEFAULT_ENCODINGS)
    for candidate in encodings:
        try:
            # Only utf-8-sig drops a BOM itself; strip it so the first column's name is clean.
            return data.decode(candidate).lstrip("\ufeff")
        except UnicodeError:  # also utf-16's "stream does not start with BOM"
            continue
    raise DataError(f"{path}: cannot decode as {' or '.join(encodings)}; pass --encoding")


def _sniff(path: Path, head: bytes, encoding: str | None, kind: str) -> str:
    """Refuse files that are not delimited text of the expected kind before pandas misreads them; the header."""
    name = "TSV" if kind == "tsv" else "CSV"
    if not head.strip():
        raise DataError(f"{path}: the file is empty (expected a header row, then one row per item)")
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            raise DataError(f"{path}: not a {name} file: this looks like {what}")
    # UTF-16 text (BOM first) holds NUL bytes too; anything else with NULs is binary.
    if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path}: not a {name} text file (it contains NUL bytes); save it as {name} (UTF-8)")
    # "replace": only the header is inspected, and the 64 KiB cut may split a character (or it is CP932).
    text = head.decode(encoding or "utf-8", errors="replace").lstrip("\ufeff")
    header = text.splitlines()[0] if text.splitlines() else ""
    if header.lstrip().startswith(("{", "[")):
        raise DataError(f"{path}: this looks like JSON or JSON Lines; name it .jsonl or .json (or pass --format "
                        f"jsonl), or give a {name} file with a header row")
    expected = "\t" if kind == "tsv" else ","
    if expected not in header:
        for delimiter, what in _DELIMITERS.items():
            if delimiter != expected and delimiter in header:
                if kind == "tsv":
                    fix = "name the file .csv (or pass --format csv)" if delimiter == "," else "save it tab-separated"
                    raise DataError(f"{path}, row 1: the header is separated by {what}, not tabs; {fix}")
                hint = " (name it .tsv or pass --format tsv)" if delimiter == "\t" else ""
                raise DataError(
                    f"{path}, row 1: the header is separated by {what}, not commas; save the file as comma-separated "
                    f"CSV{hint} (e.g. pandas: pd.read_csv(path, sep=...).to_csv(new_path, index=False))"
                )
    return header


def _duplicate_columns(path: Path, header: str, delimiter: str) -> None:
    """A `DataError` for a header naming one column twice (pandas would silently rename the second to `name.1`)."""
    names = next(csv.reader([header], delimiter=delimiter), [])
    seen: dict[str, int] = {}
    for index, name in enumerate(names, start=1):
        key = name.strip().lstrip("\ufeff")
        if key and key in seen:
            raise DataError(f"{path}, row 1: column {key!r} appears twice (columns {seen[key]} and {index})")
        seen.setdefault(key, index)


def _read_delimited(path: Path, encoding: str | None, kind: str, allow_empty: bool) -> pd.DataFrame:
    """A CSV/TSV as a frame of strings, every cell kept as written ("NA", "null" stay text; empty stays "")."""
    raw = _read_bytes(path)
    encoding = _bom_encoding(raw, encoding)
    header = _sniff(path, raw[:65536], encoding, kind)  # the first 64 KiB: magic bytes and the header row
    delimiter = "\t" if kind == "tsv" else ","
    encodings = [encoding] if encoding else list(DEFAULT_ENCODINGS)
    for candidate in encodings:
        try:
            # dtype=str, keep_default_na=False: "NA", "null" and "007" stay exactly as written.
            frame = pd.read_csv(io.BytesIO(raw), sep=delimiter, dtype=str, keep_default_na=False, encoding=candidate)
            break
        except UnicodeError:  # also utf-16's "stream does not start with BOM"
            continue
        except pd.errors.EmptyDataError as error:
            raise DataError(f"{path}: the file is empty (expected a header row, then one row per item)") from error
        except pd.errors.ParserError as error:
            fields = _FIELDS.search(str(error))
            if fields:
                expected, line, seen = fields.groups()
                quote = "\"like, this\"" if kind == "csv" else "\"like\tthis\""
                raise DataError(
                    f"{path}, row {line}: {seen} fields where the header has {expected}; quote text cells that "
                    f"contain the delimiter ({quote})"
                ) from error
            raise DataError(f"{path}: not a readable {kind.upper()} ({one_line(str(error))})") from error
    else:
        raise DataError(f"{path}: cannot decode as {' or '.join(encodings)}; pass --encoding")
    _duplicate_columns(path, header, delimiter)
    if frame.empty and not allow_empty:
        raise DataError(f"{path}: no data rows, only the header row ({', '.join(map(str, frame.columns))})")
    frame.columns = [str(column) for column in frame.columns]
    return frame


def read_csv(path: str | Path, encoding: str | None = None, allow_empty: bool = False) -> pd.DataFrame:
    """A CSV as strings (empty cells stay ""): `read_table` for a file that must be CSV (e.g. a cost matrix).

    Args:
        path (`str` or `Path`):
            The CSV file, whatever its extension (`.gz`/`.bz2`/`.xz` decompressed).
        encoding (`str`, *optional*):
            Text encoding; None tries UTF-8 (with or without BOM), then CP932.
        allow_empty (`bool`, *optional*, defaults to `False`):
            Accept a header without rows.

    Returns:
        `pd.DataFrame`: Every cell a string as written ("NA" and "null" stay text).

    Raises:
        `DataError`: As `read_table`.
        `UsageError`: An unknown `encoding`.
    """
    path = check_readable_file(path)
    check_encoding(encoding)
    return _read_delimited(path, encoding, "csv", allow_empty)


def _parse_jsonl(path: Path, text: str) -> tuple[list[dict], list[int]]:
    """One JSON object per non-blank line, and each object's 1-based line number."""
    if not text.strip():
        raise DataError(f"{path}: the file is empty (expected one JSON object per line)")
    records, numbers = [], []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other characters splitlines() breaks on.
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {line_number}: not valid JSON ({error.msg})") from error
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {line_number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
        numbers.append(line_number)
    return records, numbers


def _parse_json(path: Path, text: str) -> tuple[list[dict], list[int], str]:
    """Records of a .json file: a list of objects, one key holding such a list, or columns of equal length.

    A file of one object per line (JSON Lines named .json) is read as JSON Lines, with line numbers.
    """
    if not text.strip():
        raise DataError(f"{path}: the file is empty (expected a JSON list of objects)")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        # "Extra data" = a complete first value followed by more: JSON Lines saved as .json.
        if error.msg == "Extra data":
            try:
                records, numbers = _parse_jsonl(path, text)
                return records, numbers, "line"
            # Not JSON Lines either: the JSON error, with its line, is the more useful one.
            except DataError:
                pass
        raise DataError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from error
    if isinstance(value, dict):
        lists = {key: item for key, item in value.items() if isinstance(item, list)}
        record_lists = [key for key, item in lists.items() if item and all(isinstance(x, dict) for x in item)]
        if len(record_lists) == 1 and len(value) <= 2:
            value = value[record_lists[0]]  # {"data": [...]} (load_dataset's `field`), maybe beside a "version"
        elif lists and len(lists) == len(value) and len({len(item) for item in lists.values()}) == 1:
            length = len(next(iter(lists.values())))
            value = [{key: item[index] for key, item in lists.items()} for index in range(length)]
        else:
            raise DataError(f"{path}: expected a list of objects (one per item), {{\"data\": [objects]}}, or columns "
                            "of equal length; found an object of another shape")
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a list of objects (one per item), got {type(value).__name__}")
    for index, record in enumerate(value, start=1):
        if not isinstance(record, dict):
            raise DataError(f"{path}, record {index}: expected a JSON object, got {type(record).__name__}")
    return value, list(range(1, len(value) + 1)), "record"


def _read_parquet(path: Path, allow_empty: bool) -> pd.DataFrame:
    """A Parquet file as pandas reads it (cells not yet strings); the PAR1 magic is checked first so a misnamed
    file gets a clear error."""
    if path.stat().st_size > READ_LIMITS.max_input_bytes:
        raise DataError(f"{path}: more than {READ_LIMITS.max_input_bytes:,} bytes, over the limit "
                        "(--max_input_bytes); split the file, or raise the limit")
    with path.open("rb") as handle:
        head = handle.read(4)
    if head != b"PAR1":
        raise DataError(f"{path}: not a Parquet file (it does not start with PAR1); name it by its format (.csv, "
                        ".jsonl, …) or pass --format")
    try:
        frame = pd.read_parquet(path)
    except ImportError as error:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from error
    except Exception as error:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError subclasses for damaged files
        raise DataError(f"{path}: not a readable Parquet file ({one_line(str(error))[:300]})") from error
    if frame.empty and not allow_empty:
        raise DataError(f"{path}: no data rows (columns: {', '.join(map(str, frame.columns)) or 'none'})")
    # pandas restores an index saved in the Parquet metadata; rows are numbered by position.
    return frame.reset_index(drop=True)


def table_from_frame(frame: pd.DataFrame, source: str, file_format: str = "records", unit: str = "record") -> Table:
    """A `Table` over an in-memory frame (a Hub dataset split): cells as strings, records numbered from 1.

    Args:
        frame (`pd.DataFrame`):
            The rows; converted with `cell_text`, the original is not modified.
        source (`str`):
            Name used in messages (e.g. `"user/name, split validation"`).
        file_format (`str`, *optional*, defaults to `"records"`):
            Stored as the table's `format`.
        unit (`str`, *optional*, defaults to `"record"`):
            Word used before a row's number in messages.

    Returns:
        `Table`
    """
    frame = frame.reset_index(drop=True)
    numbers = np.arange(1, len(frame) + 1)
    return Table(_as_strings(frame), source, file_format, numbers, unit, _nested_cells(frame, numbers))


# ------------------------------------------------------------------------------------------------- columns
def require_columns(frame: pd.DataFrame, path: str | Path, columns: Sequence[str],
                    flags: Mapping[str, str] | None = None) -> None:
    """A `DataError` naming the missing columns, the ones found, the closest match for each, and the mapping
    flag.

    Args:
        frame (`pd.DataFrame`):
            The table whose columns are checked.
        path (`str` or `Path`):
            The source named in the message.
        columns (`Sequence[str]`):
            Columns that must exist.
        flags (`Mapping[str, str]`, *optional*):
            Column -> the flag that maps another column to that role (e.g. `"--category_column"`), suggested
            in the message.

    Raises:
        `DataError`: When any of `columns` is missing. A near name is suggested: same name up to case and
        surrounding spaces first, else a close spelling.
    """
    missing = [column for column in columns if column not in frame.columns]
    if not missing:
        return
    found = [str(c) for c in frame.columns]
    hints = []
    for column in missing:
        near = [c for c in found if c.strip().lower() == column.lower()] or difflib.get_close_matches(
            column, found, n=1, cutoff=0.7
        )
        if near:
            hints.append(f"{near[0]!r} for {column!r}")
    hint = f"; did you mean {', '.join(hints)}?" if hints else ""
    mapped = sorted({flags[column] for column in missing if flags and column in flags})
    mapping = f" (name the column(s) to use with {', '.join(mapped)})" if mapped else ""
    raise DataError(
        f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} "
        f"(found: {', '.join(repr(c) for c in found) or 'none'}){hint}{mapping}"
    )


# ------------------------------------------------------------------------------------------------- labels
def pick_value(raw: str) -> int | None:
    """1 or 0 for a gate label (1/0, true/false, Pick/Decline, any case), None for an empty cell.

    Args:
        raw (`str`):
            The cell; surrounding whitespace is ignored, and "1.0"/"0.0" are accepted.

    Returns:
        `int | None`: 1 (Pick), 0 (Decline) or None (empty).

    Raises:
        `KeyError`: For any other spelling (callers turn it into a `DataError` naming the row).
    """
    value = str(raw).strip().lower()
    if not value:
        return None
    return PICK_VALUES[value]


def _locator(source: Table | str | Path) -> Callable[[int, str], str]:
    """`(row index, column) -> location text` for a `Table` (its own numbering) or a CSV path (spreadsheet rows)."""
    # prepare's concatenated table is no `tables.Table` but locates rows the same way.
    if isinstance(source, Table) or hasattr(source, "where"):
        return lambda index, column: source.where(index, column)
    return lambda index, column: where(source, index, column)


def parse_pick(values: Iterable[str], source: Table | str | Path, required: bool, column: str = PICK_COLUMN) -> list[int]:
    """Gate labels (1/0); an empty cell is -100 unless `required`, anything else unknown an error naming the row.

    Args:
        values (`Iterable[str]`):
            The pick column's cells, in row order.
        source (`Table`, `str` or `Path`):
            Where a row is: a `Table` (its own row numbers), or a CSV path (spreadsheet rows).
        required (`bool`):
            Whether an empty cell is an error (True) or an unlabelled row (False).
        column (`str`, *optional*, defaults to `PICK_COLUMN`):
            The column name used in messages.

    Returns:
        `list[int]`: 1, 0 or -100 per row.

    Raises:
        `DataError`: Naming the first row with an unknown spelling, or an empty cell when `required`.
    """
    locate = _locator(source)
    labels = []
    for row_index, raw in enumerate(values):
        try:
            value = pick_value(raw)
        except KeyError:
            raise DataError(
                f"{locate(row_index, column)}: {excerpt(raw)} is not a pick label (expected 1/0, true/false or Pick/Decline)"
            ) from None
        if value is None and required:
            raise DataError(f"{locate(row_index, column)}: empty pick label (expected 1/0, true/false or Pick/Decline)")
        labels.append(IGNORE_INDEX if value is None else value)
    return labels


# --------------------------------------------------------------------------------------------------- texts
def build_text(parts: Iterable[str], separator: str) -> str:
    """The model input of one row: each part NFKC-normalised and stripped, empty parts skipped, joined by
    `separator`.

    NFKC here, once, for training, prediction and prepare alike: v5's DeBERTa-v2 tokenizer drops SentencePiece's
    own NFKC step (see PITFALLS), and deduplication must compare what training will see.

    Args:
        parts (`Iterable[str]`):
            The row's text cells, in `--text_columns` order.
        separator (`str`):
            Placed between non-empty parts: the tokenizer's (`text_encoding.text_separator`) in training and
            prediction, `PLAIN_SEPARATOR` elsewhere.

    Returns:
        `str`: The text; "" when every part is empty.
    """
    kept = (unicodedata.normalize("NFKC", part).strip() for part in parts)
    return separator.join(part for part in kept if part)


def build_texts(table: Table, text_columns: Sequence[str], separator: str,
                flags: Mapping[str, str] | None = None) -> list[str]:
    """`build_text` over every row of `table`.

    Args:
        table (`Table`):
            The rows (any object with `require_columns`, `frame` and `where`, such as prepare's concatenated
            table).
        text_columns (`Sequence[str]`):
            Columns joined, in order.
        separator (`str`):
            Placed between non-empty parts.
        flags (`Mapping[str, str]`, *optional*):
            Column -> flag for the missing-column message; None names `--text_columns` for every column.

    Returns:
        `list[str]`: One text per row.

    Raises:
        `DataError`: A missing column, or an empty text (naming the first such row, and how many more there
        are).
    """
    table.require_columns(list(text_columns), flags or {column: "--text_columns" for column in text_columns})
    if hasattr(table, "check_flat"):  # prepare's concatenated table has no nested-cell record
        table.check_flat(list(text_columns))
    # itertuples(name=None) yields plain tuples: much faster than iterrows over 100k+ rows.
    texts = [build_text(parts, separator) for parts in table.frame[list(text_columns)].itertuples(index=False, name=None)]
    empty = [index for index, text in enumerate(texts) if not text]
    if empty:
        more = f" (and {len(empty) - 1} more row(s))" if len(empty) > 1 else ""
        raise DataError(f"{table.where(empty[0], '/'.join(text_columns))}: empty text{more}")
    return texts


# ------------------------------------------------------------------------------------------ spreadsheet safety
# A cell starting with one of these is run as a formula by Excel, LibreOffice and Google Sheets (OWASP "CSV
# Injection"); a leading single quote makes it text, and spreadsheets do not show that quote.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def formula_safe(cell: str) -> str:
    """`cell` with a `'` in front when a spreadsheet would read it as a formula; a plain number (`-0.5`, `+3`,
    `-1e-3`) is left as it is, and so is every other cell.

    A cell already starting with quotes before a trigger (`'=x`) gets one more, so `unguard_formula` gives back
    exactly the original text.
    """
    if not cell or _PLAIN_NUMBER.fullmatch(cell):
        return cell
    return "'" + cell if cell.lstrip("'")[:1] in FORMULA_TRIGGERS and cell.lstrip("'") else cell


def unguard_formula(cell: str) -> str:
    """The text `formula_safe` was given: one leading `'` removed where `formula_safe` added it."""
    if cell.startswith("'") and formula_safe(cell[1:]) != cell[1:]:
        return cell[1:]
    return cell


def guard_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` for a CSV people open in a spreadsheet: `formula_safe` over every text cell and column
    name. Numeric columns (probabilities, 0/1 predictions) are not touched."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column].dtype):
            frame[column] = [formula_safe(value) if isinstance(value, str) else value for value in frame[column]]
    frame.columns = [formula_safe(str(column)) for column in frame.columns]
    return frame
