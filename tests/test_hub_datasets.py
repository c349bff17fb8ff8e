"""Hub datasets the HF way, against the local test Hub: `--dataset_repo` through `datasets.load_dataset` (Parquet and
JSON Lines repos, named splits, revisions, class-label columns), `prepare --push_to_hub` → train in one step, the
seed's `.env` names, and uploads that keep the folder layout."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import run_finetune
from multitask import prepare
from multitask.errors import UsageError
from multitask.io import hub as hub_module
from multitask.io.hub import HubError, resolve_dataset_repo, resolve_token, upload_data, upload_files
from tests.conftest import CATEGORIES, SENTENCES
from tests.hub_server import serve_fake_hub

QUICK = ["--max_steps", "2", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--use_cpu", "true",
         "--threshold_cv", "0", "--report_to", "none"]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no stray .env from the developer's checkout
    with serve_fake_hub(monkeypatch, tmp_path / "hf_home") as server:
        yield server


def text_label_rows(categories=CATEGORIES, repeat=1):
    return [{"text": f"{sentence}{' ' + str(r) if r else ''}", "label": category}
            for r in range(repeat) for category in categories for sentence in SENTENCES[category]]


def finetune(encoder_dir, tmp_path, *extra):
    return run_finetune.main(["--model_name_or_path", str(encoder_dir), "--output_dir", str(tmp_path / "run"),
                              "--text_columns", "text", "--category_column", "label", *QUICK, *extra])


def test_parquet_dataset_with_class_labels_and_splits(hub, encoder_dir, tmp_path):
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=CATEGORIES)})
    folder = tmp_path / "upload"
    (folder / "data").mkdir(parents=True)
    for split, repeat in (("train", 2), ("validation", 1)):
        rows = text_label_rows(repeat=repeat)
        Dataset.from_dict({"text": [r["text"] for r in rows], "label": [CATEGORIES.index(r["label"]) for r in rows]},
                          features=features).to_parquet(folder / "data" / f"{split}-00000-of-00001.parquet")
    upload_data("tester/news-parquet", [folder], token=hub.token)  # private

    metrics = finetune(encoder_dir, tmp_path, "--dataset_repo", "tester/news-parquet", "--hub_token", hub.token,
                       "--cache_dir", str(tmp_path / "cache"))
    assert metrics["validation"]["eval_category_support"] == 15
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text(encoding="utf-8"))
    assert sorted(config["category_id2label"].values()) == CATEGORIES  # class-label ids came back as names
    assert config["category_column"] == "label" and config["text_columns"] == ["text"]
    report = json.loads((tmp_path / "run" / "run_config.json").read_text(encoding="utf-8"))["data_report"]
    assert report["hub_dataset"]["roles"] == {"train": "train", "validation": "validation", "test": []}
    assert report["hub_dataset"]["splits"]["train"]["rows"] == 30 and report["train_rows"] == 30
    assert report["validation"] == "tester/news-parquet split 'validation'"


def test_jsonl_dataset_test_split_revision_and_missing_names(hub, encoder_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", hub.token)
    folder = tmp_path / "upload"
    folder.mkdir()
    for split, repeat in (("train", 2), ("validation", 1), ("test", 1)):
        rows = text_label_rows(repeat=repeat) + [{"text": text, "label": ""} for text in SENTENCES["junk"]]
        for row in rows:
            row["pick"] = 0 if row["label"] == "" else 1
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    first = upload_data("tester/news-jsonl", [folder])
    (folder / "train.jsonl").write_text(
        (folder / "train.jsonl").read_text(encoding="utf-8") + json.dumps({"text": "new row", "label": "sports",
                                                                           "pick": 1}) + "\n", encoding="utf-8")
    upload_data("tester/news-jsonl", [folder])

    metrics = finetune(encoder_dir, tmp_path, "--dataset_repo", "tester/news-jsonl", "--dataset_revision",
                       first["commit"], "--cache_dir", str(tmp_path / "cache"))
    assert "test" in metrics["test"]  # the test split is predicted and scored after training
    assert (tmp_path / "run" / "predictions_test.csv").is_file()
    report = json.loads((tmp_path / "run" / "run_config.json").read_text(encoding="utf-8"))
    assert report["data_report"]["hub_dataset"]["splits"]["train"]["rows"] == 35  # the first commit's rows
    assert any(key.startswith(f"tester/news-jsonl@{first['commit']} split train") for key in report["data_files"])
    assert report["data_report"]["hub_dataset"]["revision"] == first["commit"]

    with pytest.raises(UsageError, match=r"--validation_split_name dev: .*no split 'dev' \(splits: train, .*test"):
        finetune(encoder_dir, tmp_path / "x", "--dataset_repo", "tester/news-jsonl", "--validation_split_name", "dev",
                 "--cache_dir", str(tmp_path / "cache"))
    with pytest.raises(HubError, match="'tester/absent' was not found"):
        finetune(encoder_dir, tmp_path / "y", "--dataset_repo", "tester/absent", "--cache_dir", str(tmp_path / "cache"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_prepare_push_then_train_from_the_hub_with_seed_env_names(hub, encoder_dir, tmp_path):
    """The libdocs flow: prepare (dedup, split) → a dataset repo with a card → run_finetune --dataset_repo."""
    (tmp_path / ".env").write_text(f"HF_AUTH_TOKEN={hub.token}\nHF_DATASET_REPO=tester/prepared\n", encoding="utf-8")
    rows = [{"pick": 1, "category": c, "title": t, "body": ""} for c in CATEGORIES for t in SENTENCES[c]] * 2
    rows += [{"pick": 0, "category": "", "title": t, "body": "spam"} for t in SENTENCES["junk"]]
    rows += [{"pick": 1, "category": c, "title": f"{t} again", "body": ""} for c in CATEGORIES for t in SENTENCES[c]]
    raw = tmp_path / "raw.csv"
    pd.DataFrame(rows).to_csv(raw, index=False)
    arguments = ["--input_files", str(raw), "--output_prefix", "data/clean", "--output_format", "jsonl",
                 "--test_size", "0.2", "--validation_size", "0.2", "--no_near_dedup", "--push_to_hub",
                 "HF_DATASET_REPO"]
    report = prepare.main(arguments)
    assert report["hub"]["repo_id"] == "tester/prepared" and hub.repo("tester/prepared").private
    files = hub.files("tester/prepared")
    assert {"README.md", "data/clean_train.jsonl", "data/clean_validation.jsonl", "data/clean_test.jsonl",
            "data/prepare_report.json", "data/removed_rows.csv"} <= set(files)
    assert files["data/clean_train.jsonl"] == (tmp_path / "data" / "clean_train.jsonl").read_bytes()
    card = files["README.md"].decode("utf-8")
    assert "path: data/clean_validation.jsonl" in card and "| exact_dedup | 50 | 15 | 35 |" in card
    assert "| economy |" in card and "--dataset_repo tester/prepared" in card
    assert prepare.main(arguments)["hub"]["commit"] is None  # nothing changed: no empty commit

    metrics = run_finetune.main(["--model_name_or_path", str(encoder_dir), "--dataset_repo", "HF_DATASET_REPO",
                                 "--output_dir", str(tmp_path / "run"), "--cache_dir", str(tmp_path / "cache"), *QUICK])
    assert set(metrics["test"]) == {"test"} and metrics["validation"]["eval_gate_support"] > 0
    data_report = json.loads((tmp_path / "run" / "run_config.json").read_text(encoding="utf-8"))["data_report"]
    assert data_report["hub_dataset"]["dataset_repo"] == "tester/prepared"
    assert data_report["train_rows"] == report["split"]["train_rows"]


def test_token_and_repo_from_the_seed_env_names(hub, tmp_path, monkeypatch):
    assert resolve_token() is None
    (tmp_path / ".env").write_text("HF_AUTH_TOKEN=from_seed_env\nHF_DATASET_REPO=me/data\n", encoding="utf-8")
    assert resolve_token() == "from_seed_env" and resolve_dataset_repo(None) == "me/data"
    assert resolve_dataset_repo("HF_DATASET_REPO") == "me/data" and resolve_dataset_repo("you/x") == "you/x"
    monkeypatch.setenv("HF_AUTH_TOKEN", "from_environment")
    assert resolve_token() == "from_environment"
    monkeypatch.setenv("HF_TOKEN", "hf_first")
    assert resolve_token() == "hf_first"  # HF_TOKEN wins when both are set
    (tmp_path / ".env").unlink()
    with pytest.raises(UsageError, match="HF_DATASET_REPO"):
        resolve_dataset_repo(None)


def test_upload_keeps_the_folder_layout(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", hub.token)
    for split in ("train", "test"):
        (tmp_path / "data" / split).mkdir(parents=True)
        (tmp_path / "data" / split / "task1_cleaned.csv").write_text(f"pick,title\n1,{split} a\n", encoding="utf-8")
        (tmp_path / "data" / split / "task2_cleaned.parquet").write_bytes(b"PAR1 not checked here")
    result = hub_module.main(["upload-data", "--repo", "tester/seed", "data/train", "data/test"])
    assert result["added"] == ["test/task1_cleaned.csv", "test/task2_cleaned.parquet", "train/task1_cleaned.csv",
                               "train/task2_cleaned.parquet"]
    again = upload_files("tester/seed", {"data/train/x.csv": tmp_path / "data" / "train" / "task1_cleaned.csv"},
                         token=hub.token)
    assert again["added"] == ["data/train/x.csv"]
    fetched = hub_module.main(["fetch-data", "--repo", "tester/seed", "--dest", str(tmp_path / "back")])
    assert sorted(path.relative_to(tmp_path / "back").as_posix() for path in fetched) == [
        "data/train/x.csv", "test/task1_cleaned.csv", "test/task2_cleaned.parquet", "train/task1_cleaned.csv",
        "train/task2_cleaned.parquet"]
