"""Scoring: metrics, bootstrap statistics, calibration, gate thresholds and gate-score selection, the reports
and plots of a run, and the model card.

Uses `io`, `data` and `model` (and `serve` to score validation rows); `train` and the scripts use it.
"""
