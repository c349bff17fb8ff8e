"""Export: ONNX export and int8 quantization of a trained run (`onnx_export`, `quantization`, `smoothing`)
and the agreement check of an exported model with PyTorch (`agreement`).

`python -m multitask.export` runs `onnx_export.main`. Uses `model` and `serve`.
"""
