"""multitask.scoring.plots: learning curves, cartography, heatmaps and the redraw CLI; Japanese category names are drawn,
not boxes, on a machine without a system CJK font (the font comes from the `matplotlib-fontja` package, and a
missing glyph shows up as matplotlib's "Glyph … missing" warning)."""

from __future__ import annotations

import json
import warnings

import matplotlib
import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib import font_manager

from multitask.scoring import plots
from multitask.scoring.plots import (
    main,
    plot_cartography,
    plot_confusion_heatmap,
    plot_learning_curves,
    read_epoch_log,
    redraw,
)

ALL_CURVES = {
    "task1_loss.png",
    "task1_accuracy.png",
    "task2_loss.png",
    "task2_accuracy.png",
    "band_recall.png",
}


def epoch_rows(epochs: int = 3, gate: bool = True, category: bool = True) -> list[dict]:
    rows = []
    for epoch in range(1, epochs + 1):
        row = {"epoch": epoch, "step": 10 * epoch, "learning_rate": 2e-5 / epoch, "train_loss": 1.5 / epoch}
        if gate:
            row |= {"train_gate_loss": 0.7 / epoch, "eval_gate_loss": 0.6 / epoch + 0.05}
            row |= {"train_gate_accuracy": 0.6 + 0.1 * epoch, "eval_gate_accuracy": 0.55 + 0.1 * epoch}
        if category:
            row |= {"train_category_loss": 2.0 / epoch, "eval_category_loss": 2.1 / epoch}
            row |= {
                "train_category_accuracy": 0.3 * epoch / epochs,
                "eval_category_accuracy": 0.25 * epoch / epochs,
            }
            row |= {"eval_category_macro_f1": 0.2 * epoch / epochs, "eval_category_recall_high": 0.8}
            row |= {"eval_category_recall_mid": 0.5, "eval_category_recall_low": None if epoch == 1 else 0.1}
        rows.append(row)
    return rows


def assert_png(path, aspect: float | None = None) -> None:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000, path
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    if aspect is not None:
        assert width / height == pytest.approx(aspect, rel=0.02), path


def write_log(run_dir, rows) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row) for row in rows]
    (run_dir / "epoch_log.jsonl").write_text("\n".join(lines) + "\n\n", encoding="utf-8")


def test_learning_curves_both_heads(tmp_path):
    paths = plot_learning_curves(epoch_rows(), tmp_path / "plots")
    assert {path.name for path in paths} == ALL_CURVES
    for path in paths:
        assert_png(path, aspect=6.4 / 4.2)


def test_gate_only_writes_task1_files_and_single_epoch_works(tmp_path):
    paths = plot_learning_curves(epoch_rows(gate=True, category=False), tmp_path / "gate")
    assert {path.name for path in paths} == {"task1_loss.png", "task1_accuracy.png"}
    single = plot_learning_curves(epoch_rows(epochs=1), tmp_path / "single")
    assert {path.name for path in single} == ALL_CURVES  # band_recall keeps High/Mid even with Low missing
    for path in single:
        assert_png(path)
    assert plot_learning_curves([], tmp_path / "empty") == []


def test_read_epoch_log_orders_epochs_and_names_bad_lines(tmp_path):
    rows = epoch_rows()
    write_log(tmp_path, [rows[1], rows[0], rows[2], {**rows[2], "eval_gate_loss": 0.0}])
    read = read_epoch_log(tmp_path / "epoch_log.jsonl")
    assert [row["epoch"] for row in read] == [1, 2, 3] and read[-1]["eval_gate_loss"] == 0.0
    (tmp_path / "epoch_log.jsonl").write_text('{"epoch": 1}\n{"epoch": 2,\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        read_epoch_log(tmp_path / "epoch_log.jsonl")


def test_cartography_skips_rows_without_the_task(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "gate_confidence": rng.uniform(0, 1, 60),
            "gate_variability": rng.uniform(0, 0.4, 60),
            "gate_correctness": rng.choice([0, 0.25, 0.5, 0.75, 1.0], 60),
        }
    )
    frame.loc[:9, ["gate_confidence", "gate_variability", "gate_correctness"]] = np.nan
    path = plot_cartography(frame, tmp_path / "cartography_gate.png", task="gate")
    assert_png(path, aspect=7.0 / 5.6)
    with pytest.raises(ValueError, match="category_confidence"):
        plot_cartography(frame, tmp_path / "x.png", task="category")


def test_confusion_heatmap_is_shared_with_analysis(tmp_path):
    from analysis.plots import confusion_heatmap

    assert confusion_heatmap is plot_confusion_heatmap
    id2label = {0: "食品", 1: "家電", 2: "衣料", 3: "書籍"}
    path = plot_confusion_heatmap(
        [0, 1, 2, 3, 0, 1], [0, 2, 2, 3, 1, 1], id2label, tmp_path / "h.png", "test"
    )
    assert_png(path)


def test_redraw_and_cli(tmp_path, capsys):
    run_dir = tmp_path / "run"
    write_log(run_dir, epoch_rows(gate=False, category=True))
    paths = redraw(run_dir)
    assert {path.name for path in paths} == {"task2_loss.png", "task2_accuracy.png", "band_recall.png"}
    assert all(path.parent == run_dir / "plots" for path in paths)
    printed = main([str(run_dir), "--out_dir", str(tmp_path / "elsewhere")])
    assert capsys.readouterr().out.split() == [str(path) for path in printed]
    assert all(path.is_file() and path.parent == tmp_path / "elsewhere" for path in printed)
    with pytest.raises(FileNotFoundError, match="epoch_log.jsonl"):
        redraw(tmp_path)


def test_kept_checkpoint_is_marked(tmp_path, monkeypatch):
    from multitask.scoring import plots
    run = tmp_path / "run"
    (run / "checkpoint-4").mkdir(parents=True)
    (run / "checkpoint-4" / "trainer_state.json").write_text(json.dumps({"best_global_step": 2}))
    assert plots.kept_step(run) == 2
    assert plots.kept_step(tmp_path / "none") is None
    drawn = []
    monkeypatch.setattr(plots.plt.Axes, "axvline", lambda self, x, **kw: drawn.append((x, kw["label"])))
    rows = [{"epoch": 1, "step": 2, "train_gate_loss": 1.0, "eval_gate_loss": 1.1},
            {"epoch": 2, "step": 4, "train_gate_loss": 0.5, "eval_gate_loss": 1.2}]
    assert plots.plot_learning_curves(rows, tmp_path / "plots", plots.kept_step(run))
    assert drawn and drawn[0] == (1, "kept checkpoint (epoch 1)")


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
    family = plots.font_rc()["font.family"]
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
    monkeypatch.setattr(plots, "font_rc", lambda: {"font.family": ["DejaVu Sans"]})
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


def test_most_confused_ranks_by_errors_then_support():
    # Gold rows × predicted columns. Errors per class (as gold + as prediction): 0: 1+2, 1: 2+0, 2: 0+1, 3: none.
    matrix = np.array([[5, 0, 1, 0], [2, 3, 0, 0], [0, 0, 4, 0], [0, 0, 0, 0]])
    assert plots.most_confused(matrix, limit=2).tolist() == [0, 1]
    assert plots.most_confused(matrix).tolist() == [0, 1, 2]  # class 3 never occurs: left out
