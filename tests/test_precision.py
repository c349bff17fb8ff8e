"""Precision and memory: fp16 advice for DeBERTa, bf16 on CPU, activation checkpointing, device selection."""

import copy
import logging

import numpy as np
import pytest
import torch

import run_finetune
from multitask.model.precision import precision_warnings
from multitask.serve import predict
from tests.conftest import finetune_args, make_trainer, no_dropout


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


def test_bf16_training_step_on_cpu(model, tokenizer, csv_files, tmp_path):
    # torch's CPU autocast runs bf16 on any x86 CPU (natively on AMX/AVX512-BF16, emulated elsewhere).
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
