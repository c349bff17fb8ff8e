"""CSV (local or Hub) → validated `datasets.Dataset`s with `gate_labels` / `category_labels`.

Every bad input raises `DataError` naming the file, the row as a spreadsheet shows it (header = row 1) and the
column. Rows dropped on purpose (exact duplicates) are counted in the `report` that the run log prints.
"""

from __future__ import annotations

import logging
import math
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from sklearn.model_selection import train_test_split

from .labels import CATEGORY_COLUMN, IGNORE_INDEX, PICK_COLUMN
from .tables import DataError, parse_pick, read_csv, require_columns, where
from .text_encoding import encode_texts

logger = logging.getLogger(__name__)

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
LABEL_KEYS = ("gate_labels", "category_labels")


def build_texts(frame: pd.DataFrame, path: str | Path, text_columns: list[str], separator: str) -> list[str]:
    """Join the text columns (empty parts skipped) and NFKC-normalise; an empty result is an error.

    NFKC here, once: v5's DeBERTa-v2 tokenizer drops SentencePiece's own NFKC step (see PITFALLS).
    """
    require_columns(frame, path, text_columns)
    texts = []
    for row_index, parts in enumerate(frame[text_columns].itertuples(index=False, name=None)):
        kept = [unicodedata.normalize("NFKC", part).strip() for part in parts]
        text = separator.join(part for part in kept if part)
        if not text:
            raise DataError(f"{where(path, row_index, '/'.join(text_columns))}: empty text")
        texts.append(text)
    return texts


def parse_categories(
    values: pd.Series,
    path: str | Path,
    required: bool,
    label2id: dict[str, int] | None,
    unknown: Counter | None = None,
) -> list[str | int]:
    """Category names (when `label2id` is None) or ids.

    A name outside `label2id` is an error naming the row, unless an `unknown` counter is given: then the
    row gets no category label (-100) and the name is counted, for the caller to report.
    """
    parsed: list[str | int] = []
    for row_index, raw in enumerate(values):
        name = raw.strip()
        if not name:
            if required:
                raise DataError(f"{where(path, row_index, CATEGORY_COLUMN)}: empty category")
            parsed.append(IGNORE_INDEX if label2id is not None else "")
        elif label2id is None:
            parsed.append(name)
        elif name not in label2id and unknown is not None:
            unknown[name] += 1
            parsed.append(IGNORE_INDEX)
        elif name not in label2id:
            raise DataError(
                f"{where(path, row_index, CATEGORY_COLUMN)}: category {name!r} never appears in training "
                f"(known: {len(label2id)} categories)"
            )
        else:
            parsed.append(label2id[name])
    return parsed


@dataclass
class LabeledFile:
    """One evaluation/test CSV: its original rows (kept for the output) and the parsed labels."""

    path: Path
    frame: pd.DataFrame
    dataset: Dataset
    unknown_categories: dict[str, int] = field(default_factory=dict)  # only with allow_unknown_labels


@dataclass
class TrainingData:
    train: Dataset
    validation: Dataset
    validation_frame: pd.DataFrame  # the validation rows as a table (the file's own columns, when given)
    tests: dict[str, LabeledFile]
    category_labels: list[str]
    has_gate: bool
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def has_category(self) -> bool:
        return bool(self.category_labels)


def _merge_training_rows(
    task1: tuple[Path, list[str], list[int]] | None,
    task2: tuple[Path, list[str], list[str]] | None,
    report: dict[str, Any],
) -> tuple[list[str], list[int], list[str]]:
    """One row per distinct text: a text in both files carries both labels.

    Exact duplicates inside a file are dropped (counted); duplicates with different labels keep the first
    label and are listed in the report, since they are label noise the user should see.
    """
    texts: list[str] = []
    gate: list[int] = []
    category: list[str] = []
    index_of: dict[str, int] = {}
    conflicts: list[str] = []
    for name, source in (("task1", task1), ("task2", task2)):
        if source is None:
            continue
        path, file_texts, file_labels = source
        duplicates = 0
        seen_here: dict[str, int] = {}
        for row_index, (text, label) in enumerate(zip(file_texts, file_labels)):
            if text in seen_here:
                duplicates += 1
                first = seen_here[text]
                if file_labels[first] != label:
                    conflicts.append(
                        f"{where(path, row_index)} repeats row {first + 2} with label {label!r} != "
                        f"{file_labels[first]!r} (kept the first)"
                    )
                continue
            seen_here[text] = row_index
            if text not in index_of:
                index_of[text] = len(texts)
                texts.append(text)
                gate.append(IGNORE_INDEX)
                category.append("")
            position = index_of[text]
            if name == "task1":
                gate[position] = label
            else:
                category[position] = label
                if gate[position] == 0:
                    conflicts.append(f"{where(path, row_index)}: category {label!r} for a text Declined in task1")
        report[f"{name}_rows"] = len(file_texts)
        report[f"{name}_duplicates_dropped"] = duplicates
    report["label_conflicts"] = conflicts
    report["train_rows_merged"] = len(texts)
    report["rows_in_both_files"] = sum(1 for g, c in zip(gate, category) if g != IGNORE_INDEX and c)
    return texts, gate, category


def _stratified_split(
    gate: list[int], category: list[int], validation_split: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded split stratified by category (or gate label for rows without one).

    Strata with a single row cannot be split: they are pooled into one "rare" stratum first. Validation always
    gets a Pick and a Decline row when the data has two of each (the gate thresholds are tuned there).
    """
    keys = [f"c{c}" if c != IGNORE_INDEX else f"g{g}" for g, c in zip(gate, category)]
    counts = Counter(keys)
    keys = [key if counts[key] >= 2 else "rare" for key in keys]
    indices = np.arange(len(keys))
    # Too few rows per stratum for the requested size: stratify by the gate label alone (so thresholds can
    # still be tuned on both classes), then fall back to a plain seeded split.
    gate_keys = [f"g{g}" for g in gate]
    if len(keys) - math.ceil(len(keys) * validation_split) < 1:  # sklearn rounds the held-out share up
        raise DataError(f"{len(keys)} distinct training row(s): too few to hold out a {validation_split:.0%} "
                        "validation split; give a --validation_file (or more rows)")
    for candidate in (keys, gate_keys, None):
        if candidate is not None and Counter(candidate).most_common()[-1][1] < 2:
            continue
        try:
            train_idx, val_idx = train_test_split(
                indices, test_size=validation_split, random_state=seed, stratify=candidate
            )
            break
        except ValueError:
            if candidate is None:
                raise
    # The gate thresholds are tuned on validation: it gets at least one row of each gate class that has two.
    rng = np.random.default_rng(seed)
    gate_array = np.asarray(gate)
    for label in (0, 1):
        if (gate_array == label).sum() >= 2 and not (gate_array[val_idx] == label).any():
            moved = rng.choice(train_idx[gate_array[train_idx] == label])
            train_idx, val_idx = train_idx[train_idx != moved], np.append(val_idx, moved)
    return np.sort(train_idx), np.sort(val_idx)


def load_labeled_file(
    path: str | Path,
    text_columns: list[str],
    separator: str,
    label2id: dict[str, int],
    with_gate: bool,
    encoding: str | None = None,
    require_labels: bool = False,
    allow_unknown_labels: bool = False,
) -> LabeledFile:
    """A validation/test CSV: labels optional per row.

    A gold category unseen in training is an error, or with `allow_unknown_labels` an unscored row
    counted in `unknown_categories`.
    """
    path = Path(path)
    frame = read_csv(path, encoding)
    texts = build_texts(frame, path, text_columns, separator)
    gate = [IGNORE_INDEX] * len(frame)
    category: list = [IGNORE_INDEX] * len(frame)
    if PICK_COLUMN in frame.columns and with_gate:
        gate = parse_pick(frame[PICK_COLUMN], path, required=False)
    unknown: Counter = Counter()
    if CATEGORY_COLUMN in frame.columns and label2id:
        category = parse_categories(
            frame[CATEGORY_COLUMN], path, required=False, label2id=label2id,
            unknown=unknown if allow_unknown_labels else None,
        )
    if require_labels and all(g == IGNORE_INDEX for g in gate) and all(c == IGNORE_INDEX for c in category):
        raise DataError(f"{path}: no '{PICK_COLUMN}' or '{CATEGORY_COLUMN}' label in any row")
    dataset = Dataset.from_dict({"text": texts, "gate_labels": gate, "category_labels": category})
    return LabeledFile(path=path, frame=frame, dataset=dataset, unknown_categories=dict(unknown))


def load_training_data(
    task1_file: str | Path | None,
    task2_file: str | Path | None,
    validation_file: str | Path | None = None,
    test_files: list[str | Path] | None = None,
    text_columns: list[str] | None = None,
    separator: str = " [SEP] ",
    validation_split: float = 0.1,
    seed: int = 42,
    encoding: str | None = None,
) -> TrainingData:
    """Load, validate and merge the Task1/Task2 CSVs; build the category label map; split validation."""
    text_columns = text_columns or ["title", "body"]
    if task1_file is None and task2_file is None:
        raise DataError("no training data: give --task1_file and/or --task2_file")
    report: dict[str, Any] = {}
    task1 = task2 = None
    if task1_file is not None:
        frame = read_csv(task1_file, encoding)
        require_columns(frame, task1_file, [PICK_COLUMN])
        task1 = (Path(task1_file), build_texts(frame, task1_file, text_columns, separator),
                 parse_pick(frame[PICK_COLUMN], task1_file, required=True))
    if task2_file is not None:
        frame = read_csv(task2_file, encoding)
        require_columns(frame, task2_file, [CATEGORY_COLUMN])
        task2 = (Path(task2_file), build_texts(frame, task2_file, text_columns, separator),
                 parse_categories(frame[CATEGORY_COLUMN], task2_file, required=True, label2id=None))

    texts, gate, category_names = _merge_training_rows(task1, task2, report)
    # Sorted names: the same data always gives the same label ids, whatever the row order.
    category_labels = sorted({name for name in category_names if name})
    label2id = {name: index for index, name in enumerate(category_labels)}
    category = [label2id[name] if name else IGNORE_INDEX for name in category_names]
    has_gate = task1 is not None

    if validation_file is not None:
        train = Dataset.from_dict({"text": texts, "gate_labels": gate, "category_labels": category})
        labeled = load_labeled_file(
            validation_file, text_columns, separator, label2id, has_gate, encoding, require_labels=True
        )
        validation, validation_frame = labeled.dataset, labeled.frame
        report["validation"] = str(validation_file)
    else:
        train_idx, val_idx = _stratified_split(gate, category, validation_split, seed)
        full = Dataset.from_dict({"text": texts, "gate_labels": gate, "category_labels": category})
        train, validation = full.select(train_idx), full.select(val_idx)
        validation_frame = pd.DataFrame({
            "text": [texts[i] for i in val_idx],
            PICK_COLUMN: [str(gate[i]) if gate[i] != IGNORE_INDEX else "" for i in val_idx],
            CATEGORY_COLUMN: [category_names[i] for i in val_idx],
        })
        report["validation"] = f"stratified {validation_split:.0%} split of training (seed {seed})"
    tests = {}
    for test_file in test_files or []:
        labeled = load_labeled_file(test_file, text_columns, separator, label2id, has_gate, encoding)
        if labeled.path.stem in tests:
            raise DataError(f"{test_file}: two test files share the name {labeled.path.stem!r}")
        tests[labeled.path.stem] = labeled

    train = train.add_column("row_id", list(range(len(train))))
    report.update(
        train_rows=len(train),
        validation_rows=len(validation),
        num_categories=len(category_labels),
        category_counts=dict(Counter(category_names[i] for i in range(len(texts)) if category_names[i])),
    )
    return TrainingData(train, validation, validation_frame, tests, category_labels, has_gate, report)


def check_trainable(data: TrainingData, task1_file: str | None, task2_file: str | None,
                    validation_file: str | None, validation_split: float) -> None:
    """Refuse, before any training, data that would train nothing or tune on nothing.

    Each head needs labelled training rows of at least two classes; validation needs Pick and Decline rows
    (the gate thresholds are tuned there) and, with a category head, rows with a category.
    """
    if validation_file and any(path and Path(path).resolve() == Path(validation_file).resolve()
                               for path in (task1_file, task2_file)):
        logger.warning("--validation_file %s is also a training file: validation metrics, the best checkpoint and "
                       "the gate thresholds are then measured on training rows and will look better than they are",
                       validation_file)
    validation = validation_file or f"the {validation_split:.0%} validation split of the training rows"
    fix = ("give a --validation_file with both" if validation_file
           else "give a --validation_file, or a larger --validation_split")
    if len(data.train) == 0:
        raise DataError(f"no training row is left after holding out {validation}; add rows or give a --validation_file")
    if data.has_gate:
        gate = label_counts(list(data.train["gate_labels"]), 2)
        if min(gate) == 0:
            kind = "Pick (1)" if gate[1] else "Decline (0)" if gate[0] else "no"
            raise DataError(
                f"{task1_file}, column 'pick': every training row is {kind}; the gate head needs Pick and Decline "
                "rows to learn from (train only the category head by leaving out --task1_file)"
            )
        val_gate = label_counts(list(data.validation["gate_labels"]), 2)
        if min(val_gate) == 0:
            raise DataError(
                f"{validation}, column 'pick': {val_gate[1]} Pick and {val_gate[0]} Decline row(s); the gate "
                f"thresholds are tuned on validation and need both; {fix}"
            )
    if data.has_category:
        if len(data.category_labels) < 2:
            raise DataError(
                f"{task2_file}, column 'category': only one category ({data.category_labels[0]!r}); a category head "
                "needs at least two"
            )
        if not any(label != IGNORE_INDEX for label in data.train["category_labels"]):
            raise DataError(f"no training row with a category is left after holding out {validation}")
        if not any(label != IGNORE_INDEX for label in data.validation["category_labels"]):
            raise DataError(
                f"{validation}, column 'category': no row has a category, so the category head cannot be evaluated "
                "or its best checkpoint chosen; add categories to the validation rows"
            )


def label_counts(labels: list[int] | np.ndarray, num_classes: int) -> list[int]:
    """Per-class counts of a label column, -100 ignored."""
    labels = np.asarray(labels)
    return np.bincount(labels[labels != IGNORE_INDEX], minlength=num_classes).tolist()


def tokenize(dataset: Dataset, tokenizer, max_length: int, truncation: str = "head",
             head_tokens: int | None = None) -> Dataset:
    """Add input_ids/attention_mask (unpadded) and a `length` column for length-grouped batching.

    Long texts are cut as `multitask.text_encoding.encode_texts` does (`head`, `tail` or `head_tail`), the same
    function prediction uses.
    """

    def encode(batch: dict[str, list]) -> dict[str, list]:
        encoded = encode_texts(tokenizer, batch["text"], max_length, truncation, head_tokens)
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    return dataset.map(encode, batched=True, desc="Tokenizing")


class MultitaskCollator:
    """Pads model inputs dynamically and stacks the label columns; every other column is left out."""

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None, keep_keys: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.pad_to_multiple_of = pad_to_multiple_of
        self.keep_keys = keep_keys

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        inputs = [{key: f[key] for key in MODEL_INPUT_KEYS if key in f} for f in features]
        batch = dict(
            self.tokenizer.pad(inputs, padding=True, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt")
        )
        for key in LABEL_KEYS + self.keep_keys:
            if key in features[0]:
                batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)
        return batch
