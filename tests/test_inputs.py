"""What a training run reads (multitask.train.inputs): resolved and checked before anything is written."""

from __future__ import annotations

import hashlib

import pytest

from multitask.errors import UsageError
from multitask.train.inputs import data_file_hashes, prepare_inputs
from tests.conftest import CATEGORIES, parsed_finetune_args


def test_prepare_inputs_loads_data_and_resolves_settings(encoder_dir, csv_files, tmp_path):
    model_args, data_args, training_args = parsed_finetune_args(
        encoder_dir, csv_files, tmp_path / "run", "--long_text", "chunk",
        "--max_seq_length", "16", "--chunk_aggregation", "auto", "--hub_token", "hf_secret")
    inputs = prepare_inputs(model_args, data_args, training_args, tmp_path / "run")
    assert inputs.data.category_labels == CATEGORIES and inputs.data.has_gate and len(inputs.data.train) > 0
    assert inputs.chunk_stride is not None  # the default overlap, resolved for 16-token windows
    assert inputs.chunk_aggregation == "mean"  # `auto` is chosen on validation only after training
    assert inputs.category_bands is not None and len(inputs.category_bands) == len(CATEGORIES)
    assert (inputs.resume, inputs.quantization, inputs.push_repo) == (None, None, None)
    # The token is kept for loading and pushing, never in the arguments the Trainer pickles into checkpoints.
    assert inputs.token == "hf_secret" and training_args.hub_token is None
    assert inputs.hub_kwargs == {"revision": "main", "cache_dir": None, "token": "hf_secret"}
    assert not (tmp_path / "run").exists()  # nothing written


def test_prepare_inputs_takes_the_push_over_from_the_trainer(encoder_dir, csv_files, tmp_path):
    model_args, data_args, training_args = parsed_finetune_args(
        encoder_dir, csv_files, tmp_path / "run", "--push_to_hub", "true", "--hub_model_id", "me/model")
    inputs = prepare_inputs(model_args, data_args, training_args, tmp_path / "run")
    assert inputs.push_repo == "me/model" and training_args.push_to_hub is False


def test_prepare_inputs_refuses_a_resume_without_checkpoint(encoder_dir, csv_files, tmp_path):
    arguments = parsed_finetune_args(encoder_dir, csv_files, tmp_path / "run", "--resume_from_checkpoint", "last")
    with pytest.raises(UsageError, match="no checkpoint-"):
        prepare_inputs(*arguments, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_data_file_hashes_names_every_file_read(encoder_dir, csv_files, tmp_path):
    _, data_args, _ = parsed_finetune_args(encoder_dir, csv_files, tmp_path / "run")
    hashes = data_file_hashes(data_args, None)
    assert set(hashes) == {str(path) for path in csv_files.values()}
    assert hashes[str(csv_files["val"])] == hashlib.sha256(csv_files["val"].read_bytes()).hexdigest()
