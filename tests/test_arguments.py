"""multitask.train.arguments: what MultitaskTrainingArguments does beyond holding values (the --help of every field is
checked on run_finetune.py in test_scripts.py)."""

from __future__ import annotations

import pytest

from multitask.train.arguments import MultitaskTrainingArguments


def arguments(tmp_path, **values):
    return MultitaskTrainingArguments(output_dir=str(tmp_path), use_cpu=True, **values)


def test_default_output_dir_is_timestamped(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert MultitaskTrainingArguments(use_cpu=True).output_dir.startswith("output/output_")


def test_distributed_launch_needs_output_dir(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--output_dir"):
        MultitaskTrainingArguments(use_cpu=True)


def test_target_oos_recall_sets_the_leak_target(tmp_path):
    assert arguments(tmp_path, target_oos_recall=0.9, max_decline_leak=0.5).max_decline_leak == pytest.approx(0.1)
    assert arguments(tmp_path, max_decline_leak=0.2).max_decline_leak == 0.2
    with pytest.raises(ValueError, match="target_oos_recall"):
        arguments(tmp_path, target_oos_recall=1.5)


def test_loss_term_weights_name_every_logged_term(tmp_path):
    weights = arguments(tmp_path, gate_loss_weight=0.4, hierarchy_weight=0.2, rdrop_alpha_gate=0.3).loss_term_weights()
    assert set(weights) == {"gate_loss", "category_loss", "hierarchy_loss", "pick_consistency_loss", "pseudo_label_loss",
                            "rdrop_category_kl", "rdrop_gate_kl", "contrastive_loss"}
    assert (weights["gate_loss"], weights["hierarchy_loss"], weights["rdrop_gate_kl"]) == (0.4, 0.2, 0.3)
