"""Precision and memory: fp16 advice for DeBERTa, bf16 on CPU, activation checkpointing, device selection."""

import copy
import json
import logging

import numpy as np
import pytest
import torch

import run_finetune
import run_predict
from multitask.errors import cli
from multitask.model import precision as precision_module
from multitask.model.precision import cpu_has_native_bf16, precision_warnings, resolve_training_precision
from multitask.serve import predict
from multitask.train.arguments import MultitaskTrainingArguments
from tests.conftest import finetune_args, make_trainer, no_dropout

NATIVE_BF16 = cpu_has_native_bf16()
needs_native_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no AVX512-BF16/AMX: bf16 is refused")


def test_fp16_with_deberta_warns_and_names_bf16():
    (message,) = precision_warnings("deberta-v2", fp16=True, bf16=False, device_type="cuda")
    assert "overflow" in message and "--bf16" in message
    assert precision_warnings("deberta-v2", fp16=False, bf16=True, device_type="cuda") == []
    assert precision_warnings("bert", fp16=True, bf16=False, device_type="cuda") == []
    assert precision_warnings("deberta-v2", fp16=False, bf16=False, device_type="cpu") == []
    assert any("MPS" in m for m in precision_warnings("bert", fp16=False, bf16=True, device_type="mps"))


def test_run_finetune_logs_the_fp16_warning(encoder_dir, csv_files, tmp_path, caplog):
    short = ["--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
             "--cartography", "false", "--fp16", "true"]
    with caplog.at_level(logging.WARNING, logger="run_finetune"):
        run_finetune.main(finetune_args(encoder_dir, csv_files, tmp_path / "run", *short))
    assert any("--fp16 with a deberta-v2 encoder" in record.getMessage() for record in caplog.records)


@needs_native_bf16
def test_bf16_training_step_on_cpu(model, tokenizer, csv_files, tmp_path):
    trainer = make_trainer(model, tokenizer, csv_files, tmp_path, bf16=True, max_steps=2)
    dtypes = []
    hook = model.category_head.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    before = model.category_head.weight.detach().clone()
    result = trainer.train()
    hook.remove()
    assert torch.bfloat16 in dtypes  # autocast really ran the heads in bf16
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert model.category_head.weight.dtype == torch.float32  # master weights stay fp32
    assert not torch.equal(before, model.category_head.weight)


def test_activation_checkpointing_is_enabled_and_gradients_match(model, tokenizer, csv_files, tmp_path, monkeypatch):
    import transformers.modeling_utils as modeling_utils

    calls = []
    original = modeling_utils.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(modeling_utils, "checkpoint", counting_checkpoint)
    plain = no_dropout(copy.deepcopy(model))
    checkpointed = no_dropout(model)
    trainer = make_trainer(checkpointed, tokenizer, csv_files, tmp_path, activation_checkpointing=True, max_steps=2)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.train()  # the Trainer enables checkpointing on the encoder's layers
    layers = checkpointed.encoder.encoder.layer
    assert all(layer.gradient_checkpointing for layer in layers)
    assert len(calls) >= 2 * len(layers)  # each layer recomputed at each step

    # Same gradients with and without checkpointing, and every parameter gets one.
    plain.load_state_dict(checkpointed.state_dict())
    grads = []
    for candidate in (plain, checkpointed):
        candidate.train().zero_grad()
        trainer.compute_loss(candidate, batch).backward()
        grads.append({name: p.grad for name, p in candidate.named_parameters()})
    calls.clear()
    assert all(grad is not None for grad in grads[1].values())
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"), [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]
)
def test_select_device_auto(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert predict.select_device("auto").type == expected
    assert predict.select_device("cpu").type == "cpu"


def test_inference_dtype_resolution(tmp_path):
    from multitask.model.precision import cpu_has_native_bf16, resolve_inference_dtype

    cpu = torch.device("cpu")
    assert resolve_inference_dtype("auto", cpu) == torch.float32  # fp32 stays the CPU default
    assert resolve_inference_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="float16 on CPU"):
        resolve_inference_dtype("float16", cpu)
    with pytest.raises(ValueError, match="choose auto"):
        resolve_inference_dtype("int8", cpu)
    (message,) = precision_warnings("deberta-v2", True, False, "cuda", flags=("--dtype float16", "--dtype bfloat16"))
    assert message.startswith("--dtype float16 with a deberta-v2") and "--dtype bfloat16" in message
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert not cpu_has_native_bf16(cpuinfo)
    assert not cpu_has_native_bf16(tmp_path / "missing")


def test_bf16_prediction_on_cpu_is_close_to_fp32(model, tokenizer):
    texts = ["stock market rally lifts shares", "x", "parliament passes the budget", "選挙の結果"]
    fp32 = predict.predict_scores(model, tokenizer, texts, batch_size=2)
    dtypes = []
    hook = model.category_head.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    bf16 = predict.predict_scores(model, tokenizer, texts, batch_size=2, dtype=torch.bfloat16)
    hook.remove()
    assert dtypes == [torch.bfloat16, torch.bfloat16]  # the forward really ran in bf16
    assert fp32.category_probs.dtype == bf16.category_probs.dtype == np.float32
    assert np.allclose(bf16.category_probs, fp32.category_probs, atol=2e-2)
    assert np.allclose(bf16.pick_prob, fp32.pick_prob, atol=2e-2)
    assert not torch.is_autocast_enabled("cpu")  # no autocast state leaks out of the call


@pytest.mark.parametrize(
    ("precision", "bf16_flag", "device", "cuda_bf16", "cpu_bf16", "expected"),
    [
        ("auto", False, "cpu", False, True, (True, True)),  # a CPU with AVX512-BF16: bf16, and use_cpu for transformers
        ("auto", False, "cpu", False, False, (False, False)),  # emulated bf16 is slower: fp32
        ("auto", False, "cuda", True, False, (True, False)),  # an Ampere GPU
        ("auto", False, "cuda", False, True, (False, False)),  # a pre-Ampere GPU: the CPU's bf16 does not matter
        ("auto", False, "other", False, True, (False, False)),  # MPS/XPU: auto never moves training to the CPU
        ("bf16", False, "other", False, False, (True, False)),  # asked for there: transformers judges it
        ("fp32", False, "cpu", False, True, (False, False)),
        ("bf16", False, "cpu", False, True, (True, True)),
        (None, True, "cpu", False, True, (True, True)),  # --bf16 true alone
        (None, False, "cpu", False, True, (False, False)),  # nothing given: the default (fp32)
        ("fp32", True, "cuda", True, True, ValueError),  # --bf16 true contradicts --precision fp32
        ("bf16", False, "cpu", False, False, ValueError),  # asked for, but only emulated here
        ("auto", True, "cpu", False, False, ValueError),  # --bf16 true is asking for it too
        ("fast", False, "cpu", False, True, ValueError),
    ],
)
def test_resolve_training_precision(precision, bf16_flag, device, cuda_bf16, cpu_bf16, expected):
    if expected is ValueError:
        with pytest.raises(ValueError):
            resolve_training_precision(precision, bf16_flag, False, device, cuda_bf16, cpu_bf16)
        return
    resolved = resolve_training_precision(precision, bf16_flag, False, device, cuda_bf16, cpu_bf16)
    assert (resolved.bf16, resolved.use_cpu) == expected
    assert resolved.name == ("bf16" if expected[0] else "fp32") and resolved.reason


def test_fp16_flag_is_left_alone_by_auto_and_contradicts_an_explicit_fp32():
    resolved = resolve_training_precision("auto", False, True, "cuda", True, True)
    assert not resolved.bf16 and "fp16" in resolved.reason
    assert not resolve_training_precision(None, False, True, "cuda", True, True).bf16
    with pytest.raises(ValueError, match="choose one"):
        resolve_training_precision("bf16", False, True, "cuda", True, True)
    with pytest.raises(ValueError, match="contradicts --precision fp32"):
        resolve_training_precision("fp32", False, True, "cuda", True, True)


def test_accelerate_mixed_precision_counts_as_the_flag(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("multitask.train.arguments.cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    args = MultitaskTrainingArguments(output_dir=str(tmp_path))
    assert args.bf16 and "bf16" in args.precision_reason  # the log says what accelerate will run
    with pytest.raises(ValueError, match="contradicts --precision fp32"):
        MultitaskTrainingArguments(output_dir=str(tmp_path), precision="fp32")


def test_arguments_resolve_precision(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("multitask.train.arguments.cpu_has_native_bf16", lambda: True)
    args = MultitaskTrainingArguments(output_dir=str(tmp_path), precision="auto")
    assert args.bf16 and args.use_cpu and "bf16" in args.precision_reason
    flag = MultitaskTrainingArguments(output_dir=str(tmp_path), bf16=True)  # no --use_cpu needed
    assert flag.bf16 and flag.use_cpu and flag.precision == "bf16"
    default = MultitaskTrainingArguments(output_dir=str(tmp_path))
    assert default.precision == precision_module.DEFAULT_PRECISION
    monkeypatch.setattr("multitask.train.arguments.cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="emulated"):
        MultitaskTrainingArguments(output_dir=str(tmp_path), bf16=True)
    fallback = MultitaskTrainingArguments(output_dir=str(tmp_path), precision="auto")
    assert not fallback.bf16 and "no native bf16" in fallback.precision_reason


def test_refused_bf16_is_one_error_line(encoder_dir, csv_files, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("multitask.train.arguments.cpu_has_native_bf16", lambda: False)
    status = cli(run_finetune.main, finetune_args(encoder_dir, csv_files, tmp_path / "run", "--precision", "bf16"))
    assert status == 2
    assert capsys.readouterr().err.strip().startswith("error: --precision bf16: this CPU has no native bf16")
    assert not (tmp_path / "run").exists()


@needs_native_bf16
def test_bf16_run_trains_fits_in_fp32_and_predicts(encoder_dir, csv_files, tmp_path, caplog, monkeypatch):
    from multitask.train import finish

    fitted_with = []
    original = finish.fit_after_training

    def spy(trained, *args, **kwargs):
        fitted_with.append(hasattr(trained.forward, "__wrapped__"))  # accelerate's autocast wrapper
        return original(trained, *args, **kwargs)

    monkeypatch.setattr(finish, "fit_after_training", spy)
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="run_finetune"):
        run_finetune.main(finetune_args(encoder_dir, csv_files, run_dir, "--bf16", "true"))
    assert fitted_with == [False]  # thresholds and gate statistics fitted without autocast, as prediction runs
    assert any("precision: bf16 autocast" in record.getMessage() for record in caplog.records)
    recorded = json.loads((run_dir / "run_config.json").read_text())
    assert recorded["arguments"]["MultitaskTrainingArguments"]["bf16"] is True
    assert recorded["data_report"]["train_rows_by_labels"]["gate_only_pick"] >= 0
    metrics = run_predict.main(["--model", str(run_dir), "--input_files", str(csv_files["test"]),
                                "--output_dir", str(tmp_path / "pred")])
    assert metrics and (tmp_path / "pred").is_dir()
