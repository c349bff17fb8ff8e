"""Japanese category names are drawn, not boxes, on a machine without a system CJK font: the font comes from the
`matplotlib-fontja` package, and a missing glyph shows up as matplotlib's "Glyph … missing" warning."""

import warnings

import matplotlib
import numpy as np
import pytest
from matplotlib import font_manager

from multitask import plots

JAPANESE = {0: "国内", 1: "海外", 2: "ITライフハック", 3: "スポーツ", 4: "エンタメ", 5: "家電チャンネル"}


def _glyph_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "Glyph" in str(w.message) and "missing" in str(w.message)]


def _draw_heatmap(path):
    gold = np.array([0, 1, 2, 3, 4, 5, 0, 3])
    predicted = np.array([0, 2, 2, 3, 5, 5, 1, 3])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        plots.plot_confusion_heatmap(gold, predicted, JAPANESE, path, "検証: 混同の多いカテゴリ")
    return record


def test_packaged_japanese_font_is_used(tmp_path):
    assert plots._register_packaged_font() is not None, "matplotlib-fontja is in requirements.txt"
    family = plots._font_rc()["font.family"]
    assert family[0] == "DejaVu Sans" and "IPAexGothic" in family
    # The Japanese font is found by name, not by matplotlib's silent fallback to DejaVu Sans.
    path = font_manager.findfont(font_manager.FontProperties(family="IPAexGothic"), fallback_to_default=False)
    assert path.endswith(".ttf")


def test_japanese_labels_render_without_missing_glyphs(tmp_path):
    record = _draw_heatmap(tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").stat().st_size > 0
    assert _glyph_warnings(record) == []


def test_the_check_would_catch_boxes(tmp_path, monkeypatch):
    """Without a CJK font the same figure warns, so the test above can fail (and the warning is not filtered)."""
    monkeypatch.setattr(plots, "_font_rc", lambda: {"font.family": ["DejaVu Sans"]})
    record = _draw_heatmap(tmp_path / "boxes.png")
    assert _glyph_warnings(record), "expected matplotlib to report the glyphs DejaVu Sans lacks"


def test_importing_plots_leaves_the_global_font_alone():
    # matplotlib-fontja's own import would set the process-wide font; we only register its file.
    assert "IPAexGothic" not in matplotlib.rcParams["font.family"]


@pytest.mark.parametrize("head", ["gate", "カテゴリ"])
def test_reliability_title_in_japanese(tmp_path, head):
    curve = {"before": (np.array([0.2, 0.8]), np.array([0.1, 0.9]))}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        plots.plot_reliability(curve, tmp_path / "r.png", f"{head}（検証）")
    assert _glyph_warnings(record) == []
