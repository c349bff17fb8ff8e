"""Data loading: merging, label parsing, splits, samples, and every bad input named by file, row and column."""

from collections import Counter

import pandas as pd
import pytest

from multitask.data.loading import (
    IGNORE_INDEX,
    DataError,
    MultitaskCollator,
    load_labeled_file,
    load_training_data,
)
from multitask.io.tables import read_csv


def write_csv(path, rows, encoding="utf-8"):
    pd.DataFrame(rows).to_csv(path, index=False, encoding=encoding)
    return path


@pytest.fixture
def files(tmp_path):
    task1 = write_csv(tmp_path / "task1.csv", {
        "pick": ["1", "0", "Pick", "decline", "TRUE", "1"],
        "title": ["Election results", "Buy cheap pills", "Stock market rally", "Lorem ipsum", "Rain tomorrow", "選挙の結果"],
        "body": ["Votes counted.", "", "Shares rose.", "dolor sit", "", "投票が集計された。"],
    })
    task2 = write_csv(tmp_path / "task2.csv", {
        "category": ["politics", "economy", "weather", "politics", "economy"],
        "title": ["Election results", "Stock market rally", "Storm warning", "Parliament votes", "Bank rates"],
        "body": ["Votes counted.", "Shares rose.", "Wind and rain.", "", "Rates cut."],
    })
    val = write_csv(tmp_path / "val.csv", {
        "pick": ["1", "0", "1"],
        "category": ["economy", "", "politics"],
        "title": ["Market news", "Spam offer", "Vote count"],
        "body": ["", "click here", ""],
    })
    return tmp_path, task1, task2, val


def test_merge_labels_and_maps(files):
    _, task1, task2, val = files
    data = load_training_data(task1, task2, val, separator=" [SEP] ")
    train = data.train.to_pandas().set_index("text")
    # Texts in both files become one row with both labels; the rest carry -100 for the missing task.
    assert train.loc["Election results [SEP] Votes counted.", "gate_labels"] == 1
    assert train.loc["Election results [SEP] Votes counted.", "category_labels"] == data.category_labels.index("politics")
    assert train.loc["Buy cheap pills", "category_labels"] == IGNORE_INDEX  # empty body skipped in the join
    assert train.loc["Storm warning [SEP] Wind and rain.", "gate_labels"] == IGNORE_INDEX
    assert len(train) == 6 + 5 - 2
    assert data.report["rows_in_both_files"] == 2
    assert data.category_labels == ["economy", "politics", "weather"]  # sorted: deterministic ids
    assert list(data.train["row_id"]) == list(range(len(data.train)))
    assert list(data.validation["gate_labels"]) == [1, 0, 1]
    assert list(data.validation["category_labels"]) == [0, IGNORE_INDEX, 1]


def test_pick_values_any_case(files):
    _, task1, _, _ = files
    data = load_training_data(task1, None, validation_split=0.34)
    assert sorted(list(data.train["gate_labels"]) + list(data.validation["gate_labels"])) == [0, 0, 1, 1, 1, 1]
    assert not data.has_category


def test_stratified_split_is_seeded(files):
    _, task1, task2, _ = files
    first = load_training_data(task1, task2, validation_split=0.3, seed=3)
    second = load_training_data(task1, task2, validation_split=0.3, seed=3)
    assert list(first.validation["text"]) == list(second.validation["text"])
    assert len(first.train) + len(first.validation) == 9


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.csv: file not found"):
        load_training_data(tmp_path / "nope.csv", None)


def test_missing_column(tmp_path):
    path = write_csv(tmp_path / "t1.csv", {"label": ["1"], "title": ["a"], "body": ["b"]})
    with pytest.raises(DataError, match=r"t1.csv: missing column\(s\) 'pick'"):
        load_training_data(path, None)
    path = write_csv(tmp_path / "t2.csv", {"category": ["x"], "title": ["a"]})
    with pytest.raises(DataError, match=r"t2.csv: missing column\(s\) 'body'"):
        load_training_data(None, path)


def test_unknown_pick_value_names_row_and_column(tmp_path):
    path = write_csv(tmp_path / "t1.csv", {"pick": ["1", "maybe"], "title": ["a", "b"], "body": ["", ""]})
    with pytest.raises(DataError, match=r"t1.csv, row 3, column 'pick': 'maybe' is not a pick label"):
        load_training_data(path, None)


def test_empty_text_names_row(tmp_path):
    path = write_csv(tmp_path / "t2.csv", {"category": ["x", "y"], "title": ["a", " "], "body": ["", ""]})
    with pytest.raises(DataError, match=r"t2.csv, row 3, column 'title/body': empty text"):
        load_training_data(None, path)


def test_empty_category_in_task2_is_an_error(tmp_path):
    path = write_csv(tmp_path / "t2.csv", {"category": ["x", ""], "title": ["a", "b"], "body": ["", ""]})
    with pytest.raises(DataError, match=r"t2.csv, row 3, column 'category': empty category"):
        load_training_data(None, path)


def test_unseen_validation_category(files):
    tmp_path, task1, task2, _ = files
    val = write_csv(tmp_path / "val2.csv", {"pick": ["1", "1"], "category": ["economy", "sports"], "title": ["a", "b"], "body": ["", ""]})
    with pytest.raises(DataError, match=r"val2.csv, row 3, column 'category': category 'sports' never appears in training"):
        load_training_data(task1, task2, val)


def test_unseen_test_category(files):
    tmp_path, task1, task2, val = files
    test = write_csv(tmp_path / "test.csv", {"category": ["sports"], "title": ["a"], "body": [""]})
    with pytest.raises(DataError, match=r"test.csv, row 2, column 'category'"):
        load_training_data(task1, task2, val, [test])


def test_duplicates_reported_and_conflicts_listed(tmp_path):
    path = write_csv(tmp_path / "t1.csv", {"pick": ["1", "1", "0", "1"], "title": ["a", "a", "b", "b"], "body": [""] * 4})
    data = load_training_data(path, None, validation_split=0.5)
    assert data.report["task1_duplicates_dropped"] == 2
    assert len(data.report["label_conflicts"]) == 1
    assert "row 5" in data.report["label_conflicts"][0]
    assert len(data.train) + len(data.validation) == 2


def test_encodings_bom_and_cp932(tmp_path):
    frame = {"pick": ["1"], "category": ["経済"], "title": ["株価が上昇"], "body": ["東証？！"]}
    bom = write_csv(tmp_path / "bom.csv", frame, encoding="utf-8-sig")
    sjis = write_csv(tmp_path / "sjis.csv", frame, encoding="cp932")
    assert list(read_csv(bom).columns) == ["pick", "category", "title", "body"]
    for path in (bom, sjis):
        labeled = load_labeled_file(path, ["title", "body"], " [SEP] ", {"経済": 0}, with_gate=True)
        # NFKC: full-width ？！ become ASCII ?! before tokenizing.
        assert list(labeled.dataset["text"]) == ["株価が上昇 [SEP] 東証?!"]
        assert list(labeled.dataset["category_labels"]) == [0]


def test_collator_pads_and_whitelists(files):
    from multitask.data.demo import train_tokenizer

    tokenizer = train_tokenizer(["hello world", "election results today", "選挙の結果"], vocab_size=400)
    _, task1, task2, val = files
    data = load_training_data(task1, task2, val)
    features = [
        {"input_ids": [1, 5, 2], "attention_mask": [1, 1, 1], "gate_labels": 1, "category_labels": -100, "text": "x", "row_id": 0},
        {"input_ids": [1, 2], "attention_mask": [1, 1], "gate_labels": -100, "category_labels": 2, "text": "y", "row_id": 1},
    ]
    batch = MultitaskCollator(tokenizer)(features)
    assert set(batch) == {"input_ids", "attention_mask", "gate_labels", "category_labels"}
    assert batch["input_ids"].shape == (2, 3) and batch["attention_mask"][1].tolist() == [1, 1, 0]
    assert batch["category_labels"].tolist() == [-100, 2]
    assert "row_id" in MultitaskCollator(tokenizer, keep_keys=("row_id",))(features)
    assert data.category_labels


def test_max_samples_are_stratified_seeded_and_reported(tmp_path):
    rows = [{"category": c, "title": f"{c} item {i}", "body": ""} for c, n in (("a", 30), ("b", 15), ("c", 5))
            for i in range(n)]
    path = tmp_path / "train.parquet"
    pd.DataFrame(rows).to_parquet(path)
    data = load_training_data(None, None, train_file=path, validation_split=0.2, seed=1, max_train_samples=20,
                              max_eval_samples=5)
    names = dict(enumerate(data.category_labels))
    assert len(data.train) == 20 and len(data.validation) == 5
    assert Counter(names[i] for i in data.train["category_labels"]) == {"a": 12, "b": 6, "c": 2}
    assert data.report["train_sample"]["rows_before"] == 40 and data.report["validation_sample"]["rows_after"] == 5
    assert len(data.validation_frame) == 5 and list(data.train["row_id"]) == list(range(20))
    again = load_training_data(None, None, train_file=path, validation_split=0.2, seed=1, max_train_samples=20)
    assert list(again.train["text"]) == list(data.train["text"])


def test_report_split_keeps_validation_rows_out_of_every_choice(tmp_path):
    rows = ([{"pick": "1", "category": c, "title": f"{c} item {i}", "body": ""} for c in ("a", "b") for i in range(10)]
            + [{"pick": "0", "category": "", "title": f"junk {i}", "body": ""} for i in range(10)])
    val = write_csv(tmp_path / "val.csv", rows)
    task1 = write_csv(tmp_path / "task1.csv", [{"pick": r["pick"], "title": "t " + r["title"], "body": ""} for r in rows])
    task2 = write_csv(tmp_path / "task2.csv", [{"category": r["category"], "title": "t " + r["title"], "body": ""}
                                               for r in rows if r["category"]])
    data = load_training_data(task1, task2, val, report_split=0.3, seed=5)
    chosen, held = list(data.validation["text"]), list(data.report_rows.dataset["text"])
    assert len(chosen) == 21 and len(held) == 9 and not set(chosen) & set(held)
    assert data.report["report_rows"] == 9 and len(data.validation_frame) == 21
    # Stratified: 3 rows of each category and 3 Decline rows are reported, so both gate classes are there.
    assert Counter(data.report_rows.dataset["gate_labels"]) == {1: 6, 0: 3}
    assert list(data.report_rows.frame["title"]) == held  # the frame follows the same rows
    again = load_training_data(task1, task2, val, report_split=0.3, seed=5)
    assert list(again.report_rows.dataset["text"]) == held
    assert load_training_data(task1, task2, val).report_rows is None


def test_report_split_refuses_a_validation_too_small_to_choose_on(files):
    _, task1, task2, val = files
    with pytest.raises(DataError, match="too few to keep 50% of them for --report_split"):
        load_training_data(task1, task2, val, report_split=0.5)
