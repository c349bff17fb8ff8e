"""multitask.io.tables: the one reader of every format, the one text builder, and the gate label's spellings."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest

from multitask import prepare
from multitask.data.loading import load_training_data
from multitask.errors import DataError
from multitask.io.tables import PLAIN_SEPARATOR, build_text, cell_text, parse_pick, read_table, table_format

ROWS = [
    {"pick": "1", "category": "economy", "title": "株価が上昇", "body": "Shares rose, sharply."},
    {"pick": "0", "category": "", "title": "Buy pills", "body": ""},
    {"pick": "Pick", "category": "sports", "title": "Ｆｉｎａｌ　ｓｃｏｒｅ", "body": "2-1"},
]


def write(path, rows=ROWS, **options):
    frame = pd.DataFrame(rows)
    kind = table_format(path)
    if kind == "csv":
        frame.to_csv(path, index=False, encoding=options.get("encoding", "utf-8"))
    elif kind == "tsv":
        frame.to_csv(path, index=False, sep="\t", encoding=options.get("encoding", "utf-8"))
    elif kind == "jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        data = text.encode(options.get("encoding", "utf-8"))
        path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    elif kind == "json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize(
    ("name", "options", "unit", "numbers"),
    [
        ("data.csv", {}, "row", [2, 3, 4]),
        ("data_sjis.csv", {"encoding": "cp932"}, "row", [2, 3, 4]),
        ("data_bom.tsv", {"encoding": "utf-8-sig"}, "row", [2, 3, 4]),
        ("data.jsonl", {}, "line", [1, 2, 3]),
        ("data_sjis.jsonl", {"encoding": "cp932"}, "line", [1, 2, 3]),
        ("data.jsonl.gz", {}, "line", [1, 2, 3]),
        ("data.json", {}, "record", [1, 2, 3]),
        ("data.parquet", {}, "record", [1, 2, 3]),
    ],
)
def test_every_format_reads_the_same_strings(tmp_path, name, options, unit, numbers):
    table = read_table(write(tmp_path / name, **options))
    assert table.frame.to_dict(orient="records") == ROWS
    assert table.unit == unit and table.numbers.tolist() == numbers
    assert table.where(1, "pick") == f"{tmp_path / name}, {unit} {numbers[1]}, column 'pick'"


def test_format_flag_overrides_the_extension(tmp_path):
    path = write(tmp_path / "data.jsonl")
    renamed = path.rename(tmp_path / "export.txt")
    assert read_table(renamed, "jsonl").frame.to_dict(orient="records") == ROWS
    with pytest.raises(DataError, match="JSON"):  # read as CSV by default, and said so
        read_table(renamed)


def test_cells_read_as_a_csv_shows_them(tmp_path):
    path = tmp_path / "typed.jsonl"
    path.write_text('{"pick": 1, "score": 0.5, "flag": true, "tags": ["a", "b"], "none": null}\n'
                    '{"pick": 1.0, "score": 2.0, "flag": false, "tags": [], "none": "x"}\n', encoding="utf-8")
    frame = read_table(path).frame
    assert frame.to_dict(orient="records") == [
        {"pick": "1", "score": "0.5", "flag": "true", "tags": '["a", "b"]', "none": ""},
        {"pick": "1", "score": "2", "flag": "false", "tags": "[]", "none": "x"},
    ]
    assert cell_text(float("nan")) == "" and cell_text(np.int64(3)) == "3" and cell_text(np.bool_(True)) == "true"


def test_json_shapes_and_line_numbers(tmp_path):
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"version": 1, "data": ROWS}, ensure_ascii=False), encoding="utf-8")
    assert read_table(wrapped).frame.to_dict(orient="records") == ROWS
    columns = tmp_path / "columns.json"
    columns.write_text(json.dumps({key: [row[key] for row in ROWS] for key in ROWS[0]}), encoding="utf-8")
    assert read_table(columns).frame.to_dict(orient="records") == ROWS
    lines = tmp_path / "lines.json"  # JSON Lines named .json: read as such, with line numbers
    lines.write_text('{"title": "a"}\n\n{"title": "b\u2028c"}\n', encoding="utf-8")
    table = read_table(lines)
    assert table.unit == "line" and table.numbers.tolist() == [1, 3] and table.frame["title"][1] == "b\u2028c"
    with pytest.raises(DataError, match=r"bad\.json, line 2: not valid JSON"):
        (tmp_path / "bad.json").write_text('[{"title": "a"},\n {"title": }]', encoding="utf-8")
        read_table(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("name", "location"),
    [("bad.csv", "row 3"), ("bad.tsv", "row 3"), ("bad.jsonl", "line 2"), ("bad.json", "record 2"),
     ("bad.parquet", "record 2")],
)
def test_errors_name_the_row_as_the_user_sees_it(tmp_path, name, location):
    path = write(tmp_path / name, [{"pick": "1", "title": "fine"}, {"pick": "perhaps", "title": "  "}])
    table = read_table(path)
    with pytest.raises(DataError, match=rf"{name}, {location}, column 'pick': 'perhaps' is not a pick label"):
        parse_pick(table.column("pick"), table, required=True)
    with pytest.raises(DataError, match=rf"{name}, {location}, column 'title': empty text"):
        load_training_data(path, None, text_columns=["title"], validation_split=0.5)


def test_one_text_builder_for_prepare_and_training(tmp_path, monkeypatch):
    """prepare deduplicates the very texts training sees: one builder (NFKC, strip, empty parts skipped)."""
    import multitask.io.tables as tables

    built: list[tuple[str, str]] = []
    original = tables.build_text

    def spy(parts, separator):
        text = original(parts, separator)
        built.append((separator, text))
        return text

    monkeypatch.setattr(tables, "build_text", spy)
    rows = [{"pick": "1", "title": "ＡＢＣ news", "body": " Ｓｈａｒｅｓ ｒｏｓｅ "},
            {"pick": "1", "title": "ABC news", "body": "Shares rose"},  # the same text after NFKC: a duplicate
            {"pick": "0", "title": "spam offer", "body": ""},
            {"pick": "0", "title": "another offer", "body": "  "},
            {"pick": "1", "title": "ｶﾀｶﾅ", "body": "半角"}]
    source = write(tmp_path / "raw.jsonl", rows)
    report = prepare.main(["--input_files", str(source), "--output_prefix", str(tmp_path / "clean"), "--test_size",
                           "0", "--no_near_dedup"])
    assert report["duplicates_count"]["exact"] == 1
    deduplicated = [text for separator, text in built if separator == PLAIN_SEPARATOR]
    built.clear()
    data = load_training_data(None, None, train_file=tmp_path / "clean_train.jsonl", validation_split=0.25,
                              separator=" [SEP] ")
    trained = [text for separator, text in built if separator == " [SEP] "]
    assert trained and deduplicated  # both went through the one builder
    kept = deduplicated[:1] + deduplicated[2:]
    assert [text.replace(PLAIN_SEPARATOR, " [SEP] ") for text in kept] == trained
    assert "ABC news [SEP] Shares rose" in trained and "カタカナ [SEP] 半角" in trained
    assert data.report["train_gate_duplicates_dropped"] == 0  # nothing left for training to merge
    assert build_text(["ＡＢＣ", " ", "ｘ "], " | ") == "ABC | x"


def test_prepare_outputs_in_every_format_read_back_identically(tmp_path):
    source = write(tmp_path / "raw.csv", ROWS * 2 + [{**ROWS[0], "title": f"item {i}"} for i in range(6)])
    frames = {}
    for kind in ("csv", "tsv", "jsonl", "json", "parquet"):
        prepare.main(["--input_files", str(source), "--output_prefix", str(tmp_path / kind / "clean"),
                      "--output_format", kind, "--test_size", "0.25", "--no_near_dedup"])
        frames[kind] = read_table(tmp_path / kind / f"clean_train.{kind}").frame
    for kind, frame in frames.items():
        assert frame.equals(frames["csv"]), kind
