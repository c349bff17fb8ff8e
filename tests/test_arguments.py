"""multitask.train.arguments: what MultitaskTrainingArguments does beyond holding values (the --help of every field is
checked on run_finetune.py in test_scripts.py)."""

from __future__ import annotations

import pytest

from multitask.errors import UsageError
from multitask.train.arguments import DataArguments, ModelArguments, MultitaskTrainingArguments
from multitask.train.checks import check_finetune_arguments


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


def test_a_stated_recall_target_comes_with_the_guarantee_unless_told_otherwise(tmp_path):
    assert arguments(tmp_path, target_oos_recall=0.7).guarantee_confidence == 0.95
    assert arguments(tmp_path, target_oos_recall=0.7, oos_recall_confidence=0.9).guarantee_confidence == 0.9
    # 0 asks for the point estimate, and stays so when the arguments are rebuilt (dataclasses.replace).
    point = arguments(tmp_path, target_oos_recall=0.7, oos_recall_confidence=0.0)
    assert point.guarantee_confidence is None
    import dataclasses

    assert dataclasses.replace(point).guarantee_confidence is None
    assert arguments(tmp_path, max_decline_leak=0.3).guarantee_confidence is None  # no target stated: no guarantee


def test_loss_term_weights_name_every_logged_term(tmp_path):
    weights = arguments(tmp_path, gate_loss_weight=0.4, hierarchy_weight=0.2, rdrop_alpha_gate=0.3).loss_term_weights()
    assert set(weights) == {"gate_loss", "category_loss", "hierarchy_loss", "pick_consistency_loss", "pseudo_label_loss",
                            "rdrop_category_kl", "rdrop_gate_kl", "contrastive_loss"}
    assert (weights["gate_loss"], weights["hierarchy_loss"], weights["rdrop_gate_kl"]) == (0.4, 0.2, 0.3)


# Each dataclass checks its own values when it is built (the command line's one-line errors: test_bad_inputs.py).
@pytest.mark.parametrize(("build", "message"), [
    (lambda tmp: ModelArguments(classifier_dropout=1.0), r"^--classifier_dropout 1.0: must be in \[0, 1\)$"),
    (lambda tmp: ModelArguments(lora_r=-1), r"^--lora_r -1: must be >= 0"),
    (lambda tmp: ModelArguments(lora_r=8, lora_alpha=0), r"^--lora_alpha 0: must be a positive number"),
    (lambda tmp: DataArguments(max_seq_length=0), r"^--max_seq_length 0: must be >= 1$"),
    (lambda tmp: DataArguments(validation_split=1.0), r"^--validation_split 1.0: must be in \(0, 1\)$"),
    (lambda tmp: DataArguments(text_columns=["title", "pick"]), "--pick_column pick is also one of --text_columns"),
    (lambda tmp: DataArguments(format="xlsx"), "--format"),
    (lambda tmp: arguments(tmp, learning_rate=0.0), r"^--learning_rate 0.0: must be a positive number"),
    (lambda tmp: arguments(tmp, gate_loss_weight=0.0, category_loss_weight=0.0), "the loss would be zero"),
    (lambda tmp: arguments(tmp, threshold_cv=1), r"^--threshold_cv 1: give 0 \(off\) or at least 2 folds$"),
    (lambda tmp: arguments(tmp, frequency_band_quantiles=[0.6, 0.3]), "must be increasing numbers in"),
    (lambda tmp: arguments(tmp, push_to_hub=True), "--push_to_hub needs --hub_model_id"),
])
def test_each_dataclass_refuses_its_own_bad_values(tmp_path, build, message):
    with pytest.raises(UsageError, match=message):
        build(tmp_path)


def test_a_value_changed_after_building_is_still_checked_before_a_run(tmp_path):
    model_args, data_args, training_args = ModelArguments(), DataArguments(), arguments(tmp_path)
    data_args.validation_split = 0.0  # set after __post_init__, as a Python caller may
    with pytest.raises(UsageError, match=r"--validation_split 0.0: must be in \(0, 1\)"):
        check_finetune_arguments(model_args, data_args, training_args)
    assert not any(tmp_path.iterdir())
