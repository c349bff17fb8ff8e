"""Serving: batched prediction with the trained gate and category heads (`predict`) and the ONNX Runtime
backend (`onnx_backend`).

Uses `model` and `data`; `run_predict.py`, `scoring` and `export` use it.
"""
