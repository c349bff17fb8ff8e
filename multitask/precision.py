"""Mixed-precision advice for an encoder and a device, given once at start-up (a pure function).

DeBERTa(-v2/v3) is known to overflow in fp16 (microsoft/DeBERTa #77, transformers #24116): bf16 keeps fp32's
exponent range and is the mixed precision to use on Ampere and newer GPUs; elsewhere fp32 is the safe default.
"""

from __future__ import annotations

FP16_OVERFLOW_MODEL_TYPES = ("deberta", "deberta-v2")


def precision_warnings(encoder_model_type: str, fp16: bool, bf16: bool, device_type: str) -> list[str]:
    """Warnings for the chosen precision; empty when the choice is a sound one."""
    messages = []
    if fp16 and encoder_model_type in FP16_OVERFLOW_MODEL_TYPES:
        messages.append(
            f"--fp16 with a {encoder_model_type} encoder: DeBERTa is known to overflow in fp16 (inf/NaN losses, "
            "microsoft/DeBERTa#77, transformers#24116). Use --bf16 on an Ampere or newer GPU (A100, H100, RTX 30xx+), "
            "else full fp32 (neither flag)."
        )
    if device_type == "mps" and (fp16 or bf16):
        messages.append("mixed precision on Apple MPS is not well supported; fp32 (neither --fp16 nor --bf16) is safer")
    if device_type == "cpu" and fp16:
        messages.append("--fp16 on CPU is emulated and slow; use fp32, or --bf16 on a CPU with native bf16 (AMX/AVX512-BF16)")
    return messages
