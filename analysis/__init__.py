"""Analysis of prediction files and run directories: per-class tables, confusions, frequency bands, run
comparison and safety-style rates. CLI: ``python -m analysis <run dir or predictions CSV> [more…]``."""

from __future__ import annotations

from .load import InputError, Predictions, load_input, read_predictions
from .report import analyse, compare, render, render_comparison
from .safety import category_safety, gate_safety, load_cost_matrix, mean_cost

__all__ = [
    "InputError",
    "Predictions",
    "analyse",
    "category_safety",
    "compare",
    "gate_safety",
    "load_cost_matrix",
    "load_input",
    "mean_cost",
    "read_predictions",
    "render",
    "render_comparison",
]
