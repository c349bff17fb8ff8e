"""Confusion heatmap of the most-confused categories; it lives in `multitask.scoring.plots`, shared with training."""

from __future__ import annotations

from multitask.scoring.plots import most_confused
from multitask.scoring.plots import plot_confusion_heatmap as confusion_heatmap

__all__ = ["confusion_heatmap", "most_confused"]
