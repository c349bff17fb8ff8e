"""The model card (README.md of a saved model and of its Hub repo), rendered with huggingface_hub.ModelCard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from multitask.labels import markdown_cell
from multitask.model.configuration import MultitaskConfig

_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A hierarchical multitask text classifier trained with the `multitask` toolkit: one shared
`{{ encoder_type }}` encoder ({{ base_model }}) with two heads.

- **Gate** (Task1): {{ gate_text }}
- **Category** (Task2): {{ category_text }}

Together they make one decision per item: `Decline`, or the category.

## Intended use

Routing items into a fixed taxonomy and refusing the ones that belong to none of it (news, intents, moderation
queues). Decisions use the gate threshold chosen on validation; pick the operating point that suits the cost of
letting junk through (`leak`) versus refusing good items (`f1`, `acc`). Not for categories outside the label
map below: the model never predicts them.

```bash
python run_predict.py --model {{ repo_id }} --input_files items.csv --threshold {{ default_threshold_kind }}
```

## Training data

{{ data_table }}

## Hyper-parameters

{{ hyperparameter_table }}

## Validation results

{{ metrics_table }}
{% if bands_table %}
### Category recall by training-frequency band

{{ bands_table }}
{% endif %}{% if per_class_table %}
### Per category (validation)

The category head's top choice on the validation rows that have a category (the gate aside); band = the
category's training-frequency band.

{{ per_class_table }}
{% endif %}{% if test_table %}
## Test files

Scored after training with the stored gate score at every stored threshold, as `run_predict.py --threshold <kind>`
scores them; nothing was tuned on these rows.

{{ test_table }}
{% endif %}{% if thresholds_table %}
## Gate thresholds (tuned on validation, stored in `config.json`)

Gate score: `{{ gate_score }}` (Pick iff score >= threshold; see `multitask/model/ood.py`).

{{ thresholds_table }}
{% if guarantee_text %}
{{ guarantee_text }}
{% endif %}{% endif %}{% if calibration_table %}
## Calibration (validation)

The probabilities this model reports divide each head's logits by a temperature fitted on validation (NLL).
ECE over 15 equal-mass bins of the top-1 probability; Brier score; NLL.

{{ calibration_table }}
{% endif %}{% if gate_cv_table %}
### What to expect on new data: held-out folds of validation

Each figure comes from decisions on validation rows the threshold (and score choice) never saw: {{ gate_cv_folds }}-fold
cross-validation over validation, 95 % bootstrap interval, per-fold mean ± sd. Same-rows figures would be optimistic.

{{ gate_cv_table }}
{% endif %}{% if report_table %}
### Report rows: validation rows no choice read (`--report_split`)

{{ report_rows }} validation rows were kept out of the checkpoint, calibration, gate score and threshold choices;
these figures apply the stored thresholds to them (Clopper–Pearson 95 %). The gap to the promise above is what
those choices flatter.

{{ report_table }}
{% endif %}
## Labels

{{ labels_text }}
"""

_HYPERPARAMETERS = (
    "learning_rate", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
    "warmup_steps", "weight_decay", "layerwise_lr_decay", "gate_loss_weight", "category_loss_weight",
    "gate_label_smoothing", "category_label_smoothing", "gate_class_weighting", "category_class_weighting",
    "class_weight_min", "class_weight_max", "hierarchy_weight", "pseudo_label_weight", "rdrop", "msd_samples", "awp_lr",
    "uncertainty_weighting", "seed", "bf16", "fp16",
)  # fmt: skip


# The test-file figures the card shows (a key a file's metrics lack shows as –).
_TEST_COLUMNS = ("joint_accuracy", "joint_macro_f1", "category_accuracy", "category_macro_f1", "gate_f1",
                 "gate_decline_leak", "joint_support")


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    """A Markdown pipe table; each cell through `markdown_cell` (a category named `a|b` stays one cell)."""
    lines = ["| " + " | ".join(markdown_cell(cell) for cell in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(markdown_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    """Floats to 4 significant digits; anything else as str()."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _guarantee_text(guarantee: dict | None) -> str:
    """The `--oos_recall_confidence` promise in words: what it rests on and what it does not cover ('' without)."""
    if not guarantee:
        return ""
    state = "met" if guarantee["met"] else "**not met** (no threshold reached it; the lowest bound was kept)"
    sentences = [f"**Guarantee at the `leak` threshold** ({state}): with {100 * guarantee['confidence']:g} % "
                 f"confidence the share of new Decline items let through is at most "
                 f"{_fmt(guarantee['max_decline_leak'])} (one-sided Clopper–Pearson bound "
                 f"{_fmt(guarantee['leak_upper_bound'])} on {guarantee['decline_rows']} validation Decline rows, "
                 f"split over {guarantee['candidate_scores']} candidate gate scores)."]
    if "max_pick_declined" in guarantee:
        ending = "." if guarantee["pick_declined_met"] else ": **not met** on validation, so this target was dropped."
        sentences.append(f"With the same confidence at most {_fmt(guarantee['max_pick_declined'])} of new Pick items "
                         f"are declined (bound {_fmt(guarantee['pick_declined_upper_bound'])} on "
                         f"{guarantee['pick_rows']} validation Pick rows){ending}")
    sentences.append(f"It covers {guarantee['covers']}; it does not cover {guarantee['does_not_cover']}.")
    return " ".join(sentences)


def build_model_card(
    config: MultitaskConfig,
    training_args: Any,
    base_model: str,
    data_files: dict[str, str],
    validation_metrics: dict[str, float],
    per_class: list[dict] | None = None,
    repo_id: str | None = None,
    gate_cv: dict | None = None,
    calibration: dict | None = None,
    test_metrics: dict[str, dict] | None = None,
    report: dict | None = None,
) -> ModelCard:
    """Card data + text from what the run already computed. Tokens are never part of any input here.

    `data_files` maps each training file (or Hub split) to its hash, shown truncated to 16 hex digits;
    `validation_metrics` are the Trainer's `eval_*` numbers (losses left out); `per_class` the rows of
    val_per_class_metrics.json (their `band` gives the frequency-band table); `gate_cv` is
    `train.reporting.summarize_gate_cv`'s summary and `calibration` the `{"gate"|"category": …}` entries of
    `train.reporting.calibrate_heads`; `test_metrics` maps each test file's stem to {threshold kind: metrics}
    (`train.reporting.write_predictions`); `report` is `train.reporting.score_report_rows`' dict. A section whose
    input is missing is left out of the card. The card's
    `base_model` metadata is set only for a Hub id, never a local path.
    """
    gate_labels = "/".join(config.gate_id2label.values()) if config.has_gate else None
    metric_rows = [
        (key.removeprefix("eval_"), _fmt(value))
        for key, value in validation_metrics.items()
        if key.startswith(("eval_gate", "eval_category", "eval_joint")) and not key.endswith("_loss")
    ]
    bands: dict[str, list[float]] = {}
    for row in per_class or []:
        if row.get("band") and row["support"] > 0:
            bands.setdefault(row["band"], []).append(row["recall"])
    bands_table = _table(
        ("band", "categories", "mean recall"),
        [(band, len(values), _fmt(sum(values) / len(values))) for band, values in sorted(bands.items())],
    ) if bands else ""
    thresholds = {k: v for k, v in config.gate_thresholds.items()}
    card_data = ModelCardData(
        library_name="transformers",
        # The Hub reads base_model as a model id (the model tree links it); a local path points nowhere.
        base_model=base_model if "/" in base_model and not Path(base_model).exists() else None,
        pipeline_tag="text-classification",
        tags=["multitask", "hierarchical-classification", "text-classification"],
    )
    category_names = list(config.category_id2label.values())
    gate_cv_rows = []
    # Only the operating points: the summary also holds "folds" and "chosen_per_fold" (or just a "note").
    for kind, point in ((k, v) for k, v in (gate_cv or {}).items() if isinstance(v, dict) and "oos_recall" in v):
        for key, label in (("in_scope_accuracy", "in-scope accuracy"), ("oos_recall", "Decline recall")):
            figure = point[key]
            gate_cv_rows.append((kind, label, _fmt(figure["held_out"]),
                                 f"{_fmt(figure['interval_95'][0])}–{_fmt(figure['interval_95'][1])}",
                                 f"{_fmt(figure['fold_mean_sd'][0])} ± {_fmt(figure['fold_mean_sd'][1])}"))
    report_rows = []
    for kind, point in (report or {}).get("operating_points", {}).items():
        for key, label in (("in_scope_accuracy", "in-scope accuracy"), ("oos_recall", "Decline recall")):
            interval = point["exact_interval"][key]
            promise = (report.get("promise") or {}).get(kind, {}).get(key)
            report_rows.append((kind, label, _fmt(point["figures"][key]),
                                f"{_fmt(interval[0])}–{_fmt(interval[1])}" if interval else "–",
                                _fmt(promise) if promise is not None else "–"))
    calibration_rows = [
        (head, _fmt(entry["temperature"]), *(f"{_fmt(entry['before'][k])} → {_fmt(entry['after'][k])}"
                                             for k in ("ece", "brier", "nll")))
        for head, entry in (calibration or {}).items()
    ]
    per_class_table = _table(
        ("category", "support", "precision", "recall", "F1", "band"),
        [(row["label"], row["support"], _fmt(row["precision"]), _fmt(row["recall"]), _fmt(row["f1"]),
          row.get("band") or "–") for row in per_class or []],
    ) if per_class else ""
    test_rows = [(stem, kind, _fmt(figures.get("threshold", "–")),
                  *(_fmt(figures[key]) if key in figures else "–" for key in _TEST_COLUMNS))
                 for stem, by_kind in (test_metrics or {}).items() for kind, figures in (by_kind or {}).items()]
    return ModelCard.from_template(
        card_data,
        template_str=_TEMPLATE,
        model_name=repo_id or "multitask model",
        repo_id=repo_id or "<model dir or Hub id>",
        encoder_type=config.encoder_config.model_type,
        base_model=base_model,
        gate_text=f"{gate_labels} (gate score `{config.gate_score}` thresholded)" if gate_labels else "none (category-only model)",
        category_text=f"{len(category_names)} categories" if category_names else "none (gate-only model)",
        default_threshold_kind="leak" if "leak" in thresholds else "default",
        data_table=_table(("file", "sha256"), [(Path(p).name, h[:16]) for p, h in data_files.items()]),
        hyperparameter_table=_table(
            ("name", "value"),
            [(name, _fmt(getattr(training_args, name))) for name in _HYPERPARAMETERS if hasattr(training_args, name)],
        ),
        metrics_table=_table(("metric", "value"), metric_rows) if metric_rows else "No validation metrics.",
        bands_table=bands_table,
        thresholds_table=_table(("kind", "threshold"), [(k, _fmt(v)) for k, v in thresholds.items()])
        if config.has_gate
        else "",
        gate_score=config.gate_score,
        guarantee_text=_guarantee_text(getattr(config, "gate_guarantee", None)),
        calibration_table=_table(("head", "temperature", "ECE before → after", "Brier", "NLL"), calibration_rows)
        if calibration_rows else "",
        gate_cv_folds=(gate_cv or {}).get("folds"),
        gate_cv_table=_table(("threshold", "figure", "held out", "95 % interval", "fold mean ± sd"), gate_cv_rows)
        if gate_cv_rows else "",
        report_rows=(report or {}).get("rows"),
        report_table=_table(("threshold", "figure", "report rows", "95 % interval", "promised (held-out folds)"),
                            report_rows) if report_rows else "",
        per_class_table=per_class_table,
        test_table=_table(("file", "threshold", "value", *(key.replace("_", " ") for key in _TEST_COLUMNS)), test_rows)
        if test_rows else "",
        labels_text=", ".join(f"`{name}`" for name in category_names) if category_names else "(gate only)",
    )
