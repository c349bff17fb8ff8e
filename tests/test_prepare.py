"""multitask.prepare: deduplication rules, label steps, stratified split, report, errors, leakage check."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from multitask.data.loading import DataError
from multitask.prepare import (
    PrepareArguments,
    _tfidf,
    drop_rare_classes,
    exact_dedup,
    filter_labels,
    leakage_check,
    main,
    near_dedup,
    reduce_majority,
    similar_pairs,
    stratified_split,
)


def test_exact_dedup_keeps_first_prefers_labelled_and_flags_conflicts():
    texts = [
        "Reset my password",
        "reset my password",
        "Ｒｅｓｅｔ  my password ",
        "Reset my password",
        "other",
    ]
    labels = [None, "account", "account", "billing", None]
    keep, removed = exact_dedup(texts, labels)
    # Full-width letters and extra spaces are the same text (NFKC, whitespace); a case change is not.
    assert keep.tolist() == [False, True, True, False, True]
    by_row = {record["row"]: record for record in removed}
    assert by_row[0]["duplicate_of"] == 2  # the unlabelled first copy yields to the first labelled one
    assert not by_row[0]["label_conflict"] and by_row[0]["similarity"] == 1.0
    assert by_row[3]["duplicate_of"] == 2 and by_row[3]["label_conflict"]
    assert (by_row[3]["label"], by_row[3]["kept_label"]) == ("billing", "account")


def test_near_dedup_removes_edits_keeps_distinct_and_flags_label_noise():
    texts = [
        "how do i reset my online banking password",
        "how do i reset my online banking pasword",  # typo
        "what is the weather like in paris today",
        "How do I reset my online banking password?",  # case + punctuation
        "口座のパスワードを再設定する方法を教えてください",
        "口座のパスワードを再設定する方法を教えてくださいね",  # a particle added
        "transfer money to my savings account",
    ]
    labels = ["account", "account", "weather", "billing", "account", "account", "transfer"]
    keep, removed = near_dedup(texts, labels, threshold=0.8)
    assert keep.tolist() == [True, False, True, False, True, False, True]
    by_row = {record["row"]: record for record in removed}
    assert by_row[1]["duplicate_of"] == 0 and not by_row[1]["label_conflict"]
    assert by_row[3]["duplicate_of"] == 0 and by_row[3]["label_conflict"]
    assert by_row[3]["label"] == "billing" and by_row[3]["kept_label"] == "account"
    assert by_row[5]["duplicate_of"] == 4 and 0.8 <= by_row[5]["similarity"] < 1.0


def test_near_dedup_keeps_the_labelled_copy_and_resolves_chains_greedily():
    texts = ["please close my credit card account", "please close my credit card account now"]
    keep, removed = near_dedup(texts, [None, "close_account"], threshold=0.8)
    assert keep.tolist() == [False, True] and removed[0]["duplicate_of"] == 1
    assert removed[0]["label"] is None and not removed[0]["label_conflict"]
    keep, _ = near_dedup(texts, None, threshold=0.8)
    assert keep.tolist() == [True, False]


def test_similar_pairs_finds_exactly_the_brute_force_pairs():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)] + ["の", "を", "に"]
    texts = [" ".join(rng.choice(words, size=rng.integers(3, 9))) for _ in range(300)]
    texts += [text + " x" for text in texts[:40]] + [text.upper() for text in texts[40:60]]
    matrix = _tfidf(texts).astype(np.float64)
    dense = (matrix @ matrix.T).toarray()
    for threshold in (0.5, 0.9, 1.0):
        first, second, similarity = similar_pairs(texts, threshold)
        upper = np.triu_indices(len(texts), 1)
        expected = {(i, j) for i, j in zip(*upper) if dense[i, j] >= threshold - 1e-5}
        assert set(zip(first.tolist(), second.tolist())) == expected
        assert np.allclose(similarity, dense[first, second], atol=1e-4)


def test_leakage_check_lists_test_rows_copying_training_rows():
    train = ["cancel my order please", "where is my parcel", "open a new account"]
    test = ["where is my parcel?", "something completely different", "Cancel my order please", "cancel order"]
    leaks = leakage_check(train, test, threshold=0.9)
    assert [(leak["test_row"], leak["train_row"]) for leak in leaks] == [(0, 1), (2, 0)]
    assert leaks[1]["similarity"] == 1.0 and leaks[1]["matches"] == 1
    assert leakage_check(train, [], 0.9) == []


def test_filter_min_count_and_majority_reduction():
    labels = ["a"] * 10 + ["b"] * 4 + ["c"] * 3 + [None] * 2 + ["junk"]
    assert filter_labels(labels, ["junk"]).tolist() == [True] * 19 + [False]
    keep, rare = drop_rare_classes(labels, 3)
    assert rare == {"junk": 1} and keep.sum() == 19
    keep, cap = reduce_majority(labels[:-1], 1.0, seed=0)  # seed rule: cap = 2 x int(smallest x fraction)
    kept = pd.Series([label for label, k in zip(labels[:-1], keep) if k]).value_counts(dropna=False)
    assert cap == 6 and kept["a"] == 6 and kept["b"] == 4 and kept["c"] == 3 and keep[-2:].all()
    keep_again, _ = reduce_majority(labels[:-1], 1.0, seed=0)
    assert (keep == keep_again).all()  # seeded
    _, cap = reduce_majority(labels[:-1], 0.5, seed=0)
    assert cap == 2


def test_stratified_split_keeps_proportions_and_reports_small_classes():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20 + ["lonely"]
    train, test, info = stratified_split(labels, 0.2, seed=1)
    test_counts = pd.Series([labels[i] for i in test]).value_counts().to_dict()
    assert test_counts == {"a": 10, "b": 6, "c": 4}
    assert info["stratified"] and info["too_small_to_stratify"] == {"lonely": 1}
    assert 100 in train and sorted(np.concatenate([train, test]).tolist()) == list(range(101))
    assert (stratified_split(labels, 0.2, seed=1)[1] == test).all()
    _, _, info = stratified_split(["x", "x", "y", "y", "z", "z"], 0.2, seed=0)  # 2 test rows, 3 classes
    assert not info["stratified"] and info["reason"]


ACCOUNT = ["i forgot my login name", "my card was stolen yesterday", "update the phone number on file",
           "why is my account locked", "add my wife as a joint holder", "close the old savings account",
           "how long does a transfer take", "order new checks for me", "set up a travel notice",
           "what is the routing number"]  # fmt: skip
BILLING = ["why was i charged twice this month", "dispute a charge from a restaurant", "when is my bill due",
           "pay my electricity bill now", "the late fee seems wrong", "refund for a cancelled flight",
           "split the payment over three months", "my invoice shows the wrong address",
           "stop the automatic payment", "how much do i owe in total"]  # fmt: skip


def _write(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False, encoding="utf-8")
    return path


def test_cli_pipeline_writes_splits_and_a_complete_report(tmp_path):
    rows = [
        {"pick": "1", "category": "account", "title": "how do i reset my password", "body": ""},
        {"pick": "1", "category": "account", "title": "how do i reset my pasword", "body": ""},
        {"pick": "1", "category": "billing", "title": "How do I reset my password?", "body": ""},
        {"pick": "0", "category": "", "title": "how do i reset my password", "body": ""},
        {"pick": "0", "category": "", "title": "buy cheap pills online now", "body": "spam"},
    ]
    rows += [{"pick": "1", "category": "account", "title": text, "body": ""} for text in ACCOUNT]
    rows += [{"pick": "Pick", "category": "billing", "title": text, "body": ""} for text in BILLING]
    source = _write(tmp_path / "raw.csv", rows)
    report = main([
        "--input_files", str(source), "--output_prefix", str(tmp_path / "out" / "clean"),
        "--dedup_threshold", "0.85", "--labels_to_filter", "pick=0", "--test_size", "0.25",
    ])  # fmt: skip
    train = pd.read_csv(tmp_path / "out" / "clean_train.csv", dtype=str, keep_default_na=False)
    test = pd.read_csv(tmp_path / "out" / "clean_test.csv", dtype=str, keep_default_na=False)
    removed = pd.read_csv(tmp_path / "out" / "removed_rows.csv")
    assert list(train.columns) == ["pick", "category", "title", "body"]
    assert len(train) + len(test) + len(removed) == len(rows)  # nothing dropped silently
    assert report == json.loads((tmp_path / "out" / "prepare_report.json").read_text(encoding="utf-8"))
    steps = {step["step"]: step for step in report["steps"]}
    assert steps["exact_dedup"]["removed"] == 1 and steps["near_dedup"]["removed"] == 2
    assert steps["filter_labels"]["per_class_before"]["pick=0"] == 1
    assert "pick=0" not in steps["filter_labels"]["per_class_after"]
    (exact,) = report["exact_duplicates"]
    assert (exact["row"], exact["duplicate_of_row"], exact["kept_label"]) == (5, 2, "account")
    assert exact["label_conflict"]  # pick=0 row copying a Pick/account row
    near = {record["row"]: record for record in report["near_duplicates"]}
    assert near[3]["duplicate_of_row"] == 2 and near[4]["label_conflict"] and not near[3]["label_conflict"]
    assert report["label_conflicts_count"] == 2
    per_class = report["split"]["per_class"]
    assert (
        set(per_class) == {"account", "billing"}
        and per_class["account"]["train"] + per_class["account"]["test"] == 11
    )
    assert all(
        abs(counts["test"] - 0.25 * (counts["train"] + counts["test"])) <= 1 for counts in per_class.values()
    )
    assert set(removed["step"]) == {"exact_dedup", "near_dedup", "filter_labels"}
    # Row numbers are whole numbers even where a filtered row leaves duplicate_of_row empty (never "2.0").
    raw = pd.read_csv(tmp_path / "out" / "removed_rows.csv", dtype=str, keep_default_na=False)
    assert all(value.isdigit() for value in raw["row"]) and "" in set(raw["duplicate_of_row"])
    assert all(value.isdigit() for value in raw["duplicate_of_row"] if value)
    assert not [path for path in (tmp_path / "out").iterdir() if ".partial-" in path.name]


def test_cli_jsonl_in_jsonl_out_with_line_numbers(tmp_path):
    lines = [
        '{"text": "track my parcel", "label": "delivery"}',
        "",
        '{"text": "track my parcel!", "label": "delivery"}',
        '{"text": "open an account", "label": "account"}',
    ]
    source = tmp_path / "raw.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = main(["--input_files", str(source), "--output_prefix", str(tmp_path / "clean"),
                   "--text_columns", "text", "--label_column", "label", "--test_size", "0"])  # fmt: skip
    assert report["near_duplicates"][0]["row"] == 3 and report["near_duplicates"][0]["duplicate_of_row"] == 1
    written = pd.read_json(tmp_path / "clean_train.jsonl", lines=True)
    assert written["text"].tolist() == ["track my parcel", "open an account"]
    assert not (tmp_path / "clean_test.jsonl").exists()


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (None, [], r"missing\.csv: file not found"),
        ({"title": ["a"], "pick": ["1"]}, ["--text_columns", "text"], r"bad\.csv: missing column\(s\) 'text'.*--text_columns"),
        ({"title": ["ok", " ", "fine"], "body": ["", "", ""]}, [], r"bad\.csv, row 3.*title/body|title/body.*bad\.csv, row 3"),
        ({"title": ["a", "b"], "pick": ["1", "maybe"]}, ["--text_columns", "title"], r"bad\.csv, row 3, column 'pick'"),
        ({"title": ["a"], "pick": ["0"], "category": ["x"]}, ["--text_columns", "title"], r"row 2, column 'category'.*Decline"),
    ],
)  # fmt: skip
def test_bad_input_names_file_row_and_column(tmp_path, content, extra, message):
    path = tmp_path / ("missing.csv" if content is None else "bad.csv")
    if content is not None:
        pd.DataFrame(content).to_csv(path, index=False)
    with pytest.raises(DataError, match=message):
        main(["--input_files", str(path), "--output_prefix", str(tmp_path / "out"), *extra])


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"title": "fine"}\n{"title": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: not valid JSON"):
        main(
            ["--input_files", str(path), "--output_prefix", str(tmp_path / "out"), "--text_columns", "title"]
        )


def test_leakage_check_mode(tmp_path, capsys):
    train = _write(
        tmp_path / "train.csv", {"category": ["a", "b"], "title": ["where is my parcel", "open account"]}
    )
    test = _write(
        tmp_path / "test.csv", {"category": ["b", "a"], "title": ["Where is my parcel?", "unrelated text"]}
    )
    arguments = [
        "--leakage_check",
        "--train_file",
        str(train),
        "--test_file",
        str(test),
        "--text_columns",
        "title",
    ]
    report = main(arguments)
    assert report["leaking_test_rows"] == 1
    (leak,) = report["leaks"]
    assert (leak["test_row"], leak["train_row"], leak["label_conflict"]) == (2, 2, True)
    assert json.loads((tmp_path / "test_leakage.json").read_text(encoding="utf-8"))["leaking_test_rows"] == 1
    assert "1 of 2 test rows" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main([*arguments, "--fail_on_leakage"])
    assert exit_info.value.code == 1


def test_help_documents_every_field(capsys):
    for field in dataclasses.fields(PrepareArguments):
        assert field.metadata.get("help"), field.name
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--leakage_check" in capsys.readouterr().out


def test_report_counts_the_rows_of_a_file_given_with_a_dot_path(tmp_path, monkeypatch):
    """An input typed as ./raw.jsonl is counted in the report (tables name it raw.jsonl internally)."""
    monkeypatch.chdir(tmp_path)
    rows = ['{"text": "track my parcel", "label": "delivery"}', '{"text": "open an account", "label": "account"}']
    (tmp_path / "raw.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    report = main(["--input_files", "./raw.jsonl", "--output_prefix", str(tmp_path / "clean"),
                   "--text_columns", "text", "--label_column", "label", "--test_size", "0"])  # fmt: skip
    assert report["inputs"] == [{"file": "./raw.jsonl", "rows": 2}]
