"""The error contract, table-driven: every bad input to the four CLIs ends in one `error:` line on stderr, exit
status 2, no traceback, and nothing written (no output directory, no partial file, no run marked complete).

The CLIs run in-process through `multitask.errors.cli`, the same boundary their `__main__` blocks use; a few
cases at the end run the real scripts in a subprocess, where every byte of stderr is checked.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import Trainer
from transformers.trainer_utils import TrainOutput

import analysis.__main__ as analysis_cli
import run_finetune
import run_predict
from multitask import prepare
from multitask.errors import UserError, cli, debug_requested
from multitask.train import inputs
from multitask.train.trainer import MultitaskTrainer
from tests.conftest import CATEGORIES, SENTENCES, write_csv

ROOT = Path(__file__).resolve().parent.parent
MAINS = {
    "finetune": (run_finetune.main, True),  # (main, bare_debug_only) as each script's __main__ block passes it
    "predict": (run_predict.main, False),
    "prepare": (prepare.main, False),
    "analysis": (analysis_cli.main, False),
}


def _rows(texts_labels, column):
    return {column: [label for _, label in texts_labels], "title": [t for t, _ in texts_labels],
            "body": [""] * len(texts_labels)}


class _RunsCode:
    """Pickles as a call to print: what torch's safe loader must refuse (and never run)."""

    def __reduce__(self):
        return print, ("this line must never be printed",)


@pytest.fixture(scope="module")
def world(tmp_path_factory, encoder_dir, _base_model, tokenizer):
    """Good and bad inputs, built once; tests must leave this folder exactly as it is."""
    root = tmp_path_factory.mktemp("world")
    data = root / "data"
    data.mkdir()
    pick_rows = [(t, "1") for c in CATEGORIES for t in SENTENCES[c]] + [(t, "0") for t in SENTENCES["junk"]]
    cat_rows = [(t, c) for c in CATEGORIES for t in SENTENCES[c]]
    eval_rows = [(SENTENCES[c][i], "1", c) for c in CATEGORIES for i in (0, 1)] + [(SENTENCES["junk"][0], "0", "")]
    write_csv(data / "task1.csv", _rows(pick_rows, "pick"))
    write_csv(data / "task2.csv", _rows(cat_rows, "category"))
    write_csv(data / "clean_train.csv", _rows(cat_rows, "category"))
    val = {"pick": [p for _, p, _ in eval_rows], "category": [c for _, _, c in eval_rows],
           "title": [t for t, _, _ in eval_rows], "body": [""] * len(eval_rows)}
    write_csv(data / "val.csv", val)
    write_csv(data / "val_one_class.csv", {**val, "pick": ["1"] * len(eval_rows),
                                           "category": [c or "sports" for c in val["category"]]})
    write_csv(data / "val_unseen.csv", {**val, "category": ["culture"] + val["category"][1:]})
    write_csv(data / "val_no_category.csv", {**val, "category": [""] * len(eval_rows)})
    write_csv(data / "task1_all_pick.csv", _rows([(t, "1") for t, _ in pick_rows], "pick"))
    write_csv(data / "task2_one_category.csv", _rows([(t, "sports") for t, _ in cat_rows], "category"))
    write_csv(data / "task1_bad_pick.csv", _rows([(pick_rows[0][0], "1"), (pick_rows[1][0], "perhaps")], "pick"))
    write_csv(data / "task1_capital_pick.csv", {"Pick": ["1", "0"], "title": ["a", "b"], "body": ["", ""]})
    write_csv(data / "task1_empty_text.csv", {"pick": ["1", "0"], "title": ["a", " "], "body": ["", ""]})
    (data / "header_only.csv").write_text("pick,title,body\n", encoding="utf-8")
    (data / "empty.csv").write_text("", encoding="utf-8")
    (data / "tab.csv").write_text("pick\ttitle\tbody\n1\ta\tb\n", encoding="utf-8")
    (data / "comma.tsv").write_text("category,title,body\nsports,a,b\n", encoding="utf-8")
    (data / "no_labels.jsonl").write_text('{"title": "a", "body": ""}\n{"title": "b", "body": ""}\n', encoding="utf-8")
    (data / "list.json").write_text('[{"pick": 1, "title": "a"}, "oops"]', encoding="utf-8")
    (data / "table.parquet").write_text("pick,title\n1,a\n", encoding="utf-8")  # a CSV named .parquet
    pd.DataFrame({"pick": ["1"], "title": ["a"], "body": [""]}).to_parquet(data / "parquet.csv")
    (data / "val_unseen.jsonl").write_text("".join(
        json.dumps({"pick": int(p), "category": c, "title": t, "body": ""}, ensure_ascii=False) + "\n" for t, p, c in
        [(SENTENCES["economy"][0], "1", "economy"), (SENTENCES["junk"][0], "0", ""),
         (SENTENCES["sports"][0], "1", "culture")]), encoding="utf-8")
    pd.DataFrame({"pick": ["1", "0"], "title": [["a", "b"], ["c"]], "body": ["", ""]}).to_parquet(
        data / "list_text.parquet")
    write_csv(data / "task2_newline_category.csv", _rows([(cat_rows[0][0], "arts\nculture"), *cat_rows[1:]], "category"))
    write_csv(data / "task2_nan_category.csv", _rows([*cat_rows[:2], (cat_rows[2][0], "NaN"), *cat_rows[3:]], "category"))
    write_csv(data / "task1_huge_pick.csv", _rows([(pick_rows[0][0], "1"), (pick_rows[1][0], "y" * 5000)], "pick"))
    (data / "task1_utf16.csv").write_text("pick,title,body\n1,株価が上昇,\n0,星占い,\n", encoding="utf-16")
    with gzip.open(data / "bomb.csv.gz", "wt", encoding="utf-8") as handle:  # ~2 MB of text in a few KB
        handle.write("pick,title,body\n" + "1,stock market rally lifts shares,\n" * 60000)
    write_csv(data / "task1_long_cell.csv", _rows([(pick_rows[0][0], "1"), ("word " * 400, "0")], "pick"))
    (data / "semicolon.csv").write_text("pick;title;body\n1;a;b\n", encoding="utf-8")
    (data / "ragged.csv").write_text("pick,title,body\n1,a,b\n0,c,d,e\n", encoding="utf-8")
    (data / "workbook.csv").write_bytes(b"PK\x03\x04\x14\x00\x06\x00not really a csv")
    (data / "duplicate_columns.csv").write_text("pick,title,title\n1,a,b\n", encoding="utf-8")
    (data / "records.csv").write_text('{"pick": 1, "title": "a"}\n', encoding="utf-8")
    (data / "a_folder.csv").mkdir()
    (data / "sub").mkdir()
    write_csv(data / "sub" / "val.csv", val)  # same stem as data/val.csv
    write_csv(data / "predictions.csv", {"title": ["a", "b", "c"], "category": ["ALLOW", "DENY", "DENY"],
                                         "category_pred": ["ALLOW", "ALLOW", "DENY"]})
    (data / "costs_bad.csv").write_text("gold,ALLOW,DENY\nALLOW,0,x\nDENY,5,0\n", encoding="utf-8")
    (data / "raw.jsonl").write_text('{"title": "fine"}\n{"title": oops}\n', encoding="utf-8")
    (data / "empty_run").mkdir()
    (data / "failed_run").mkdir()
    (data / "failed_run" / "run_status.json").write_text(json.dumps({"status": "failed", "error": "DataError: x"}))
    (data / "one_text.csv").write_text("pick,title,body\n1,same,\n1,same,\n", encoding="utf-8")
    (data / "damaged_run").mkdir()
    shutil.copy(data / "predictions.csv", data / "damaged_run" / "predictions_validation.csv")
    (data / "damaged_run" / "label_map.json").write_text('{"category_id2label": {"0": "ALL', encoding="utf-8")
    # Config files for run_finetune.py.
    base = {"model_name_or_path": str(encoder_dir), "task1_file": str(data / "task1.csv"), "max_steps": 1}
    (data / "typo.json").write_text(json.dumps({**base, "learning_rte": 1e-3}), encoding="utf-8")
    (data / "typo.yaml").write_text("task1_file: x.csv\nnum_train_epoch: 3\n", encoding="utf-8")
    (data / "broken.json").write_text('{"task1_file": "x.csv",\n "max_steps": }\n', encoding="utf-8")
    (data / "broken.yaml").write_text("task1_file: [x.csv\nmax_steps: 1\n", encoding="utf-8")
    (data / "wrong_type.yaml").write_text("num_train_epochs: three\n", encoding="utf-8")
    (data / "bare_no.yaml").write_text("save_strategy: no\n", encoding="utf-8")
    (data / "list.yaml").write_text("- task1_file\n", encoding="utf-8")
    (data / "bad_choice.json").write_text(json.dumps({"pooling": "max"}), encoding="utf-8")

    models = root / "models"
    models.mkdir()
    multitask = models / "multitask"
    _base_model.save_pretrained(multitask)
    tokenizer.save_pretrained(multitask)
    truncated = models / "multitask_truncated"
    shutil.copytree(multitask, truncated)
    (truncated / "model.safetensors").write_bytes((multitask / "model.safetensors").read_bytes()[:-100])
    run = models / "a_run"
    shutil.copytree(multitask, run / "model")
    (run / "run_status.json").write_text(json.dumps({"status": "complete"}), encoding="utf-8")
    mismatched = models / "heads_mismatch"  # config.json of a 4-category model beside 3-category weights
    shutil.copytree(multitask, mismatched)
    config = json.loads((mismatched / "config.json").read_text())
    config["category_id2label"] = {**config["category_id2label"], "3": "culture"}
    (mismatched / "config.json").write_text(json.dumps(config))
    pickled = models / "pickled"  # a .bin whose pickle would call a function when loaded unsafely
    shutil.copytree(multitask, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({**_base_model.state_dict(), "extra": _RunsCode()}, pickled / "pytorch_model.bin")
    interrupted = models / "interrupted_run"  # killed during training: a checkpoint and epoch lines, no end
    (interrupted / "checkpoint-2").mkdir(parents=True)
    (interrupted / "epoch_log.jsonl").write_text('{"epoch": 1}\n', encoding="utf-8")
    (interrupted / "run_status.json").write_text(json.dumps({"status": "running"}), encoding="utf-8")

    def broken(name, change):
        path = models / name
        shutil.copytree(encoder_dir, path)
        change(path)
        return path

    weights = (Path(encoder_dir) / "model.safetensors").read_bytes()
    broken("absolute_positions", lambda p: (p / "config.json").write_text(json.dumps(
        {**json.loads((p / "config.json").read_text()), "position_biased_input": True})))
    broken("truncated", lambda p: (p / "model.safetensors").write_bytes(weights[: len(weights) // 2]))
    broken("garbage", lambda p: (p / "model.safetensors").write_bytes(b"not a safetensors file"))
    broken("bad_config", lambda p: (p / "config.json").write_text('{"model_type": "deberta-v2", "hidd'))
    broken("no_config", lambda p: (p / "config.json").unlink())
    broken("no_weights", lambda p: (p / "model.safetensors").unlink())
    broken("no_model_type", lambda p: (p / "config.json").write_text(json.dumps(
        {k: v for k, v in json.loads((p / "config.json").read_text()).items() if k != "model_type"})))
    broken("no_tokenizer", lambda p: [f.unlink() for f in p.glob("tokenizer*")])
    broken("bad_tokenizer", lambda p: (p / "tokenizer.json").write_text('{"version": "1.0", "mod'))
    (models / "weights.bin").write_bytes(b"\0" * 16)
    return {"root": root, "data": data, "models": models, "enc": Path(encoder_dir)}


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


def _format(argv: list[str], world: dict, out: Path) -> list[str]:
    names = {"D": world["data"], "M": world["models"], "E": world["enc"], "O": out}
    return [arg.format(**names) for arg in argv]


FINETUNE = ["--model_name_or_path", "{E}", "--task1_file", "{D}/task1.csv", "--task2_file", "{D}/task2.csv",
            "--validation_file", "{D}/val.csv", "--output_dir", "{O}", "--max_steps", "1", "--use_cpu", "true"]


def finetune(*extra, drop=()):
    """FINETUNE with some flags (and their values) removed and `extra` appended."""
    argv, skip = [], False
    for index, arg in enumerate(FINETUNE):
        if skip:
            skip = False
            continue
        if arg in drop:
            skip = not FINETUNE[index + 1].startswith("--") if index + 1 < len(FINETUNE) else False
            continue
        argv.append(arg)
    return [*argv, *extra]


def replace(flag, value):
    return finetune(flag, value, drop=(flag,))


PREDICT = ["--model", "{M}/multitask", "--input_files", "{D}/val.csv", "--output_dir", "{O}"]
PREPARE = ["--input_files", "{D}/task2.csv", "--output_prefix", "{O}/clean", "--label_column", "category"]

# (id, cli, argv, pieces the one error line must contain)
CASES = [
    # ---------------------------------------------------------------- run_finetune.py: data files
    ("ft-header-only", "finetune", replace("--task1_file", "{D}/header_only.csv"), ["header_only.csv", "no data rows"]),
    ("ft-empty-file", "finetune", replace("--task1_file", "{D}/empty.csv"), ["empty.csv", "the file is empty"]),
    ("ft-tsv-as-csv", "finetune", replace("--task1_file", "{D}/tab.csv"), ["tab.csv, row 1", "tabs"]),
    ("ft-tsv-extension", "finetune", replace("--task2_file", "{D}/comma.tsv"),
     ["comma.tsv, row 1", "commas, not tabs", "name the file .csv"]),
    ("ft-parquet-as-csv", "finetune", replace("--task1_file", "{D}/parquet.csv"), ["parquet.csv", "Parquet", ".parquet"]),
    ("ft-not-parquet", "finetune", replace("--task1_file", "{D}/table.parquet"), ["table.parquet", "not a Parquet file"]),
    ("ft-json-not-records", "finetune", replace("--task1_file", "{D}/list.json"),
     ["list.json, record 2", "expected a JSON object"]),
    ("ft-bad-jsonl-train", "finetune", finetune("--train_file", "{D}/raw.jsonl", drop=("--task1_file", "--task2_file")),
     ["raw.jsonl, line 2", "not valid JSON"]),
    ("ft-train-file-no-labels", "finetune", finetune("--train_file", "{D}/no_labels.jsonl",
                                                     drop=("--task1_file", "--task2_file")),
     ["no_labels.jsonl", "missing column(s) 'category', 'pick'", "--category_column", "--pick_column"]),
    ("ft-unseen-val-category-jsonl", "finetune", replace("--validation_file", "{D}/val_unseen.jsonl"),
     ["val_unseen.jsonl, line 3, column 'category'", "'culture'"]),
    ("ft-bad-format", "finetune", finetune("--format", "xlsx"), ["--format", "'xlsx'"]),
    ("ft-label-is-text", "finetune", finetune("--label_column", "title"),
     ["--category_column title", "--text_columns", "model input"]),
    ("ft-same-label-columns", "finetune", finetune("--pick_column", "label", "--category_column", "label"),
     ["--pick_column and --category_column", "'label'"]),
    ("ft-max-train-samples-zero", "finetune", finetune("--max_train_samples", "0"), ["--max_train_samples 0"]),
    ("ft-chunk-flag-without-chunking", "finetune", finetune("--chunk_aggregation", "max"),
     ["--chunk_aggregation max", "only with --long_text chunk"]),
    ("ft-chunk-stride-too-large", "finetune", finetune("--long_text", "chunk", "--max_seq_length", "32",
                                                       "--chunk_stride", "40"), ["--chunk_stride 40"]),
    ("ft-split-name-without-repo", "finetune", finetune("--validation_split_name", "dev"),
     ["--validation_split_name", "--dataset_repo"]),
    ("ft-split-name-with-files", "finetune", finetune("--dataset_repo", "user/data", "--test_split_names", "test"),
     ["--test_split_names", "file arguments"]),
    ("ft-renamed-category-column", "finetune", finetune("--category_column", "label"),
     ["task2.csv: missing column(s) 'label'", "--category_column"]),
    ("ft-semicolons", "finetune", replace("--task1_file", "{D}/semicolon.csv"), ["semicolon.csv", "semicolons"]),
    ("ft-ragged-row", "finetune", replace("--task1_file", "{D}/ragged.csv"), ["ragged.csv, row 3", "4 fields"]),
    ("ft-xlsx-as-csv", "finetune", replace("--task1_file", "{D}/workbook.csv"), ["workbook.csv", "Excel"]),
    ("ft-parquet-list-text", "finetune", replace("--task1_file", "{D}/list_text.parquet"),
     ["list_text.parquet, record 1, column 'title'", "holds a list"]),
    ("ft-category-line-break", "finetune", replace("--task2_file", "{D}/task2_newline_category.csv"),
     ["task2_newline_category.csv, row 2, column 'category'", "'arts\\nculture'", "control character"]),
    ("ft-category-nan", "finetune", replace("--task2_file", "{D}/task2_nan_category.csv"),
     ["task2_nan_category.csv, row 4, column 'category'", "empty category", "'NaN' is read as a missing value"]),
    ("ft-huge-cell-excerpt", "finetune", replace("--task1_file", "{D}/task1_huge_pick.csv"),
     ["task1_huge_pick.csv, row 3, column 'pick'", "… (5,000 characters)"]),
    ("ft-zip-bomb", "finetune", finetune("--task1_file", "{D}/bomb.csv.gz", "--max_input_bytes", "100000",
                                         drop=("--task1_file",)),
     ["bomb.csv.gz: more than 100,000 bytes once decompressed", "--max_input_bytes"]),
    ("ft-cell-too-long", "finetune", finetune("--task1_file", "{D}/task1_long_cell.csv", "--max_cell_chars", "1000",
                                              drop=("--task1_file",)),
     ["task1_long_cell.csv, row 3, column 'title'", "2,000 characters", "limit of 1,000", "--max_cell_chars"]),
    ("ft-max-cell-chars-zero", "finetune", finetune("--max_cell_chars", "0"), ["--max_cell_chars 0"]),
    ("ft-json-as-csv", "finetune", replace("--task1_file", "{D}/records.csv"), ["records.csv", "JSON"]),
    ("ft-duplicate-columns", "finetune", replace("--task1_file", "{D}/duplicate_columns.csv"),
     ["duplicate_columns.csv, row 1", "'title' appears twice"]),
    ("ft-missing-file", "finetune", replace("--task1_file", "{D}/tsak1.csv"),
     ["--task1_file", "tsak1.csv: file not found", "did you mean", "task1.csv"]),
    ("ft-directory-as-file", "finetune", replace("--validation_file", "{D}/a_folder.csv"),
     ["--validation_file", "is a directory"]),
    ("ft-column-case", "finetune", replace("--task1_file", "{D}/task1_capital_pick.csv"),
     ["missing column(s) 'pick'", "did you mean 'Pick'"]),
    ("ft-bad-pick-value", "finetune", replace("--task1_file", "{D}/task1_bad_pick.csv"),
     ["task1_bad_pick.csv, row 3, column 'pick'", "'perhaps'"]),
    ("ft-empty-text", "finetune", replace("--task1_file", "{D}/task1_empty_text.csv"),
     ["task1_empty_text.csv, row 3, column 'title/body'", "empty text"]),
    ("ft-unseen-val-category", "finetune", replace("--validation_file", "{D}/val_unseen.csv"),
     ["val_unseen.csv, row 2, column 'category'", "'culture'"]),
    ("ft-missing-text-column", "finetune", finetune("--text_columns", "headline"), ["missing column(s) 'headline'"]),
    ("ft-header-only-test", "finetune", finetune("--test_files", "{D}/header_only.csv"), ["header_only.csv", "no data rows"]),
    ("ft-test-stems-clash", "finetune", finetune("--test_files", "{D}/val.csv", "{D}/sub/val.csv"),
     ["--test_files", "'val'"]),
    # ------------------------------------------------------ run_finetune.py: runs that would train nothing
    ("ft-one-class-validation", "finetune", replace("--validation_file", "{D}/val_one_class.csv"),
     ["val_one_class.csv, column 'pick'", "7 Pick and 0 Decline", "thresholds"]),
    ("ft-gate-one-class", "finetune", replace("--task1_file", "{D}/task1_all_pick.csv"),
     ["task1_all_pick.csv, column 'pick'", "every training row is Pick"]),
    ("ft-one-category", "finetune", finetune("--task2_file", "{D}/task2_one_category.csv",
                                             drop=("--task1_file", "--task2_file", "--validation_file")),
     ["task2_one_category.csv, column 'category'", "only one category ('sports')"]),
    ("ft-val-no-category", "finetune", replace("--validation_file", "{D}/val_no_category.csv"),
     ["val_no_category.csv, column 'category'", "no row has a category"]),
    ("ft-too-few-rows-to-split", "finetune", finetune("--task1_file", "{D}/one_text.csv",
                                                      drop=("--task1_file", "--task2_file", "--validation_file")),
     ["1 distinct training row(s)", "--validation_file"]),
    ("ft-epochs-negative", "finetune", finetune("--num_train_epochs", "-1", drop=("--max_steps",)),
     ["--num_train_epochs -1", "train nothing"]),
    ("ft-epochs-zero", "finetune", finetune("--num_train_epochs", "0", drop=("--max_steps",)),
     ["--num_train_epochs 0", "train nothing"]),
    ("ft-max-steps-zero", "finetune", replace("--max_steps", "0"), ["--max_steps 0", "train nothing"]),
    ("ft-batch-zero", "finetune", finetune("--per_device_train_batch_size", "0"), ["--per_device_train_batch_size 0"]),
    ("ft-batch-negative", "finetune", finetune("--per_device_train_batch_size", "-8"), ["--per_device_train_batch_size -8"]),
    ("ft-eval-batch-zero", "finetune", finetune("--per_device_eval_batch_size", "0"), ["--per_device_eval_batch_size 0"]),
    ("ft-accumulation-zero", "finetune", finetune("--gradient_accumulation_steps", "0"), ["--gradient_accumulation_steps 0"]),
    ("ft-learning-rate-negative", "finetune", finetune("--learning_rate", "-0.001"), ["--learning_rate -0.001",
                                                                                     "must be a positive number"]),
    ("ft-zero-loss-weights", "finetune", finetune("--gate_loss_weight", "0", "--category_loss_weight", "0"),
     ["loss would be zero"]),
    ("ft-validation-split", "finetune", finetune("--validation_split", "1.5", drop=("--validation_file",)),
     ["--validation_split 1.5"]),
    ("ft-max-seq-length", "finetune", finetune("--max_seq_length", "0"), ["--max_seq_length 0"]),
    ("ft-drop-last-no-batch", "finetune", finetune("--dataloader_drop_last", "true", "--per_device_train_batch_size",
                                                   "512", drop=("--max_steps",)), ["dataloader_drop_last", "512"]),
    ("ft-drop-last-with-max-steps", "finetune", finetune("--dataloader_drop_last", "true",
                                                         "--per_device_train_batch_size", "512"),
     ["20 training row(s)", "--dataloader_drop_last with a batch of 512", "not one full batch"]),
    # ------------------------------------------------------------ run_finetune.py: model paths and files
    ("ft-model-missing-relative", "finetune", replace("--model_name_or_path", "./no/such/encoder"),
     ["--model_name_or_path ./no/such/encoder", "no such directory"]),
    ("ft-model-missing-absolute", "finetune", replace("--model_name_or_path", "{M}/gone"), ["no such directory"]),
    ("ft-model-not-on-hub", "finetune", replace("--model_name_or_path", "nobody/no-such-model"),
     ["nobody/no-such-model", "not a local directory", "Hub"]),
    ("ft-model-truncated", "finetune", replace("--model_name_or_path", "{M}/truncated"),
     ["truncated/model.safetensors", "truncated or corrupt", "re-download"]),
    ("ft-model-garbage", "finetune", replace("--model_name_or_path", "{M}/garbage"),
     ["garbage/model.safetensors", "re-download"]),
    ("ft-config-corrupt", "finetune", replace("--model_name_or_path", "{M}/bad_config"),
     ["bad_config/config.json", "not valid JSON", "re-download"]),
    ("ft-config-missing", "finetune", replace("--model_name_or_path", "{M}/no_config"), ["no config.json"]),
    ("ft-config-no-model-type", "finetune", replace("--model_name_or_path", "{M}/no_model_type"), ["'model_type'"]),
    ("ft-weights-missing", "finetune", replace("--model_name_or_path", "{M}/no_weights"), ["no weights file"]),
    ("ft-tokenizer-missing", "finetune", replace("--model_name_or_path", "{M}/no_tokenizer"),
     ["no tokenizer files", "--tokenizer_name"]),
    ("ft-tokenizer-corrupt", "finetune", replace("--model_name_or_path", "{M}/bad_tokenizer"),
     ["bad_tokenizer/tokenizer.json", "re-download"]),
    ("ft-model-is-a-file", "finetune", replace("--model_name_or_path", "{M}/weights.bin"), ["is a file"]),
    ("ft-own-data-no-model", "finetune", finetune(drop=("--model_name_or_path",)), ["--model_name_or_path is required"]),
    ("ft-4bit-on-cpu", "finetune", finetune("--lora_r", "4", "--load_in_4bit", "true"), ["--load_in_4bit", "CUDA GPU"]),
    ("ft-lora-rank-negative", "finetune", finetune("--lora_r", "-1"), ["--lora_r -1"]),
    ("ft-longer-than-positions", "finetune", finetune("--max_seq_length", "256", drop=("--model_name_or_path",))
     + ["--model_name_or_path", "{M}/absolute_positions"], ["--max_seq_length 256", "for 128 tokens"]),
    ("ft-optimizer-package-missing", "finetune", finetune("--optim", "adamw_bnb_8bit"),
     ["--optim adamw_bnb_8bit", "bitsandbytes"]),
    ("ft-seed-negative", "finetune", finetune("--seed", "-1"), ["--seed -1"]),
    ("ft-workers-negative", "finetune", finetune("--dataloader_num_workers", "-1"), ["--dataloader_num_workers -1"]),
    # ------------------------------------------------------------- run_finetune.py: arguments and outputs
    ("ft-output-is-a-file", "finetune", replace("--output_dir", "{D}/task1.csv"), ["--output_dir", "is a file"]),
    ("ft-output-below-a-file", "finetune", replace("--output_dir", "{D}/task1.csv/run"), ["task1.csv is a file"]),
    ("ft-output-complete-run", "finetune", replace("--output_dir", "{M}/a_run"), ["holds a complete run"]),
    ("ft-output-interrupted-run", "finetune", replace("--output_dir", "{M}/interrupted_run"),
     ["interrupted_run: holds another run that did not complete (status running, checkpoint-2, epoch_log.jsonl)",
      "--resume_from_checkpoint true", "another --output_dir"]),
    ("ft-output-failed-run", "finetune", replace("--output_dir", "{D}/failed_run"),
     ["failed_run: holds another run that did not complete (status failed)", "no checkpoint to resume from"]),
    ("ft-unknown-flag", "finetune", finetune("--num_epochs", "3"), ["unknown argument --num_epochs",
                                                                    "did you mean --num_train_epochs"]),
    ("ft-bad-float", "finetune", finetune("--learning_rate", "fast"), ["--learning_rate", "'fast'"]),
    ("ft-bad-choice", "finetune", finetune("--pooling", "max"), ["--pooling", "'max'"]),
    ("ft-bad-bool", "finetune", finetune("--bf16", "maybe"), ["--bf16", "maybe"]),
    ("ft-bad-strategy", "finetune", finetune("--eval_strategy", "sometimes"), ["--eval_strategy sometimes"]),
    ("ft-bad-report-to", "finetune", finetune("--report_to", "wandbx"), ["--report_to wandbx", "did you mean wandb"]),
    ("ft-report-to-not-installed", "finetune", finetune("--report_to", "wandb"),
     ["--report_to wandb", "pip install wandb"]),
    ("ft-bad-metric", "finetune", finetune("--metric_for_best_model", "category_macro_f"),
     ["--metric_for_best_model", "did you mean category_macro_f1"]),
    ("ft-push-no-repo", "finetune", finetune("--push_to_hub", "true"), ["--hub_model_id"]),
    ("ft-resume-nothing", "finetune", finetune("--resume_from_checkpoint", "true"), ["no checkpoint-* folder"]),
    ("ft-resume-missing-path", "finetune", finetune("--resume_from_checkpoint", "{O}/checkpoint-9"),
     ["no such checkpoint directory"]),
    ("ft-unknown-encoding", "finetune", finetune("--encoding", "utf-9"), ["--encoding 'utf-9'", "unknown encoding"]),
    ("ft-utf16-named-for-utf8", "finetune", finetune("--encoding", "utf-16"), ["task1.csv", "cannot decode as utf-16"]),
    ("ft-early-stop-no-best", "finetune", finetune("--early_stopping_patience", "2", "--load_best_model_at_end", "false"),
     ["--early_stopping_patience"]),
    ("ft-positional-junk", "finetune", finetune("{D}/task1.csv"), ["unknown argument", "task1.csv"]),
    ("ft-config-extra-args", "finetune", ["{D}/typo.json", "--max_steps", "2"], ["config file must be the only"]),
    # ------------------------------------------------------------------ run_finetune.py: config files
    ("cfg-json-typo", "finetune", ["{D}/typo.json"], ["typo.json", "'learning_rte'", "did you mean learning_rate"]),
    ("cfg-yaml-typo", "finetune", ["{D}/typo.yaml"], ["typo.yaml", "'num_train_epoch'", "did you mean num_train_epochs"]),
    ("cfg-json-syntax", "finetune", ["{D}/broken.json"], ["broken.json, line 2", "not valid JSON"]),
    ("cfg-yaml-syntax", "finetune", ["{D}/broken.yaml"], ["broken.yaml, line", "not valid YAML"]),
    ("cfg-wrong-type", "finetune", ["{D}/wrong_type.yaml"], ["key 'num_train_epochs'", "'three'"]),
    ("cfg-yaml-bare-no", "finetune", ["{D}/bare_no.yaml"], ["key 'save_strategy'", "quote the value"]),
    ("cfg-not-a-mapping", "finetune", ["{D}/list.yaml"], ["list.yaml", "mapping"]),
    ("cfg-bad-choice", "finetune", ["{D}/bad_choice.json"], ["key 'pooling'", "'max'"]),
    ("cfg-missing", "finetune", ["{D}/nope.yaml"], ["nope.yaml: config file not found"]),
    # --------------------------------------------------------------------------------- run_predict.py
    ("pr-header-only", "predict", ["--model", "{M}/multitask", "--input_files", "{D}/header_only.csv",
                                   "--output_dir", "{O}"], ["header_only.csv", "no data rows"]),
    ("pr-one-bad-of-two", "predict", ["--model", "{M}/multitask", "--input_files", "{D}/val.csv",
                                      "{D}/task1_empty_text.csv", "--output_dir", "{O}"], ["task1_empty_text.csv, row 3"]),
    ("pr-batch-zero", "predict", [*PREDICT, "--batch_size", "0"], ["--batch_size 0"]),
    ("pr-batch-negative", "predict", [*PREDICT, "--batch_size", "-4"], ["--batch_size -4"]),
    ("pr-top-k-zero", "predict", [*PREDICT, "--top_k", "0"], ["--top_k 0"]),
    ("pr-max-length-zero", "predict", [*PREDICT, "--max_seq_length", "0"], ["--max_seq_length 0"]),
    ("pr-threshold-name", "predict", [*PREDICT, "--threshold", "f2"], ["--threshold", "'f2'", "stored names"]),
    ("pr-threshold-range", "predict", [*PREDICT, "--threshold", "1.5"], ["--threshold 1.5", "[0, 1]"]),
    ("pr-model-missing", "predict", ["--model", "./runs/none", "--input_files", "{D}/val.csv", "--output_dir", "{O}"],
     ["--model ./runs/none", "no such directory"]),
    ("pr-model-plain-encoder", "predict", ["--model", "{E}", "--input_files", "{D}/val.csv", "--output_dir", "{O}"],
     ["not a trained multitask model"]),
    ("pr-model-truncated", "predict", ["--model", "{M}/multitask_truncated", "--input_files", "{D}/val.csv",
                                       "--output_dir", "{O}"], ["multitask_truncated/model.safetensors", "truncated"]),
    ("pr-model-head-mismatch", "predict", ["--model", "{M}/heads_mismatch", "--input_files", "{D}/val.csv",
                                           "--output_dir", "{O}"],
     ["heads_mismatch/model.safetensors", "category head has 3 outputs", "names 4 categories"]),
    ("pr-model-unsafe-pickle", "predict", ["--model", "{M}/pickled", "--input_files", "{D}/val.csv",
                                           "--output_dir", "{O}"],
     ["--model", "pickled: refused a pickled file", "print", "could run code", "safetensors"]),
    ("pr-model-failed-run", "predict", ["--model", "{D}/failed_run", "--input_files", "{D}/val.csv", "--output_dir",
                                        "{O}"], ["a run directory without a saved model", "status failed"]),
    ("pr-model-empty-run", "predict", ["--model", "{D}/empty_run", "--input_files", "{D}/val.csv", "--output_dir",
                                       "{O}"], ["no config.json"]),
    ("pr-input-missing", "predict", ["--model", "{M}/multitask", "--input_files", "{D}/nope.csv", "--output_dir", "{O}"],
     ["--input_files", "nope.csv: file not found"]),
    ("pr-input-tsv", "predict", ["--model", "{M}/multitask", "--input_files", "{D}/tab.csv", "--output_dir", "{O}"],
     ["tab.csv, row 1", "tabs"]),
    ("pr-unknown-category", "predict", ["--model", "{M}/a_run", "--input_files", "{D}/val_unseen.csv",
                                        "--output_dir", "{O}"], ["val_unseen.csv, row 2, column 'category'"]),
    ("pr-unknown-category-jsonl", "predict", ["--model", "{M}/a_run", "--input_files", "{D}/val_unseen.jsonl",
                                              "--output_dir", "{O}"], ["val_unseen.jsonl, line 3, column 'category'"]),
    ("pr-zip-bomb", "predict", [*PREDICT[:3], "{D}/bomb.csv.gz", *PREDICT[4:], "--max_input_bytes", "100000"],
     ["bomb.csv.gz: more than 100,000 bytes once decompressed"]),
    ("pr-bad-format", "predict", [*PREDICT, "--format", "excel"], ["--format", "'excel'"]),
    ("pr-stems-clash", "predict", ["--model", "{M}/multitask", "--input_files", "{D}/val.csv", "{D}/sub/val.csv",
                                   "--output_dir", "{O}"], ["two files are named 'val'"]),
    ("pr-output-is-a-file", "predict", ["--model", "{M}/multitask", "--input_files", "{D}/val.csv", "--output_dir",
                                        "{D}/task1.csv"], ["--output_dir", "is a file"]),
    ("pr-fp16-on-cpu", "predict", [*PREDICT, "--dtype", "float16"], ["--dtype float16"]),
    ("pr-no-cuda", "predict", [*PREDICT, "--device", "cuda"], ["--device cuda", "no CUDA GPU"]),
    ("pr-no-inputs", "predict", ["--model", "{M}/multitask", "--output_dir", "{O}"], ["--input_files"]),
    ("pr-unknown-flag", "predict", [*PREDICT, "--treshold", "0.3"], ["--treshold", "did you mean --threshold"]),
    ("pr-missing-text-column", "predict", [*PREDICT, "--text_columns", "headline"], ["missing column(s) 'headline'"]),
    # ---------------------------------------------------------------------------- multitask.prepare
    ("pp-header-only", "prepare", ["--input_files", "{D}/header_only.csv", "--output_prefix", "{O}/clean"],
     ["header_only.csv", "no data rows"]),
    ("pp-missing-input", "prepare", ["--input_files", "{D}/nope.csv", "--output_prefix", "{O}/clean"],
     ["nope.csv: file not found"]),
    ("pp-tsv", "prepare", ["--input_files", "{D}/comma.tsv", "--output_prefix", "{O}/clean"],
     ["comma.tsv, row 1", "not tabs"]),
    ("pp-validation-size", "prepare", [*PREPARE, "--validation_size", "0.9"], ["--validation_size 0.9"]),
    ("pp-bad-repo-id", "prepare", [*PREPARE, "--push_to_hub", "not/a/repo"], ["--push_to_hub not/a/repo",
                                                                              "not a valid repo id"]),
    ("pp-bad-output-format", "prepare", [*PREPARE, "--output_format", "xlsx"], ["--output_format", "'xlsx'"]),
    ("pp-bad-jsonl", "prepare", ["--input_files", "{D}/raw.jsonl", "--output_prefix", "{O}/clean", "--text_columns",
                                 "title"], ["raw.jsonl, line 2", "not valid JSON"]),
    ("pp-test-size", "prepare", [*PREPARE, "--test_size", "1.5"], ["--test_size 1.5"]),
    ("pp-threshold", "prepare", [*PREPARE, "--dedup_threshold", "0"], ["--dedup_threshold 0"]),
    ("pp-reduce-zero", "prepare", [*PREPARE, "--reduce_majority_to", "0"], ["--reduce_majority_to 0"]),
    ("pp-no-prefix", "prepare", ["--input_files", "{D}/task2.csv"], ["--output_prefix is required"]),
    ("pp-prefix-below-file", "prepare", ["--input_files", "{D}/task2.csv", "--output_prefix", "{D}/task1.csv/clean"],
     ["task1.csv is a file"]),
    ("pp-overwrite-input", "prepare", ["--input_files", "{D}/clean_train.csv", "--output_prefix", "{D}/clean",
                                       "--label_column", "category", "--report_file", "{O}/r.json"],
     ["clean_train.csv would overwrite an input"]),
    ("pp-missing-label-column", "prepare", [*PREPARE[:4], "--label_column", "label"], ["missing column(s) 'label'"]),
    ("pp-leakage-no-test", "prepare", ["--leakage_check", "--train_file", "{D}/task2.csv"], ["--test_file"]),
    ("pp-unknown-flag", "prepare", [*PREPARE, "--dedup", "0.8"], ["unknown argument --dedup"]),
    ("pp-filter-label-typo", "prepare", [*PREPARE, "--labels_to_filter", "sport"], ["'sport' is not a label",
                                                                                   "did you mean sports"]),
    ("pp-nothing-left", "prepare", [*PREPARE, "--min_class_count", "1000"], ["no row is left", "min_class_count"]),
    ("pp-shortened-flag", "prepare", [*PREPARE, "--text_column", "title"], ["--text_column",
                                                                          "did you mean --text_columns"]),
    # ---------------------------------------------------------------------------------- python -m analysis
    ("an-missing-input", "analysis", ["{D}/nope.csv"], ["nope.csv: no such file"]),
    ("an-not-predictions", "analysis", ["{D}/task2.csv", "--out", "{O}"], ["task2.csv", "not a predictions file"]),
    ("an-header-only", "analysis", ["{D}/header_only.csv", "--out", "{O}"], ["no data rows"]),
    ("an-empty-run", "analysis", ["{D}/empty_run", "--out", "{O}"], ["no predictions_*.csv"]),
    ("an-tsv", "analysis", ["{D}/tab.csv", "--out", "{O}"], ["tab.csv, row 1", "tabs"]),
    ("an-bad-jsonl", "analysis", ["{D}/raw.jsonl", "--out", "{O}"], ["raw.jsonl, line 2", "not valid JSON"]),
    ("an-bad-format", "analysis", ["{D}/predictions.csv", "--format", "xls", "--out", "{O}"], ["--format"]),
    ("an-out-is-a-file", "analysis", ["{D}/predictions.csv", "--out", "{D}/task1.csv"], ["--out", "is a file"]),
    ("an-allow-alone", "analysis", ["{D}/predictions.csv", "--allow_label", "ALLOW", "--out", "{O}"], ["go together"]),
    ("an-allow-typo", "analysis", ["{D}/predictions.csv", "--allow_label", "ALOW", "--critical_labels", "DENY",
                                   "--out", "{O}"], ["'ALOW'"]),
    ("an-bands", "analysis", ["{D}/predictions.csv", "--bands", "0.7,0.2", "--out", "{O}"], ["--bands"]),
    ("an-bootstrap-negative", "analysis", ["{D}/predictions.csv", "--bootstrap", "-1", "--out", "{O}"],
     ["--bootstrap"]),
    ("an-cost-missing", "analysis", ["{D}/predictions.csv", "--allow_label", "ALLOW", "--critical_labels", "DENY",
                                     "--cost_matrix", "{D}/costs.csv", "--out", "{O}"], ["costs.csv: file not found"]),
    ("an-cost-not-number", "analysis", ["{D}/predictions.csv", "--allow_label", "ALLOW", "--critical_labels", "DENY",
                                        "--cost_matrix", "{D}/costs_bad.csv", "--out", "{O}"],
     ["costs_bad.csv, row 2, column 'DENY'", "'x' is not a number"]),
    ("an-interval", "analysis", ["{D}/predictions.csv", "--interval", "bootstrap", "--out", "{O}"], ["--interval"]),
    ("an-no-input", "analysis", [], ["required"]),
    ("an-damaged-run", "analysis", ["{D}/damaged_run", "--out", "{O}"], ["damaged_run/label_map.json", "not valid JSON"]),
]


def test_the_table_is_large_and_distinct():
    assert len(CASES) >= 50
    assert len({case[0] for case in CASES}) == len(CASES)
    assert len({(case[1], tuple(case[2])) for case in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "tool", "argv", "pieces"), CASES, ids=[case[0] for case in CASES])
def test_bad_input_ends_in_one_error_line(world, tmp_path, capsys, name, tool, argv, pieces):
    out = tmp_path / "out"
    before = _snapshot(world["root"])
    main, bare_debug_only = MAINS[tool]
    argv = _format(argv, world, out)
    code = cli(main, argv, bare_debug_only=bare_debug_only)
    captured = capsys.readouterr()
    error_lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert code == 2, captured.err
    assert len(error_lines) == 1 and captured.err.rstrip("\n").splitlines()[-1] == error_lines[0], captured.err
    assert "Traceback" not in captured.err + captured.out
    assert len(error_lines[0]) < 1500, "an error line quotes a short excerpt of a cell, never the whole cell"
    assert "weights_only" not in captured.err + captured.out, "never suggest loading a pickle unsafely"
    assert "must never be printed" not in captured.out
    for piece in pieces:
        assert piece.format(D=world["data"], M=world["models"]) in error_lines[0], error_lines[0]
    # Nothing written: no output folder, no partial file, the world exactly as it was (a complete run stays so).
    assert not out.exists()
    assert _snapshot(world["root"]) == before
    assert not list(tmp_path.rglob("*.partial*"))
    status = world["models"] / "a_run" / "run_status.json"
    assert json.loads(status.read_text())["status"] == "complete"


def test_debug_flag_and_environment_add_the_traceback(world, tmp_path, capsys, monkeypatch):
    argv = _format(["--model", "{M}/multitask", "--input_files", "{D}/val.csv", "--batch_size", "0"], world, tmp_path)
    assert cli(run_predict.main, [*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1] == "error: --batch_size 0: must be a whole number >= 1"
    monkeypatch.setenv("MULTITASK_DEBUG", "1")
    assert cli(run_predict.main, argv) == 2
    assert "Traceback" in capsys.readouterr().err


def test_finetune_keeps_its_own_debug_option(world, tmp_path):
    """`--debug underflow_overflow` is TrainingArguments' option; only a bare --debug asks for tracebacks."""
    argv = _format(finetune("--debug", "underflow_overflow"), world, tmp_path / "run")
    kept, debug = debug_requested(argv, bare_only=True)
    assert kept == argv and not debug
    assert "underflow_overflow" in str(run_finetune.parse_args(kept)[2].debug)
    assert debug_requested([*argv, "--debug"], bare_only=True) == (argv, True)
    assert debug_requested(["--debug", "--max_steps", "1"], bare_only=True) == (["--max_steps", "1"], True)


def test_a_bug_keeps_its_traceback(world, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a real bug")

    monkeypatch.setattr(run_predict, "check_predict_arguments", broken)
    with pytest.raises(ZeroDivisionError):
        cli(run_predict.main, _format(PREDICT, world, tmp_path / "out"))


def test_a_bug_before_the_run_starts_replays_the_held_log_lines(world, tmp_path, monkeypatch, caplog):
    """Held log lines are dropped for a user error (only the error line), but shown for a bug."""
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a real bug")

    monkeypatch.setattr(inputs, "check_training_steps", broken)  # right after the data is read
    with caplog.at_level("INFO"), pytest.raises(ZeroDivisionError):
        run_finetune.main(_format(FINETUNE, world, tmp_path / "run"))
    assert "data: rows_in_both_files" in caplog.text
    assert not (tmp_path / "run").exists()


def test_a_good_run_after_bad_ones_still_works(world, tmp_path):
    """The boundary leaves no state behind (held logs, debug flag): the same CLIs then succeed."""
    metrics = run_predict.main(_format(PREDICT, world, tmp_path / "preds"))
    assert (tmp_path / "preds" / "predictions_val.csv").is_file() and "val" in metrics
    assert not list(tmp_path.rglob("*.partial*"))
    report = prepare.main(_format(PREPARE, world, tmp_path / "prep"))
    assert Path(report["outputs"]["train"]).is_file()
    removed = pd.read_csv(tmp_path / "prep" / "removed_rows.csv", dtype=str)
    assert all("." not in value for value in removed["row"])  # row numbers as ints, never 2.0


ODD_CATEGORIES = ["arts|culture", 'say "hi": now', "=cmd|' /C calc'!A0", "ß" * 400]


def test_any_category_name_round_trips_train_predict_analysis(world, tmp_path):
    """Separators, quotes, a formula and a very long name: trained, stored, predicted, quoted for spreadsheets,
    written raw to JSON Lines, and read back by the analysis as the same four categories."""
    texts = [t for c in CATEGORIES for t in SENTENCES[c]] + SENTENCES["junk"]
    rows = [(text, ODD_CATEGORIES[index % 4]) for index, text in enumerate(texts)]
    write_csv(tmp_path / "odd.csv", {**_rows(rows, "category"), "decision": ["keep me"] * len(rows)})
    run = tmp_path / "run"
    run_finetune.main(_format(["--model_name_or_path", "{E}", "--task2_file", str(tmp_path / "odd.csv"),
                               "--validation_split", "0.4", "--output_dir", str(run), "--max_steps", "1",
                               "--use_cpu", "true"], world, run))
    labels = json.loads((run / "label_map.json").read_text(encoding="utf-8"))["category_id2label"]
    assert sorted(labels.values()) == sorted(ODD_CATEGORIES)
    assert "arts\\|culture" in (run / "model" / "README.md").read_text(encoding="utf-8")
    out = tmp_path / "preds"
    run_predict.main(["--model", str(run), "--input_files", str(tmp_path / "odd.csv"), "--output_dir", str(out)])
    table = pd.read_csv(out / "predictions_odd.csv", dtype=str, keep_default_na=False)
    assert table["decision_input"].tolist() == ["keep me"] * len(rows)  # the input column, kept beside the output
    assert set(table["category"]) == {"arts|culture", 'say "hi": now', "'=cmd|' /C calc'!A0", "ß" * 400}
    records = [json.loads(line) for line in (out / "predictions_odd.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {item["label"] for item in records[0]["category_top"]} <= set(ODD_CATEGORIES)
    assert all(record["gold_category"] in ODD_CATEGORIES for record in records)
    analysis_cli.main([str(out / "predictions_odd.csv"), "--out", str(tmp_path / "analysis")])
    analysed = _labels_in(json.loads((tmp_path / "analysis" / "predictions_odd_analysis.json").read_text("utf-8")))
    assert set(ODD_CATEGORIES) <= analysed and "'=cmd|' /C calc'!A0" not in analysed  # the guard's quote removed
    # Turned off, the CSV keeps every cell as it was.
    raw = tmp_path / "raw"
    run_predict.main(["--model", str(run), "--input_files", str(tmp_path / "odd.csv"), "--output_dir", str(raw),
                      "--csv_formula_guard", "false"])
    raw_table = pd.read_csv(raw / "predictions_odd.csv", dtype=str, keep_default_na=False)
    assert set(raw_table["category"]) == set(ODD_CATEGORIES)


def _labels_in(value) -> set[str]:
    """Every string anywhere in a JSON value (keys included)."""
    if isinstance(value, dict):
        return set(value) | {s for item in value.values() for s in _labels_in(item)}
    if isinstance(value, list):
        return {s for item in value for s in _labels_in(item)}
    return {value} if isinstance(value, str) else set()


def _disk_full(*args, **kwargs):
    path = next((str(a) for a in [*args[1:], *kwargs.values()] if isinstance(a, (str, Path))), "out")
    raise OSError(errno.ENOSPC, "No space left on device", path)


# (id, cli, argv, what to patch so that the write fails)
FAULT_CASES = [
    ("ft-disk-full-saving-model", "finetune", FINETUNE, (Trainer, "save_model")),
    ("pr-disk-full-writing-predictions", "predict", PREDICT, (pd.DataFrame, "to_csv")),
    ("pp-disk-full-writing-splits", "prepare", PREPARE, (pd.DataFrame, "to_csv")),
    ("an-disk-full-writing-report", "analysis", ["{D}/predictions.csv", "--out", "{O}"], (Path, "write_text")),
]


@pytest.mark.parametrize(("name", "tool", "argv", "patched"), FAULT_CASES, ids=[case[0] for case in FAULT_CASES])
def test_a_full_disk_ends_in_one_error_line(world, tmp_path, capsys, monkeypatch, name, tool, argv, patched):
    """Out of space while writing: one line naming the file and what to do; a training run says failed,
    the other tools leave no output and no partial file."""
    out = tmp_path / "out"
    argv = _format(argv, world, out)
    monkeypatch.setattr(*patched, _disk_full)
    main, bare_debug_only = MAINS[tool]
    code = cli(main, argv, bare_debug_only=bare_debug_only)
    err = capsys.readouterr().err
    # The error line is the last (after the progress bars the Trainer draws with carriage returns).
    assert code == 2 and err.count("error: ") == 1 and "error: " in err.rstrip("\n").splitlines()[-1], err
    assert "Traceback" not in err, err
    assert "No space left on device" in err and "free some space" in err, err
    monkeypatch.undo()
    if tool == "finetune":
        assert "--resume_from_checkpoint true" in err
        status = json.loads((out / "run_status.json").read_text())
        assert status["status"] == "failed" and "No space left on device" in status["error"]
        assert "run failed: OutputError" in (out / "train.log").read_text()
    else:
        assert not out.exists()
    assert not list(tmp_path.rglob("*.partial*"))


def test_a_bug_that_is_no_write_fault_keeps_its_traceback(world, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")  # not a fault the user can fix by choosing a path

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError, match="Input/output error"):
        cli(run_predict.main, _format(PREDICT, world, tmp_path / "out"))


def test_an_output_dir_that_cannot_be_created_is_one_line(world, tmp_path, capsys, monkeypatch):
    """It passed the up-front check (a special filesystem says writable), yet mkdir fails."""
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self == tmp_path / "run":
            raise OSError(errno.ENOENT, "No such file or directory", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert cli(run_finetune.main, _format(FINETUNE, world, tmp_path / "run"), bare_debug_only=True) == 2
    err = capsys.readouterr().err.rstrip("\n").splitlines()[-1]
    assert err.startswith("error: ") and "cannot be created" in err and "choose another --output_dir" in err, err


@pytest.mark.parametrize("encoding", [[], ["--encoding", "utf-16"]], ids=["detected", "named"])
def test_a_utf16_file_with_bom_trains_and_predicts(world, tmp_path, encoding):
    """Excel's "Unicode text" / PowerShell output: UTF-16 with a byte-order mark, read with or without --encoding."""
    for name in ("task1", "task2", "val"):  # --encoding names the encoding of every input file
        frame = pd.read_csv(world["data"] / f"{name}.csv", dtype=str, keep_default_na=False)
        frame.to_csv(tmp_path / f"{name}.csv", index=False, encoding="utf-16")
    source = tmp_path / "utf16.csv"
    frame.to_csv(source, index=False, encoding="utf-16")
    run = tmp_path / "run"
    argv = _format(FINETUNE, world, run)
    if encoding:  # all three files UTF-16, named once
        argv = [arg.replace(str(world["data"]), str(tmp_path)) for arg in argv] + encoding
    else:  # a UTF-16 file beside UTF-8 ones: its byte-order mark says how to read it
        argv = [arg.replace(str(world["data"] / "task1.csv"), str(tmp_path / "task1.csv")) for arg in argv]
    run_finetune.main(argv)
    assert json.loads((run / "run_status.json").read_text())["status"] == "complete"
    run_predict.main(["--model", str(run), "--input_files", str(source), "--output_dir", str(tmp_path / "p"),
                      *encoding])
    predicted = pd.read_csv(tmp_path / "p" / "predictions_utf16.csv", dtype=str, keep_default_na=False)
    assert predicted["title"].tolist() == frame["title"].tolist()


def test_zero_steps_after_training_is_never_complete(world, tmp_path, monkeypatch):
    """If the Trainer still takes no step (a case the checks missed), the run is failed, not complete."""
    monkeypatch.setattr(MultitaskTrainer, "train", lambda self, **kwargs: TrainOutput(0, 0.0, {}))
    with pytest.raises(UserError, match="0 optimizer steps"):
        run_finetune.main(_format(FINETUNE, world, tmp_path / "run"))
    status = json.loads((tmp_path / "run" / "run_status.json").read_text())
    assert status["status"] == "failed" and "0 optimizer steps" in status["error"]


# ------------------------------------------------------------------------ the real scripts, in a subprocess
SUBPROCESS_CASES = [
    ("finetune", [sys.executable, "run_finetune.py", *finetune()[:-4]], "--task1_file", "{D}/header_only.csv",
     "no data rows"),
    ("predict", [sys.executable, "run_predict.py", *PREDICT], "--input_files", "{D}/header_only.csv", "no data rows"),
    ("prepare", [sys.executable, "-m", "multitask.prepare", *PREPARE], "--test_size", "2", "--test_size 2"),
    ("analysis", [sys.executable, "-m", "analysis", "{D}/predictions.csv", "--out", "{O}"], "--bootstrap", "-5",
     "--bootstrap"),
]


@pytest.mark.parametrize(("tool", "command", "flag", "value", "piece"), SUBPROCESS_CASES,
                         ids=[case[0] for case in SUBPROCESS_CASES])
def test_real_script_prints_exactly_one_line(world, tmp_path, tool, command, flag, value, piece):
    out = tmp_path / "out"
    command = _format([*command, flag, value], world, out)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("MULTITASK_DEBUG", None)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and piece in done.stderr, done.stderr
    assert not out.exists()
