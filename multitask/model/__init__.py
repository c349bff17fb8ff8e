"""The model: `MultitaskConfig` (`configuration`), `MultitaskModel` (`modeling`), the loss terms as pure functions
(`losses`), out-of-distribution gate statistics (`ood`), LoRA (`lora`) and precision choices (`precision`).

Imports `multitask.data` conventions and the shared modules only.
"""
