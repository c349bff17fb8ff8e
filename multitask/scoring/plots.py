"""Figures for a run, data in and PNG out: learning curves, dataset cartography, confusion heatmap.

Learning curves are drawn from the run's `epoch_log.jsonl`, so any run can be redrawn later:
`python -m multitask.plots <run dir>`. The reliability diagram draws what `calibration.reliability_curve`
computed. Nothing here computes a metric; `analysis.plots` re-exports the confusion heatmap.

Importing this module switches matplotlib to the headless Agg backend (figures are only ever saved) but leaves
the global font settings alone: CJK fonts are applied per figure through `font_rc`.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
from matplotlib import font_manager  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

# Fallbacks for Japanese labels, used when installed; without one, CJK glyphs render as boxes. IPAexGothic comes
# with the `matplotlib-fontja` package (requirements.txt), so every machine has at least that one.
_CJK_FONTS = (
    "IPAexGothic",
    "Noto Sans CJK JP",
    "Noto Sans JP",
    "IPAGothic",
    "Hiragino Sans",
    "Yu Gothic",
    "MS Gothic",
)

# file name, title, y label, [(epoch_log key, legend label)]
_CURVES = (
    ("task1_loss.png", "Task 1 (gate: Pick / Decline) — loss", "loss (cross-entropy, nats)",
     [("train_gate_loss", "train"), ("eval_gate_loss", "validation")]),
    ("task1_accuracy.png", "Task 1 (gate: Pick / Decline) — accuracy", "accuracy (fraction, 0–1)",
     [("train_gate_accuracy", "train"), ("eval_gate_accuracy", "validation")]),
    ("task2_loss.png", "Task 2 (category) — loss", "loss (cross-entropy, nats)",
     [("train_category_loss", "train"), ("eval_category_loss", "validation")]),
    ("task2_accuracy.png", "Task 2 (category) — accuracy and macro-F1", "score (fraction, 0–1)",
     [("train_category_accuracy", "train accuracy"), ("eval_category_accuracy", "validation accuracy"),
      ("eval_category_macro_f1", "validation macro-F1")]),
    ("band_recall.png", "Task 2 (category) — validation recall by training-frequency band", "recall (fraction, 0–1)",
     [("eval_category_recall_high", "High (frequent categories)"), ("eval_category_recall_mid", "Mid"),
      ("eval_category_recall_low", "Low (rare categories)")]),
)  # fmt: skip


# Cached: adding the same font file again would list it twice in matplotlib's font list.
@functools.cache
def _register_packaged_font() -> Path | None:
    """Add the font file of `matplotlib-fontja` to matplotlib's font list; the path, or None when not installed.

    The file is found without importing the package: its import sets the process-wide default font family.
    """
    spec = importlib.util.find_spec("matplotlib_fontja")
    if spec is None or not spec.submodule_search_locations:
        return None
    fonts = sorted(Path(next(iter(spec.submodule_search_locations)), "fonts").glob("*.ttf"))
    for path in fonts:
        font_manager.fontManager.addfont(str(path))
    return fonts[0] if fonts else None


def plot_label(name: str, limit: int = 40) -> str:
    """A category name as a tick label: cut to `limit` characters with "…" (a long name would squeeze the figure
    away), `$` escaped (matplotlib would read `$…$` as math and fail on a lone one)."""
    name = name if len(name) <= limit else name[: limit - 1] + "…"
    return name.replace("$", r"\$")


def font_rc() -> dict[str, Any]:
    """The rc settings every figure of the project is drawn under (`plt.rc_context(font_rc())`): Latin text in
    DejaVu Sans, then the CJK fonts found (the packaged one first registered), to which matplotlib falls back glyph
    by glyph, so Japanese category names render on machines without system CJK fonts."""
    _register_packaged_font()
    installed = {font.name for font in font_manager.fontManager.ttflist}
    return {"font.family": ["DejaVu Sans", *(name for name in _CJK_FONTS if name in installed)]}


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Save `fig` as a 120-dpi PNG and close it (pyplot keeps every open figure alive until closed)."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _number(value: Any) -> float | None:
    """`value` as a float when it is a finite number; None for null, NaN, inf and anything else."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def read_epoch_log(path: str | Path) -> list[dict]:
    """Rows of an `epoch_log.jsonl`, one per epoch in epoch order (a resumed run's repeated epoch: last wins).

    Args:
        path (`str` or `Path`):
            The run's `epoch_log.jsonl` (UTF-8, one JSON object per line; blank lines are skipped).

    Returns:
        `list[dict]`: The rows as written by `EpochLogCallback`, NaN/inf already stored as None. Lines that
        are not objects, or lack a finite `epoch`, are left out.

    Raises:
        `ValueError`: A line that is not valid JSON (the message gives its 1-based number).
        `FileNotFoundError`: When `path` does not exist.
    """
    by_epoch: dict[int, dict] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not a JSON object ({error.msg})") from None
        if isinstance(row, dict) and _number(row.get("epoch")) is not None:
            by_epoch[int(row["epoch"])] = row
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def kept_step(run_dir: str | Path) -> int | None:
    """The global step of the checkpoint the run kept as its model.

    Read from `best_global_step` in the newest `checkpoint-*/trainer_state.json`, which the Trainer sets only
    when it tracks a best model (`--metric_for_best_model`, implied by `--load_best_model_at_end`).

    Args:
        run_dir (`str` or `Path`):
            The run directory (the Trainer's `output_dir`).

    Returns:
        `int | None`: The step, or None without a run directory, checkpoints or a best-model choice.
    """
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(run_dir)) if Path(run_dir).is_dir() else None
    state = Path(last) / "trainer_state.json" if last else None
    if state is None or not state.is_file():
        return None
    step = json.loads(state.read_text(encoding="utf-8")).get("best_global_step")
    return int(step) if isinstance(step, int) else None


def plot_learning_curves(
    rows: Sequence[Mapping[str, Any]], out_dir: str | Path, kept_global_step: int | None = None
) -> list[Path]:
    """Write the per-epoch curves whose data exist (task1_*, task2_*, band_recall); return the written paths.

    A figure is written only when at least one of its series has a value; missing epochs leave gaps, never
    zeros.

    Args:
        rows (`Sequence[Mapping[str, Any]]`):
            `read_epoch_log` rows (or `EpochLogCallback.rows`); rows without a finite `epoch` are ignored.
        out_dir (`str` or `Path`):
            Folder for the PNGs, created when there is something to draw; existing files of the same names are
            overwritten.
        kept_global_step (`int`, *optional*):
            The step of the checkpoint the run kept; the epoch whose row has that `step` gets a dashed
            vertical line.

    Returns:
        `list[Path]`: The PNGs written, in `_CURVES` order; `[]` without usable rows.
    """
    out_dir = Path(out_dir)
    rows = [row for row in rows if _number(row.get("epoch")) is not None]
    if not rows:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = [int(row["epoch"]) for row in rows]
    written = []
    for file_name, title, y_label, series in _CURVES:
        lines = []
        for key, label in series:
            points = [(epoch, _number(row.get(key))) for epoch, row in zip(epochs, rows)]
            points = [(epoch, value) for epoch, value in points if value is not None]  # gaps, not zeros
            if points:
                lines.append((label, *zip(*points)))
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for label, xs, ys in lines:
            ax.plot(xs, ys, marker="o", label=label)
        # Only a checkpoint saved at an epoch's end has a row with its step; any other gets no line.
        kept = [epoch for epoch, row in zip(epochs, rows) if kept_global_step is not None
                and _number(row.get("step")) == kept_global_step]
        if kept:
            ax.axvline(kept[0], color="grey", linestyle="--", linewidth=1, label=f"kept checkpoint (epoch {kept[0]})")
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        # One tick per epoch while they stay legible; beyond 20 epochs matplotlib picks integer ticks.
        if max(epochs) - min(epochs) <= 20:
            ax.set_xticks(range(min(epochs), max(epochs) + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        # Shares get a fixed 0-1 axis, so figures of different runs compare at a glance.
        if "fraction" in y_label:
            ax.set_ylim(-0.02, 1.02)
        else:  # losses from 0, with headroom so the top marker is not clipped
            ax.set_ylim(0, 1.08 * max(max(ys) for _, _, ys in lines) or 1)
        ax.set(title=title, xlabel="epoch", ylabel=y_label)
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(save_figure(fig, out_dir / file_name))
    return written


def plot_cartography(frame: pd.DataFrame, out_path: str | Path, task: str) -> Path:
    """Dataset-cartography scatter (Swayamdipta et al. 2020) of one task ("gate" or "category").

    Args:
        frame (`pd.DataFrame`):
            Has the `<task>_confidence`, `_variability` and `_correctness` columns of cartography.csv; rows
            with any of them missing (no label for that task) are skipped and counted in the title.
        out_path (`str` or `Path`):
            The PNG to write; its folder must exist.
        task (`str`):
            `"gate"` or `"category"`.

    Returns:
        `Path`: `out_path`.

    Raises:
        `ValueError`: For another `task`, or a `frame` without the task's three columns.
    """
    if task not in ("gate", "category"):
        raise ValueError(f"task must be 'gate' or 'category', got {task!r}")
    confidence, variability, correctness = (
        f"{task}_{name}" for name in ("confidence", "variability", "correctness")
    )
    missing = [column for column in (confidence, variability, correctness) if column not in frame]
    if missing:
        raise ValueError(f"cartography frame lacks column(s) {missing}")
    data = frame[[confidence, variability, correctness]].apply(pd.to_numeric, errors="coerce").dropna()
    fig, ax = plt.subplots(figsize=(7.0, 5.6))
    # Smaller markers from 1,000 rows on, so dense regions stay readable.
    points = ax.scatter(
        data[variability], data[confidence], c=data[correctness], cmap="viridis", vmin=0, vmax=1,
        s=28 if len(data) < 1000 else 6, alpha=0.75, edgecolors="none",
    )  # fmt: skip
    fig.colorbar(points, ax=ax, label="correctness (share of epochs predicted right)")
    # A floor of 0.05: when every row has near-zero variability the axis would otherwise collapse.
    ax.set_xlim(0, max(0.05, 1.1 * data[variability].max()) if len(data) else 0.5)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("variability (std of gold-label probability across epochs)")
    ax.set_ylabel("confidence (mean gold-label probability across epochs)")
    name = "Task 1 (gate)" if task == "gate" else "Task 2 (category)"
    skipped = len(frame) - len(data)
    note = f" ({skipped} without {task} labels skipped)" if skipped else ""
    ax.set_title(f"Dataset cartography — {name}\n{len(data)} training rows plotted{note}", fontsize=10)
    regions = [((0.03, 0.97), "easy-to-learn", "left", "top"), ((0.03, 0.03), "hard-to-learn", "left", "bottom"),
               ((0.97, 0.5), "ambiguous", "right", "center")]  # fmt: skip
    for (x, y), text, ha, va in regions:
        ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, color="dimgray", style="italic",
                bbox={"facecolor": "white", "alpha": 0.6, "edgecolor": "none"})  # fmt: skip
    ax.grid(alpha=0.3)
    return save_figure(fig, out_path)


def most_confused(matrix: np.ndarray, limit: int = 20) -> np.ndarray:
    """Indices of up to ``limit`` classes with the most errors (as gold or as prediction), then support.

    Indices are positions in the square ``matrix`` (gold rows × predicted columns), returned in ascending order
    so the heatmap keeps the label order; classes that never occur are left out.

    Args:
        matrix (`np.ndarray` of shape `(classes, classes)`):
            Confusion counts, gold rows × predicted columns.
        limit (`int`, *optional*, defaults to 20):
            Most classes returned.

    Returns:
        `np.ndarray`: Sorted int positions, at most ``limit``. Ties in errors go to the larger support, then
        the lower index.
    """
    errors = matrix.sum(axis=0) + matrix.sum(axis=1) - 2 * np.diag(matrix)
    support = matrix.sum(axis=1)
    present = np.flatnonzero(matrix.sum(axis=0) + support > 0)
    order = sorted(present, key=lambda i: (-errors[i], -support[i], i))
    return np.sort(np.asarray(order[:limit], dtype=int))


def plot_confusion_heatmap(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    id2label: Mapping[int, str],
    path: str | Path,
    title: str,
    limit: int = 20,
) -> Path:
    """Draw gold × predicted counts for the most-confused categories (at most ``limit``) and save a PNG.

    Errors are shaded, correct counts are shown on an unshaded diagonal. Labels are drawn with the CJK
    fallback fonts (`font_rc`), so Japanese category names render.

    Args:
        y_true (`np.ndarray` of shape `(n,)`):
            Gold category ids (keys of ``id2label``).
        y_pred (`np.ndarray` of shape `(n,)`):
            Predicted category ids.
        id2label (`Mapping[int, str]`):
            Category names; rows whose gold or predicted id is missing from it are not counted.
        path (`str` or `Path`):
            The PNG to write; its folder must exist.
        title (`str`):
            Figure title.
        limit (`int`, *optional*, defaults to 20):
            Most categories shown (`most_confused`).

    Returns:
        `Path`: `path`.
    """
    ids = sorted(id2label)
    matrix = confusion_matrix(y_true, y_pred, labels=ids)
    keep = most_confused(matrix, limit)
    sub = matrix[np.ix_(keep, keep)]
    names = [plot_label(id2label[ids[i]]) for i in keep]
    size = max(4.0, 0.55 * len(keep) + 2.5)
    # No filter on matplotlib's "Glyph … missing" warning: a label the fonts cannot draw should be seen.
    with plt.rc_context(font_rc()):
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
        # White text only on the darker half of the colour scale, where black would not read.
        threshold = errors.max() / 2 if errors.count() else 0
        for (row, column), count in np.ndenumerate(sub):
            if count:
                color = "white" if count > threshold and row != column else "black"
                ax.text(column, row, str(count), ha="center", va="center", fontsize=7, color=color)
        return save_figure(fig, path)


def plot_reliability(curve: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str) -> Path:
    """Reliability diagram: accuracy against mean confidence per equal-mass bin, before and after calibration.

    Args:
        curve (`Mapping[str, tuple[np.ndarray, np.ndarray]]`):
            `"before"` and/or `"after"` -> `(confidence, accuracy)` from `calibration.reliability_curve`; a
            missing key draws no line.
        path (`str` or `Path`):
            The PNG to write; its folder is created.
        title (`str`):
            Figure title (e.g. the head and split).

    Returns:
        `Path`: `path`.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with plt.rc_context(font_rc()):
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
        for name, style in (("before", "o-"), ("after", "s-")):
            if name in curve:
                confidence, accuracy = curve[name]
                ax.plot(confidence, accuracy, style, markersize=4, label=f"{name} temperature scaling")
        ax.set_xlabel("mean top-1 probability (equal-mass bins)")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        return save_figure(fig, path)


def redraw(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Redraw a run's learning curves and cartography scatters.

    Args:
        run_dir (`str` or `Path`):
            A training run directory: needs `epoch_log.jsonl`; `cartography.csv` adds the scatters.
        out_dir (`str` or `Path`, *optional*):
            Where the PNGs go; default `<run dir>/plots` (files there are overwritten).

    Returns:
        `list[Path]`: Every PNG written.

    Raises:
        `FileNotFoundError`: When `run_dir` has no `epoch_log.jsonl`.
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir or run_dir / "plots")
    log = run_dir / "epoch_log.jsonl"
    if not log.is_file():
        raise FileNotFoundError(f"{log} not found: is {run_dir} a training run directory?")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = plot_learning_curves(read_epoch_log(log), out_dir, kept_step(run_dir))
    cartography = run_dir / "cartography.csv"
    if cartography.is_file():
        frame = pd.read_csv(cartography)
        for task in ("gate", "category"):
            if f"{task}_confidence" in frame and frame[f"{task}_confidence"].notna().any():
                paths.append(plot_cartography(frame, out_dir / f"cartography_{task}.png", task))
    return paths


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """`python -m multitask.plots RUN_DIR [--out_dir DIR]`: redraw and print one written path per line.

    Args:
        argv (`Sequence[str]`, *optional*):
            Command-line arguments without the program name; None reads `sys.argv`.

    Returns:
        `list[Path]`: The PNGs written (`redraw`).
    """
    parser = argparse.ArgumentParser(prog="python -m multitask.plots", description=redraw.__doc__)
    parser.add_argument("run_dir", type=Path, help="run directory holding epoch_log.jsonl")
    parser.add_argument(
        "--out_dir", type=Path, default=None, help="where to write the PNGs (default: <run_dir>/plots)"
    )
    args = parser.parse_args(argv)
    paths = redraw(args.run_dir, args.out_dir)
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
