"""Batched, length-sorted inference and the prediction table/records."""

import copy
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from multitask.labels import parse_top_k_cell
from multitask.serve.predict import Scores, predict_scores, prediction_records, prediction_table


def test_length_sorted_batches_keep_input_order(model, tokenizer):
    model.eval()
    texts = ["a much longer sentence about the stock market rally and central bank rates", "short",
             "選挙の結果", "medium length words here", "x", "parliament passes new budget law tonight"]
    scores = predict_scores(model, tokenizer, texts, batch_size=2)
    with torch.inference_mode():
        for index, text in enumerate(texts):
            alone = model(**tokenizer([text], return_tensors="pt"))
            expected = torch.softmax(alone.category_logits, -1)[0].numpy()
            assert np.allclose(scores.category_probs[index], expected, atol=1e-5), index
            assert scores.pick_prob[index] == pytest.approx(torch.softmax(alone.gate_logits, -1)[0, 1].item(), abs=1e-5)


def test_prediction_table_and_records(model):
    config = model.config  # categories: economy, politics, sports
    frame = pd.DataFrame({"title": ["a", "b", "c"], "pick": ["1", "0", "1"], "category": ["sports", "", "economy"]})
    scores = Scores(np.array([0.9, 0.2, 0.6]), np.array([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2], [0.2, 0.5, 0.3]]))
    table = prediction_table(frame, scores, config, threshold=0.5, top_k=2)
    assert list(table.columns[:3]) == ["title", "pick", "category"]
    assert table["pick_pred"].tolist() == [1, 0, 1]
    assert table["category_pred"].tolist() == ["sports", "economy", "politics"]
    assert json.loads(table["category_top2"][0]) == [["sports", 0.7], ["politics", 0.2]]
    assert table["decision"].tolist() == ["sports", "Decline", "politics"]
    records = prediction_records(table, [1, 0, 1], [2, -100, 0], config)
    assert records[0]["decision_correct"] and records[0]["category_correct"] and records[0]["pick_correct"]
    assert records[1]["decision_correct"] and "gold_category" not in records[1]
    assert records[2]["decision_correct"] is False and records[2]["gold_category"] == "economy"
    assert records[0]["category_top"][0] == {"label": "sports", "prob": 0.7}
    assert records[0]["label_maps_hash"] == config.label_maps_hash() and records[0]["row"] == 2
    # a JSON Lines input names its lines, as the reader numbered them (blank lines skipped)
    lines = prediction_records(table, [1, 0, 1], [2, -100, 0], config, row_numbers=[1, 3, 4], row_unit="line")
    assert [record["line"] for record in lines] == [1, 3, 4] and "row" not in lines[0]
    # a review band turns the rows whose score lies in it into "review"
    reviewed = prediction_table(frame, scores, config, threshold=0.5, review_band=(0.55, 0.95))
    assert reviewed["decision"].tolist() == ["review", "Decline", "review"]


def test_joint_gate_score(model, tokenizer):
    texts = ["stock market rally", "buy cheap pills"]
    plain = predict_scores(model, tokenizer, texts)
    model.config.gate_score = "joint"
    joint = predict_scores(model, tokenizer, texts)
    assert np.allclose(joint.pick_prob, plain.pick_prob * plain.category_probs.max(axis=1))
    assert np.allclose(joint.category_probs, plain.category_probs)


ODD_LABELS = ["arts|culture", 'say "hi": now', "=HYPERLINK(x)", "ß" * 300]


def test_any_label_text_round_trips_through_the_top_k_column_and_records(model):
    config = copy.deepcopy(model.config)
    config.category_id2label = dict(enumerate(ODD_LABELS[:3]))
    frame = pd.DataFrame({"title": ["a", "b"]})
    scores = Scores(np.array([0.9, 0.8]), np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]))
    table = prediction_table(frame, scores, config, top_k=3)
    assert [label for label, _ in parse_top_k_cell(table["category_top3"][0])] == [
        "=HYPERLINK(x)", 'say "hi": now', "arts|culture"]
    records = prediction_records(table, [1, 1], [0, 0], config)
    assert records[1]["category_top"][0] == {"label": "arts|culture", "prob": 0.6}
    assert records[1]["category_correct"] and not records[0]["category_correct"]


def test_top_k_cells_of_older_files_are_still_read():
    assert parse_top_k_cell("a:b:0.9000|c:0.1000") == [("a:b", 0.9), ("c", 0.1)]
    assert parse_top_k_cell('[{"label": "x|y", "prob": 0.5}]') == [("x|y", 0.5)]
    assert parse_top_k_cell(json.dumps([["ß" * 300, 1.0]])) == [("ß" * 300, 1.0)]


def test_input_columns_named_like_outputs_are_kept_and_reported(model, caplog):
    frame = pd.DataFrame({"title": ["a", "b"], "decision": ["mine", "mine too"], "pick_prob": ["x", "y"],
                          "decision_input": ["taken", "taken"], "category_top3": ["old", "old"]})
    scores = Scores(np.array([0.9, 0.2]), np.array([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2]]))
    with caplog.at_level(logging.WARNING):
        table = prediction_table(frame, scores, model.config, source="in.csv")
    assert table["decision_input2"].tolist() == ["mine", "mine too"] and table["pick_prob_input"].tolist() == ["x", "y"]
    assert table["decision_input"].tolist() == ["taken", "taken"] and table["category_top3_input"].tolist() == ["old"] * 2
    assert table["decision"].tolist() == ["sports", "Decline"] and table["pick_prob"].tolist() == [0.9, 0.2]
    assert "in.csv" in caplog.text and "'decision' -> 'decision_input2'" in caplog.text
    assert list(frame.columns) == ["title", "decision", "pick_prob", "decision_input", "category_top3"]  # untouched


def test_significant_keeps_small_gate_scores_readable():
    from multitask.serve.predict import significant

    values = np.array([8.167509335e-08, 0.123456789, 0.0, 1.0, np.nan, -2.5e-9])
    rounded = significant(values)
    # A squashed score near 1e-7 keeps 6 significant digits, where 6 decimals would print 0.
    assert rounded[0] == pytest.approx(8.16751e-08, rel=1e-12) and rounded[1] == pytest.approx(0.123457, rel=1e-12)
    assert rounded[2] == 0.0 and rounded[3] == 1.0 and np.isnan(rounded[4])
    assert rounded[5] == pytest.approx(-2.5e-9, rel=1e-12)
