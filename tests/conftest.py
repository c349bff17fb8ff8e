"""Shared fixtures and helpers: an offline tokenizer, a tiny DeBERTa-v3-style encoder checkpoint, small CSVs, a
Trainer over them (`make_trainer`) and the run_finetune.py command line for them (`finetune_args`).

Built once per session and deep-copied per test; nothing touches the network or ../shared/data. Test files take
what they share from here (`from tests.conftest import …`), never from one another.
"""

import copy
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import DebertaV2Model, HfArgumentParser  # noqa: E402

from multitask.data.demo import tiny_deberta_config, train_tokenizer  # noqa: E402
from multitask.data.loading import MultitaskCollator, load_training_data, tokenize  # noqa: E402
from multitask.model.modeling import MultitaskModel, build_config  # noqa: E402
from multitask.scoring.metrics import build_compute_metrics  # noqa: E402
from multitask.train.arguments import DataArguments, ModelArguments, MultitaskTrainingArguments  # noqa: E402
from multitask.train.trainer import MultitaskTrainer  # noqa: E402

CATEGORIES = ["economy", "politics", "sports"]
SENTENCES = {
    "economy": ["stock market rally lifts shares", "central bank cuts interest rates", "株価が大きく上昇した",
                "inflation slows as prices fall", "exports grow for third month"],
    "politics": ["parliament passes new budget law", "election results announced tonight", "首相が記者会見を開いた",
                 "minister resigns after scandal", "voters head to the polls"],
    "sports": ["home team wins the championship", "striker scores twice in final", "サッカー代表が勝利した",
               "marathon record broken in rain", "coach praises young players"],
    "junk": ["buy cheap pills online now", "click here for a free prize", "今日の星占いはラッキー",
             "lorem ipsum dolor sit amet", "error 404 page not found"],
}


@pytest.fixture(scope="session")
def tokenizer():
    texts = [text for texts in SENTENCES.values() for text in texts] * 3
    return train_tokenizer(texts, vocab_size=300)


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory, tokenizer):
    """A saved plain DeBERTa-v2 encoder + tokenizer, as a Hub checkpoint would be."""
    path = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(0)
    config = tiny_deberta_config(len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=128)
    DebertaV2Model(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def _base_model(encoder_dir):
    torch.manual_seed(0)
    encoder = DebertaV2Model.from_pretrained(encoder_dir)
    return MultitaskModel(build_config(encoder.config, CATEGORIES), encoder=encoder)


@pytest.fixture
def model(_base_model):
    return copy.deepcopy(_base_model)


def write_csv(path, columns):
    pd.DataFrame(columns).to_csv(path, index=False, encoding="utf-8")
    return path


def no_dropout(model):
    """Set every dropout probability of `model` to 0 (in place) so two forward passes agree; returns it."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def make_trainer(model, tokenizer, csv_files, tmp_path, **overrides):
    """A `MultitaskTrainer` on the `csv_files` fixture (validation = val.csv), CPU, no saving; `overrides` are
    `MultitaskTrainingArguments` fields."""
    data = load_training_data(csv_files["task1"], csv_files["task2"], csv_files["val"], separator=" [SEP] ")
    settings = dict(output_dir=str(tmp_path / "run"), num_train_epochs=1, per_device_train_batch_size=8,
                    learning_rate=1e-3, save_strategy="no", load_best_model_at_end=False, report_to="none",
                    use_cpu=True, dataloader_pin_memory=False, seed=0)
    settings.update(overrides)
    args = MultitaskTrainingArguments(**settings)
    return MultitaskTrainer(
        model=model, args=args,
        train_dataset=tokenize(data.train, tokenizer, 64), eval_dataset=tokenize(data.validation, tokenizer, 64),
        processing_class=tokenizer, data_collator=MultitaskCollator(tokenizer, keep_keys=("row_id",)),
        compute_metrics=build_compute_metrics(),
    )


def finetune_args(encoder_dir, csv_files, output_dir, *extra):
    """run_finetune.py arguments for a short CPU run on `csv_files` (2 epochs, batch 8), plus `extra`."""
    return ["--model_name_or_path", str(encoder_dir), "--task1_file", str(csv_files["task1"]),
            "--task2_file", str(csv_files["task2"]), "--validation_file", str(csv_files["val"]),
            "--test_files", str(csv_files["test"]), "--output_dir", str(output_dir),
            "--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3",
            "--use_cpu", "true", *extra]


def parsed_finetune_args(encoder_dir, csv_files, output_dir, *extra):
    """`finetune_args(...)` parsed as run_finetune.py parses them: (model_args, data_args, training_args)."""
    parser = HfArgumentParser((ModelArguments, DataArguments, MultitaskTrainingArguments))
    return parser.parse_args_into_dataclasses(finetune_args(encoder_dir, csv_files, output_dir, *extra))


def seed_tables(root: Path, task2_body: str = "news") -> dict[str, Path]:
    """task1/task2/val/test CSVs in the seed layout under `root`. With the default `task2_body` the task2 texts
    differ from task1's (title + body); with "" every task2 row is also a task1 row (merged into both labels)."""
    tmp_path = root
    pick_rows = [(text, 1) for c in CATEGORIES for text in SENTENCES[c]] + [(t, 0) for t in SENTENCES["junk"]]
    task1 = write_csv(tmp_path / "task1.csv", {"pick": [p for _, p in pick_rows],
                                              "title": [t for t, _ in pick_rows], "body": [""] * len(pick_rows)})
    cat_rows = [(text, c) for c in CATEGORIES for text in SENTENCES[c]]
    task2 = write_csv(tmp_path / "task2.csv", {"category": [c for _, c in cat_rows],
                                              "title": [t for t, _ in cat_rows], "body": [task2_body] * len(cat_rows)})
    eval_rows = [(SENTENCES[c][i], "1", c) for c in CATEGORIES for i in (0, 1)] + [(SENTENCES["junk"][0], "0", "")]
    val = write_csv(tmp_path / "val.csv", {"pick": [p for _, p, _ in eval_rows], "category": [c for _, _, c in eval_rows],
                                          "title": [t for t, _, _ in eval_rows], "body": [""] * len(eval_rows)})
    test = write_csv(tmp_path / "ニュース_test.csv", {"title": [t for t, _, _ in eval_rows], "body": ["本文"] * len(eval_rows),
                                                   "pick": [p for _, p, _ in eval_rows], "category": [c for _, _, c in eval_rows],
                                                   "source_id": list(range(len(eval_rows)))})
    return {"task1": task1, "task2": task2, "val": val, "test": test}


@pytest.fixture
def csv_files(tmp_path):
    """`seed_tables` in the test's own folder."""
    return seed_tables(tmp_path)
