"""Data preparation: exact and near-duplicate removal, label filtering, majority reduction, stratified split.

    python -m multitask.prepare --input_files raw.csv --label_column category --output_prefix data/clean
    python -m multitask.prepare --leakage_check --train_file data/clean_train.csv --test_file data/clean_test.csv

The pure functions (`exact_dedup`, `near_dedup`, `leakage_check`, `filter_labels`, `drop_rare_classes`,
`reduce_majority`, `stratified_split`) take plain lists and return masks/indices plus one record per removed
row; `main()` composes them over CSV/JSONL files and writes `<prefix>_train`, `<prefix>_test`,
`prepare_report.json` and `removed_rows.csv` (every removed row, with the step that removed it).

Near duplicates are pairs whose TF-IDF cosine similarity is at least a threshold. Vectors are character 2-5-grams
across word boundaries, after NFKC, lower-casing and replacing punctuation by spaces (sublinear tf, IDF):
they need no tokenizer, so Japanese text without spaces works as well as English; case, punctuation and
spacing do not count, a typo or an added word changes only a few n-grams, and n-grams spanning two words
keep some word order (a reordered paraphrase scores lower than with words or in-word n-grams).
The search is exact (it finds every pair above the threshold) but never builds the dense n x n matrix: each
vector is split into a prefix of its rarest n-grams and a suffix whose norm is below the threshold, so two
vectors can only be that similar if each one's prefix meets the other vector (the "all-pairs" prefix filter).
Candidates come from chunked sparse products of prefixes with full rows, are pruned with an upper bound, and
only the survivors are scored.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer

from multitask.data.splits import stratified_split
from multitask.errors import UsageError, cli, closest, parse_arguments
from multitask.io.rundir import StagedFiles, check_output_dir, check_output_file, staged_files
from multitask.io.tables import (
    FORMATS,
    PLAIN_SEPARATOR,
    DataError,
    ReadLimits,
    check_encoding,
    check_format,
    check_readable_file,
    pick_value,
    set_read_limits,
    table_format,
)
from multitask.io.tables import Table as InputTable
from multitask.io.tables import build_texts as build_row_texts
from multitask.io.tables import read_table as read_input
from multitask.labels import CATEGORY_COLUMN, PICK_COLUMN, markdown_cell
from multitask.model.configuration import DEFAULT_TEXT_COLUMNS

logger = logging.getLogger(__name__)

TFIDF_ANALYZER = "char"
TFIDF_NGRAM_RANGE = (2, 5)
TFIDF_FEATURES = 2**22
_TOLERANCE = 1e-5  # float32 TF-IDF: identical texts may score 0.99999994
MAX_LISTED = 1000  # records listed inline in the JSON report; all of them are in removed_rows.csv
_WHITESPACE = re.compile(r"\s+")
# \w matches `_`; it is punctuation here, like everything else outside [\w\s].
_PUNCTUATION = re.compile(r"[^\w\s]|_")

Label = Hashable | None
Compatible = Callable[[Any, Any], bool]


# ---------------------------------------------------------------------------------------------- pure functions
def normalize_text(text: str) -> str:
    """NFKC, whitespace runs collapsed to one space, stripped: the key of exact deduplication.

    Args:
        text (`str`):
            A row's text (`build_texts`).

    Returns:
        `str`: The key; case and punctuation are kept (only near deduplication ignores them).
    """
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def _is_labelled(label: Label) -> bool:
    """False for None, "" and NaN (a pandas missing cell); any other value is a label."""
    return label is not None and label == label and label != ""  # label == label: False for NaN


def _conflict(label: Label, kept_label: Label, compatible: Compatible | None) -> bool:
    """Whether two copies disagree: both labelled and not equal (or not `compatible`); a missing label never
    conflicts."""
    if not (_is_labelled(label) and _is_labelled(kept_label)):
        return False
    return not (compatible(label, kept_label) if compatible else label == kept_label)


def _priority(labels: Sequence[Label] | None, n: int) -> np.ndarray:
    """Rank of each row when choosing which copy to keep: labelled rows first, then the lower index."""
    unlabelled = np.zeros(n, dtype=bool) if labels is None else ~np.array([_is_labelled(x) for x in labels])
    # lexsort sorts by its last key first: labelled rows (False) first, then by index.
    order = np.lexsort((np.arange(n), unlabelled))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return rank


def _record(
    row: int, kept: int, similarity: float, labels: Sequence[Label] | None, compatible: Compatible | None
) -> dict:
    """The removal record of duplicate `row` of kept row `kept` (0-based positions; similarity to 4 decimals)."""
    label = None if labels is None else labels[row]
    kept_label = None if labels is None else labels[kept]
    return {
        "row": int(row),
        "duplicate_of": int(kept),
        "similarity": round(float(similarity), 4),
        "label": label if _is_labelled(label) else None,
        "kept_label": kept_label if _is_labelled(kept_label) else None,
        "label_conflict": _conflict(label, kept_label, compatible),
    }


def exact_dedup(
    texts: Sequence[str], labels: Sequence[Label] | None = None, compatible: Compatible | None = None
) -> tuple[np.ndarray, list[dict]]:
    """Drop rows whose `normalize_text` equals an earlier row's (a labelled copy wins over an unlabelled one).

    Args:
        texts (`Sequence[str]`):
            One text per row.
        labels (`Sequence[Label]`, *optional*):
            One label per row (None, "" or NaN = unlabelled); decides which copy is kept and whether copies
            conflict. None treats every row as unlabelled.
        compatible (`Callable[[Any, Any], bool]`, *optional*):
            Whether two different labels still agree (e.g. `joint_labels_compatible`); None: only equal labels
            do.

    Returns:
        `tuple[np.ndarray, list[dict]]`: The keep mask over `texts`, and one record per removed row, in row
        order: `row`, `duplicate_of` (0-based positions), `similarity` (1.0), `label`, `kept_label` and
        `label_conflict` (both labelled, labels differ, or are not `compatible`).
    """
    n = len(texts)
    rank = _priority(labels, n)
    keys = pd.Series([normalize_text(text) for text in texts])
    by_rank = np.argsort(rank)
    # After ordering rows by priority, the first row of each key group is the copy that is kept.
    keeper_sorted = pd.Series(by_rank).groupby(keys.iloc[by_rank].to_numpy()).transform("first").to_numpy()
    keeper = np.empty(n, dtype=np.int64)
    keeper[by_rank] = keeper_sorted
    keep = keeper == np.arange(n)
    removed = [_record(row, keeper[row], 1.0, labels, compatible) for row in np.flatnonzero(~keep)]
    return keep, removed


def tfidf_preprocess(text: str) -> str:
    """What near-duplicate detection compares: NFKC, lower case, punctuation as spaces, single spaces.

    Args:
        text (`str`):
            A row's text.

    Returns:
        `str`: The text the character n-grams are taken from.
    """
    return _WHITESPACE.sub(" ", _PUNCTUATION.sub(" ", unicodedata.normalize("NFKC", text).lower())).strip()


def _tfidf(texts: Sequence[str]) -> sp.csr_matrix:
    """L2-normalised char n-gram TF-IDF rows, columns reordered rarest first (so each row's prefix is rare).

    Hashed n-grams (no vocabulary): 3x faster and lighter than TfidfVectorizer at 150k rows; with 2**22
    columns, collisions merge about one n-gram occurrence in 100,000.
    """
    counts = HashingVectorizer(
        analyzer=TFIDF_ANALYZER,
        ngram_range=TFIDF_NGRAM_RANGE,
        preprocessor=tfidf_preprocess,
        n_features=TFIDF_FEATURES,
        alternate_sign=False,  # signed hashing would let colliding n-grams cancel out
        norm=None,  # TfidfTransformer L2-normalises after the IDF weighting
        dtype=np.float32,
    ).transform(texts)
    matrix = TfidfTransformer(sublinear_tf=True).fit_transform(counts).tocsr().astype(np.float32, copy=False)
    del counts  # the raw counts are as large as the matrix; free them before the reordered copy is built
    document_frequency = np.bincount(matrix.indices, minlength=matrix.shape[1])
    # New column id = rank of the n-gram's document frequency, so after sort_indices() each row starts with its
    # rarest n-grams: the prefix that `_prefix_split` keeps.
    new_column = np.empty(matrix.shape[1], dtype=np.int32)
    # stable: equally frequent n-grams keep their hashed order, so the same texts give the same prefixes.
    new_column[np.argsort(document_frequency, kind="stable")] = np.arange(matrix.shape[1], dtype=np.int32)
    matrix = sp.csr_matrix((matrix.data, new_column[matrix.indices], matrix.indptr), shape=matrix.shape)
    matrix.sort_indices()
    return matrix


def _prefix_split(matrix: sp.csr_matrix, threshold: float) -> tuple[sp.csr_matrix, np.ndarray]:
    """Each row's prefix (its rarest entries) and the norm of the rest: the longest tail with norm < threshold."""
    lengths = np.diff(matrix.indptr)
    starts, ends = matrix.indptr[:-1].astype(np.int64), matrix.indptr[1:].astype(np.int64)
    # before[k]: sum of squares of all entries before k (float64: it runs over the whole matrix).
    before = np.concatenate([[0.0], np.cumsum(matrix.data.astype(np.float64) ** 2)])
    # Entry k is in the prefix while the tail from k still has norm >= threshold, i.e.
    # before[k] <= before[row end] - threshold^2 (less a margin: a longer prefix is always safe).
    limit = before[ends] - threshold * threshold + _TOLERANCE
    # One searchsorted over the global running sums cuts every row at once; clip keeps each cut in its row.
    prefix_lengths = np.clip(np.searchsorted(before, limit, side="right") - starts, 0, lengths)
    prefix_indptr = np.concatenate([[0], np.cumsum(prefix_lengths)])
    # Each prefix entry's index into matrix.data: its new position plus its row's offset (no loop over rows).
    taken = np.arange(prefix_indptr[-1]) + np.repeat(starts - prefix_indptr[:-1], prefix_lengths)
    prefix = sp.csr_matrix((matrix.data[taken], matrix.indices[taken], prefix_indptr), shape=matrix.shape)
    suffix_norm = np.sqrt(np.maximum(before[ends] - before[starts + prefix_lengths], 0.0))
    return prefix, suffix_norm.astype(np.float32)


def _pairs_above(
    queries: sp.csr_matrix,
    corpus: sp.csr_matrix,
    threshold: float,
    same: bool,
    chunk_size: int = 5000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (query, corpus, cosine) with cosine >= threshold; with `same`, queries is corpus and query < corpus.

    Split rows x, y into prefixes P and suffixes S with ||S|| < t. Then x.y >= t needs P(x).y > 0, and
    x.y = [P(x).y + x.P(y) - P(x).P(y)] + S(x).S(y) <= [...] + ||S(x)|| ||S(y)||. The bracket comes from one
    sparse product [P(x) x P(x)] . [y P(y) -P(y)] that only meets rows sharing a prefix (rare) n-gram; the
    bound discards most of those before the exact dot products.
    """
    query_prefix, query_suffix = _prefix_split(queries, threshold)
    corpus_prefix, corpus_suffix = (query_prefix, query_suffix) if same else _prefix_split(corpus, threshold)
    stacked_queries = sp.hstack([query_prefix, queries, query_prefix], format="csr")
    # Transposed and converted once, outside the loop: every chunk's CSR x CSR product reuses it.
    stacked_corpus_t = sp.hstack([corpus, corpus_prefix, -corpus_prefix], format="csr").T.tocsr()
    found_q, found_c, found_s = [], [], []
    # Chunks of query rows bound the memory of the candidate matrix, which is only pruned after it is built.
    for start in range(0, queries.shape[0], chunk_size):
        stop = min(start + chunk_size, queries.shape[0])
        candidates = (stacked_queries[start:stop] @ stacked_corpus_t).tocoo()
        rows, cols, partial = candidates.row, candidates.col, candidates.data
        keep = partial + query_suffix[rows + start] * corpus_suffix[cols] >= threshold - _TOLERANCE
        if same:  # each unordered pair once, and never a row with itself
            keep &= cols > rows + start
        query_rows, corpus_rows = rows[keep] + start, cols[keep]
        if len(query_rows) == 0:
            continue
        products = queries[query_rows].multiply(corpus[corpus_rows])
        # float64 sum: a pair shares many n-grams, and the threshold test below works to a 1e-5 tolerance.
        similarity = np.asarray(products.sum(axis=1, dtype=np.float64)).ravel()
        above = similarity >= threshold - _TOLERANCE  # float32 vectors: a pair at the threshold counts
        found_q.append(query_rows[above])
        found_c.append(corpus_rows[above])
        # Identical float32 unit vectors can score 1.0000001; reports should never show a cosine above 1.
        found_s.append(np.minimum(similarity[above], 1.0))
    if not found_q:
        empty = np.array([], dtype=np.int64)
        return empty, empty, np.array([], dtype=np.float32)
    return np.concatenate(found_q), np.concatenate(found_c), np.concatenate(found_s)


def similar_pairs(texts: Sequence[str], threshold: float = 0.9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) of `texts` whose char n-gram TF-IDF cosine is >= threshold, with that cosine.

    Exact (no pair above the threshold is missed) without the dense n x n matrix; see the module docstring.

    Args:
        texts (`Sequence[str]`):
            One text per row.
        threshold (`float`, *optional*, defaults to 0.9):
            Cosine in (0, 1]; pairs within 1e-5 below it also count (float32 vectors).

    Returns:
        `tuple[np.ndarray, np.ndarray, np.ndarray]`: `(first, second, cosine)`, aligned, in no particular
        order: int64 row positions with first < second, and cosines capped at 1.0.

    Raises:
        `ValueError`: A threshold outside (0, 1].
    """
    _check_threshold(threshold)
    if len(texts) < 2:
        empty = np.array([], dtype=np.int64)
        return empty, empty, np.array([], dtype=np.float32)
    matrix = _tfidf(texts)
    return _pairs_above(matrix, matrix, threshold, same=True)


def _check_threshold(threshold: float) -> None:
    """A `ValueError` unless 0 < threshold <= 1 (0 would make every pair a duplicate)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"similarity threshold must be in (0, 1], got {threshold}")


def near_dedup(
    texts: Sequence[str],
    labels: Sequence[Label] | None = None,
    threshold: float = 0.9,
    compatible: Compatible | None = None,
) -> tuple[np.ndarray, list[dict]]:
    """Drop rows whose TF-IDF cosine with a kept row is >= threshold.

    Rows are visited labelled-first, then by index; a row is dropped when a row already kept is similar
    enough, and is recorded as a duplicate of the most similar such row. So the first copy is kept, a labelled
    copy wins over an unlabelled one, and chains (a~b, b~c, a!~c) keep c.

    Args:
        texts (`Sequence[str]`):
            One text per row (usually the rows `exact_dedup` kept).
        labels (`Sequence[Label]`, *optional*):
            One label per row; None treats every row as unlabelled.
        threshold (`float`, *optional*, defaults to 0.9):
            Cosine in (0, 1] (`--dedup_threshold`).
        compatible (`Callable[[Any, Any], bool]`, *optional*):
            Whether two different labels still agree; None: only equal labels do.

    Returns:
        `tuple[np.ndarray, list[dict]]`: The keep mask and records like `exact_dedup`'s (0-based
        `row`/`duplicate_of`, `similarity` to 4 decimals, labels, `label_conflict`), in row order.

    Raises:
        `ValueError`: A threshold outside (0, 1].
    """
    n = len(texts)
    first, second, similarity = similar_pairs(texts, threshold)
    keep = np.ones(n, dtype=bool)
    if len(first) == 0:
        return keep, []
    graph = sp.coo_matrix(
        (
            np.concatenate([similarity, similarity]),
            (np.concatenate([first, second]), np.concatenate([second, first])),
        ),
        shape=(n, n),
    ).tocsr()
    rank = _priority(labels, n)
    involved = np.unique(np.concatenate([first, second]))
    removed = []
    # Priority order: when a row is visited, every row that could be kept in its place has been decided already.
    for row in involved[np.argsort(rank[involved])]:
        neighbours = graph.indices[graph.indptr[row] : graph.indptr[row + 1]]
        scores = graph.data[graph.indptr[row] : graph.indptr[row + 1]]
        earlier_kept = (rank[neighbours] < rank[row]) & keep[neighbours]
        if earlier_kept.any():
            keep[row] = False
            # -1 rules the other neighbours out: cosines of TF-IDF vectors are never negative.
            best = np.argmax(np.where(earlier_kept, scores, -1.0))
            removed.append(_record(row, neighbours[best], scores[best], labels, compatible))
    # Rows were visited in priority order; the records are reported in row order.
    removed.sort(key=lambda record: record["row"])
    return keep, removed


def leakage_check(
    train_texts: Sequence[str], test_texts: Sequence[str], threshold: float = 0.9
) -> list[dict]:
    """Test rows that are near-duplicates (cosine >= threshold) of training rows.

    Both sides share one TF-IDF fit, so the n-gram weights are the same for train and test.

    Args:
        train_texts (`Sequence[str]`):
            Texts of the training file.
        test_texts (`Sequence[str]`):
            Texts of the test file.
        threshold (`float`, *optional*, defaults to 0.9):
            Cosine in (0, 1].

    Returns:
        `list[dict]`: One record per leaking test row, by test row: `test_row`, the most similar `train_row`
        (0-based positions; the lower one on ties), its `similarity` (4 decimals), and `matches` (how many
        training rows are that similar). `[]` when either side is empty.

    Raises:
        `ValueError`: A threshold outside (0, 1].
    """
    _check_threshold(threshold)
    if not train_texts or not test_texts:
        return []
    matrix = _tfidf(list(train_texts) + list(test_texts))  # one vocabulary and IDF for both sides
    train, test = matrix[: len(train_texts)], matrix[len(train_texts) :]
    test_rows, train_rows, similarity = _pairs_above(test, train, threshold, same=False)
    leaks: dict[int, dict] = {}
    for test_row, train_row, score in zip(test_rows.tolist(), train_rows.tolist(), similarity.tolist()):
        leak = leaks.setdefault(
            test_row, {"test_row": test_row, "train_row": train_row, "similarity": score, "matches": 0}
        )
        leak["matches"] += 1
        if score > leak["similarity"] or (score == leak["similarity"] and train_row < leak["train_row"]):
            leak.update(train_row=train_row, similarity=score)
    return [{**leak, "similarity": round(leak["similarity"], 4)} for _, leak in sorted(leaks.items())]


def class_counts(labels: Sequence[Label]) -> dict[str, int]:
    """Rows per label, largest first; unlabelled rows are counted under "(unlabelled)".

    Args:
        labels (`Sequence[Label]`):
            One label per row; compared as strings.

    Returns:
        `dict[str, int]`: Label -> rows, by count descending then label.
    """
    counts = Counter(str(label) if _is_labelled(label) else "(unlabelled)" for label in labels)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def filter_labels(labels: Sequence[Label], labels_to_filter: Sequence[str]) -> np.ndarray:
    """Keep mask: False for rows whose label is one of `labels_to_filter`.

    Args:
        labels (`Sequence[Label]`):
            One label per row; unlabelled rows are always kept.
        labels_to_filter (`Sequence[str]`):
            Labels to remove (`--labels_to_filter`), compared as strings (e.g. "pick=0").

    Returns:
        `np.ndarray` of shape `(len(labels),)`, bool.
    """
    unwanted = {str(label) for label in labels_to_filter}
    return np.array([not (_is_labelled(label) and str(label) in unwanted) for label in labels], dtype=bool)


def drop_rare_classes(labels: Sequence[Label], min_count: int) -> tuple[np.ndarray, dict[str, int]]:
    """Keep mask without the classes that have fewer than `min_count` rows, and those classes' counts.

    Args:
        labels (`Sequence[Label]`):
            One label per row; unlabelled rows are always kept.
        min_count (`int`):
            Smallest class size kept (`--min_class_count`); 0 and 1 remove nothing.

    Returns:
        `tuple[np.ndarray, dict[str, int]]`: The keep mask, and the removed classes with their row counts.
    """
    counts = Counter(str(label) for label in labels if _is_labelled(label))
    rare = {label: count for label, count in counts.items() if count < min_count}
    keep = np.array([not (_is_labelled(label) and str(label) in rare) for label in labels], dtype=bool)
    return keep, rare


def reduce_majority(labels: Sequence[Label], fraction: float, seed: int = 42) -> tuple[np.ndarray, int]:
    """Seeded downsampling of large classes, with the seed pipeline's rule: cap = 2 x int(smallest x fraction).

    So 0.5 caps every class at the smallest class's size (balanced), 1.0 at twice that.

    Args:
        labels (`Sequence[Label]`):
            One label per row; unlabelled rows are kept.
        fraction (`float`):
            The rule's fraction, > 0 (`--reduce_majority_to`).
        seed (`int`, *optional*, defaults to 42):
            Seed of which rows are dropped; classes are processed in sorted order, so the draws do not depend
            on which class appears first.

    Returns:
        `tuple[np.ndarray, int]`: The keep mask and the cap (at least 1; 0 when no row is labelled).

    Raises:
        `ValueError`: For `fraction <= 0`.
    """
    if fraction <= 0:
        raise ValueError(f"reduce_majority fraction must be > 0, got {fraction}")
    keep = np.ones(len(labels), dtype=bool)
    rows_by_class: dict[str, list[int]] = {}
    for row, label in enumerate(labels):
        if _is_labelled(label):
            rows_by_class.setdefault(str(label), []).append(row)
    if not rows_by_class:
        return keep, 0
    # max(1, ...): a small fraction makes int(...) 0, and a cap of 0 would drop every labelled row.
    cap = max(1, 2 * int(min(len(rows) for rows in rows_by_class.values()) * fraction))
    rng = np.random.default_rng(seed)
    for label in sorted(rows_by_class):  # sorted: the same seed drops the same rows whatever the row order
        rows = np.array(rows_by_class[label])
        if len(rows) > cap:
            keep[rng.choice(rows, size=len(rows) - cap, replace=False)] = False
    return keep, cap


# ------------------------------------------------------------------------------------------------------ files
@dataclass
class Table:
    """Rows of one or more input tables (concatenated in order): the original columns (for the output) and where
    each row came from, as the user sees it (`multitask.io.tables.Table.where`)."""

    frame: pd.DataFrame
    parts: list[InputTable]
    owner: np.ndarray  # index into `parts` of each row
    local: np.ndarray  # the row's position inside its part
    files: list[str]  # the file of each row
    rows: np.ndarray  # each row's number as the user sees it: spreadsheet row, JSONL line or record

    @property
    def columns(self) -> list[str]:
        """The union of the parts' columns, as strings, in first-seen order."""
        return [str(column) for column in self.frame.columns]

    def where(self, index: int | None = None, column: str | None = None) -> str:
        """Row `index` (0-based over the concatenation) as its own file names it; all sources without an index.

        Args:
            index (`int`, *optional*):
                0-based position over all files.
            column (`str`, *optional*):
                Column name to add.

        Returns:
            `str`: e.g. `"b.csv, row 3, column 'title'"` for the second data row of the second file.
        """
        if index is None:
            return ", ".join(part.source for part in self.parts)
        return self.parts[self.owner[index]].where(int(self.local[index]), column)

    def require_columns(self, columns: Sequence[str], flags: dict[str, str] | None = None) -> None:
        """Every part must have every column (a `DataError` names the first file lacking one).

        Args:
            columns (`Sequence[str]`):
                Columns that must exist in every input file.
            flags (`dict[str, str]`, *optional*):
                Column -> the flag that maps it, quoted in the message.
        """
        for part in self.parts:
            part.require_columns(columns, flags)

    def column(self, name: str) -> list[str]:
        """The cells of column `name` over all parts ("" where a part lacks the column)."""
        return self.frame[name].tolist()


def read_table(
    paths: Sequence[str | Path], required_columns: Sequence[str], encoding: str | None = None,
    file_format: str | None = None, flags: dict[str, str] | None = None,
) -> Table:
    """Read and concatenate data files of any supported format (`multitask.io.tables.read_table`).

    Args:
        paths (`Sequence[str | Path]`):
            The input files, concatenated in this order (earlier rows win ties in deduplication).
        required_columns (`Sequence[str]`):
            Columns every file must have; other columns may differ between files (missing cells become "").
        encoding (`str`, *optional*):
            Text encoding of every file; None tries UTF-8, then CP932.
        file_format (`str`, *optional*):
            Format of every file; None reads each one's extension.
        flags (`dict[str, str]`, *optional*):
            Column -> flag, for the missing-column message.

    Returns:
        `Table`: The rows with their file and row number as the user sees them.

    Raises:
        `DataError`: No paths, an unreadable file, or a missing column (naming the file).
    """
    if not paths:
        raise DataError("no input files: give --input_files (CSV, TSV, JSONL, JSON or Parquet)")
    parts = []
    for path in paths:
        part = read_input(path, file_format, encoding, flag="--input_files")
        part.require_columns(list(required_columns), flags)
        parts.append(part)
    # A column only some files have is "" in the others' rows (as an empty cell would read), not NaN.
    frame = pd.concat([part.frame for part in parts], ignore_index=True, sort=False).fillna("")
    owner = np.concatenate([np.full(len(part), index, dtype=np.int64) for index, part in enumerate(parts)])
    local = np.concatenate([np.arange(len(part), dtype=np.int64) for part in parts])
    # Per row, not per part: the removal records and reports name each row's own file.
    files = [parts[part].source for part in owner]
    rows = np.concatenate([part.numbers for part in parts]).astype(np.int64)
    return Table(frame, parts, owner, local, files, rows)


def build_texts(table: Table, text_columns: Sequence[str]) -> list[str]:
    """The texts that are deduplicated: `multitask.io.tables.build_text`, the builder training and prediction
    use.

    NFKC, empty parts skipped, joined with a newline here (`PLAIN_SEPARATOR`; training joins with the
    tokenizer's separator instead).

    Args:
        table (`Table`):
            The concatenated input.
        text_columns (`Sequence[str]`):
            Columns joined, in order (`--text_columns`).

    Returns:
        `list[str]`: One text per row.

    Raises:
        `DataError`: An empty text, naming the row.
    """
    return build_row_texts(table, list(text_columns), PLAIN_SEPARATOR)


def build_labels(
    table: Table, label_column: str | None, pick_column: str, category_column: str
) -> list[str | None]:
    """One label per row: `label_column`'s value, else the joint gate/category label (see `--help`).

    Args:
        table (`Table`):
            The concatenated input.
        label_column (`str`, *optional*):
            `--label_column`: its stripped value is the label ("" = unlabelled). None builds the joint label.
        pick_column (`str`):
            Gate column for the joint label; absent columns count as empty.
        category_column (`str`):
            Category column for the joint label.

    Returns:
        `list[str | None]`: The category, else "pick=1"/"pick=0", else None per row.

    Raises:
        `DataError`: An unknown gate spelling, or a category on a Decline row (naming file, row and column).
    """
    if label_column is not None:
        return [value.strip() or None for value in table.column(label_column)]
    has_pick, has_category = pick_column in table.columns, category_column in table.columns
    picks = table.column(pick_column) if has_pick else [""] * len(table.frame)
    categories = table.column(category_column) if has_category else [""] * len(table.frame)
    labels: list[str | None] = []
    for index, (raw_pick, raw_category) in enumerate(zip(picks, categories)):
        category = raw_category.strip()
        try:
            value = pick_value(raw_pick)
        except KeyError:
            raise DataError(
                f"{table.where(index, pick_column)}: {raw_pick.strip()!r} is not a pick label "
                "(expected 1/0, true/false or Pick/Decline)"
            ) from None
        pick = "" if value is None else str(value)
        if category and pick == "0":
            raise DataError(
                f"{table.where(index, category_column)}: category {category!r} on a Decline row (pick=0); "
                "Decline rows have no category"
            )
        # The category first: it implies Pick and is the finer of the two labels.
        labels.append(category or (f"pick={pick}" if pick else None))
    return labels


def joint_labels_compatible(label: str, other: str) -> bool:
    """Joint labels agree when equal, or when one is "pick=1" and the other a category (which implies Pick).

    Args:
        label (`str`):
            One copy's joint label (`build_labels`).
        other (`str`):
            The other copy's.

    Returns:
        `bool`: False for "pick=0" against anything else, and for two different categories.
    """
    if label == other:
        return True
    pair = {label, other}
    return "pick=1" in pair and not all(str(x).startswith("pick=") for x in pair)


# --------------------------------------------------------------------------------------------------------- CLI
@dataclass
class PrepareArguments:
    """`python -m multitask.prepare`'s flags (every field's `help` is its --help text)."""

    input_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Data file(s) to prepare (CSV, TSV, JSONL, JSON or Parquet, by extension or --format), "
                  "concatenated in order (earlier rows win ties)."},
    )
    format: str | None = field(
        default=None,
        metadata={"help": "Format of every input file when the extension does not say it.", "choices": list(FORMATS)},
    )
    output_prefix: str | None = field(
        default=None,
        metadata={"help": "Writes <prefix>_train.<ext>, <prefix>_test.<ext> (and <prefix>_validation.<ext>) with the "
                  "input's columns, which run_finetune.py reads as they are (--train_file, or --dataset_repo after "
                  "--push_to_hub), e.g. data/clean."},
    )
    text_columns: list[str] = field(
        default_factory=lambda: list(DEFAULT_TEXT_COLUMNS),
        metadata={"help": "Columns joined (empty parts skipped) into the text that is deduplicated."},
    )
    label_column: str | None = field(
        default=None,
        metadata={
            "help": "Column holding the label used for conflicts, filtering, reduction and stratification. Empty: "
            "the joint label from --pick_column/--category_column: the category, else 'pick=1'/'pick=0'."
        },
    )
    pick_column: str = field(
        default=PICK_COLUMN, metadata={"help": "Gate column (1/0, true/false, Pick/Decline)."}
    )
    category_column: str = field(default=CATEGORY_COLUMN, metadata={"help": "Category column."})
    dedup_threshold: float = field(
        default=0.9,
        metadata={
            "help": "Rows whose char n-gram TF-IDF cosine with a kept row is >= this are near duplicates."
        },
    )
    near_dedup: bool = field(
        default=True, metadata={"help": "Remove near duplicates (--no_near_dedup: exact duplicates only)."}
    )
    labels_to_filter: list[str] = field(
        default_factory=list,
        metadata={"help": "Labels whose rows are removed (e.g. pick=0 drops Decline rows)."},
    )
    min_class_count: int = field(
        default=0, metadata={"help": "Classes with fewer rows than this (after deduplication) are removed."}
    )
    reduce_majority_to: float | None = field(
        default=None,
        metadata={
            "help": "Downsample large classes as the seed pipeline did: each class is capped at "
            "2 x int(smallest class x this), so 0.5 balances to the smallest class. Empty: no reduction."
        },
    )
    test_size: float = field(
        default=0.2,
        metadata={"help": "Share of rows in the stratified test split; 0 writes no <prefix>_test."},
    )
    validation_size: float = field(
        default=0.0,
        metadata={"help": "Share of rows (of all kept rows) in a stratified validation split, written as "
                  "<prefix>_validation.<ext>; 0: none (training then holds out its own --validation_split)."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the split and of majority reduction."})
    output_format: str | None = field(
        default=None,
        metadata={
            "help": "Format of the outputs. Empty: the format of the first input file.",
            "choices": list(FORMATS),
        },
    )
    report_file: str | None = field(
        default=None,
        metadata={
            "help": "JSON report. Empty: prepare_report.json next to the outputs, or (leakage check) "
            "<test file stem>_leakage.json next to the test file. removed_rows.csv goes beside it."
        },
    )
    encoding: str | None = field(
        default=None,
        metadata={"help": "Input encoding. Empty: UTF-8 (with or without BOM), else CP932/Shift-JIS."},
    )
    leakage_check: bool = field(
        default=False,
        metadata={
            "help": "Only check --test_file against --train_file: list test rows near-duplicating train rows."
        },
    )
    train_file: str | None = field(default=None, metadata={"help": "Training file of --leakage_check (any format)."})
    test_file: str | None = field(default=None, metadata={"help": "Test file of --leakage_check (any format)."})
    fail_on_leakage: bool = field(
        default=False, metadata={"help": "With --leakage_check: exit with status 1 when any test row leaks."}
    )
    push_to_hub: str | None = field(
        default=None,
        metadata={"help": "Upload the result to this Hub dataset repo (user/name; HF_DATASET_REPO: the id in that "
                  "environment variable or .env entry): the splits under data/ as written here, the report and "
                  "removed rows beside them, and a dataset card (counts per class and split, the deduplication and "
                  "filter steps, how to train on it). Token: HF_TOKEN or HF_AUTH_TOKEN (environment or .env)."},
    )
    hub_private_repo: bool = field(
        default=True, metadata={"help": "Create the --push_to_hub repo private (an existing repo keeps its visibility)."}
    )
    debug: bool = field(
        default=False, metadata={"help": "On an error, print the full traceback too (or set MULTITASK_DEBUG=1)."}
    )


def parse_args(argv: Sequence[str] | None = None) -> PrepareArguments:
    """Parse `argv` (default: sys.argv[1:]) or a JSON/YAML file given alone; every mistake is a `UsageError`.

    Args:
        argv (`Sequence[str]`, *optional*):
            Command-line arguments without the program name.

    Returns:
        `PrepareArguments`
    """
    from transformers import HfArgumentParser  # here: the pure functions above do not need transformers

    parser = HfArgumentParser(
        PrepareArguments,
        prog="python -m multitask.prepare",
        description="Deduplicate, filter, rebalance and split labelled text data; or check train/test leakage.",
    )
    (args,) = parse_arguments(parser, list(sys.argv[1:] if argv is None else argv))
    return args


def _output_paths(args: PrepareArguments) -> dict[str, Path]:
    """Where each output goes: "train", "validation"/"test" (when their size > 0), "report", "removed"."""
    output_format = args.output_format or table_format(args.input_files[0], args.format)
    prefix = Path(args.output_prefix)
    paths = {"train": prefix.parent / f"{prefix.name}_train.{output_format}"}
    if args.validation_size > 0:
        paths["validation"] = prefix.parent / f"{prefix.name}_validation.{output_format}"
    if args.test_size > 0:
        paths["test"] = prefix.parent / f"{prefix.name}_test.{output_format}"
    paths["report"] = Path(args.report_file) if args.report_file else prefix.parent / "prepare_report.json"
    paths["removed"] = paths["report"].with_name("removed_rows.csv")
    return paths


def check_arguments(args: PrepareArguments) -> None:
    """Refuse unusable arguments before any file is read or written.

    Input files are checked to exist and be readable (not parsed); output paths to be writable and not to
    overwrite an input. Side effect: `args.push_to_hub` is replaced by the resolved repo id.

    Args:
        args (`PrepareArguments`):
            The parsed arguments, for a preparation or a `--leakage_check`.

    Raises:
        `UsageError`: A value out of range, a missing required flag, an output that would overwrite an input,
        or a `--push_to_hub` target that is missing, malformed or has no token. `DataError`: An input file
        that is missing or unreadable. `OutputError`: An output path that cannot be written.
    """
    check_encoding(args.encoding)
    check_format(args.format)
    if not 0.0 < args.dedup_threshold <= 1.0:
        raise UsageError(f"--dedup_threshold {args.dedup_threshold}: must be in (0, 1]")
    if args.leakage_check:
        if not args.train_file or not args.test_file:
            raise UsageError("--leakage_check needs --train_file and --test_file")
        check_readable_file(args.train_file, "--train_file")
        check_readable_file(args.test_file, "--test_file")
        if args.report_file:
            check_output_file(args.report_file, "--report_file")
        return
    if not args.input_files:
        raise UsageError("no input files: give --input_files (CSV, TSV, JSONL, JSON or Parquet)")
    if args.output_prefix is None:
        raise UsageError("--output_prefix is required (e.g. data/clean → data/clean_train.csv)")
    if not 0.0 <= args.test_size < 1.0:
        raise UsageError(f"--test_size {args.test_size}: must be in [0, 1)")
    if not 0.0 <= args.validation_size < 1.0 or args.test_size + args.validation_size >= 1.0:
        raise UsageError(f"--validation_size {args.validation_size}: must be in [0, 1) and leave training rows "
                         f"beside --test_size {args.test_size}")
    if args.min_class_count < 0:
        raise UsageError(f"--min_class_count {args.min_class_count}: must be >= 0")
    if args.reduce_majority_to is not None and not args.reduce_majority_to > 0:
        raise UsageError(f"--reduce_majority_to {args.reduce_majority_to}: must be > 0 (0.5 balances every class "
                         "down to the smallest)")
    if not args.text_columns:
        raise UsageError("--text_columns: give at least one column")
    for path in args.input_files:
        check_readable_file(path, "--input_files")
    if not Path(args.output_prefix).name:
        raise UsageError(f"--output_prefix {args.output_prefix}: ends in a folder; add a file name prefix "
                         "(e.g. data/clean → data/clean_train.csv)")
    # resolve(): `data/x.csv` and `./data/x.csv` name the same file.
    inputs = {Path(path).resolve() for path in args.input_files}
    for name, path in _output_paths(args).items():
        flag = "--report_file" if name == "report" and args.report_file else "--output_prefix"
        check_output_file(path, flag)
        if path.resolve() in inputs:
            raise UsageError(f"{flag}: the output {path} would overwrite an input file; choose another prefix")
    check_output_dir(Path(args.output_prefix).parent, "--output_prefix")
    if args.push_to_hub:
        from multitask.io.hub import check_push_target

        # Now, not at upload: a missing token or bad repo id stops the run before minutes of deduplication.
        args.push_to_hub = check_push_target(args.push_to_hub, "--push_to_hub")


class _Steps:
    """Applies keep masks to the surviving row positions and records counts before/after each step."""

    def __init__(self, table: Table, texts: list[str], labels: list[Label]) -> None:
        self.table, self.texts, self.labels = table, texts, labels
        self.alive = np.arange(len(labels))
        self.log: list[dict] = [
            {"step": "read", "rows_after": len(labels), "per_class_after": class_counts(labels)}
        ]
        self.removed: list[dict] = []

    def current_labels(self) -> list[Label]:
        """The labels of the rows still kept, in row order."""
        return [self.labels[i] for i in self.alive]

    def located(self, records: list[dict], step: str) -> list[dict]:
        """Duplicate records with positions among the surviving rows turned into file + row (+ the text)."""
        located = []
        for record in records:
            row, kept = self.alive[record["row"]], self.alive[record["duplicate_of"]]
            located.append(
                {
                    "step": step,
                    "file": self.table.files[row],
                    "row": int(self.table.rows[row]),
                    "duplicate_of_file": self.table.files[kept],
                    "duplicate_of_row": int(self.table.rows[kept]),
                    **{key: record[key] for key in ("similarity", "label", "kept_label", "label_conflict")},
                    "text": self.texts[row],
                }
            )
        return located

    def _removal(self, rows: np.ndarray, step: str) -> list[dict]:
        """Removal records (file, row as the user sees it, label, text) of original positions `rows`."""
        return [
            {
                "step": step,
                "file": self.table.files[row],
                "row": int(self.table.rows[row]),
                "label": self.labels[row] if _is_labelled(self.labels[row]) else None,
                "text": self.texts[row],
            }
            for row in rows
        ]

    def apply(self, step: str, keep: np.ndarray, records: list[dict] | None = None, **details: Any) -> None:
        """Keep the surviving rows where `keep` (a mask over them, not over all rows) and log the step's counts.

        `records` replaces the default removal records (deduplication passes its own, naming the kept copy).
        """
        before = self.current_labels()
        dropped = self.alive[~keep]
        self.removed += records if records is not None else self._removal(dropped, step)
        self.alive = self.alive[keep]
        self.log.append(
            {
                "step": step,
                **details,
                "rows_before": len(before),
                "rows_after": len(self.alive),
                "removed": int(len(dropped)),
                "per_class_before": class_counts(before),
                "per_class_after": class_counts(self.current_labels()),
            }
        )


def write_rows(frame: pd.DataFrame, path: Path, output_format: str) -> None:
    """The rows with their original columns (cells as the reader gives them: strings) in any supported format.

    Args:
        frame (`pd.DataFrame`):
            The rows to write, all columns.
        path (`Path`):
            The file to write (a staged temporary name in `prepare`).
        output_format (`str`):
            `"jsonl"` (one object per line), `"json"` (a list, indented), `"parquet"` (needs pyarrow),
            `"tsv"`; anything else is written as CSV. Text is UTF-8 without BOM.
    """
    if output_format in ("jsonl", "json"):
        records = frame.to_dict(orient="records")
        with path.open("w", encoding="utf-8") as handle:
            if output_format == "jsonl":
                handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
            else:
                json.dump(records, handle, ensure_ascii=False, indent=1)
                handle.write("\n")
    elif output_format == "parquet":
        frame.reset_index(drop=True).to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False, encoding="utf-8", sep="\t" if output_format == "tsv" else ",")


def _write_report(report: dict, removed: list[dict], report_path: Path, stage: StagedFiles) -> None:
    """Stage removed_rows.csv (beside the report) and the JSON report; `report` gains `removed_rows_file`."""
    removed_path = report_path.with_name("removed_rows.csv")
    columns = [
        "step",
        "file",
        "row",
        "duplicate_of_file",
        "duplicate_of_row",
        "similarity",
        "label",
        "kept_label",
        "label_conflict",
        "text",
    ]
    table = pd.DataFrame(removed, columns=columns)
    # Rows that duplicate nothing leave duplicate_of_row empty: nullable ints, so row numbers never print as 2.0.
    for column in ("row", "duplicate_of_row"):
        table[column] = table[column].astype("Int64")
    table.to_csv(stage.path(removed_path), index=False, encoding="utf-8")
    report["removed_rows_file"] = str(removed_path)
    stage.path(report_path).write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")


def _listed(records: list[dict]) -> list[dict]:
    """The first `MAX_LISTED` records, for the JSON report (removed_rows.csv has them all)."""
    return records[:MAX_LISTED]


def prepare(args: PrepareArguments) -> dict:
    """The full pipeline of `main()` on parsed arguments; returns the report.

    Every output is written under a temporary name and moved into place at the end: all of them, or none.

    Args:
        args (`PrepareArguments`):
            Parsed arguments (checked here first; `push_to_hub` resolved in place).

    Returns:
        `dict`: The report as written to prepare_report.json (`inputs`, `arguments`, `tfidf`, `steps`,
        `split`, `outputs`, duplicates and label conflicts, `removed_rows_file`, …), plus `hub` after a push.

    Raises:
        `UsageError`, `DataError`, `OutputError`: From the checks and reading; also `DataError` when no row
        survives the steps, and `UsageError` for a `--labels_to_filter` label the input lacks.
        `HubError`: A failed `--push_to_hub` (the local outputs are written by then).
    """
    check_arguments(args)
    label_columns = [args.label_column] if args.label_column else []
    flags = {column: "--text_columns" for column in args.text_columns}
    flags.update({column: "--label_column" for column in label_columns})
    table = read_table(args.input_files, list(args.text_columns) + label_columns, args.encoding, args.format, flags)
    texts = build_texts(table, args.text_columns)
    labels = build_labels(table, args.label_column, args.pick_column, args.category_column)
    # A plain --label_column has no "a category implies pick=1" rule: its copies agree only when equal.
    compatible = None if args.label_column else joint_labels_compatible
    steps = _Steps(table, texts, labels)

    keep, records = exact_dedup(texts, labels, compatible)
    exact = steps.located(records, "exact_dedup")
    steps.apply("exact_dedup", keep, exact)

    near: list[dict] = []
    if args.near_dedup:
        # Only the rows exact dedup kept; `located` maps the positions among them back to file and row.
        keep, records = near_dedup(
            [texts[i] for i in steps.alive], steps.current_labels(), args.dedup_threshold, compatible
        )
        near = steps.located(records, "near_dedup")
        steps.apply("near_dedup", keep, near, threshold=args.dedup_threshold)

    if args.labels_to_filter:
        # A typo would otherwise filter nothing and say nothing.
        # All labels as read, not the survivors: a label whose rows deduplication removed is not a typo.
        seen = {str(label) for label in labels if _is_labelled(label)}
        unknown = [label for label in args.labels_to_filter if str(label) not in seen]
        if unknown:
            raise UsageError(
                f"--labels_to_filter: {', '.join(map(repr, unknown))} "
                f"{'is' if len(unknown) == 1 else 'are'} not a label of the input"
                f"{closest(str(unknown[0]), sorted(seen))} (labels: {', '.join(sorted(seen)[:20])})"
            )
        steps.apply(
            "filter_labels",
            filter_labels(steps.current_labels(), args.labels_to_filter),
            labels=list(args.labels_to_filter),
        )
    if args.min_class_count > 1:  # 0 and 1 both remove nothing
        keep, rare = drop_rare_classes(steps.current_labels(), args.min_class_count)
        steps.apply("min_class_count", keep, min_count=args.min_class_count, classes_removed=rare)
    if args.reduce_majority_to is not None:
        keep, cap = reduce_majority(steps.current_labels(), args.reduce_majority_to, args.seed)
        steps.apply("reduce_majority", keep, fraction=args.reduce_majority_to, cap_per_class=cap)

    final = steps.alive
    if len(final) == 0:
        raise DataError(f"no row is left after step '{steps.log[-1]['step']}' (counts per step: "
                        f"{', '.join(str(step['rows_after']) for step in steps.log)}); nothing would be written")
    final_labels = steps.current_labels()
    positions = _split(final_labels, args)
    split_rows = {name: final[rows] for name, rows in positions.items() if name != "info"}  # back to input rows
    per_class: dict[str, dict[str, int]] = {}
    for name, rows in split_rows.items():
        for label, count in class_counts([labels[i] for i in rows]).items():
            # Every split for every class, 0 where absent: the per-class table of the report is rectangular.
            per_class.setdefault(label, dict.fromkeys(split_rows, 0))[name] = count
    split_info = {"test_size": args.test_size, "validation_size": args.validation_size, "seed": args.seed,
                  **positions["info"], **{f"{name}_rows": int(len(rows)) for name, rows in split_rows.items()},
                  "per_class": per_class}

    paths = _output_paths(args)
    output_format = table_format(paths["train"])
    outputs = {name: str(paths[name]) for name in SPLITS if name in paths}

    conflicts = [record for record in exact + near if record["label_conflict"]]
    report = {
        "inputs": [
            # Table sources are str(Path(file)): "./data/x.csv" is named "data/x.csv" there.
            {"file": str(path), "rows": int(sum(f == str(Path(path)) for f in table.files))}
            for path in dict.fromkeys(map(str, args.input_files))
        ],
        "arguments": asdict(args),
        "tfidf": {
            "analyzer": TFIDF_ANALYZER,
            "ngram_range": list(TFIDF_NGRAM_RANGE),
            "sublinear_tf": True,
            "preprocess": "NFKC, lower case, punctuation as spaces",
        },
        "steps": steps.log,
        "split": split_info,
        "outputs": outputs,
        "label_conflicts_count": len(conflicts),
        "label_conflicts": _listed(conflicts),
        "duplicates_count": {"exact": len(exact), "near": len(near)},
        "near_duplicates": _listed(near),
        "exact_duplicates": _listed(exact),
        "listed_at_most": MAX_LISTED,
        "columns": [str(column) for column in table.frame.columns],
    }
    with staged_files() as stage:
        for name, rows in split_rows.items():
            write_rows(table.frame.iloc[rows], stage.path(paths[name]), output_format)
        _write_report(report, steps.removed, paths["report"], stage)
    logger.info(
        "prepare: %d rows read, %d exact and %d near duplicates (%d label conflicts), %s",
        len(labels),
        len(exact),
        len(near),
        len(conflicts),
        ", ".join(f"{len(rows)} {name}" for name, rows in split_rows.items()),
    )
    if args.push_to_hub:
        # After the staged write moved the outputs into place: the upload reads them at their final paths.
        report["hub"] = push_prepared(args, report, paths)
    return report


SPLITS = ("train", "validation", "test")


def _split(labels: list[Label], args: PrepareArguments) -> dict[str, Any]:
    """Positions (among the kept rows) of train, validation and test: stratified, seeded; test first, then
    validation from the rest, each the asked share of all kept rows."""
    info: dict[str, Any] = {}
    train = np.arange(len(labels))
    parts: dict[str, Any] = {}
    if args.test_size > 0:
        train, test, test_info = stratified_split(labels, args.test_size, args.seed)
        parts["test"] = test
        info.update(test_info)
    if args.validation_size > 0:
        size = min(max(1, round(args.validation_size * len(labels))), len(train) - 1)  # keep a training row
        if size < 1:
            raise DataError(f"{len(train)} training row(s): too few to hold out a validation split; lower "
                            "--validation_size or --test_size")
        # Every class with two rows gets one into validation (the gate thresholds and the best checkpoint are
        # chosen there): `cover` may make it slightly larger than asked.
        rest_labels = [labels[i] for i in train]
        rest, validation, validation_info = stratified_split(rest_labels, size, args.seed, cover=rest_labels)
        train, parts["validation"] = train[rest], train[validation]
        info["validation_split"] = validation_info
    ordered = {"train": train, **{name: parts[name] for name in ("validation", "test") if name in parts}}
    return {**ordered, "info": info}


def _training_flags(args: PrepareArguments, columns: Sequence[str]) -> list[str]:
    """The run_finetune.py column flags that read these outputs (defaults left out)."""
    flags = []
    if list(args.text_columns) != list(DEFAULT_TEXT_COLUMNS):
        flags += ["--text_columns", *args.text_columns]
    category = args.label_column or args.category_column
    if category != CATEGORY_COLUMN and category in columns:
        flags += ["--category_column", category]
    if args.pick_column != PICK_COLUMN and args.pick_column in columns:
        flags += ["--pick_column", args.pick_column]
    return flags


def dataset_card(report: dict, args: PrepareArguments, repo_id: str, data_files: dict[str, str],
                 columns: Sequence[str]) -> str:
    """The dataset card (README.md) of a prepared dataset.

    `configs` naming the split files (so `datasets.load_dataset(repo_id)` finds them), counts per class and
    split, the cleaning steps, and the command that trains on it.

    Args:
        report (`dict`):
            `prepare`'s report; needs `inputs`, `split`, `steps`, `duplicates_count`, `label_conflicts_count`
            and `removed_rows_file`.
        args (`PrepareArguments`):
            The arguments of the run (seed, columns, threshold).
        repo_id (`str`):
            The dataset repo the card is for.
        data_files (`dict[str, str]`):
            Split -> path in the repo (e.g. `"data/clean_train.csv"`).
        columns (`Sequence[str]`):
            The outputs' columns; a non-default label column is named in the training command only if it is
            one of them.

    Returns:
        `str`: Markdown with a YAML header.
    """
    import yaml

    # `configs` in the card's YAML is how `datasets.load_dataset(repo_id)` finds the split files.
    metadata = {
        "configs": [{"config_name": "default",
                     "data_files": [{"split": split, "path": path} for split, path in data_files.items()]}],
        "task_categories": ["text-classification"],
        "tags": ["multitask-prepared"],
    }
    splits = list(data_files)
    lines = ["---", yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).strip(), "---", "",
             f"# {repo_id.split('/')[-1]}", "",
             f"Prepared with `python -m multitask.prepare` from {sum(i['rows'] for i in report['inputs'])} rows of "
             f"{', '.join('`' + Path(i['file']).name + '`' for i in report['inputs'])}: exact and near-duplicate "
             "removal, label steps, and a stratified, seeded split (seed "
             f"{args.seed}). Text columns: {', '.join('`' + c + '`' for c in args.text_columns)}; label: "
             + (f"`{args.label_column}`." if args.label_column
                else f"`{args.category_column}` (category) and `{args.pick_column}` (Pick/Decline)."), "",
             "## Splits and classes", "",
             "| class | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    per_class = report["split"]["per_class"]
    names = {"pick=0": "Decline (pick=0)", "pick=1": "Pick, no category (pick=1)"}
    for label, counts in per_class.items():
        lines.append(f"| {markdown_cell(names.get(label, label))} | " + " | ".join(str(counts.get(split, 0)) for split in splits) + " |")
    totals = [str(report["split"].get(f"{split}_rows", 0)) for split in splits]
    lines += ["| **all** | " + " | ".join(totals) + " |", "", "## What was removed", "",
              "| step | rows before | removed | rows after | settings |", "|---|---:|---:|---:|---|"]
    # [1:]: the first entry is the "read" count, which has no rows_before/removed to tabulate.
    for step in report["steps"][1:]:
        settings = ", ".join(f"{key}={value}" for key, value in step.items()
                             if key not in ("step", "rows_before", "rows_after", "removed", "per_class_before",
                                            "per_class_after"))
        lines.append(f"| {step['step']} | {step['rows_before']} | {step['removed']} | {step['rows_after']} | "
                     f"{settings} |")
    duplicates = report["duplicates_count"]
    lines += ["", f"Exact duplicates (after NFKC and whitespace normalisation): {duplicates['exact']}; near duplicates "
              f"(character n-gram TF-IDF cosine >= {args.dedup_threshold}): {duplicates['near']}; duplicates whose "
              f"labels disagree (label noise): {report['label_conflicts_count']}. Every removed row, the step that "
              "removed it and what it duplicated: `data/removed_rows.csv`; the full report: "
              f"`data/{Path(report['removed_rows_file']).with_name('prepare_report.json').name}`.", "",
              "## Train on it", "", "```bash",
              " ".join(["python run_finetune.py --dataset_repo", repo_id,
                        "--model_name_or_path microsoft/deberta-v3-base", *_training_flags(args, columns)]),
              "```", "",
              "The splits load with `datasets.load_dataset(\"" + repo_id + "\")`; without a validation split, "
              "run_finetune.py holds out a stratified `--validation_split` of train.", ""]
    return "\n".join(lines)


def push_prepared(args: PrepareArguments, report: dict, paths: dict[str, Path]) -> dict:
    """Upload the written splits, report and removed rows under `data/` with a dataset card.

    One commit, or none when nothing changed. The card is written to a temporary folder, never beside the
    outputs.

    Args:
        args (`PrepareArguments`):
            Needs the resolved `push_to_hub` repo id and `hub_private_repo`.
        report (`dict`):
            `prepare`'s report (for the card).
        paths (`dict[str, Path]`):
            Local outputs by name: the splits, `report` and `removed`.

    Returns:
        `dict`: `repo_id`, `url`, `commit`, `added`, `modified`, `unchanged` and `message` of the upload.

    Raises:
        `HubError`: From `upload_files`.
    """
    import tempfile

    from multitask.io.hub import upload_files

    data_files = {split: f"data/{paths[split].name}" for split in SPLITS if split in paths}
    files = {path: paths[split] for split, path in data_files.items()}
    files[f"data/{paths['report'].name}"] = paths["report"]
    files[f"data/{paths['removed'].name}"] = paths["removed"]
    with tempfile.TemporaryDirectory() as folder:
        card = Path(folder) / "README.md"
        card.write_text(dataset_card(report, args, args.push_to_hub, data_files, list(report.get("columns", []))),
                        encoding="utf-8")
        files["README.md"] = card
        result = upload_files(args.push_to_hub, files, repo_type="dataset", private=args.hub_private_repo,
                              commit_message=f"Prepared data: {', '.join(data_files)}")
    print(result["message"])
    return {key: result[key] for key in ("repo_id", "url", "commit", "added", "modified", "unchanged", "message")}


def check_leakage(args: PrepareArguments) -> dict:
    """`--leakage_check`: test rows that near-duplicate training rows, written to a JSON report.

    Prints a summary and the first 20 leaks. Labels are compared only when both files carry them.

    Args:
        args (`PrepareArguments`):
            Needs `train_file` and `test_file`; `report_file` overrides `<test stem>_leakage.json` beside the
            test file.

    Returns:
        `dict`: `train_file`, `test_file`, `threshold`, row counts, `leaking_test_rows`, `leaks` (each with
        file rows as the user sees them, texts and, with labels, `label_conflict`) and `report_file`.

    Raises:
        `SystemExit`: Status 1 with `--fail_on_leakage` when any test row leaks.
    """
    check_arguments(args)
    flags = {column: "--text_columns" for column in args.text_columns}
    train = read_table([args.train_file], list(args.text_columns), args.encoding, args.format, flags)
    test = read_table([args.test_file], list(args.text_columns), args.encoding, args.format, flags)
    train_texts, test_texts = build_texts(train, args.text_columns), build_texts(test, args.text_columns)
    leaks = leakage_check(train_texts, test_texts, args.dedup_threshold)
    # Labels are compared only when both files carry them: a test row copying a training row with another
    # label is label noise as well as leakage.
    label_columns = [args.label_column] if args.label_column else [args.pick_column, args.category_column]
    train_labels = test_labels = None
    # any(): a joint label needs only one of the gate and category columns (a missing one reads as "").
    if all(any(column in table.frame.columns for column in label_columns) for table in (train, test)):
        train_labels = build_labels(train, args.label_column, args.pick_column, args.category_column)
        test_labels = build_labels(test, args.label_column, args.pick_column, args.category_column)
    compatible = None if args.label_column else joint_labels_compatible
    records = []
    for leak in leaks:
        record = {
            "test_file": args.test_file,
            "test_row": int(test.rows[leak["test_row"]]),
            "train_file": args.train_file,
            "train_row": int(train.rows[leak["train_row"]]),
            "similarity": leak["similarity"],
            "matches": leak["matches"],
            "test_text": test_texts[leak["test_row"]],
            "train_text": train_texts[leak["train_row"]],
        }
        if train_labels is not None and test_labels is not None:
            test_label, train_label = test_labels[leak["test_row"]], train_labels[leak["train_row"]]
            record.update(
                test_label=test_label,
                train_label=train_label,
                label_conflict=_conflict(test_label, train_label, compatible),
            )
        records.append(record)
    report = {
        "train_file": args.train_file,
        "test_file": args.test_file,
        "threshold": args.dedup_threshold,
        "train_rows": len(train_texts),
        "test_rows": len(test_texts),
        "leaking_test_rows": len(records),
        "leaks": records,
    }
    test_path = Path(args.test_file)
    report_path = (
        Path(args.report_file) if args.report_file else test_path.with_name(f"{test_path.stem}_leakage.json")
    )
    with staged_files() as stage:
        stage.path(report_path).write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    report["report_file"] = str(report_path)
    print(
        f"{len(records)} of {len(test_texts)} test rows near-duplicate (cosine >= {args.dedup_threshold}) "
        f"a training row; report: {report_path}"
    )
    for record in records[:20]:
        print(
            f"  {record['test_file']} row {record['test_row']} ~ {record['train_file']} row {record['train_row']} "
            f"({record['similarity']:.3f})"
        )
    if args.fail_on_leakage and records:
        raise SystemExit(1)  # 1, not the usage-error 2: the check ran and found leaks (a CI gate can tell them apart)
    return report


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI entry point; returns the report (of the preparation or of the leakage check).

    Args:
        argv (`Sequence[str]`, *optional*):
            Command-line arguments without the program name; None reads `sys.argv`.

    Returns:
        `dict`: `prepare`'s or `check_leakage`'s report.
    """
    args = parse_args(argv)
    set_read_limits(ReadLimits.max_input_bytes, ReadLimits.max_cell_chars)  # the defaults, whatever ran before
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.leakage_check:
        return check_leakage(args)
    return prepare(args)


if __name__ == "__main__":
    sys.exit(cli(main))
