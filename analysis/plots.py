"""Confusion heatmap of the most-confused categories: arrays in, PNG out."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np
from sklearn.metrics import confusion_matrix

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
from matplotlib import font_manager  # noqa: E402

# Fallbacks for Japanese labels, used only when installed; without one, CJK glyphs render as boxes.
_CJK_FONTS = (
    "Noto Sans CJK JP",
    "Noto Sans JP",
    "IPAexGothic",
    "IPAGothic",
    "Hiragino Sans",
    "Yu Gothic",
    "MS Gothic",
)


def most_confused(matrix: np.ndarray, limit: int = 20) -> np.ndarray:
    """Indices of up to ``limit`` classes with the most errors (as gold or as prediction), then support."""
    errors = matrix.sum(axis=0) + matrix.sum(axis=1) - 2 * np.diag(matrix)
    support = matrix.sum(axis=1)
    present = np.flatnonzero(matrix.sum(axis=0) + support > 0)
    order = sorted(present, key=lambda i: (-errors[i], -support[i], i))
    return np.sort(np.asarray(order[:limit], dtype=int))


def confusion_heatmap(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    id2label: Mapping[int, str],
    path: str | Path,
    title: str,
    limit: int = 20,
) -> Path:
    """Draw gold × predicted counts for the most-confused categories (at most ``limit``) and save a PNG."""
    ids = sorted(id2label)
    matrix = confusion_matrix(y_true, y_pred, labels=ids)
    keep = most_confused(matrix, limit)
    sub = matrix[np.ix_(keep, keep)]
    names = [id2label[ids[i]] for i in keep]
    installed = {font.name for font in font_manager.fontManager.ttflist}
    family = ["DejaVu Sans", *(name for name in _CJK_FONTS if name in installed)]
    size = max(4.0, 0.55 * len(keep) + 2.5)
    with plt.rc_context({"font.family": family}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        fig, ax = plt.subplots(figsize=(size + 1.5, size))
        # Shade only the errors: the diagonal would otherwise swamp the colour scale.
        errors = np.ma.masked_array(sub, mask=np.eye(len(keep), dtype=bool))
        image = ax.imshow(errors, cmap=plt.get_cmap("Reds").with_extremes(bad="whitesmoke"))
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="wrong rows (diagonal: correct, unshaded)")
        ax.set_xticks(range(len(keep)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(keep)), names, fontsize=8)
        ax.set_xlabel("predicted category")
        ax.set_ylabel("gold category")
        ax.set_title(title, fontsize=10)
        threshold = errors.max() / 2 if errors.count() else 0
        for (row, column), count in np.ndenumerate(sub):
            if count:
                color = "white" if count > threshold and row != column else "black"
                ax.text(column, row, str(count), ha="center", va="center", fontsize=7, color=color)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return Path(path)
