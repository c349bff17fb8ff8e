"""multitask (the package's public API): names imported lazily, training from Python, and `Predictor` deciding as
run_predict.py does."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

import multitask
import run_predict
from multitask.errors import ModelFileError, UsageError
from tests.conftest import CATEGORIES, seed_tables, write_csv


def test_every_public_name_imports():
    namespace: dict = {}
    exec("from multitask import *", namespace)
    assert set(multitask.__all__) <= set(namespace)
    assert set(multitask.__all__) - {"__version__"} == set(multitask._PUBLIC)
    from transformers import PretrainedConfig, PreTrainedModel, Trainer, TrainingArguments

    from multitask import MultitaskConfig, MultitaskModel, MultitaskTrainer, MultitaskTrainingArguments

    assert issubclass(MultitaskConfig, PretrainedConfig) and issubclass(MultitaskModel, PreTrainedModel)
    assert issubclass(MultitaskTrainer, Trainer) and issubclass(MultitaskTrainingArguments, TrainingArguments)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        multitask.nothing_here  # noqa: B018 - the attribute access is the test


def test_import_multitask_stays_light():
    """`import multitask` (and so every `python -m multitask.<tool>`) does not load torch or transformers."""
    code = "import sys, multitask; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def api_run(tmp_path_factory, encoder_dir):
    """A run trained from Python through the public API, on tiny CSVs."""
    root = tmp_path_factory.mktemp("api")
    files = seed_tables(root, task2_body="")
    from multitask import DataArguments, ModelArguments, MultitaskTrainingArguments, finetune

    metrics = finetune(
        ModelArguments(model_name_or_path=str(encoder_dir)),
        DataArguments(task1_file=str(files["task1"]), task2_file=str(files["task2"]), validation_file=str(files["val"]),
                      text_columns=["title", "body"]),
        MultitaskTrainingArguments(output_dir=str(root / "run"), num_train_epochs=2, per_device_train_batch_size=8,
                                   learning_rate=1e-3, use_cpu=True, review_share=0.3, report_to="none"),
    )
    return root, root / "run", metrics


def test_finetune_from_python_trains_a_complete_run(api_run):
    _, run_dir, metrics = api_run
    assert "eval_joint_accuracy" in metrics["validation"]
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert '"complete"' in (run_dir / "run_status.json").read_text()


@pytest.mark.parametrize("threshold", ["default", "acc"])
def test_predictor_decides_as_run_predict_writes(api_run, threshold):
    root, run_dir, _ = api_run
    texts = ["central bank cuts interest rates", "buy cheap pills online now", "home team wins the championship"]
    # Empty body: the joined input is the title alone, the text Predictor.predict receives.
    rows = write_csv(root / f"rows_{threshold}.csv", {"title": texts, "body": [""] * len(texts)})
    for review in (False, True):
        out = root / f"preds_{threshold}_{review}"
        run_predict.main(["--model", str(run_dir), "--input_files", str(rows), "--output_dir", str(out),
                          "--threshold", threshold, *(["--review"] if review else [])])
        written = pd.read_csv(out / f"predictions_rows_{threshold}.csv", dtype=str, keep_default_na=False)
        from multitask import Predictor

        decisions = Predictor.from_pretrained(run_dir, threshold=threshold, review=review).predict(texts)
        assert len(decisions) == 3
        for decision, (_, row) in zip(decisions, written.iterrows()):
            expected = "review" if decision.review else decision.label
            assert expected == row["decision"]
            assert decision.label in {"Decline", *CATEGORIES}
            assert decision.category == row["category_pred"]
            assert decision.pick_prob == pytest.approx(float(row["pick_prob"]), abs=1e-6)
            assert decision.category_prob == pytest.approx(float(row["category_prob"]), abs=1e-6)
            assert decision.label == (decision.category if int(row["pick_pred"]) else "Decline")
            top = json.loads(row["category_top3"])  # a JSON list of [label, probability] pairs
            assert [name for name, _ in decision.top_categories] == [name for name, _ in top]


def test_load_model_and_errors(api_run, tmp_path):
    _, run_dir, _ = api_run
    from multitask import MultitaskModel, Predictor, load_model

    model, tokenizer = load_model(run_dir)  # the run directory stands for its model/
    assert isinstance(model, MultitaskModel) and not model.training
    assert tokenizer("a text")["input_ids"]
    with pytest.raises(ModelFileError, match="no such directory"):
        load_model(tmp_path / "missing")
    with pytest.raises(UsageError, match="--threshold: .*'nope'"):
        Predictor.from_pretrained(run_dir, threshold="nope")
    with pytest.raises(UsageError, match="a list of texts"):
        Predictor.from_pretrained(run_dir).predict("one string")
