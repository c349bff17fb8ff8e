"""Serving: batched prediction and the decision rule (`predict`: `predict_scores`, `decide`, `prediction_table`),
a trained run ready to decide (`predictor`: `Predictor`, `Decision`, `load_model`; the engine of run_predict.py and
of `multitask.Predictor`) and the ONNX Runtime backend (`onnx_backend`).

Uses `model`, `data`, `scoring` and `multitask.checks`' model-file checks; `run_predict.py`, `scoring` and `export`
use it.
"""
