"""Precision choices: advice for training flags, and the dtype prediction runs in.

DeBERTa(-v2/v3) is known to overflow in fp16 (microsoft/DeBERTa #77, transformers #24116): bf16 keeps fp32's
exponent range and is the mixed precision to use on Ampere and newer GPUs; elsewhere fp32 is the safe default.
"""

from __future__ import annotations

from dataclasses import dataclass
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


PRECISIONS = ("auto", "fp32", "bf16")
# What --precision means when not given.
DEFAULT_PRECISION = "fp32"


@dataclass(frozen=True)
class TrainingPrecision:
    """What `--precision` resolved to: whether to train under bf16 autocast, whether the Trainer must be told
    `use_cpu` (transformers refuses `bf16` without a GPU unless it is), and a sentence for the run log."""

    bf16: bool
    use_cpu: bool
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"


def resolve_training_precision(
    precision: str | None, bf16_flag: bool, fp16_flag: bool, device: str, cuda_bf16: bool, cpu_bf16: bool
) -> TrainingPrecision:
    """Resolve `--precision` (auto, fp32, bf16) and the Trainer's own `--bf16`/`--fp16` into one choice.

    bf16 autocast keeps fp32 master weights, gradients and optimizer state; only matrix products and
    activations run in bf16. It pays where the hardware multiplies bf16 natively (Ampere+ GPUs; CPUs with
    AVX512-BF16 or AMX); elsewhere it is emulated and slower than fp32.

    Args:
        precision (`str`, *optional*):
            `auto`: bf16 where native, else fp32. `fp32`: never bf16. `bf16`: bf16, or a `ValueError` where it
            would be emulated. None (not given): `bf16` with `--bf16`, else `DEFAULT_PRECISION`.
        bf16_flag (`bool`):
            The Trainer's `--bf16` (or accelerate's `--mixed_precision bf16`): the same as `--precision bf16`.
        fp16_flag (`bool`):
            The Trainer's `--fp16` (or accelerate's `--mixed_precision fp16`): an explicit fp16 choice.
        device (`str`):
            Where training runs: `cuda`, `cpu`, or `other` (MPS, XPU, HPU, …: bf16 there is left to
            transformers' own checks, and `auto` stays fp32).
        cuda_bf16 (`bool`):
            Whether the GPU multiplies bf16 natively (`torch.cuda.is_bf16_supported(including_emulation=False)`).
        cpu_bf16 (`bool`):
            Whether the CPU has AVX512-BF16 or AMX-BF16 (`cpu_has_native_bf16`).

    Returns:
        `TrainingPrecision`.

    Raises:
        `ValueError`: For an unknown `precision`, `--precision fp32` with `--bf16` or `--fp16`, bf16 with fp16, or
        bf16 asked for explicitly where the hardware would only emulate it.
    """
    given = precision is not None
    precision = precision if given else ("bf16" if bf16_flag else DEFAULT_PRECISION)
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if bf16_flag and fp16_flag:
        raise ValueError("--bf16 and --fp16 both set: choose one")
    if given and precision == "fp32" and (bf16_flag or fp16_flag):
        mixed = "--bf16" if bf16_flag else "--fp16"
        raise ValueError(f"{mixed} true (or accelerate's --mixed_precision) contradicts --precision fp32: give one")
    if fp16_flag:
        if precision == "bf16":
            raise ValueError("--precision bf16 with --fp16: choose one")
        return TrainingPrecision(False, False, "fp16 mixed precision (--fp16)")
    if device == "other":  # MPS, XPU, HPU…: transformers and accelerate judge bf16 there
        if bf16_flag or precision == "bf16":
            return TrainingPrecision(True, False, "bf16 autocast on the accelerator (asked for)")
        return TrainingPrecision(False, False, f"fp32 (--precision {precision}: auto picks bf16 only on CUDA GPUs "
                                               "and CPUs; give --precision bf16 to use it on this accelerator)")
    cuda = device == "cuda"
    name = "GPU" if cuda else "CPU"
    native = cuda_bf16 if cuda else cpu_bf16
    hardware = "an Ampere or newer GPU" if cuda else "a CPU with AVX512-BF16 or AMX"
    if bf16_flag or precision == "bf16":
        if not native:
            flag = "--bf16 true" if bf16_flag else "--precision bf16"
            raise ValueError(f"{flag}: this {name} has no native bf16 matrix instructions, so bf16 would be emulated "
                             f"and slower than fp32; it needs {hardware}. Use --precision auto or fp32")
        return TrainingPrecision(True, not cuda, f"bf16 autocast on the {name} (asked for)")
    if precision == "fp32":
        return TrainingPrecision(False, False, "fp32 (--precision fp32)")
    if native:
        return TrainingPrecision(True, not cuda, f"bf16 autocast (--precision auto: {hardware} multiplies bf16 "
                                                 "natively)")
    return TrainingPrecision(False, False, f"fp32 (--precision auto: this {name} has no native bf16 matrix "
                                           "instructions, where bf16 is slower than fp32)")


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
