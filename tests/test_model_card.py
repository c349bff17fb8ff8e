"""The model card: built from what a run computed, sections present only when their data is, no local paths as
Hub metadata."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from multitask.data.demo import tiny_deberta_config
from multitask.model.modeling import build_config
from multitask.scoring.model_card import build_model_card

METRICS = {"eval_gate_f1": 0.81234, "eval_loss": 0.3, "eval_gate_loss": 0.2, "eval_category_macro_f1": 0.5, "epoch": 3}


@pytest.fixture
def config():
    config = build_config(tiny_deberta_config(100), ["economy", "sports"])
    config.gate_thresholds = {"default": 0.5, "leak": 0.8123456}
    return config


def test_full_card_sections_and_numbers(config):
    per_class = [{"label": "economy", "band": "High", "support": 3, "precision": 1.0, "recall": 0.5, "f1": 2 / 3},
                 {"label": "sports", "band": "High", "support": 1, "precision": 0.5, "recall": 1.0, "f1": 2 / 3},
                 {"label": "weather", "band": "Low", "support": 0, "precision": 0.0, "recall": 0.0, "f1": 0.0}]
    # weather has no validation rows: not averaged into its band
    calibration = {"gate": {"temperature": 1.5, "before": {"ece": 0.1, "brier": 0.2, "nll": 0.3},
                            "after": {"ece": 0.05, "brier": 0.1, "nll": 0.2}}}
    card = build_model_card(config, SimpleNamespace(learning_rate=2e-5, seed=3), "microsoft/deberta-v3-base",
                            {"/data/task1.csv": "ab" * 32}, METRICS, per_class, "user/model", None, calibration)
    text = card.content
    assert card.data.base_model == "microsoft/deberta-v3-base"
    assert "| task1.csv | abababababababab |" in text  # file name only, hash cut to 16 hex digits
    assert "| learning_rate | 2e-05 |" in text and "| seed | 3 |" in text
    # eval_ metrics without the prefix, 4 significant digits, losses and non-eval keys left out.
    assert "| gate_f1 | 0.8123 |" in text and "gate_loss" not in text and "| epoch |" not in text
    assert "| High | 2 | 0.75 |" in text and "\n| Low |" not in text  # no band row for Low
    assert "| leak | 0.8123 |" in text and "--threshold leak" in text
    assert "| gate | 1.5 | 0.1 → 0.05 | 0.2 → 0.1 | 0.3 → 0.2 |" in text
    assert "held-out folds" not in text  # no cross-validation given
    assert "| economy | 3 | 1 | 0.5 | 0.6667 | High |" in text  # the per-category table
    assert "## Test files" not in text  # none given


def test_test_files_at_every_stored_threshold(config):
    test_metrics = {"news_2024": {"default": {"threshold": 0.5, "joint_accuracy": 0.91, "gate_f1": 0.875},
                                  "leak": {"threshold": 0.8123456, "joint_accuracy": 0.88}},
                    "unlabelled": {}}  # a file without labels scores nothing: no row
    text = build_model_card(config, SimpleNamespace(), "base", {}, METRICS, test_metrics=test_metrics).content
    assert "## Test files" in text
    assert "| news_2024 | default | 0.5 | 0.91 | – | – | – | 0.875 | – | – |" in text
    assert "| news_2024 | leak | 0.8123 | 0.88 |" in text and "unlabelled" not in text


def test_sections_without_data_are_left_out_and_local_paths_are_not_metadata(config, tmp_path):
    category_only = build_config(tiny_deberta_config(100), ["a", "b"], with_gate=False)
    card = build_model_card(category_only, SimpleNamespace(), str(tmp_path), {}, {})
    text = card.content
    assert card.data.base_model is None  # a local directory is not a Hub id
    assert "No validation metrics." in text and "none (category-only model)" in text
    assert "## Gate thresholds" not in text and "## Calibration" not in text and "frequency band" not in text
    assert "--threshold default" in text


def test_held_out_figures_table(config):
    gate_cv = {"folds": 5, "chosen_per_fold": ["pick"] * 5,
               "leak": {"in_scope_accuracy": {"held_out": 0.9, "interval_95": [0.85, 0.95], "fold_mean_sd": [0.9, 0.02]},
                        "oos_recall": {"held_out": 0.8, "interval_95": [0.7, 0.9], "fold_mean_sd": [0.8, 0.05]}}}
    text = build_model_card(config, SimpleNamespace(), "base", {}, METRICS, gate_cv=gate_cv).content
    assert "5-fold" in text
    assert "| leak | in-scope accuracy | 0.9 | 0.85–0.95 | 0.9 ± 0.02 |" in text
    assert "| leak | Decline recall | 0.8 | 0.7–0.9 | 0.8 ± 0.05 |" in text
