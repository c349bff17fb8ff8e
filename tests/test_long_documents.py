"""Long documents end to end: training (data.tokenize), the post-training scoring and run_predict cut texts the
same way, from the settings stored in the model config; --freeze_embeddings in a real run."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoTokenizer

import run_finetune
import run_predict
from multitask.data.loading import tokenize
from multitask.data.text_encoding import encode_texts, encode_windows
from multitask.errors import UsageError
from multitask.serve.predict import predict_scores


def test_training_and_prediction_cut_the_same_tokens(tokenizer, model):
    """data.tokenize (training, evaluation) and predict_scores (prediction) feed the model identical inputs."""
    texts = ["sports " * 40 + "株価が大きく上昇した", "central bank cuts interest rates"]
    model.config.max_seq_length, model.config.truncation, model.config.head_tokens = 16, "head_tail", 5
    dataset = tokenize(Dataset.from_dict({"text": texts}), tokenizer, 16, "head_tail", 5)
    assert dataset["input_ids"] == encode_texts(tokenizer, texts, 16, "head_tail", 5)["input_ids"]
    assert dataset["length"] == [16, len(dataset["input_ids"][1])]
    seen = []
    forward = model.forward
    model.forward = lambda input_ids, attention_mask, **kw: seen.extend(input_ids.tolist()) or forward(
        input_ids=input_ids, attention_mask=attention_mask, **kw)
    predict_scores(model, tokenizer, texts, batch_size=1)  # max_length from the config
    padded = sorted(ids for ids in seen)
    assert padded == sorted(dataset["input_ids"])


def test_run_finetune_stores_the_cut_and_run_predict_applies_it(encoder_dir, csv_files, tmp_path, caplog):
    """End to end, with --freeze_embeddings too: the config carries truncation, head and length; run_predict with no
    flag scores exactly as the run did; the word embeddings come out unchanged."""
    run_dir = tmp_path / "run"
    caplog.set_level(logging.INFO)
    run_finetune.main(["--model_name_or_path", str(encoder_dir), "--task1_file", str(csv_files["task1"]),
                       "--task2_file", str(csv_files["task2"]), "--validation_file", str(csv_files["val"]),
                       "--test_files", str(csv_files["test"]), "--output_dir", str(run_dir), "--max_steps", "2",
                       "--per_device_train_batch_size", "8", "--learning_rate", "1e-2", "--use_cpu", "true",
                       "--max_seq_length", "12", "--truncation", "head_tail", "--head_tokens", "3",
                       "--freeze_embeddings", "true", "--threshold_cv", "0"])
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert (config["max_seq_length"], config["truncation"], config["head_tokens"]) == (12, "head_tail", 3)
    assert "trainable parameters:" in caplog.text and "word-embedding parameters frozen" in caplog.text

    word = "embeddings.word_embeddings.weight"
    trained = load_file(run_dir / "model" / "model.safetensors")
    initial = load_file(encoder_dir / "model.safetensors")
    assert torch.equal(trained[f"encoder.{word}"], initial[word])
    layer_norm = "embeddings.LayerNorm.weight"  # trained: only the word matrix is frozen
    assert not torch.equal(trained[f"encoder.{layer_norm}"], initial[layer_norm])

    test = pd.read_csv(csv_files["test"])
    texts = (test["title"] + " [SEP] " + test["body"]).tolist()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    assert any(len(tokenizer(text)["input_ids"]) > 12 for text in texts)  # the cut matters here
    run_predict.main(["--model", str(run_dir), "--input_files", str(csv_files["test"]),
                      "--output_dir", str(tmp_path / "preds")])
    stem = csv_files["test"].stem
    ours = pd.read_csv(tmp_path / "preds" / f"predictions_{stem}.csv")
    runs = pd.read_csv(run_dir / f"predictions_{stem}.csv")
    for column in ("pick_prob", "category_prob"):
        np.testing.assert_allclose(ours[column], runs[column], atol=1e-5)
    with pytest.raises(UsageError, match="--head_tokens 3"):  # a shorter override leaves no room for the tail
        run_predict.main(["--model", str(run_dir), "--input_files", str(csv_files["test"]),
                          "--output_dir", str(tmp_path / "short"), "--max_seq_length", "5"])


@pytest.mark.parametrize("flags, message", [
    (["--truncation", "head_tail", "--head_tokens", "62"], "--head_tokens 62"),  # 64 less [CLS]/[SEP]: no tail left
    (["--head_tokens", "16"], "only with --truncation head_tail"),
])
def test_bad_truncation_is_refused_before_the_run_directory_exists(encoder_dir, csv_files, tmp_path, flags, message):
    run_dir = tmp_path / "run"
    with pytest.raises(UsageError, match=message):
        run_finetune.main(["--model_name_or_path", str(encoder_dir), "--task1_file", str(csv_files["task1"]),
                           "--task2_file", str(csv_files["task2"]), "--validation_file", str(csv_files["val"]),
                           "--output_dir", str(run_dir), "--use_cpu", "true", "--max_seq_length", "64", *flags])
    assert not run_dir.exists()


def test_chunked_run_scores_documents_end_to_end(encoder_dir, csv_files, tmp_path):
    """--long_text chunk: training sees windows, but the epoch log, thresholds, predictions and run_predict count
    documents; the aggregation chosen on validation is stored and run_predict applies it unchanged."""
    run_dir = tmp_path / "run"
    metrics = run_finetune.main([
        "--model_name_or_path", str(encoder_dir), "--task1_file", str(csv_files["task1"]),
        "--task2_file", str(csv_files["task2"]), "--validation_file", str(csv_files["val"]),
        "--test_files", str(csv_files["test"]), "--output_dir", str(run_dir), "--max_steps", "2",
        "--per_device_train_batch_size", "8", "--learning_rate", "1e-2", "--use_cpu", "true",
        "--max_seq_length", "10", "--long_text", "chunk", "--chunk_stride", "2", "--threshold_cv", "0",
        "--eval_strategy", "steps", "--eval_steps", "1", "--save_strategy", "steps", "--save_steps", "1",
        "--train_sampling_strategy", "group_by_length"])
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert (config["long_text"], config["chunk_stride"], config["max_seq_length"]) == ("chunk", 2, 10)
    assert config["chunk_aggregation"] == metrics["chunk_aggregation"] in ("mean", "max")
    validation = pd.read_csv(csv_files["val"])
    assert metrics["validation"]["eval_joint_support"] == len(validation)  # documents, not windows
    test = pd.read_csv(csv_files["test"])
    stem = csv_files["test"].stem
    runs = pd.read_csv(run_dir / f"predictions_{stem}.csv")
    assert len(runs) == len(test)
    run_predict.main(["--model", str(run_dir), "--input_files", str(csv_files["test"]),
                      "--output_dir", str(tmp_path / "preds")])
    ours = pd.read_csv(tmp_path / "preds" / f"predictions_{stem}.csv")
    for column in ("pick_prob", "category_prob"):
        np.testing.assert_allclose(ours[column], runs[column], atol=1e-5)


def test_chunked_predictions_recombine_the_windows(tokenizer, model):
    """predict_scores in chunked mode equals scoring each window alone and averaging (mean) or taking the
    element-wise max of (max) the logits by hand."""
    texts = ["sports " * 8 + "株価が大きく上昇した", "bank"]
    model.config.max_seq_length, model.config.long_text, model.config.chunk_stride = 16, "chunk", 4
    windows = encode_windows(tokenizer, texts, 16, 4)
    assert windows["document"].count(0) > 1 and windows["document"].count(1) == 1
    model.eval()  # as predict_scores runs it: no dropout
    with torch.inference_mode():
        logits = [model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
                  for ids in windows["input_ids"]]
    documents = np.array(windows["document"])
    for how, combine in (("mean", np.mean), ("max", np.max)):
        scores = predict_scores(model, tokenizer, texts, batch_size=3, aggregation=how, return_features=True)
        for document in (0, 1):
            rows = [out.category_logits[0].numpy() for out, d in zip(logits, documents) if d == document]
            np.testing.assert_allclose(scores.category_logits[document], combine(rows, axis=0), atol=1e-5)
        assert scores.pick_prob.shape == (2,)
