"""multitask.checks: argument and model-directory checks that run before anything is loaded or written.

The command-line side (one `error:` line per bad input) is in test_bad_inputs.py; these are the functions alone.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
from transformers import BertConfig, RobertaConfig

from multitask.checks import (
    check_columns,
    check_device,
    check_fraction,
    check_model_dir,
    check_positive,
    check_sequence_length,
    check_training_steps,
    require,
    resolve_model_source,
)
from multitask.data.demo import tiny_deberta_config
from multitask.errors import ModelFileError, UsageError


def test_small_checks_name_the_flag_and_value():
    with pytest.raises(UsageError, match="^--x 3: bad$"):
        require(False, "--x 3: bad")
    require(True, "never raised")
    with pytest.raises(UsageError, match=r"--lr 0: must be a positive number \(zero\)"):
        check_positive(0, "--lr", " (zero)")
    for value in (float("nan"), float("inf"), -1, "3"):
        with pytest.raises(UsageError):
            check_positive(value, "--lr")


@pytest.mark.parametrize(("value", "low_open", "high_open", "interval"),
                         [(1.0, False, True, "[0, 1)"), (0.0, True, False, "(0, 1]"), (1.5, False, False, "[0, 1]")])
def test_fraction_ends_open_or_closed(value, low_open, high_open, interval):
    with pytest.raises(UsageError, match=re.escape(f"must be in {interval}")):
        check_fraction(value, "--f", low_open=low_open, high_open=high_open)


def test_fraction_accepts_closed_ends():
    check_fraction(0.0, "--f")
    check_fraction(1.0, "--f")


def test_columns_keep_labels_out_of_the_text_and_apart():
    with pytest.raises(UsageError, match="--pick_column pick is also one of --text_columns"):
        check_columns(["title", "pick"], "pick", "category")
    with pytest.raises(UsageError, match="both 'label'"):
        check_columns(["title"], "label", "label")
    with pytest.raises(UsageError, match="--pick_column: give a column name"):
        check_columns(["title"], "  ", "category")
    check_columns(["title", "body"], None, "category")  # no gate column: fine


def training(**overrides):
    values = dict(max_steps=-1, per_device_train_batch_size=8, world_size=1, dataloader_drop_last=False,
                  gradient_accumulation_steps=2, num_train_epochs=3)
    return SimpleNamespace(**(values | overrides))


def test_training_steps_as_the_trainer_counts_them():
    # 20 rows / 8 = 3 batches (last one partial) -> ceil(3 / 2 accumulation) = 2 steps per epoch -> 6 in 3 epochs.
    assert check_training_steps(20, training()) == 6
    # drop_last: 2 full batches -> 1 step per epoch -> 3.
    assert check_training_steps(20, training(dataloader_drop_last=True)) == 3
    # Two processes: 16 rows per batch -> 2 batches -> 2 steps per epoch (no accumulation) -> ceil(0.5 · 2) = 1.
    assert check_training_steps(20, training(world_size=2, gradient_accumulation_steps=1, num_train_epochs=0.5)) == 1
    assert check_training_steps(5, training(max_steps=7)) == 7  # max_steps wins


def test_no_full_batch_with_drop_last_is_refused():
    with pytest.raises(UsageError, match="5 training row.*not one full batch"):
        check_training_steps(5, training(dataloader_drop_last=True))


def test_sequence_length_against_absolute_positions():
    check_sequence_length(BertConfig(max_position_embeddings=512), 512)
    with pytest.raises(UsageError, match="for 512 tokens; use at most 512"):
        check_sequence_length(BertConfig(max_position_embeddings=512), 513)
    # RoBERTa's position ids start after the padding index: 514 embeddings hold 512 tokens.
    with pytest.raises(UsageError, match="use at most 512"):
        check_sequence_length(RobertaConfig(max_position_embeddings=514), 513)
    check_sequence_length(tiny_deberta_config(100, max_position_embeddings=512), 4096)  # relative positions only


def test_cpu_device_always_passes():
    check_device("cpu")
    check_device("auto")


def test_run_directory_stands_for_its_model_folder(tmp_path, encoder_dir):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(encoder_dir, run / "model")
    assert resolve_model_source(str(run), "--model") == str(run / "model")
    assert resolve_model_source("user/some-model", "--model") == "user/some-model"  # a Hub id, checked on download


def test_model_source_errors_say_what_is_there(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelFileError, match="is a file"):
        resolve_model_source(str(tmp_path / "weights.bin"), "--model")
    with pytest.raises(ModelFileError, match="no such directory"):
        resolve_model_source(str(tmp_path / "missing" / "model"), "--model")
    run = tmp_path / "failed_run"
    run.mkdir()
    (run / "run_status.json").write_text(json.dumps({"status": "failed", "error": "ValueError: boom"}))
    with pytest.raises(ModelFileError, match="without a saved model .status failed: ValueError: boom"):
        resolve_model_source(str(run), "--model")


def test_model_dir_checks_config_type_and_weights(tmp_path, encoder_dir):
    with pytest.raises(ModelFileError, match="no config.json"):
        check_model_dir(tmp_path, "--model")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelFileError, match="no 'model_type' key"):
        check_model_dir(tmp_path, "--model")
    with pytest.raises(ModelFileError, match="a plain 'deberta-v2' encoder"):
        check_model_dir(encoder_dir, "--model", multitask_only=True)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelFileError, match="no weights file"):
        check_model_dir(tmp_path, "--model")
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")  # header cut short
    with pytest.raises(ModelFileError, match="truncated or corrupt weights"):
        check_model_dir(tmp_path, "--model")
    check_model_dir(encoder_dir, "--model")  # a complete encoder checkpoint with its tokenizer
