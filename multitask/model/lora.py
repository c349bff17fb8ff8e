"""LoRA and QLoRA for `MultitaskModel`, through `peft`.

The encoder's Linear layers get low-rank adapters and stay frozen; both heads train fully and are stored
with the adapter (`modules_to_save`), so an adapter alone restores the whole model (peft #310, #1070).
At the end of a run the adapter is saved in `model/adapter/` and merged into the encoder, and `model/`
holds a plain `MultitaskModel` that `run_predict.py` loads without peft. A 4/8-bit encoder (bitsandbytes,
CUDA only) is merged by reloading the base encoder in full precision and applying the saved adapter.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from multitask.errors import ModelFileError, UsageError
from multitask.model.modeling import MultitaskModel

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
HEAD_MODULES = ("gate_head", "category_head")


def _require_peft():
    """The `peft` module, imported on first use (optional dependency); a `UsageError` naming the install command."""
    try:
        import peft
    except ImportError as error:
        raise UsageError("--lora_r needs the peft package: pip install peft") from error
    return peft


def default_target_modules(model: MultitaskModel) -> list[str]:
    """Every Linear layer of the encoder, by name suffix (DeBERTa-v2/v3: query_proj key_proj value_proj dense).

    Args:
        model (`MultitaskModel`):
            The model whose `encoder` is searched; the heads are excluded (they train fully instead).

    Returns:
        `list[str]`: Sorted, distinct last components of the Linear modules' names, as peft's `target_modules`
        matches them.
    """
    names = {name.rsplit(".", 1)[-1] for name, module in model.encoder.named_modules() if isinstance(module, nn.Linear)}
    return sorted(names - set(HEAD_MODULES))


def quantization_kwargs(load_in_4bit: bool, load_in_8bit: bool, lora_r: int, compute_dtype: torch.dtype) -> dict | None:
    """`from_pretrained` arguments for a 4/8-bit encoder on this process's GPU, or None.

    4-bit is NF4 with double quantization, computing in `compute_dtype` (the QLoRA recipe).

    Args:
        load_in_4bit (`bool`):
            `--load_in_4bit`.
        load_in_8bit (`bool`):
            `--load_in_8bit`; at most one of the two may be set.
        lora_r (`int`):
            `--lora_r`; must be > 0 with either flag, since only adapters can train on a quantized encoder.
        compute_dtype (`torch.dtype`):
            The dtype 4-bit matmuls run in (e.g. `torch.bfloat16` under `--bf16`).

    Returns:
        `dict | None`: `quantization_config` and `device_map` (this process's current CUDA device), or None
        when neither flag is set.

    Raises:
        `UsageError`: Both flags, no `--lora_r`, no CUDA GPU, or bitsandbytes not installed.
    """
    if not (load_in_4bit or load_in_8bit):
        return None
    flag = "--load_in_4bit" if load_in_4bit else "--load_in_8bit"
    if load_in_4bit and load_in_8bit:
        raise UsageError("choose one of --load_in_4bit and --load_in_8bit")
    if lora_r <= 0:
        raise UsageError(f"{flag} needs --lora_r > 0: a quantized encoder trains only through LoRA adapters")
    if not torch.cuda.is_available():
        raise UsageError(
            f"{flag} needs a CUDA GPU (bitsandbytes); none is available here. "
            "Drop the flag: LoRA alone (--lora_r) also runs on CPU and Apple MPS."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise UsageError(f"{flag} needs the bitsandbytes package: pip install bitsandbytes") from error
    from transformers import BitsAndBytesConfig

    if load_in_8bit:
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    # k-bit weights cannot be moved after loading: each DDP process loads onto its own GPU (set by accelerate).
    return {"quantization_config": config, "device_map": {"": torch.cuda.current_device()}}


def apply_lora(
    model: MultitaskModel,
    r: int,
    alpha: float = 16.0,
    dropout: float = 0.1,
    target_modules: list[str] | None = None,
    base_model_name_or_path: str | None = None,
    quantized: bool = False,
    gradient_checkpointing: bool = False,
):
    """Wrap the model with LoRA adapters; only the adapters, the heads and the task log-variances train.

    `model` itself is modified in place (frozen, adapters inserted). Logs the trainable share of parameters.

    Args:
        model (`MultitaskModel`):
            The freshly loaded model (with its encoder already in k-bit when `quantized`).
        r (`int`):
            Adapter rank (`--lora_r`, > 0).
        alpha (`float`, *optional*, defaults to 16.0):
            LoRA scaling numerator: adapters are scaled by alpha / r (`--lora_alpha`).
        dropout (`float`, *optional*, defaults to 0.1):
            Dropout on the adapters' input (`--lora_dropout`).
        target_modules (`list[str]`, *optional*):
            Linear-layer name suffixes to adapt; None or empty: every Linear of the encoder
            (`default_target_modules`).
        base_model_name_or_path (`str`, *optional*):
            Recorded in adapter_config.json, so `load_adapter` can find the base encoder without being told.
        quantized (`bool`, *optional*, defaults to `False`):
            The encoder is 4/8-bit: peft's k-bit preparation runs first.
        gradient_checkpointing (`bool`, *optional*, defaults to `False`):
            Passed to the k-bit preparation (only read when `quantized`).

    Returns:
        `PeftModel`: The wrapped model to train.

    Raises:
        `UsageError`: When peft is not installed.
    """
    peft = _require_peft()
    if quantized:
        # Casts the remaining float parameters (LayerNorm, embeddings) to fp32 for stable k-bit training.
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    heads = [name for name in HEAD_MODULES if getattr(model, name, None) is not None]
    config = peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules) if target_modules else default_target_modules(model),
        modules_to_save=heads,
        # Biases stay frozen: merging then changes only the adapted weight matrices.
        bias="none",
    )
    peft_model = peft.get_peft_model(model, config)
    # Recorded in adapter_config.json, so `load_adapter` knows the encoder the adapter belongs to.
    peft_model.peft_config["default"].base_model_name_or_path = base_model_name_or_path
    if model.task_log_variances is not None:
        model.task_log_variances.requires_grad_(True)  # a bare Parameter: peft froze it, it only weights losses
    trainable, total = peft_model.get_nb_trainable_parameters()
    logger.info("LoRA r=%d on %s: %d of %d parameters train (%.2f%%)", r, sorted(config.target_modules),
                trainable, total, 100.0 * trainable / max(total, 1))
    return peft_model


def _with_adapter(config, base_model_name_or_path: str, adapter_dir: Path, **hub_kwargs):
    """A `PeftModel` of a freshly loaded full-precision base encoder plus the adapter (and heads) in `adapter_dir`.

    `config.encoder_config` is overwritten with the loaded encoder's config.
    """
    peft = _require_peft()
    loaded = AutoModel.from_pretrained(base_model_name_or_path, **hub_kwargs)
    encoder = loaded.encoder if isinstance(loaded, MultitaskModel) else loaded  # a Stage1 run as the base
    config.encoder_config = encoder.config  # the full-precision encoder's config (no quantization_config)
    return peft.PeftModel.from_pretrained(MultitaskModel(config, encoder=encoder), adapter_dir)


def load_adapter(
    adapter_dir: str | Path,
    base_model_name_or_path: str | None = None,
    config_dir: str | Path | None = None,
    **hub_kwargs,
):
    """A `PeftModel`: the base encoder in full precision with the adapter (and its trained heads) on top.

    The model config (labels, thresholds) comes from `config_dir`, by default the folder holding `adapter/`;
    the base encoder from `base_model_name_or_path`, by default the one recorded in adapter_config.json.
    Fitted gate statistics are copied from that folder's model.safetensors.

    Args:
        adapter_dir (`str` or `Path`):
            The saved adapter (`<run dir>/model/adapter`).
        base_model_name_or_path (`str`, *optional*):
            Encoder checkpoint or Hub id; a saved `MultitaskModel` also works (its encoder is used).
        config_dir (`str` or `Path`, *optional*):
            Folder holding the run's config.json (and model.safetensors when the config names gate
            statistics).
        **hub_kwargs:
            Passed to the base encoder's `from_pretrained` (e.g. `token`, `revision`).

    Returns:
        `PeftModel`: In full precision, unmerged (call `merge_and_unload()` for a plain `MultitaskModel`).

    Raises:
        `UsageError`: peft missing, or no base model recorded nor given.
        `ModelFileError`: The config names gate statistics but model.safetensors is missing.
        `ValueError`: The gate statistics in model.safetensors are missing or damaged.
    """
    peft = _require_peft()
    adapter_dir = Path(adapter_dir)
    config = AutoConfig.from_pretrained(config_dir or adapter_dir.parent)
    base_name = base_model_name_or_path or peft.PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path
    if not base_name:
        raise UsageError(f"{adapter_dir}: no base model recorded; pass base_model_name_or_path")
    model = _with_adapter(config, base_name, adapter_dir, **hub_kwargs)
    if getattr(config, "gate_statistics", None):
        # Fitted after training, so they are in the merged model's weights beside adapter/, not in the adapter.
        _load_gate_buffers(model.get_base_model(), Path(config_dir or adapter_dir.parent) / "model.safetensors")
    return model


def _load_gate_buffers(model: MultitaskModel, weights: Path) -> None:
    """Copy the three gate-statistics buffers from a safetensors file into `model` and check them."""
    from safetensors import safe_open

    if not weights.is_file():
        raise ModelFileError(f"{weights}: missing; the gate statistics named in config.json live there")
    with safe_open(str(weights), framework="pt") as handle:
        for name in ("gate_class_means", "gate_precision", "gate_bank"):
            # copy_ into the buffers built from the config: they keep the model's device and dtype.
            getattr(model, name).copy_(handle.get_tensor(name))
    model.check_gate_statistics(str(weights))


def save_adapter_and_merge(peft_model, model_dir: str | Path, quantized: bool = False, **hub_kwargs) -> MultitaskModel:
    """Save the adapter in `model_dir/adapter/` and return a plain `MultitaskModel` with it merged in.

    A k-bit encoder is not merged in place (that would re-quantize the sum): the base encoder is reloaded in
    full precision and the saved adapter merged into it, the usual QLoRA recipe.

    Args:
        peft_model (`PeftModel`):
            The trained LoRA model (as `distributed.full_model` returns it).
        model_dir (`str` or `Path`):
            The run's `model/` folder; `adapter/` is created inside.
        quantized (`bool`, *optional*, defaults to `False`):
            Whether the encoder was loaded in 4/8 bit.
        **hub_kwargs:
            For the full-precision reload of the base encoder (quantized runs only).

    Returns:
        `MultitaskModel`: The merged model, without peft; on the trained model's device.
    """
    adapter_dir = Path(model_dir) / ADAPTER_DIR
    # First: merge_and_unload folds the adapter into the weights and removes it.
    peft_model.save_pretrained(adapter_dir)
    if quantized:
        device = next(peft_model.parameters()).device
        base_name = peft_model.peft_config["default"].base_model_name_or_path
        config = peft_model.get_base_model().config
        merged = _with_adapter(config, base_name, adapter_dir, **hub_kwargs).merge_and_unload().to(device)
    else:
        merged = peft_model.merge_and_unload()
    logger.info("LoRA adapter saved to %s and merged into the encoder", adapter_dir)
    return merged
