"""The model and the Trainer of a run (multitask.train.build), each built on its own from the run's inputs."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from transformers import set_seed

from multitask.errors import UsageError
from multitask.model.modeling import MultitaskModel
from multitask.train.build import build_model, build_trainer, class_weights
from multitask.train.inputs import prepare_inputs
from tests.conftest import CATEGORIES, parsed_finetune_args


def test_build_model_builds_a_fresh_model_each_call_and_changes_nothing(encoder_dir, csv_files, tmp_path):
    """Usable as `model_init`: the same seed gives the same weights, a new object, and untouched arguments."""
    model_args, data_args, training_args = parsed_finetune_args(encoder_dir, csv_files, tmp_path / "run",
                                                                "--max_seq_length", "32")
    inputs = prepare_inputs(model_args, data_args, training_args, tmp_path / "run")
    before = (model_args, data_args, training_args.to_dict())
    set_seed(0)
    first = build_model(model_args, data_args, training_args, inputs)
    set_seed(0)
    second = build_model(model_args, data_args, training_args, inputs)
    assert isinstance(first, MultitaskModel) and first is not second
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert list(first.config.category_id2label.values()) == CATEGORIES and first.config.max_seq_length == 32
    assert (model_args, data_args, training_args.to_dict()) == before


@pytest.mark.parametrize(("flags", "embeddings_train"), [((), False), (("--freeze_embeddings", "false"), True)])
def test_build_model_freezes_the_word_embeddings_unless_asked_not_to(encoder_dir, csv_files, tmp_path, flags,
                                                                    embeddings_train):
    """Word embeddings are frozen by default; everything else, position embeddings included, trains either way."""
    model_args, data_args, training_args = parsed_finetune_args(encoder_dir, csv_files, tmp_path / "run", *flags)
    model = build_model(model_args, data_args, training_args,
                        prepare_inputs(model_args, data_args, training_args, tmp_path / "run"))
    assert model.get_input_embeddings().weight.requires_grad is embeddings_train
    others = [p.requires_grad for n, p in model.named_parameters() if "word_embeddings" not in n]
    assert others and all(others)


def test_class_weights_by_trainer_argument_name(caplog):
    data = SimpleNamespace(train={"gate_labels": [1, 1, 1, 0, -100], "category_labels": [0, 0, 0, -100, 1]},
                           has_gate=True, category_labels=["a", "b", "c"])
    args = SimpleNamespace(gate_class_weighting=False, category_class_weighting=True, class_weight_min=0.1,
                           class_weight_max=5.0)
    with caplog.at_level(logging.WARNING, logger="run_finetune"):
        weights = class_weights(data, args)
    assert weights["gate_class_weights"] is None
    # counts (3, 1, 0) of 4 labelled rows: N / (K * n_c) = 4/9, 4/3, and the clip maximum for the absent class
    assert torch.allclose(weights["category_class_weights"], torch.tensor([4 / 9, 4 / 3, 5.0]))
    assert "classes with no training row (weight clipped to max): [2]" in caplog.text


def test_build_trainer_fits_the_arguments_to_a_gate_only_run(encoder_dir, csv_files, tmp_path):
    files = {"task1": csv_files["task1"], "task2": "", "val": csv_files["val"], "test": csv_files["test"]}
    model_args, data_args, training_args = parsed_finetune_args(
        encoder_dir, files, tmp_path / "run", "--metric_for_best_model", "category_macro_f1", "--report_to", "none")
    data_args.task2_file = None
    inputs = prepare_inputs(model_args, data_args, training_args, tmp_path / "run")
    trainer = build_trainer(build_model(model_args, data_args, training_args, inputs), data_args, training_args,
                            inputs, tmp_path / "run")
    assert training_args.label_names == ["gate_labels"] and training_args.metric_for_best_model == "gate_f1"
    assert trainer.args is training_args and trainer.category_class_weights is None  # no category head
    assert not any((tmp_path / "run").rglob("*"))  # no file written (the Trainer makes the empty output folder)
    assert "eval_gate_f1" in trainer.evaluate()


def test_build_trainer_refuses_a_metric_it_does_not_compute(encoder_dir, csv_files, tmp_path):
    arguments = parsed_finetune_args(encoder_dir, csv_files, tmp_path / "run", "--metric_for_best_model", "f1_macro")
    inputs = prepare_inputs(*arguments, tmp_path / "run")
    with pytest.raises(UsageError, match="not a validation metric"):
        build_trainer(build_model(*arguments, inputs), arguments[1], arguments[2], inputs, tmp_path / "run")


def test_hp_search_through_run_finetune_keeps_the_best_trial(encoder_dir, csv_files, tmp_path):
    """`--hp_search_trials 2` end to end: two real trials, their table, then the run trains and saves the best
    trial's values (recorded in hp_search.json); the run directory says complete."""
    import json

    import pandas as pd

    import run_finetune
    from tests.conftest import finetune_args

    run_dir = tmp_path / "run"
    run_finetune.main(finetune_args(encoder_dir, csv_files, run_dir, "--max_seq_length", "32", "--hp_search_trials",
                                    "2", "--threshold_cv", "0", "--eval_strategy", "epoch", "--save_strategy", "epoch"))
    trials = pd.read_csv(run_dir / "hp_trials.csv")
    assert len(trials) == 2 and (run_dir / "hp_trials.md").is_file() and (run_dir / "hp_trials.png").is_file()
    record = json.loads((run_dir / "hp_search.json").read_text())
    arguments = json.loads((run_dir / "run_config.json").read_text())["arguments"]["MultitaskTrainingArguments"]
    assert arguments["hp_search_trials"] == 2
    best = record["best_params"]
    assert "learning_rate" in best
    assert json.loads((run_dir / "run_status.json").read_text())["status"] == "complete"
    assert (run_dir / "model" / "config.json").is_file()
    assert not list(run_dir.glob("trial-*"))  # trial checkpoints removed


def test_pseudo_label_settings_that_cannot_act_are_warned_about(encoder_dir, csv_files, tmp_path, caplog):
    import logging

    import run_finetune
    from tests.conftest import finetune_args

    argv = finetune_args(encoder_dir, csv_files, tmp_path / "run", "--max_steps", "1", "--eval_strategy", "no",
                         "--save_strategy", "no", "--load_best_model_at_end", "false", "--cartography", "false",
                         "--pseudo_label_weight", "1", "--pseudo_label_threshold", "0.99")
    with caplog.at_level(logging.WARNING):
        run_finetune.main(argv)
    assert any("--pseudo_label_threshold 0.99" in r.getMessage() and "tends to" in r.getMessage()
               for r in caplog.records)
