"""Scoring: metrics, bootstrap statistics, calibration, gate thresholds and gate-score selection, plots and the
model card, as functions of scores and labels.

Uses `io`, `data` and `model`; `serve`, `train` and the scripts use it.
"""
