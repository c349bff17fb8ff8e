"""LoRA through peft: only adapters and heads train, LLRD still applies, and both saved forms reload the same model."""

import copy
import json

import pandas as pd
import pytest
import torch
from transformers import AutoModel

import run_finetune
import run_predict
from multitask.errors import UsageError
from multitask.model import lora
from multitask.model.modeling import MultitaskModel, build_config
from multitask.serve.predict import load_model
from tests.conftest import CATEGORIES, finetune_args, make_trainer

pytest.importorskip("peft")


def test_only_adapters_heads_and_task_weights_train(model):
    config = build_config(model.encoder.config, CATEGORIES, uncertainty_weighting=True)
    weighted = MultitaskModel(config, encoder=copy.deepcopy(model.encoder))
    assert lora.default_target_modules(weighted) == ["dense", "key_proj", "query_proj", "value_proj"]
    peft_model = lora.apply_lora(weighted, r=4, alpha=8)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or ".modules_to_save." in n or n.endswith("task_log_variances")
                             for n in trainable)
    for head in ("gate_head", "category_head"):
        assert any(f"{head}.modules_to_save." in name for name in trainable), head
    assert any("task_log_variances" in name for name in trainable)
    layers = len(weighted.encoder.encoder.layer)
    assert sum("query_proj.lora_A" in name for name in trainable) == layers
    assert not any("embeddings" in name or "LayerNorm" in name for name in trainable)


def test_llrd_groups_see_through_peft(model, tokenizer, csv_files, tmp_path):
    peft_model = lora.apply_lora(model, r=4)
    trainer = make_trainer(peft_model, tokenizer, csv_files, tmp_path, layerwise_lr_decay=0.5, learning_rate=1e-3)
    optimizer = trainer.create_optimizer()
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(peft_model.get_base_model().named_parameters())
    top, bottom = len(model.encoder.encoder.layer) - 1, 0
    assert rate[id(named[f"encoder.encoder.layer.{top}.attention.self.query_proj.lora_A.default.weight"])] == 1e-3
    assert rate[id(named[f"encoder.encoder.layer.{bottom}.attention.self.query_proj.lora_A.default.weight"])] == (
        pytest.approx(1e-3 * 0.5**top))
    assert rate[id(named["category_head.modules_to_save.default.weight"])] == 1e-3
    assert len(rate) == sum(p.requires_grad for p in peft_model.parameters())  # every trainable one, once


def test_lora_run_saves_merged_model_and_adapter(encoder_dir, csv_files, tmp_path):
    run_dir = tmp_path / "run"
    run_finetune.main(finetune_args(encoder_dir, csv_files, run_dir, "--lora_r", "4", "--lora_alpha", "8",
                                    "--cartography", "false"))
    model_dir = run_dir / "model"
    adapter_dir = model_dir / "adapter"
    assert (adapter_dir / "adapter_config.json").is_file() and (adapter_dir / "adapter_model.safetensors").is_file()
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(encoder_dir)
    assert set(adapter_config["modules_to_save"]) == {"gate_head", "category_head"}
    assert not (model_dir / "adapter_config.json").exists()  # model/ is a plain MultitaskModel

    merged, tokenizer = load_model(str(run_dir), device="cpu")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    base = AutoModel.from_pretrained(encoder_dir)
    layer = "encoder.layer.0.attention.self.query_proj.weight"
    assert not torch.allclose(merged.encoder.state_dict()[layer], base.state_dict()[layer])  # LoRA was merged in

    with_adapter = lora.load_adapter(adapter_dir).eval()  # base encoder + adapter (+ trained heads)
    batch = tokenizer(["stock market rally lifts shares", "buy cheap pills online now"], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        expected, got = merged(**batch), with_adapter(**batch)
    assert torch.allclose(expected.gate_logits, got.gate_logits, atol=1e-5)
    assert torch.allclose(expected.category_logits, got.category_logits, atol=1e-5)
    assert with_adapter.config.gate_thresholds == merged.config.gate_thresholds

    # run_predict loads the run like any other and reproduces the run's own validation scores.
    run_predict.main(["--model", str(run_dir), "--input_files", str(csv_files["val"]), "--output_dir",
                      str(tmp_path / "predict"), "--device", "cpu"])
    reloaded = pd.read_csv(tmp_path / "predict" / "predictions_val.csv")
    original = pd.read_csv(run_dir / "predictions_validation.csv")
    assert reloaded["pick_prob"].to_numpy() == pytest.approx(original["pick_prob"].to_numpy(), abs=2e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("flag", ["--load_in_4bit", "--load_in_8bit"])
def test_kbit_loading_without_cuda_is_a_clear_error(encoder_dir, csv_files, tmp_path, flag):
    with pytest.raises(UsageError, match=f"{flag} needs a CUDA GPU"):
        run_finetune.main(finetune_args(encoder_dir, csv_files, tmp_path / "run", "--lora_r", "4", flag, "true"))
    with pytest.raises(ValueError, match="needs --lora_r"):
        lora.quantization_kwargs(flag == "--load_in_4bit", flag == "--load_in_8bit", 0, torch.bfloat16)
    with pytest.raises(ValueError, match="choose one"):
        lora.quantization_kwargs(True, True, 4, torch.bfloat16)


def test_kbit_merge_path_reloads_the_base_and_matches_in_place_merge(model, encoder_dir, tokenizer, tmp_path):
    # The QLoRA merge (base encoder reloaded in full precision + saved adapter) run here without bitsandbytes.
    peft_model = lora.apply_lora(model, r=4, base_model_name_or_path=str(encoder_dir))
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in peft_model.parameters():
            if parameter.requires_grad:  # as if trained: LoRA B is zero at start
                parameter.add_(0.1 * torch.randn_like(parameter))
    expected = copy.deepcopy(peft_model).merge_and_unload().eval()
    merged = lora.save_adapter_and_merge(peft_model, tmp_path / "model", quantized=True).eval()
    assert isinstance(merged, MultitaskModel) and (tmp_path / "model/adapter/adapter_config.json").is_file()
    batch = tokenizer(["stock market rally lifts shares"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(merged(**batch).category_logits, expected(**batch).category_logits, atol=1e-5)
        assert torch.allclose(merged(**batch).gate_logits, expected(**batch).gate_logits, atol=1e-5)
