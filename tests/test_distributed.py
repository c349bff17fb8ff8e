"""DDP: `torchrun --nproc_per_node 2` on CPU (gloo) runs the real script; rank 0 alone writes the run directory.

(`accelerate launch --cpu --num_processes 2` would silently start one process; see PITFALLS.md.)
"""

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

import run_predict
from tests.conftest import make_trainer

REPO = Path(__file__).resolve().parents[1]


# --standalone / port 0: a free rendezvous port, so parallel test runs on one machine do not collide on 29500.
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# --multi_gpu on a CPU machine gives 2 gloo processes; `--cpu --num_processes 2` would silently give one.
ACCELERATE = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


def torchrun(args: list[str], timeout: int = 300, launcher: list[str] = TORCHRUN) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, *launcher, "run_finetune.py", *args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-6000:]
    return result


def common_args(encoder_dir, csv_files, run_dir):
    return ["--model_name_or_path", str(encoder_dir), "--task1_file", str(csv_files["task1"]),
            "--task2_file", str(csv_files["task2"]), "--validation_file", str(csv_files["val"]),
            "--test_files", str(csv_files["test"]), "--output_dir", str(run_dir), "--use_cpu", "true",
            "--learning_rate", "1e-3", "--per_device_eval_batch_size", "2",
            # The checks below compare the Trainer's P(Pick) metrics with the prediction files.
            "--gate_score", "pick"]


def test_two_process_run_writes_once_and_correctly(encoder_dir, csv_files, tmp_path):
    run_dir = tmp_path / "run"
    # Batch size 1: the fixture's task1 and task2 rows do not overlap, so every batch is Task1-only (no category
    # label) or Task2-only (no gate label), the case where an ungraphed zero loss leaves a head without gradient
    # and stalls DDP's reduction. It passes with our default --ddp_find_unused_parameters false (checked to fail
    # with "Expected to have finished reduction" when the zero is not tied to the logits).
    result = torchrun([*common_args(encoder_dir, csv_files, run_dir), "--num_train_epochs", "2",
                       "--per_device_train_batch_size", "1"])
    assert "find_unused_parameters=True" not in result.stderr

    assert [path.parent for path in tmp_path.rglob("run_status.json")] == [run_dir]
    assert json.loads((run_dir / "run_status.json").read_text())["status"] == "complete"
    for name in ("metrics.json", "thresholds.json", "label_map.json", "run_config.json", "model/config.json",
                 "model/model.safetensors", "predictions_validation.csv", "predictions_ニュース_test.csv"):
        assert (run_dir / name).is_file(), name

    rows = [json.loads(line) for line in (run_dir / "epoch_log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]

    # Cartography merges both processes' shards: every training row, each task once per epoch.
    cartography = pd.read_csv(run_dir / "cartography.csv")
    train_rows = len(pd.read_csv(csv_files["task1"])) + len(pd.read_csv(csv_files["task2"]))  # no overlap here
    assert len(cartography) == train_rows
    epochs = cartography["gate_epochs"].fillna(cartography["category_epochs"])
    assert (epochs == 2).all()

    log_lines = (run_dir / "train.log").read_text(encoding="utf-8").splitlines()
    messages = Counter(line[24:] for line in log_lines if line[:4].isdigit())  # without the timestamp
    # Our own messages come once (rank 0 only); a library warning may legitimately repeat (one per checkpoint).
    ours = {m: count for m, count in messages.items() if m.startswith(("INFO run_finetune", "INFO multitask"))}
    assert ours and not [m for m, count in ours.items() if count > 1]
    assert sum("gate thresholds" in m for m in messages) == 1 and sum(m.startswith("INFO multitask.train.callbacks: epoch 1 ")
                                                                       for m in messages) == 1

    # Evaluation gathered from both ranks: every validation row counted once, despite the sampler's padding.
    validation_rows = len(pd.read_csv(csv_files["val"]))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    validation = metrics["validation"]
    assert validation["eval_gate_support"] == validation_rows
    predictions = pd.read_csv(run_dir / "predictions_validation.csv", keep_default_na=False)
    assert len(predictions) == validation_rows
    assert len(pd.read_csv(run_dir / "predictions_ニュース_test.csv")) == validation_rows
    # The gathered DDP metrics agree with rank 0's own single-process scoring of the same final model.
    gate_accuracy = (predictions["pick_pred"].astype(int) == predictions["pick"].astype(int)).mean()
    assert validation["eval_gate_accuracy"] == pytest.approx(gate_accuracy)
    labelled = predictions[predictions["category"] != ""]
    assert validation["eval_category_support"] == len(labelled)
    assert validation["eval_category_accuracy"] == pytest.approx((labelled["category_pred"] == labelled["category"]).mean())
    thresholds = json.loads((run_dir / "thresholds.json").read_text())
    saved_thresholds = json.loads((run_dir / "model/config.json").read_text())["gate_thresholds"]
    assert {kind: entry["threshold"] for kind, entry in thresholds.items() if isinstance(entry, dict)} == {
        kind: value for kind, value in saved_thresholds.items() if kind != "default"}

    # The saved model reproduces the training run's validation scores in a fresh process-less load.
    out = tmp_path / "predict"
    run_predict.main(["--model", str(run_dir), "--input_files", str(csv_files["val"]), "--output_dir", str(out),
                      "--device", "cpu"])
    reloaded = pd.read_csv(out / "predictions_val.csv")
    assert reloaded["pick_prob"].to_numpy() == pytest.approx(predictions["pick_prob"].to_numpy(), abs=2e-6)


def test_two_process_lora_with_checkpointing_and_rdrop(encoder_dir, csv_files, tmp_path):
    """Paths that change the backward under DDP: LoRA (frozen encoder), activation checkpointing, R-Drop's two
    forward passes, AWP's second backward, learned task weights."""
    run_dir = tmp_path / "run"
    # One epoch with the default per-epoch evaluation, adapter checkpoint and best-adapter reload at the end.
    torchrun([*common_args(encoder_dir, csv_files, run_dir), "--num_train_epochs", "1", "--per_device_train_batch_size", "4",
              "--cartography", "false", "--lora_r", "4", "--activation_checkpointing", "true", "--rdrop", "true", "--uncertainty_weighting", "true",
              "--awp_lr", "1.0", "--awp_start_epoch", "0"])
    assert json.loads((run_dir / "run_status.json").read_text())["status"] == "complete"
    assert (run_dir / "model/adapter/adapter_config.json").is_file()
    assert (run_dir / "model/model.safetensors").is_file()
    assert [path.parent.name for path in run_dir.glob("checkpoint-*/adapter_model.safetensors")]  # adapter checkpoints
    assert len((run_dir / "epoch_log.jsonl").read_text().splitlines()) == 1


def test_accelerate_launch_runs_two_processes(encoder_dir, csv_files, tmp_path):
    run_dir = tmp_path / "run"
    torchrun([*common_args(encoder_dir, csv_files, run_dir), "--max_steps", "2", "--per_device_train_batch_size", "4",
              "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
              "--cartography", "false"], launcher=ACCELERATE)
    assert json.loads((run_dir / "run_status.json").read_text())["status"] == "complete"
    # Two steps cover the epoch fraction that two ranks (each with half the rows) see, not one process's.
    rows = json.loads((run_dir / "run_config.json").read_text())["data_report"]["train_rows"]
    steps_per_epoch = math.ceil(math.ceil(rows / 2) / 4)
    assert json.loads((run_dir / "metrics.json").read_text())["train"]["epoch"] == pytest.approx(2 / steps_per_epoch)


def test_full_model_gathers_a_whole_copy_only_when_sharded(model, tokenizer, csv_files, tmp_path, monkeypatch):
    from multitask.train import distributed
    trainer = make_trainer(model, tokenizer, csv_files, tmp_path)
    assert distributed.full_model(trainer) is model  # DDP and one process: the trained model itself
    # FSDP/ZeRO-3 need GPUs (use_cpu turns FSDP off); stand in for their gathered state dict.
    monkeypatch.setattr(distributed, "shards_parameters", lambda trainer: True)
    monkeypatch.setattr(trainer.accelerator, "get_state_dict", lambda wrapped: model.state_dict())
    whole = distributed.full_model(trainer)
    assert whole is not model and whole.config is model.config and not whole.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(whole.state_dict()[name], tensor), name


def test_fsdp_flags_pass_through_and_cpu_fallback_is_logged(encoder_dir, csv_files, tmp_path):
    # The v5 spelling (bare --fsdp, JSON --fsdp_config) parses with our argument dataclasses. accelerate shards only
    # on GPUs/accelerators, so on CPU the run must say so instead of silently training unsharded.
    run_dir = tmp_path / "run"
    torchrun([*common_args(encoder_dir, csv_files, run_dir), "--max_steps", "2", "--cartography", "false",
              "--fsdp", "--fsdp_config", '{"transformer_layer_cls_to_wrap": ["DebertaV2Layer"]}'])
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "--fsdp is ignored" in log
    assert "parallelism: DDP over 2 process(es); this rank holds 100.0% of the parameter elements" in log
    assert json.loads((run_dir / "run_status.json").read_text())["status"] == "complete"
