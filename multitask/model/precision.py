"""Precision choices: advice for training flags, and the dtype prediction runs in.

DeBERTa(-v2/v3) is known to overflow in fp16 (microsoft/DeBERTa #77, transformers #24116): bf16 keeps fp32's
exponent range and is the mixed precision to use on Ampere and newer GPUs; elsewhere fp32 is the safe default.
"""

from __future__ import annotations

from pathlib import Path

import torch

FP16_OVERFLOW_MODEL_TYPES = ("deberta", "deberta-v2")
INFERENCE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def precision_warnings(
    encoder_model_type: str, fp16: bool, bf16: bool, device_type: str, flags: tuple[str, str] = ("--fp16", "--bf16")
) -> list[str]:
    """Warnings for the chosen precision; empty when the choice is a sound one.

    `flags` names the fp16 and bf16 choices as the calling script spells them (training: --fp16/--bf16).
    """
    fp16_flag, bf16_flag = flags
    messages = []
    if fp16 and encoder_model_type in FP16_OVERFLOW_MODEL_TYPES:
        messages.append(
            f"{fp16_flag} with a {encoder_model_type} encoder: DeBERTa is known to overflow in fp16 (inf/NaN, "
            f"microsoft/DeBERTa#77, transformers#24116). Use {bf16_flag} on an Ampere or newer GPU (A100, H100, "
            "RTX 30xx+), else full fp32."
        )
    if device_type == "mps" and (fp16 or bf16):
        messages.append("mixed precision on Apple MPS is not well supported; fp32 is safer")
    if device_type == "cpu" and fp16:
        messages.append(f"{fp16_flag} on CPU is emulated and slow; use fp32, or {bf16_flag} on a CPU with native "
                        "bf16 (AMX/AVX512-BF16)")
    return messages


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU has bf16 instructions (AVX512-BF16 or AMX-BF16). False where unknown (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_inference_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype prediction autocasts to. `auto`: bf16 on a CUDA GPU that supports it, else fp32.

    fp32 stays the CPU default, so predictions match the fp32 validation run that tuned the thresholds;
    `bfloat16` is the opt-in speed-up there (autocast keeps softmax and LayerNorm in fp32).
    """
    if name == "auto":
        # including_emulation=False: pre-Ampere GPUs only emulate bf16 (slower than fp32), yet report True by default.
        native = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float32
    if name not in INFERENCE_DTYPES:
        raise ValueError(f"--dtype {name!r}: choose auto, {', '.join(INFERENCE_DTYPES)}")
    if name == "float16" and device.type == "cpu":
        raise ValueError("--dtype float16 on CPU is emulated and slow: use bfloat16 (fast on CPUs with "
                         "AVX512-BF16/AMX) or float32")
    return INFERENCE_DTYPES[name]
