"""Data files (any format of `multitask.io.tables`) or Hub dataset splits → validated `datasets.Dataset`s with
`gate_labels` / `category_labels`.

Training rows come from a Task1 table (a pick column), a Task2 table (a category column) and/or one training
table carrying either or both per row (`--train_file`, a Hub dataset's train split, prepare's output); a text
found in several of them becomes one row with both labels. The column names are arguments (`pick_column`,
`category_column`, `text_columns`), stored in the model config so prediction reads the same columns.

Every bad input raises `DataError` naming the file, the row as the user sees it (spreadsheet row for CSV/TSV,
line for JSON Lines, record for JSON/Parquet/Hub) and the column. Rows dropped on purpose (exact duplicates,
unlabelled rows, samples) are counted in the `report` that the run log prints.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from datasets import Dataset

from multitask.data.splits import strata, stratified_sample, stratified_split
from multitask.data.text_encoding import EncodingSettings, encode_documents
from multitask.errors import excerpt
from multitask.io.tables import DataError, Table, build_texts, parse_pick, read_table
from multitask.labels import CATEGORY_COLUMN, IGNORE_INDEX, PICK_COLUMN, is_missing_label, label_problem

logger = logging.getLogger(__name__)

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
LABEL_KEYS = ("gate_labels", "category_labels")
DataSource = str | Path | Table  # a file (read with `multitask.io.tables.read_table`) or a table already read


def open_table(source: DataSource, file_format: str | None = None, encoding: str | None = None,
               flag: str | None = None) -> Table:
    """`source` itself when it is a `Table` (e.g. a Hub dataset split), else the file read into one."""
    return source if isinstance(source, Table) else read_table(source, file_format, encoding, flag=flag)


def _column_flags(text_columns: Sequence[str], pick_column: str, category_column: str) -> dict[str, str]:
    """Column -> the flag that names it, so a missing-column error can say which flag to change."""
    flags = {column: "--text_columns" for column in text_columns}
    flags.update({pick_column: "--pick_column", category_column: "--category_column"})
    return flags


def parse_categories(
    values: Sequence[str] | pd.Series,
    source: Table | str | Path,
    required: bool,
    label2id: dict[str, int] | None,
    unknown: Counter | None = None,
    column: str = CATEGORY_COLUMN,
) -> list[str | int]:
    """Category names (when `label2id` is None) or ids.

    A name outside `label2id` is an error naming the row, unless an `unknown` counter is given: then the
    row gets no category label (-100) and the name is counted, for the caller to report. A cell spelling a
    missing value (`NaN`, `None`, `<NA>`, any case: what `astype(str)` writes for one) is empty, never a class.
    Building the label map (`label2id` None), a name with a line break or another control character is refused.
    """
    # row i + 2: 1-based, plus the header line, as a spreadsheet numbers it.
    locate = source.where if isinstance(source, Table) else lambda i, c: f"{source}, row {i + 2}, column '{c}'"
    parsed: list[str | int] = []
    for row_index, raw in enumerate(values):
        name = raw.strip()
        spelled_missing = is_missing_label(name)
        if spelled_missing:
            name = ""
        if not name:
            if required:
                read_as = f" ({raw.strip()!r} is read as a missing value)" if spelled_missing else ""
                raise DataError(f"{locate(row_index, column)}: empty category{read_as}")
            # Names keep "" (the merge compares strings); ids need -100, which the losses ignore.
            parsed.append(IGNORE_INDEX if label2id is not None else "")
        elif label2id is None:
            problem = label_problem(name)
            if problem:
                raise DataError(f"{locate(row_index, column)}: category {excerpt(name)} {problem}")
            parsed.append(name)
        elif name not in label2id and unknown is not None:
            unknown[name] += 1
            parsed.append(IGNORE_INDEX)
        elif name not in label2id:
            raise DataError(
                f"{locate(row_index, column)}: category {excerpt(name)} never appears in training "
                f"(known: {len(label2id)} categories)"
            )
        else:
            parsed.append(label2id[name])
    return parsed


@dataclass
class LabeledFile:
    """One evaluation/test table: its original rows (kept for the output) and the parsed labels."""

    path: Path
    frame: pd.DataFrame
    dataset: Dataset
    unknown_categories: dict[str, int] = field(default_factory=dict)  # only with allow_unknown_labels
    table: Table | None = None  # where each row came from (row numbers as the user sees them)

    def select(self, positions: Sequence[int] | np.ndarray) -> LabeledFile:
        """The rows at `positions` (e.g. a `--max_eval_samples` sample), in that order."""
        positions = np.asarray(positions, dtype=np.int64)
        return LabeledFile(self.path, self.frame.iloc[positions].reset_index(drop=True), self.dataset.select(positions),
                           self.unknown_categories, self.table.take(positions) if self.table is not None else None)


@dataclass
class TrainingData:
    """What `load_training_data` returns. `train` and `validation` have `text`, `gate_labels`, `category_labels`
    (`IGNORE_INDEX` where a row lacks that label); `train` also has `row_id` = its position (cartography's key).
    `category_labels` are the category names sorted, so id i is `category_labels[i]`; `has_gate` is whether any
    source had a pick column. `report` holds the counts the run log prints.
    """

    train: Dataset
    validation: Dataset
    validation_frame: pd.DataFrame  # the validation rows as a table (the file's own columns, when given)
    tests: dict[str, LabeledFile]
    category_labels: list[str]
    has_gate: bool
    report: dict[str, Any] = field(default_factory=dict)
    pick_column: str = PICK_COLUMN
    category_column: str = CATEGORY_COLUMN
    report_rows: LabeledFile | None = None  # validation rows kept out of every choice (--report_split)

    @property
    def has_category(self) -> bool:
        """Whether any training row has a category (else the model gets no category head)."""
        return bool(self.category_labels)


@dataclass
class _Labels:
    """One task's labels from one table: `rows` are the table rows that carry them."""

    name: str  # report prefix: task1, task2, train_gate, train_category
    task: str  # "gate" or "category"
    table: Table
    rows: np.ndarray
    texts: list[str]
    labels: list


def _merge_training_rows(sources: list[_Labels], report: dict[str, Any]) -> tuple[list[str], list[int], list[str]]:
    """One row per distinct text: a text in several sources carries every label it has.

    Exact duplicates inside a source are dropped (counted); duplicates with different labels keep the first
    label and are listed in the report, since they are label noise the user should see.
    """
    texts: list[str] = []
    gate: list[int] = []
    category: list[str] = []
    index_of: dict[str, int] = {}
    conflicts: list[str] = []
    for source in sources:
        table = source.table
        duplicates = 0
        seen_here: dict[str, int] = {}
        for position, (row, text, label) in enumerate(zip(source.rows, source.texts, source.labels)):
            if text in seen_here:
                duplicates += 1
                first = seen_here[text]
                if source.labels[first] != label:
                    conflicts.append(
                        f"{table.where(row)} repeats {table.unit} {table.numbers[source.rows[first]]} with label "
                        f"{label!r} != {source.labels[first]!r} (kept the first)"
                    )
                continue
            seen_here[text] = position
            if text not in index_of:
                index_of[text] = len(texts)
                texts.append(text)
                gate.append(IGNORE_INDEX)
                category.append("")
            merged = index_of[text]
            if source.task == "gate":
                # `continue`, not overwrite: the first table's label is kept, as the report says.
                if gate[merged] != IGNORE_INDEX and gate[merged] != label:
                    conflicts.append(f"{table.where(row)}: pick {label} for a text another table labels "
                                     f"{gate[merged]} (kept the first)")
                    continue
                gate[merged] = label
                if label == 0 and category[merged]:
                    conflicts.append(f"{table.where(row)}: Decline for a text with category {category[merged]!r}")
            else:
                if category[merged] and category[merged] != label:
                    conflicts.append(f"{table.where(row)}: category {label!r} for a text another table labels "
                                     f"{category[merged]!r} (kept the first)")
                    continue
                category[merged] = label
                if gate[merged] == 0:
                    conflicts.append(f"{table.where(row)}: category {label!r} for a text Declined in task1")
        report[f"{source.name}_rows"] = len(source.texts)
        report[f"{source.name}_duplicates_dropped"] = duplicates
    report["label_conflicts"] = conflicts
    report["train_rows_merged"] = len(texts)
    report["rows_in_both_files"] = sum(1 for g, c in zip(gate, category) if g != IGNORE_INDEX and c)
    return texts, gate, category


def _stratified_split(
    gate: list[int], category: list[int], validation_split: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded split stratified by category (or gate label for rows without one).

    `multitask.data.splits.stratified_split`, as prepare splits: categories with a single row stay in training;
    when there are too few rows per category for the requested size, the split is stratified by the gate label,
    then plain. Validation always gets a Pick and a Decline row when the data has two of each (the gate
    thresholds are tuned there).
    """
    if len(gate) - math.ceil(len(gate) * validation_split) < 1:  # sklearn rounds the held-out share up
        raise DataError(f"{len(gate)} distinct training row(s): too few to hold out a {validation_split:.0%} "
                        "validation split; give a --validation_file (or more rows)")
    train_idx, val_idx, _ = stratified_split(strata(gate, category), validation_split, seed, fallback=gate, cover=gate)
    return train_idx, val_idx


def load_labeled_file(
    path: DataSource,
    text_columns: list[str],
    separator: str,
    label2id: dict[str, int],
    with_gate: bool,
    encoding: str | None = None,
    require_labels: bool = False,
    allow_unknown_labels: bool = False,
    *,
    file_format: str | None = None,
    pick_column: str = PICK_COLUMN,
    category_column: str = CATEGORY_COLUMN,
    flag: str | None = None,
) -> LabeledFile:
    """A validation/test/prediction table (a file in any supported format, or a `Table`): labels optional per row.

    A gold category unseen in training is an error, or with `allow_unknown_labels` an unscored row
    counted in `unknown_categories`.
    """
    table = open_table(path, file_format, encoding, flag)
    texts = build_texts(table, text_columns, separator, _column_flags(text_columns, pick_column, category_column))
    gate = [IGNORE_INDEX] * len(table)
    category: list = [IGNORE_INDEX] * len(table)
    # Without a gate head no gate score exists to compare a pick label with; the column is then ignored.
    if pick_column in table.columns and with_gate:
        gate = parse_pick(table.column(pick_column), table, required=False, column=pick_column)
    unknown: Counter = Counter()
    if category_column in table.columns and label2id:
        category = parse_categories(
            table.column(category_column), table, required=False, label2id=label2id,
            unknown=unknown if allow_unknown_labels else None, column=category_column,
        )
    if require_labels and all(g == IGNORE_INDEX for g in gate) and all(c == IGNORE_INDEX for c in category):
        raise DataError(f"{table.source}: no '{pick_column}' or '{category_column}' label in any row "
                        f"(found columns: {', '.join(map(repr, table.columns))}; name yours with --pick_column / "
                        "--category_column)")
    dataset = Dataset.from_dict({"text": texts, "gate_labels": gate, "category_labels": category})
    return LabeledFile(path=Path(table.source), frame=table.frame, dataset=dataset,
                       unknown_categories=dict(unknown), table=table)


def _training_sources(task1: Table | None, task2: Table | None, train: Table | None, text_columns: list[str],
                      separator: str, pick_column: str, category_column: str,
                      report: dict[str, Any]) -> list[_Labels]:
    """The labelled rows each training table contributes, per task."""
    flags = _column_flags(text_columns, pick_column, category_column)
    sources = []
    if task1 is not None:
        task1.require_columns([pick_column], flags)
        texts = build_texts(task1, text_columns, separator, flags)
        labels = parse_pick(task1.column(pick_column), task1, required=True, column=pick_column)
        sources.append(_Labels("task1", "gate", task1, np.arange(len(task1)), texts, labels))
    if task2 is not None:
        task2.require_columns([category_column], flags)
        texts = build_texts(task2, text_columns, separator, flags)
        labels = parse_categories(task2.column(category_column), task2, required=True, label2id=None,
                                  column=category_column)
        sources.append(_Labels("task2", "category", task2, np.arange(len(task2)), texts, labels))
    if train is not None:
        if pick_column not in train.columns and category_column not in train.columns:
            # Either label column is enough; with neither, the error names both (and the flags to map them).
            train.require_columns([category_column, pick_column], flags)
        texts = build_texts(train, text_columns, separator, flags)
        labelled = np.zeros(len(train), dtype=bool)
        if pick_column in train.columns:
            picks = np.asarray(parse_pick(train.column(pick_column), train, required=False, column=pick_column))
            rows = np.flatnonzero(picks != IGNORE_INDEX)
            labelled[rows] = True
            if len(rows):
                sources.append(_Labels("train_gate", "gate", train, rows, [texts[i] for i in rows],
                                       picks[rows].tolist()))
        if category_column in train.columns:
            names = parse_categories(train.column(category_column), train, required=False, label2id=None,
                                     column=category_column)
            rows = np.flatnonzero([bool(name) for name in names])
            labelled[rows] = True
            if len(rows):
                sources.append(_Labels("train_category", "category", train, rows, [texts[i] for i in rows],
                                       [names[i] for i in rows]))
        report["train_file_unlabelled_rows_dropped"] = int((~labelled).sum())
        if labelled.sum() == 0:
            raise DataError(f"{train.source}: no row has a '{pick_column}' or '{category_column}' label")
    return sources


def _sample(size: int | None, gate: list[int], category: list[int], seed: int, what: str,
            report: dict[str, Any]) -> np.ndarray | None:
    """Positions of a stratified, seeded sample of `size` rows (None: keep every row); recorded in `report`."""
    if size is None or size >= len(gate):
        return None
    positions, info = stratified_sample(strata(gate, category), size, seed, fallback=gate)
    report[f"{what}_sample"] = {"rows_before": len(gate), "rows_after": int(len(positions)), "seed": seed,
                                "stratified": info["stratified"], "stratified_by": info.get("stratified_by")}
    logger.info("%s: a stratified sample of %d of %d rows (seed %d)", what, len(positions), len(gate), seed)
    return positions


def load_training_data(
    task1_file: DataSource | None,
    task2_file: DataSource | None,
    validation_file: DataSource | None = None,
    test_files: Sequence[DataSource] | Mapping[str, DataSource] | None = None,
    text_columns: list[str] | None = None,
    separator: str = " [SEP] ",
    validation_split: float = 0.1,
    seed: int = 42,
    encoding: str | None = None,
    *,
    train_file: DataSource | None = None,
    pick_column: str = PICK_COLUMN,
    category_column: str = CATEGORY_COLUMN,
    file_format: str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    report_split: float = 0.0,
) -> TrainingData:
    """Load, validate and merge the training tables; build the category label map; split validation; sample.

    Each source is a file (any format `multitask.io.tables` reads) or a `Table` (a Hub dataset split). `test_files`
    may be a mapping name → source (Hub splits); files are named by their stem. `report_split` > 0 moves that
    share of the validation rows (stratified, seeded, after `max_eval_samples`) to `report_rows`: no choice reads
    them, so their figures show what the choices on the rest flatter.
    """
    text_columns = list(text_columns or ["title", "body"])
    if task1_file is None and task2_file is None and train_file is None:
        raise DataError("no training data: give --train_file, or --task1_file and/or --task2_file (or --dataset_repo)")
    report: dict[str, Any] = {}
    task1 = open_table(task1_file, file_format, encoding) if task1_file is not None else None
    task2 = open_table(task2_file, file_format, encoding) if task2_file is not None else None
    train_table = open_table(train_file, file_format, encoding) if train_file is not None else None
    sources = _training_sources(task1, task2, train_table, text_columns, separator, pick_column, category_column,
                                report)

    texts, gate, category_names = _merge_training_rows(sources, report)
    # Sorted names: the same data always gives the same label ids, whatever the row order.
    category_labels = sorted({name for name in category_names if name})
    label2id = {name: index for index, name in enumerate(category_labels)}
    category = [label2id[name] if name else IGNORE_INDEX for name in category_names]
    has_gate = any(source.task == "gate" for source in sources)
    columns = {"pick_column": pick_column, "category_column": category_column}

    if validation_file is not None:
        train = Dataset.from_dict({"text": texts, "gate_labels": gate, "category_labels": category})
        labeled = load_labeled_file(validation_file, text_columns, separator, label2id, has_gate, encoding,
                                    require_labels=True, file_format=file_format, **columns)
        report["validation"] = labeled.table.source if labeled.table is not None else str(validation_file)
    else:
        train_idx, val_idx = _stratified_split(gate, category, validation_split, seed)
        full = Dataset.from_dict({"text": texts, "gate_labels": gate, "category_labels": category})
        train = full.select(train_idx)
        frame = pd.DataFrame({
            "text": [texts[i] for i in val_idx],
            # Strings, as a read file's cells are: validation predictions show "1"/"0"/"" either way.
            pick_column: [str(gate[i]) if gate[i] != IGNORE_INDEX else "" for i in val_idx],
            category_column: [category_names[i] for i in val_idx],
        })
        labeled = LabeledFile(Path("validation"), frame, full.select(val_idx))
        report["validation"] = f"stratified {validation_split:.0%} split of training (seed {seed})"
    # Sampled after the split: --max_eval_samples never changes which rows train.
    positions = _sample(max_eval_samples, list(labeled.dataset["gate_labels"]),
                        list(labeled.dataset["category_labels"]), seed, "validation", report)
    if positions is not None:
        labeled = labeled.select(positions)
    report_rows = None
    if report_split > 0:
        labeled, report_rows = _hold_out_report_rows(labeled, report_split, seed)
        report["report_rows"] = len(report_rows.dataset)
    validation, validation_frame = labeled.dataset, labeled.frame

    tests: dict[str, LabeledFile] = {}
    named = test_files.items() if isinstance(test_files, Mapping) else [(None, source) for source in test_files or []]
    for name, test_file in named:
        test = load_labeled_file(test_file, text_columns, separator, label2id, has_gate, encoding,
                                 file_format=file_format, **columns)
        name = name or test.path.stem
        if name in tests:
            raise DataError(f"{test.path}: two test files share the name {name!r}")
        tests[name] = test

    # After the validation split too: the same validation rows whatever --max_train_samples is.
    positions = _sample(max_train_samples, list(train["gate_labels"]), list(train["category_labels"]), seed,
                        "train", report)
    if positions is not None:
        train = train.select(positions)
    train = train.add_column("row_id", list(range(len(train))))
    report.update(
        train_rows=len(train),
        train_rows_by_labels=rows_by_labels(train["gate_labels"], train["category_labels"]),
        validation_rows=len(validation),
        num_categories=len(category_labels),
        category_counts=dict(Counter(category_names[i] for i in range(len(texts)) if category_names[i])),
        columns={"text_columns": text_columns, **columns},
    )
    return TrainingData(train, validation, validation_frame, tests, category_labels, has_gate, report,
                        pick_column=pick_column, category_column=category_column, report_rows=report_rows)


def _hold_out_report_rows(labeled: LabeledFile, share: float, seed: int) -> tuple[LabeledFile, LabeledFile]:
    """Split validation into the rows choices are made on and the report rows (stratified like `_stratified_split`;
    the report rows get a Pick and a Decline row when validation has two of each)."""
    gate, category = list(labeled.dataset["gate_labels"]), list(labeled.dataset["category_labels"])
    if len(gate) - math.ceil(len(gate) * share) < 2:
        raise DataError(f"{len(gate)} validation row(s): too few to keep {share:.0%} of them for --report_split "
                        "and still choose on the rest; give more validation rows or a smaller --report_split")
    keep, held, _ = stratified_split(strata(gate, category), share, seed, fallback=gate, cover=gate)
    return labeled.select(keep), labeled.select(held)


def rows_by_labels(gate_labels: list[int], category_labels: list[int]) -> dict[str, int]:
    """Training rows counted by the labels they carry: `both`, `gate_only_pick` (a Pick without a category: the
    rows a flat (N+1)-way classifier cannot use), `gate_only_decline` and `category_only`."""
    counts = Counter()
    for gate, category in zip(gate_labels, category_labels):
        has_category = category != IGNORE_INDEX
        if gate != IGNORE_INDEX and has_category:
            counts["both"] += 1
        elif gate == 1:
            counts["gate_only_pick"] += 1
        elif gate == 0:
            counts["gate_only_decline"] += 1
        elif has_category:
            counts["category_only"] += 1
    return {name: counts[name] for name in ("both", "gate_only_pick", "gate_only_decline", "category_only")}


VALIDATION_SPLIT_NAMES = ("validation", "valid", "dev", "val")


def dataset_table(dataset: Dataset, source: str) -> Table:
    """A `datasets.Dataset` (a Hub split) as a `Table`: class-label columns as their names, records numbered
    from 1."""
    from datasets import ClassLabel

    from multitask.io.tables import table_from_frame

    frame = dataset.to_pandas()
    for name, feature in dataset.features.items():
        if isinstance(feature, ClassLabel):
            # -1 is a ClassLabel's "no label" and int2str raises on it; "" is what unlabelled means here.
            frame[name] = [feature.int2str(int(value)) if value is not None and value >= 0 else ""
                           for value in frame[name].tolist()]
    return table_from_frame(frame, source)


@dataclass
class HubData:
    """The tables of a Hub dataset's splits, and what was loaded (for run_config.json and the model card)."""

    train: Table
    validation: Table | None
    tests: dict[str, Table]
    record: dict[str, Any]


def load_hub_dataset(
    repo_id: str,
    config_name: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | None = None,
    train_split: str = "train",
    validation_split: str | None = None,
    test_splits: Sequence[str] = (),
) -> HubData:
    """Load a Hub dataset with `datasets.load_dataset` and pick its training, validation and test splits.

    Validation: `validation_split`, else the first of validation/valid/dev/val the dataset has (else None: the
    caller holds out a split of train). Tests: `test_splits`, else "test" when present. A split the dataset lacks
    is a `UsageError` listing the ones it has.
    """
    from multitask.errors import UsageError
    from multitask.io.hub import load_dataset_splits

    splits = load_dataset_splits(repo_id, config_name, revision, token, cache_dir)
    available = ", ".join(splits) or "none"

    def split(name: str, flag: str) -> Table:
        if name not in splits:
            raise UsageError(f"{flag} {name}: dataset repo '{repo_id}' has no split {name!r} (splits: {available})")
        return dataset_table(splits[name], f"{repo_id} split '{name}'")

    train = split(train_split, "--train_split_name")
    if validation_split is None:
        # `!= train_split`: training on a split called "dev" must not also validate on it.
        validation_split = next((name for name in VALIDATION_SPLIT_NAMES if name in splits and name != train_split),
                                None)
    validation = split(validation_split, "--validation_split_name") if validation_split else None
    if not test_splits:
        test_splits = [name for name in ("test",) if name in splits and name not in (train_split, validation_split)]
    tests = {name: split(name, "--test_split_names") for name in test_splits}
    used = [train_split, *([validation_split] if validation_split else []), *tests]
    record = {
        "dataset_repo": repo_id, "config_name": config_name, "revision": revision,
        # The fingerprint changes with the files loaded: runs on different data revisions can be told apart.
        "splits": {name: {"rows": splits[name].num_rows, "fingerprint": splits[name]._fingerprint} for name in used},
        "roles": {"train": train_split, "validation": validation_split, "test": list(tests)},
    }
    logger.info("dataset %s%s: splits %s; training on %r, validating on %s, testing on %s", repo_id,
                f" ({config_name})" if config_name else "", available, train_split,
                repr(validation_split) if validation_split else "a split of it", list(tests) or "none")
    return HubData(train, validation, tests, record)


def _source_name(source: DataSource | None) -> str | None:
    """How error messages name a source: a `Table`'s source, a path as given, or None."""
    return source.source if isinstance(source, Table) else (str(source) if source is not None else None)


def check_trainable(data: TrainingData, task1_file: DataSource | None, task2_file: DataSource | None,
                    validation_file: DataSource | None, validation_split: float,
                    train_file: DataSource | None = None) -> None:
    """Refuse, before any training, data that would train nothing or tune on nothing.

    Each head needs labelled training rows of at least two classes; validation needs Pick and Decline rows
    (the gate thresholds are tuned there) and, with a category head, rows with a category.
    """
    task1_name, task2_name = _source_name(task1_file), _source_name(task2_file)
    train_name, validation_name = _source_name(train_file), _source_name(validation_file)
    files = [Path(_source_name(source)).resolve() for source in (task1_file, task2_file, train_file)
             if source is not None and not isinstance(source, Table)]
    if validation_file is not None and not isinstance(validation_file, Table) and \
            Path(validation_name).resolve() in files:
        logger.warning("--validation_file %s is also a training file: validation metrics, the best checkpoint and "
                       "the gate thresholds are then measured on training rows and will look better than they are",
                       validation_name)
    pick, category = data.pick_column, data.category_column
    validation = validation_name or f"the {validation_split:.0%} validation split of the training rows"
    fix = ("give a --validation_file with both" if validation_name
           else "give a --validation_file, or a larger --validation_split")
    if len(data.train) == 0:
        raise DataError(f"no training row is left after holding out {validation}; add rows or give a --validation_file")
    if data.has_gate:
        gate = label_counts(list(data.train["gate_labels"]), 2)
        if min(gate) == 0:
            kind = "Pick (1)" if gate[1] else "Decline (0)" if gate[0] else "no"
            leave_out = "--task1_file" if task1_name else f"the '{pick}' column"
            raise DataError(
                f"{task1_name or train_name}, column '{pick}': every training row is {kind}; the gate head needs Pick "
                f"and Decline rows to learn from (train only the category head by leaving out {leave_out})"
            )
        val_gate = label_counts(list(data.validation["gate_labels"]), 2)
        if min(val_gate) == 0:
            raise DataError(
                f"{validation}, column '{pick}': {val_gate[1]} Pick and {val_gate[0]} Decline row(s); the gate "
                f"thresholds are tuned on validation and need both; {fix}"
            )
    if data.has_category:
        if len(data.category_labels) < 2:
            raise DataError(
                f"{task2_name or train_name}, column '{category}': only one category ({data.category_labels[0]!r}); "
                "a category head needs at least two"
            )
        if not any(label != IGNORE_INDEX for label in data.train["category_labels"]):
            raise DataError(f"no training row with a category is left after holding out {validation}")
        if not any(label != IGNORE_INDEX for label in data.validation["category_labels"]):
            raise DataError(
                f"{validation}, column '{category}': no row has a category, so the category head cannot be evaluated "
                "or its best checkpoint chosen; add categories to the validation rows"
            )


def label_counts(labels: list[int] | np.ndarray, num_classes: int) -> list[int]:
    """Per-class counts of a label column, -100 ignored."""
    labels = np.asarray(labels)
    return np.bincount(labels[labels != IGNORE_INDEX], minlength=num_classes).tolist()


def tokenize(dataset: Dataset, tokenizer, max_length: int, truncation: str = "head",
             head_tokens: int | None = None, num_proc: int | None = None, long_text: str = "truncate",
             chunk_stride: int | None = None, max_chunks: int | None = None) -> Dataset:
    """Add input_ids/attention_mask (unpadded), a `length` column for length-grouped batching, and `document`
    (the row's index in `dataset`).

    Inputs come from `multitask.data.text_encoding.encode_documents`, the function prediction uses: long texts are cut
    (`truncation` head, tail or head_tail), or with `long_text="chunk"` each row becomes one row per window
    (every other column copied, `document` telling them apart), so the result may have more rows than `dataset`.
    `num_proc` worker processes tokenize large sets (`datasets.Dataset.map`).
    """
    settings = EncodingSettings(max_length, truncation, head_tokens, long_text, chunk_stride, max_chunks)
    chunked = long_text == "chunk"

    def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        encoded = encode_documents(tokenizer, batch["text"], settings)
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        if chunked:  # windows of one row carry its columns; the batch's own rows are replaced
            encoded.update({column: [values[i] for i in encoded["document"]] for column, values in batch.items()})
        # encode_documents numbers documents within the batch; `indices` turns those into dataset positions.
        encoded["document"] = [indices[i] for i in encoded["document"]]
        return encoded

    # Worker processes cost start-up time: a set with fewer than two rows per worker is tokenized in one process.
    num_proc = num_proc if num_proc and num_proc > 1 and len(dataset) >= 2 * num_proc else None
    return dataset.map(encode, batched=True, with_indices=True, num_proc=num_proc, desc="Tokenizing",
                       remove_columns=dataset.column_names if chunked else None)


class MultitaskCollator:
    """Pads model inputs dynamically and stacks the label columns; every other column is left out."""

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None, keep_keys: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.pad_to_multiple_of = pad_to_multiple_of
        self.keep_keys = keep_keys

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        # Only model inputs go to pad(): it would try to tensorize `text`, `length`, `document` as well.
        inputs = [{key: f[key] for key in MODEL_INPUT_KEYS if key in f} for f in features]
        batch = dict(
            self.tokenizer.pad(inputs, padding=True, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt")
        )
        for key in LABEL_KEYS + self.keep_keys:
            if key in features[0]:
                batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)
        return batch
