"""Label conventions shared by every module (no heavy imports, so CLIs that only read CSVs stay fast)."""

from __future__ import annotations

IGNORE_INDEX = -100  # a row without a label for a task; the losses and metrics skip it
PICK_COLUMN = "pick"
CATEGORY_COLUMN = "category"
# Accepted spellings of the gate label (compared lower-cased and stripped).
PICK_VALUES = {"1": 1, "1.0": 1, "true": 1, "pick": 1, "0": 0, "0.0": 0, "false": 0, "decline": 0}
