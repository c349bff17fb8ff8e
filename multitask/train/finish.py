"""Everything a training run does after `trainer.train()`: `finish_run`.

In order: refuse a run that did not train (`check_trained`); evaluate; gather the whole model (and merge LoRA);
choose on validation what is chosen after training and store it in the model config (`fit_after_training`: chunk
aggregation, gate statistics, temperatures, gate score and thresholds); write predictions and reports
(`write_reports`); save the model with its card and metrics.json, and push it (`save_and_push`). Only the main
process writes; `evaluate()` and the gathering of a sharded model run on every process (collectives).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformers import Trainer
from transformers.trainer_utils import TrainOutput

from multitask.data.loading import LabeledFile
from multitask.errors import UserError
from multitask.io.hub import push_model
from multitask.io.rundir import RunDirectory, write_json
from multitask.model.lora import save_adapter_and_merge
from multitask.scoring.model_card import build_model_card
from multitask.serve.predict import (
    Scores,
    WindowOutputs,
    fit_gate_statistics,
    predict_scores,
    scores_from_outputs,
    window_outputs,
)
from multitask.train.callbacks import CartographyCallback, find_callback
from multitask.train.distributed import full_model, parallelism
from multitask.train.inputs import RunInputs
from multitask.train.reporting import (
    calibrate_heads,
    choose_chunk_aggregation,
    score_report_rows,
    summarize_gate_cv,
    tune_gate,
    write_predictions,
    write_validation_reports,
)

# The run's own lines keep the script's name in the console and train.log, whichever module writes them.
logger = logging.getLogger("run_finetune")


def finish_run(trainer: Trainer, train_result: TrainOutput, run: RunDirectory, model_args, data_args,
               inputs: RunInputs, data_files: dict[str, str]) -> dict[str, Any]:
    """Evaluate, fit the post-training settings, write every output and save (and push) the model; returns the
    run's metrics (`train`, `validation`, `test` per file, plus `chunk_aggregation`, `calibration`, `gate_cv`, `report`,
    `hub` where they apply), as written to metrics.json.

    Call it on every process: the evaluation and the gathering of a sharded model are collective. Other processes
    return after them, with `test` empty. With `--lora_r` the adapter is saved to `model/adapter/` and the merged
    model replaces `trainer.model`.

    Args:
        trainer (`Trainer`):
            The trainer after `train()`.
        train_result (`TrainOutput`):
            What `train()` returned.
        run (`RunDirectory`):
            The started run directory.
        model_args (`ModelArguments`):
            Recorded in the model card; LoRA settings.
        data_args (`DataArguments`):
            The test files and text settings.
        inputs (`RunInputs`):
            The run's loaded inputs.
        data_files (`dict[str, str]`):
            The data files' hashes (`start_run`), for the model card.

    Returns:
        `dict`: The run's metrics, as written to metrics.json.

    Raises:
        `UserError`: When the run took no optimizer step.
    """
    training_args = trainer.args
    note = check_trained(trainer, train_result, inputs.resume)
    if note is not None:
        run.notes["note"] = note
    is_main = trainer.is_world_process_zero()
    if is_main:
        logger.info("parallelism: %s", parallelism(trainer))
    validation_metrics = trainer.evaluate()  # on every rank: evaluate() is collective under DDP
    metrics = {"train": train_result.metrics, "validation": validation_metrics, "test": {}}
    trained = full_model(trainer)  # on every rank: gathers FSDP/ZeRO-3 shards (a no-op under DDP)
    if not is_main:
        return metrics
    if model_args.lora_r:
        # Adapter (heads included) to model/adapter/; from here on a plain merged MultitaskModel is scored and saved.
        trained = trainer.model = save_adapter_and_merge(trained, run.path / "model", inputs.quantization is not None,
                                                         **inputs.hub_kwargs)
    logger.info("validation: %s", validation_metrics)
    data = inputs.data
    validation = LabeledFile(Path("validation"), data.validation_frame, data.validation)
    scores = fit_after_training(trained, inputs, validation, data_args, training_args, run.path, metrics)
    write_reports(trained, inputs, validation, scores, data_args, training_args, run.path, metrics,
                  find_callback(trainer, CartographyCallback))
    if data.report_rows is not None:
        metrics["report"] = _score_report_rows(trained, inputs, data_args, training_args, run.path,
                                               metrics.get("gate_cv"))
    save_and_push(trained, inputs, run.path, model_args, training_args, data_files, metrics)
    return metrics


def check_trained(trainer: Trainer, train_result: TrainOutput, resume: str | None) -> str | None:
    """No false success: a run that took no optimizer step raises a `UserError`.

    After a resume, `train_result.metrics` is amended in place: the Trainer's `train_loss` covers only the resumed
    steps, so it is labelled (`train_loss_scope`, `train_loss_resumed_part`) and the whole run's mean is added where
    the logs allow (`train_loss_whole_run`). Returns a note (also logged as a warning) when a resumed run had no
    step left to take, else None.
    """
    # Private Trainer attribute: the step a resume started at (train_loss averages from there); 0 if gone.
    first_step = getattr(trainer, "_initial_global_step", 0)
    steps_now = trainer.state.global_step - first_step
    # global_step, not steps_now: a resume with no step left did train before; that is a note, not an error.
    if trainer.state.global_step == 0:
        raise UserError("training took 0 optimizer steps: nothing was trained (check the data and --num_train_epochs / "
                        "--max_steps)")
    if not resume:
        return None
    metrics = train_result.metrics
    metrics["train_loss_scope"] = (f"resumed part only: optimizer steps {first_step + 1}-{trainer.state.global_step}"
                                   f" (resumed from {Path(resume).name} at step {first_step})")
    metrics["train_loss_resumed_part"] = metrics.get("train_loss")
    whole = _whole_run_train_loss(trainer.state.log_history, first_step, steps_now, metrics.get("train_loss"))
    if whole is not None:
        metrics["train_loss_whole_run"] = whole
    if steps_now != 0:
        return None
    note = (f"resumed from {Path(resume).name}: no optimizer step was left to take, the model was not trained "
            "further (only evaluation and outputs were redone)")
    logger.warning(note)
    return note


def _whole_run_train_loss(log_history: list[dict], first_step: int, steps_now: int, resumed_loss) -> float | None:
    """Mean training loss over all steps: the logged per-interval means before the resume, weighted by their
    steps, plus this call's mean. None when the logs before the resume do not reach the checkpoint's step."""
    logged = [(entry["step"], entry["loss"]) for entry in log_history
              if "loss" in entry and "step" in entry and entry["step"] <= first_step]
    if resumed_loss is None or not logged or logged[-1][0] != first_step:
        return None
    total, previous = 0.0, 0
    for step, loss in logged:
        total += loss * (step - previous)
        previous = step
    return (total + resumed_loss * steps_now) / (first_step + steps_now)


def fit_after_training(trained, inputs: RunInputs, validation: LabeledFile, data_args, training_args,
                       run_dir: Path, metrics: dict) -> Scores:
    """Choose what is chosen after training and store it in `trained.config`; returns the validation scores under it.

    In order: the chunk aggregation (`--chunk_aggregation auto`, on validation), the gate's feature statistics (on
    the training rows, both heads only), temperatures (`--calibration temperature`, on validation; reliability
    diagrams drawn), the gate score and thresholds (on validation only, applied unchanged to test; thresholds.json
    and gate_cv.json written). Adds `chunk_aggregation`, `calibration` and `gate_cv` to `metrics` where they apply.
    """
    data, tokenizer = inputs.data, inputs.tokenizer
    batch_size = training_args.per_device_eval_batch_size
    # One forward pass over validation serves every step below: what changes after it (aggregation, statistics,
    # temperatures, thresholds) acts on its outputs, not on the model's forward.
    raw = window_outputs(trained, tokenizer, list(validation.dataset["text"]), batch_size, data_args.max_seq_length,
                         with_features=True)
    # First: every score below is per document, combined from the windows by this aggregation.
    if data_args.long_text == "chunk" and data_args.chunk_aggregation == "auto":
        choice = choose_chunk_aggregation(trained, raw, validation.dataset, batch_size)
        trained.config.chunk_aggregation = metrics["chunk_aggregation"] = choice
    if data.has_gate and data.has_category:
        fitted = fit_gate_statistics(
            trained, tokenizer, list(data.train["text"]), list(data.train["category_labels"]),
            list(data.train["gate_labels"]), training_args.per_device_eval_batch_size, data_args.max_seq_length,
            training_args.knn_bank_size, training_args.knn_k, training_args.seed,
        )
        logger.info("gate statistics fitted on %d training rows (kNN bank %d, k %d)",
                    fitted["rows"], fitted["bank_size"], fitted["knn_k"])
    # Before _score: the thresholds are tuned on the calibrated probabilities they will be applied to.
    per_document = raw.per_document(trained.config.chunk_aggregation)
    if training_args.calibration == "temperature":
        metrics["calibration"] = _calibrate(trained, per_document, validation, run_dir)
    scores = scores_from_outputs(trained, per_document, batch_size)  # under the temperatures and statistics set above
    if data.has_gate:
        gate_cv = _tune_gate(trained, scores, validation, training_args, run_dir)
        if gate_cv is not None:
            metrics["gate_cv"] = gate_cv
    return scores


def _calibrate(trained, per_document: WindowOutputs, validation: LabeledFile, run_dir: Path) -> dict:
    """Fit one temperature per head on validation into `trained.config`; returns the per-head before/after ECE."""
    raw = scores_from_outputs(trained, per_document)  # only the raw logits are read
    calibration = calibrate_heads(raw, validation.dataset)
    trained.config.calibration = calibration["temperatures"] or None
    summary = {head: calibration[head] for head in ("gate", "category") if head in calibration}
    logger.info("calibration (validation): %s", {
        head: {"temperature": round(entry["temperature"], 3), "ece_before": round(entry["before"]["ece"], 4),
               "ece_after": round(entry["after"]["ece"], 4)} for head, entry in summary.items()})
    _draw_reliability(run_dir, calibration["reliability"])
    return summary


def _tune_gate(trained, scores: Scores, validation: LabeledFile, training_args, run_dir: Path) -> dict | None:
    """Gate score and thresholds chosen on validation into `trained.config` (and `scores.pick_prob`); writes
    thresholds.json (and gate_cv.json). Returns the held-out-fold summary, or None without `--threshold_cv`."""
    costs = None if training_args.leak_cost is None else {
        "leak": training_args.leak_cost, "miss": training_args.miss_cost,
        "wrong": training_args.wrong_category_cost, "oos_share": training_args.cost_oos_share}
    gate = tune_gate(scores, validation.dataset, training_args.gate_score, training_args.gate_score_candidates,
                     training_args.max_decline_leak, training_args.threshold_cv, training_args.seed,
                     costs, training_args.review_share, training_args.guarantee_confidence,
                     training_args.max_pick_declined)
    trained.config.gate_score = gate["gate_score"]
    # The validation predictions written next must show the score the thresholds were chosen for.
    scores.pick_prob = scores.gate_scores[gate["gate_score"]]
    trained.config.gate_thresholds.update({kind: entry["threshold"] for kind, entry in gate["search"].items()})
    trained.config.gate_thresholds["default"] = gate["default_threshold"]
    trained.config.review_bands = {kind: entry["band"] for kind, entry in gate["review_bands"].items()} or None
    leak = gate["search"]["leak"]
    guarantee = None
    if "confidence" in leak:
        # What the promise covers, in words the user reads in thresholds.json, the run log and the model card.
        guarantee = {
            "threshold": "leak (run_predict.py --threshold leak)", "confidence": training_args.guarantee_confidence,
            "per_score_confidence": leak["confidence"], "candidate_scores": len(gate["candidates"]),
            "max_decline_leak": leak["max_decline_leak"], "decline_rows": leak["decline_rows"],
            "leak_upper_bound": leak["leak_upper_bound"], "met": leak["met_target"],
            "covers": "new Decline items drawn like validation's (exchangeable)",
            "does_not_cover": "a shift in what out-of-scope items look like, or in their share",
        }
        if "max_pick_declined" in leak:
            guarantee.update({key: leak[key] for key in ("max_pick_declined", "pick_declined_met", "pick_rows",
                                                          "pick_declined_upper_bound")})
            guarantee["covers"] = "new Decline and Pick items drawn like validation's (exchangeable)"
    if "max_pick_declined" in leak and not leak["pick_declined_met"]:
        logger.warning("--max_pick_declined %.3f: no leak threshold meets it together with --max_decline_leak %.3f "
                       "on validation; the leak threshold was chosen without it (%.3f of Pick rows declined there)",
                       leak["max_pick_declined"], leak["max_decline_leak"], 1 - leak["gate_recall"])
    write_json(run_dir / "thresholds.json", {"gate_score": gate["gate_score"], "default": gate["default_source"],
                                             **gate["search"],
                                             **({"guarantee": guarantee} if guarantee else {}),
                                             **({"review": gate["review_bands"]} if gate["review_bands"] else {})})
    logger.info("gate score %s; gate thresholds (validation): %s", gate["gate_score"], trained.config.gate_thresholds)
    if guarantee is not None:
        trained.config.gate_guarantee = guarantee  # travels with the model: config.json and the model card
        logger.info("guarantee at the leak threshold (run_predict.py --threshold leak): with %.0f%% confidence the "
                    "share of new Decline items let through is at most %.3f (Clopper-Pearson bound %.3f on %d "
                    "validation Decline rows, %.4f per gate score over %d candidates; %s). It holds for new Decline "
                    "items like validation's, not for a shift in what out-of-scope looks like",
                    100 * guarantee["confidence"], guarantee["max_decline_leak"], guarantee["leak_upper_bound"],
                    guarantee["decline_rows"], guarantee["per_score_confidence"], guarantee["candidate_scores"],
                    "met" if guarantee["met"] else "NOT met: no threshold reaches it, the lowest bound was kept")
        if "max_pick_declined" in guarantee:
            logger.info("guarantee, Pick items: with the same confidence at most %.3f of new Pick items are declined "
                        "(bound %.3f on %d validation Pick rows; %s)", guarantee["max_pick_declined"],
                        guarantee["pick_declined_upper_bound"], guarantee["pick_rows"],
                        "met" if guarantee["pick_declined_met"] else "NOT met: dropped")
    if gate["cv"] is None:
        return None
    write_json(run_dir / "gate_cv.json", gate["cv"])
    summary = summarize_gate_cv(gate["cv"])
    logger.info("gate, held-out folds of validation: %s", summary)
    return summary


def _score_report_rows(trained, inputs: RunInputs, data_args, training_args, run_dir: Path,
                       cv_summary: dict | None) -> dict:
    """Score the `--report_split` rows at the stored thresholds (predictions_<kind>_validation_report.csv), log
    them beside the held-out-fold promise, and return `score_report_rows`' figures."""
    labeled = inputs.data.report_rows
    scores = _score(trained, inputs.tokenizer, labeled, data_args, training_args)
    write_predictions(run_dir, "validation_report", labeled, scores, trained.config, None)
    if scores.pick_prob is None:
        return {"rows": len(labeled.dataset), "note": "no gate: the report rows have predictions only"}
    report = score_report_rows(scores, labeled.dataset, trained.config.gate_thresholds, cv_summary)
    for kind, point in report["operating_points"].items():
        figures, interval = point["figures"], point["exact_interval"]
        promise = report.get("promise", {}).get(kind)
        logger.info(
            "report rows (%d, %d Decline; no choice read them), threshold %s: in-scope accuracy %.4f %s, OOS recall "
            "%.4f %s%s", report["rows"], report["oos_rows"], kind, figures["in_scope_accuracy"],
            _rounded(interval["in_scope_accuracy"]), figures["oos_recall"], _rounded(interval["oos_recall"]),
            f"; promised on held-out folds {promise['in_scope_accuracy']:.4f} / {promise['oos_recall']:.4f}"
            if promise else "")
    return report


def _rounded(interval: list[float] | None) -> str:
    return "[n/a]" if interval is None else f"[{interval[0]:.4f}, {interval[1]:.4f}]"


def write_reports(trained, inputs: RunInputs, validation: LabeledFile, scores: Scores, data_args, training_args,
                  run_dir: Path, metrics: dict, cartography: CartographyCallback | None) -> None:
    """Predictions for validation and every test file (`metrics["test"]` filled per file), the validation
    reports, cartography and the plots, all in `run_dir`. A figure that fails is a warning, never a failed run."""
    data = inputs.data
    # metrics=None: figures at thresholds tuned on these very rows would flatter them (see evaluate()).
    write_predictions(run_dir, "validation", validation, scores, trained.config, metrics=None)
    write_validation_reports(run_dir, scores, data.validation, trained.config, inputs.category_bands,
                             training_args.pick_low_confidence_levels, training_args.decline_high_confidence_levels)
    for stem, labeled in data.tests.items():
        test_scores = _score(trained, inputs.tokenizer, labeled, data_args, training_args)
        metrics["test"][stem] = write_predictions(run_dir, stem, labeled, test_scores, trained.config, {})
        logger.info("test %s: %s", stem, metrics["test"][stem])
    if cartography is not None:
        cartography.write(run_dir, training_args.worst_k)
    _draw_plots(run_dir)


def save_and_push(trained, inputs: RunInputs, run_dir: Path, model_args, training_args, data_files: dict[str, str],
               metrics: dict) -> None:
    """Save the model and tokenizer to `run_dir/model` with its card (README.md), write metrics.json, and push
    `model/` to the Hub when the run took the push over (`metrics["hub"]` added, metrics.json rewritten)."""
    model_dir = run_dir / "model"
    # `trained` itself, not trainer.save_model(): under FSDP/ZeRO-3 it is the gathered whole copy and after LoRA
    # the merged model, and only it carries the gate statistics, calibration and thresholds set after training.
    trained.save_pretrained(model_dir)
    inputs.tokenizer.save_pretrained(model_dir)
    per_class_path = run_dir / "val_per_class_metrics.json"
    card = build_model_card(
        trained.config, training_args, model_args.model_name_or_path, data_files, metrics["validation"],
        json.loads(per_class_path.read_text(encoding="utf-8")) if per_class_path.is_file() else None,
        training_args.hub_model_id, metrics.get("gate_cv"), metrics.get("calibration"), metrics.get("test"),
        metrics.get("report"),
    )
    card.save(model_dir / "README.md")
    write_json(run_dir / "metrics.json", metrics)
    if inputs.push_repo:
        # TrainingArguments' default None means the Hub's default (public); here only false makes it public.
        private = training_args.hub_private_repo is not False
        result = push_model(inputs.push_repo, model_dir, run_dir, token=inputs.token, private=private)
        logger.info("Hub: %s", result["message"])
        metrics["hub"] = {key: result[key] for key in ("repo_id", "url", "commit")}
        write_json(run_dir / "metrics.json", metrics)


def _score(model, tokenizer, labeled: LabeledFile, data_args, training_args) -> Scores:
    return predict_scores(model, tokenizer, list(labeled.dataset["text"]), training_args.per_device_eval_batch_size,
                          data_args.max_seq_length)


def _draw_plots(run_dir: Path) -> None:
    try:
        from multitask.scoring.plots import redraw

        redraw(run_dir)
    except Exception as error:  # a figure must never cost the user a finished run
        logger.warning("plots not drawn: %s", error)


def _draw_reliability(run_dir: Path, curves: dict) -> None:
    try:
        from multitask.scoring.plots import plot_reliability

        for head, curve in curves.items():
            plot_reliability(curve, run_dir / "plots" / f"reliability_{head}.png", f"{head} head (validation)")
    except Exception as error:  # a figure must never cost the user a finished run
        logger.warning("reliability diagrams not drawn: %s", error)
