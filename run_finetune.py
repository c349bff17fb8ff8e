#!/usr/bin/env python
"""Fine-tune a shared encoder with a Pick/Decline gate head and an N-way category head.

    python run_finetune.py                                   # the embedded demo (tiny DeBERTa, offline)
    python run_finetune.py --model_name_or_path microsoft/deberta-v3-base \
        --task1_file data/train/task1_cleaned.csv --task2_file data/train/task2_cleaned.csv \
        --validation_file data/val.csv --test_files data/test_a.csv data/test_b.csv [any TrainingArguments flag]
    python run_finetune.py config.yaml                       # or config.json: the same flags as keys

A mistake in the arguments or data ends in one `error: …` line (exit status 2) before anything is written;
a bare `--debug` (or MULTITASK_DEBUG=1) adds the traceback. See multitask/errors.py.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoTokenizer, EarlyStoppingCallback, HfArgumentParser, set_seed
from transformers.trainer_utils import get_last_checkpoint

from multitask import demo, lora
from multitask.arguments import DataArguments, ModelArguments, MultitaskTrainingArguments
from multitask.callbacks import CartographyCallback, EpochLogCallback, TrainingRecord
from multitask.checks import (
    check_finetune_arguments,
    check_optimizer,
    check_sequence_length,
    check_training_steps,
    model_load_errors,
)
from multitask.data import (
    LabeledFile,
    MultitaskCollator,
    check_trainable,
    label_counts,
    load_training_data,
    tokenize,
)
from multitask.distributed import full_model, parallelism
from multitask.errors import UsageError, UserError, cli, closest, parse_arguments, usage_errors
from multitask.hub import push_model, resolve_token
from multitask.losses import inverse_frequency_weights
from multitask.metrics import build_compute_metrics
from multitask.model_card import build_model_card
from multitask.modeling import freeze_word_embeddings, load_for_training, parameter_counts
from multitask.precision import precision_warnings
from multitask.predict import Scores, fit_gate_statistics, predict_scores
from multitask.reporting import (
    calibrate_heads,
    category_bands,
    choose_chunk_aggregation,
    summarize_gate_cv,
    tune_gate,
    write_predictions,
    write_validation_reports,
)
from multitask.rundir import RunDirectory, arguments_record, file_sha256, library_versions, setup_logging
from multitask.text_encoding import check_chunking, check_truncation, special_template, text_separator
from multitask.trainer import MultitaskTrainer

logger = logging.getLogger("run_finetune")

# The demo trains a tiny encoder from scratch, which needs a far higher rate than fine-tuning does.
DEMO_OVERRIDES = {"learning_rate": 1e-3, "num_train_epochs": 8.0, "per_device_train_batch_size": 16}


def parse_args(argv: list[str] | None):
    """The three argument dataclasses from a command line or a JSON/YAML file; a mistake is a `UsageError`."""
    parser = HfArgumentParser((ModelArguments, DataArguments, MultitaskTrainingArguments))
    return parse_arguments(parser, sys.argv[1:] if argv is None else argv)


def resolve_inputs(model_args, data_args, training_args, run_dir: Path):
    """Fill in the demo default, or fetch the data from a Hub dataset repo: the named files inside it, or (no file
    named) its splits through `datasets.load_dataset`, returned as a `HubData` (else None)."""
    if model_args.model_name_or_path is None:
        if data_args.task1_file or data_args.task2_file or data_args.train_file or data_args.dataset_repo:
            raise UsageError("--model_name_or_path is required with your own data (the demo encoder knows only demo text)")
        paths = demo.default_demo_paths()
        data_args.task1_file, data_args.task2_file = str(paths["task1"]), str(paths["task2"])
        data_args.validation_file = str(paths["val"])
        data_args.test_files = data_args.test_files or [str(paths["test"])]
        model_args.model_name_or_path = str(demo.build_demo_encoder(run_dir / "demo_encoder"))
        defaults = MultitaskTrainingArguments(output_dir=str(run_dir))
        for name, value in DEMO_OVERRIDES.items():
            if getattr(training_args, name) == getattr(defaults, name):
                setattr(training_args, name, value)
        logger.info("No model given: demo run (data/demo, tiny DeBERTa-v2 from scratch) with %s", DEMO_OVERRIDES)
    elif data_args.dataset_repo:
        from multitask.hub import download_data_files, resolve_dataset_repo

        data_args.dataset_repo = resolve_dataset_repo(data_args.dataset_repo, "--dataset_repo")
        names = [data_args.train_file, data_args.task1_file, data_args.task2_file, data_args.validation_file,
                 *data_args.test_files]
        wanted = list(dict.fromkeys(name for name in names if name))
        token = resolve_token(training_args.hub_token)
        if not wanted:  # no file named: the repo is a dataset, loaded with datasets.load_dataset
            from multitask.data import load_hub_dataset

            return load_hub_dataset(data_args.dataset_repo, data_args.dataset_config_name, data_args.dataset_revision,
                                    token, model_args.cache_dir, data_args.train_split_name,
                                    data_args.validation_split_name, data_args.test_split_names)
        downloaded = download_data_files(data_args.dataset_repo, wanted, data_args.dataset_revision, token)
        local = dict(zip(wanted, map(str, downloaded)))
        data_args.train_file = local.get(data_args.train_file)
        data_args.task1_file = local.get(data_args.task1_file)
        data_args.task2_file = local.get(data_args.task2_file)
        data_args.validation_file = local.get(data_args.validation_file)
        data_args.test_files = [local[name] for name in data_args.test_files]
    return None


def class_weights(labels, num_classes: int, enabled: bool, args) -> torch.Tensor | None:
    if not enabled or num_classes == 0:
        return None
    counts = label_counts(labels, num_classes)
    zero = [index for index, count in enumerate(counts) if count == 0]
    if zero:
        logger.warning("classes with no training row (weight clipped to max): %s", zero)
    return inverse_frequency_weights(counts, args.class_weight_min, args.class_weight_max)


def resolve_resume_checkpoint(value: str | None, output_dir: str) -> str | None:
    """`--resume_from_checkpoint true|last` means the newest checkpoint in --output_dir; a path is kept."""
    if value is None or value.lower() not in ("true", "last"):
        return value
    checkpoint = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
    if checkpoint is None:
        raise UsageError(f"--resume_from_checkpoint {value}: no checkpoint-* folder in {output_dir}")
    return checkpoint


def main(argv: list[str] | None = None) -> dict:
    """Train one run; returns its metrics. A `UserError` (bad argument, data or model file) is raised before the
    run directory exists; `cli(main)` turns it into one `error:` line."""
    model_args, data_args, training_args = parse_args(argv)
    check_finetune_arguments(model_args, data_args, training_args)
    is_main = training_args.process_index == 0
    run = RunDirectory(training_args.output_dir)
    if is_main:
        run.check_target()
    setup_logging(main_process=is_main)
    transformers.utils.logging.set_verbosity_warning()
    run.hold_logs()  # replayed to the console and train.log when the run starts; dropped if it is refused
    try:
        metrics = _run(model_args, data_args, training_args, run, is_main)
    except BaseException as error:
        if is_main and run.started:
            run.close(error)
        else:
            run.discard(error, remove=is_main)
        raise
    if is_main:
        run.close()
    return metrics


def _run(model_args, data_args, training_args, run: RunDirectory, is_main: bool) -> dict:
    # Everything up to run.start() validates and loads; it may refuse the run, leaving nothing behind.
    set_seed(training_args.seed)
    quantization = lora.quantization_kwargs(model_args.load_in_4bit, model_args.load_in_8bit, model_args.lora_r,
                                            torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32)
    resume = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    with training_args.main_process_first(desc="demo encoder / Hub data"):  # other ranks reuse what rank 0 built
        hub_data = resolve_inputs(model_args, data_args, training_args, run.path)
    push_repo = _take_over_push(training_args)
    token = resolve_token(training_args.hub_token)  # explicit, HF_TOKEN, or .env; for private models
    # The Trainer pickles its arguments into every checkpoint (training_args.bin): keep the token out of them.
    training_args.hub_token = None
    hub_kwargs = {"revision": model_args.model_revision, "cache_dir": model_args.cache_dir, "token": token}
    tokenizer_source = model_args.tokenizer_name or model_args.model_name_or_path
    with model_load_errors(tokenizer_source, "--tokenizer_name" if model_args.tokenizer_name else "--model_name_or_path"):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, **hub_kwargs)
    with model_load_errors(model_args.model_name_or_path, "--model_name_or_path"):
        encoder_config = AutoConfig.from_pretrained(model_args.model_name_or_path, **hub_kwargs)
    check_sequence_length(getattr(encoder_config, "encoder_config", encoder_config), data_args.max_seq_length)
    special_tokens = special_template(tokenizer).size
    head_tokens = check_truncation(data_args.truncation, data_args.head_tokens, data_args.max_seq_length,
                                   special_tokens)
    chunk_stride = check_chunking(data_args.long_text, data_args.chunk_stride, data_args.max_chunks,
                                  data_args.max_seq_length, special_tokens, data_args.truncation)
    chunked = data_args.long_text == "chunk"
    # Per-epoch evaluation needs one aggregation before validation can choose (`auto`): the mean.
    chunk_aggregation = "mean" if data_args.chunk_aggregation == "auto" else data_args.chunk_aggregation
    separator = text_separator(tokenizer)

    train_source = hub_data.train if hub_data else data_args.train_file
    validation_source = hub_data.validation if hub_data else data_args.validation_file
    data = load_training_data(
        data_args.task1_file,
        data_args.task2_file,
        validation_source,
        hub_data.tests if hub_data else data_args.test_files,
        data_args.text_columns,
        separator,
        data_args.validation_split,
        training_args.seed,
        data_args.encoding,
        train_file=train_source,
        pick_column=data_args.pick_column,
        category_column=data_args.category_column,
        file_format=data_args.format,
        max_train_samples=data_args.max_train_samples,
        max_eval_samples=data_args.max_eval_samples,
    )
    if hub_data:
        data.report["hub_dataset"] = hub_data.record
    for key, value in data.report.items():
        if key != "label_conflicts":
            logger.info("data: %s = %s", key, value)
    for conflict in data.report["label_conflicts"]:
        logger.warning("data: label conflict: %s", conflict)
    check_trainable(data, data_args.task1_file, data_args.task2_file, validation_source,
                    data_args.validation_split, train_file=train_source)
    planned_steps = check_training_steps(len(data.train), training_args)

    with model_load_errors(model_args.model_name_or_path, "--model_name_or_path"):
        model = load_for_training(
            model_args.model_name_or_path,
            data.category_labels,
            with_gate=data.has_gate,
            pooling=model_args.pooling,
            classifier_dropout=model_args.classifier_dropout,
            text_columns=data_args.text_columns,
            config_overrides={
                "msd_samples": training_args.msd_samples,
                "uncertainty_weighting": training_args.uncertainty_weighting,
                # Feature scores exist only once fitted after training: until then the config holds a logit score.
                "gate_score": training_args.gate_score if training_args.gate_score in ("pick", "joint", "msp") else "pick",
                # Stored so prediction cuts long texts exactly as training did.
                "max_seq_length": data_args.max_seq_length,
                "truncation": data_args.truncation,
                "head_tokens": head_tokens,
                "long_text": data_args.long_text,
                "chunk_stride": chunk_stride,
                "max_chunks": data_args.max_chunks,
                "chunk_aggregation": chunk_aggregation,
                # Stored so run_predict.py and analysis read gold labels from the same columns.
                "pick_column": data_args.pick_column,
                "category_column": data_args.category_column,
            },
            encoder_kwargs=quantization,
            **hub_kwargs,
        )
    for message in precision_warnings(model.config.encoder_config.model_type, training_args.fp16,
                                      training_args.bf16, training_args.device.type):
        logger.warning(message)
    if model_args.freeze_embeddings:
        logger.info("--freeze_embeddings: %d word-embedding parameters frozen", freeze_word_embeddings(model))
    if model_args.lora_r:
        model = lora.apply_lora(model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout,
                                model_args.lora_target_modules, model_args.model_name_or_path,
                                quantized=quantization is not None,
                                gradient_checkpointing=bool(training_args.activation_checkpointing))
    trainable, total = parameter_counts(model)
    logger.info("trainable parameters: %d of %d (%.1f%%)", trainable, total, 100.0 * trainable / max(total, 1))
    if not data.has_gate or not data.has_category:
        # Single-head run: the missing head's labels are not model outputs.
        training_args.label_names = ["gate_labels"] if data.has_gate else ["category_labels"]
    if chunked:  # windows carry their document's index to compute_metrics, which scores documents
        training_args.label_names = [*training_args.label_names, "document"]
    if training_args.metric_for_best_model and not data.has_category and "category" in training_args.metric_for_best_model:
        training_args.metric_for_best_model = "gate_f1"
        logger.info("gate-only run: best model chosen by eval_gate_f1")

    check_optimizer(training_args, model)
    heads = tuple(head for head, present in (("gate", data.has_gate), ("category", data.has_category)) if present)
    bands = None
    if data.has_category:
        bands = category_bands(
            list(data.train["category_labels"]), len(data.category_labels), training_args.frequency_band_quantiles
        )
    compute_metrics = build_compute_metrics(heads=heads, category_bands=bands,
                                            chunk_aggregation=chunk_aggregation if chunked else None)
    _check_metric_name(training_args, compute_metrics, data, heads, chunked)
    encoding = {"max_length": data_args.max_seq_length, "truncation": data_args.truncation,
                "head_tokens": head_tokens, "num_proc": data_args.preprocessing_num_workers,
                "long_text": data_args.long_text, "chunk_stride": chunk_stride, "max_chunks": data_args.max_chunks}
    train_dataset = tokenize(data.train, tokenizer, **encoding)
    eval_dataset = tokenize(data.validation, tokenizer, **encoding)
    if chunked:
        planned_steps = check_training_steps(len(train_dataset), training_args)
        logger.info("--long_text chunk: %d training windows from %d rows, %d validation windows from %d rows",
                    len(train_dataset), len(data.train), len(eval_dataset), len(data.validation))

    record = TrainingRecord()
    loss_weights = {"gate": training_args.gate_loss_weight, "category": training_args.category_loss_weight}
    callbacks = [EpochLogCallback(record, run.path, loss_weights)]
    cartography = None
    if training_args.cartography:
        cartography = CartographyCallback(record, data.train.select_columns(
            ["row_id", "text", "gate_labels", "category_labels"]).to_pandas(), data.category_labels)
        callbacks.append(cartography)
    if training_args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=training_args.early_stopping_patience))

    with usage_errors("training arguments: "):  # what the Trainer itself refuses (e.g. --report_to)
        trainer = MultitaskTrainer(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            data_collator=MultitaskCollator(tokenizer, keep_keys=("row_id", "document") if chunked else ("row_id",)),
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            gate_class_weights=class_weights(
                list(data.train["gate_labels"]), 2 if data.has_gate else 0, training_args.gate_class_weighting, training_args
            ),
            category_class_weights=class_weights(
                list(data.train["category_labels"]),
                len(data.category_labels),
                training_args.category_class_weighting,
                training_args,
            ),
            training_record=record,
        )
    if training_args.fsdp and not trainer.is_fsdp_enabled:
        # accelerate turns FSDP on only for multi-process GPU/accelerator runs; elsewhere it quietly does not shard.
        logger.warning("--fsdp is ignored: accelerate runs FSDP only with several GPU/accelerator processes; "
                       "this run trains on %s with %d process(es), parameters not sharded",
                       training_args.device.type, training_args.world_size)
    data_files = {
        str(path): file_sha256(path)
        for path in [data_args.train_file, data_args.task1_file, data_args.task2_file, data_args.validation_file,
                     *data_args.test_files]
        if path
    }
    if hub_data:  # a Hub dataset's splits, by the fingerprint `datasets` gives the loaded data
        revision = hub_data.record["revision"] or "main"
        data_files.update({f"{data_args.dataset_repo}@{revision} split {name}": split["fingerprint"]
                           for name, split in hub_data.record["splits"].items()})
    if is_main:
        run.start()  # inputs validated: from here on the run directory exists and says running/complete/failed
        logger.info("training: %d optimizer steps planned over %d training rows", planned_steps, len(data.train))
        run.write_json(
            "run_config.json",
            {
                "arguments": arguments_record(model_args, data_args, training_args),
                "versions": library_versions(),
                "data_files": data_files,
                "data_report": data.report,
            },
        )
        run.write_json("label_map.json", {"category_id2label": model.config.category_id2label,
                                          "gate_id2label": model.config.gate_id2label})
    else:
        run.release_logs()  # other ranks write no run directory: their held lines go to the console now

    if resume and cartography is not None:
        cartography.restore(resume)
    train_result = trainer.train(resume_from_checkpoint=resume)
    _check_trained(trainer, train_result, resume, run)
    if is_main:
        logger.info("parallelism: %s", parallelism(trainer))
    validation_metrics = trainer.evaluate()  # on every rank: evaluate() is collective under DDP
    metrics = {"train": train_result.metrics, "validation": validation_metrics, "test": {}}
    trained = full_model(trainer)  # on every rank: gathers FSDP/ZeRO-3 shards (a no-op under DDP)
    if model_args.lora_r and is_main:
        # Adapter (heads included) to model/adapter/; from here on a plain merged MultitaskModel is scored and saved.
        trained = trainer.model = lora.save_adapter_and_merge(trained, run.path / "model", quantization is not None,
                                                              **hub_kwargs)
    if is_main:
        logger.info("validation: %s", validation_metrics)
        validation = LabeledFile(Path("validation"), data.validation_frame, data.validation)
        if chunked and data_args.chunk_aggregation == "auto":
            choice = choose_chunk_aggregation(trained, tokenizer, list(validation.dataset["text"]), validation.dataset,
                                              training_args.per_device_eval_batch_size)
            trained.config.chunk_aggregation = metrics["chunk_aggregation"] = choice
        if data.has_gate and data.has_category:
            fitted = fit_gate_statistics(
                trained, tokenizer, list(data.train["text"]), list(data.train["category_labels"]),
                list(data.train["gate_labels"]), training_args.per_device_eval_batch_size, data_args.max_seq_length,
                training_args.knn_bank_size, training_args.knn_k, training_args.seed,
            )
            logger.info("gate statistics fitted on %d training rows (kNN bank %d, k %d)",
                        fitted["rows"], fitted["bank_size"], fitted["knn_k"])
        if training_args.calibration == "temperature":
            raw = predict_scores(trained, tokenizer, list(validation.dataset["text"]),
                                 training_args.per_device_eval_batch_size, data_args.max_seq_length, return_features=True)
            calibration = calibrate_heads(raw, validation.dataset)
            trained.config.calibration = calibration["temperatures"] or None
            metrics["calibration"] = {head: calibration[head] for head in ("gate", "category") if head in calibration}
            logger.info("calibration (validation): %s", {
                head: {"temperature": round(entry["temperature"], 3), "ece_before": round(entry["before"]["ece"], 4),
                       "ece_after": round(entry["after"]["ece"], 4)} for head, entry in metrics["calibration"].items()})
            draw_reliability(run.path, calibration["reliability"])
        scores = score_file(trained, tokenizer, validation, training_args, data_args)
        if data.has_gate:
            # Score and thresholds are chosen on validation only, stored in the model, and applied unchanged to test.
            costs = None if training_args.leak_cost is None else {
                "leak": training_args.leak_cost, "miss": training_args.miss_cost,
                "wrong": training_args.wrong_category_cost, "oos_share": training_args.cost_oos_share}
            gate = tune_gate(scores, validation.dataset, training_args.gate_score, training_args.gate_score_candidates,
                             training_args.max_decline_leak, training_args.threshold_cv, training_args.seed,
                             costs, training_args.review_share)
            trained.config.gate_score = gate["gate_score"]
            scores.pick_prob = scores.gate_scores[gate["gate_score"]]
            trained.config.gate_thresholds.update({kind: entry["threshold"] for kind, entry in gate["search"].items()})
            trained.config.gate_thresholds["default"] = gate["default_threshold"]
            trained.config.review_bands = {kind: entry["band"] for kind, entry in gate["review_bands"].items()} or None
            run.write_json("thresholds.json", {"gate_score": gate["gate_score"], "default": gate["default_source"],
                                               **gate["search"],
                                               **({"review": gate["review_bands"]} if gate["review_bands"] else {})})
            logger.info("gate score %s; gate thresholds (validation): %s", gate["gate_score"], trained.config.gate_thresholds)
            if gate["cv"] is not None:
                run.write_json("gate_cv.json", gate["cv"])
                metrics["gate_cv"] = summarize_gate_cv(gate["cv"])
                logger.info("gate, held-out folds of validation: %s", metrics["gate_cv"])
        write_predictions(run.path, "validation", validation, scores, trained.config, metrics=None)
        write_validation_reports(run.path, scores, data.validation, trained.config, bands,
                                 training_args.pick_low_confidence_levels, training_args.decline_high_confidence_levels)
        for stem, labeled in data.tests.items():
            test_scores = score_file(trained, tokenizer, labeled, training_args, data_args)
            metrics["test"][stem] = write_predictions(run.path, stem, labeled, test_scores, trained.config, {})
            logger.info("test %s: %s", stem, metrics["test"][stem])
        if cartography is not None:
            cartography.write(run.path, training_args.worst_k)
        draw_plots(run.path)
    model_dir = run.path / "model"
    if is_main:
        # `trained` itself, not trainer.save_model(): under FSDP/ZeRO-3 it is the gathered whole copy and after LoRA
        # the merged model, and only it carries the gate statistics, calibration and thresholds set above.
        trained.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        per_class_path = run.path / "val_per_class_metrics.json"
        card = build_model_card(
            trained.config, training_args, model_args.model_name_or_path, data_files, validation_metrics,
            json.loads(per_class_path.read_text(encoding="utf-8")) if per_class_path.is_file() else None,
            training_args.hub_model_id, metrics.get("gate_cv"), metrics.get("calibration"),
        )
        card.save(model_dir / "README.md")
        run.write_json("metrics.json", metrics)
        if push_repo:
            private = training_args.hub_private_repo is not False
            result = push_model(push_repo, model_dir, run.path, token=token, private=private)
            logger.info("Hub: %s", result["message"])
            metrics["hub"] = {key: result[key] for key in ("repo_id", "url", "commit")}
            run.write_json("metrics.json", metrics)
    return metrics


def _check_trained(trainer, train_result, resume: str | None, run: RunDirectory) -> None:
    """No false success: a run that took no optimizer step fails; after a resume, train_loss says what it covers."""
    first_step = getattr(trainer, "_initial_global_step", 0)
    steps_now = trainer.state.global_step - first_step
    if trainer.state.global_step == 0:
        raise UserError("training took 0 optimizer steps: nothing was trained (check the data and --num_train_epochs / "
                        "--max_steps)")
    if resume:
        metrics = train_result.metrics
        metrics["train_loss_scope"] = (f"resumed part only: optimizer steps {first_step + 1}-{trainer.state.global_step}"
                                       f" (resumed from {Path(resume).name} at step {first_step})")
        metrics["train_loss_resumed_part"] = metrics.get("train_loss")
        whole = _whole_run_train_loss(trainer.state.log_history, first_step, steps_now, metrics.get("train_loss"))
        if whole is not None:
            metrics["train_loss_whole_run"] = whole
        if steps_now == 0:
            note = (f"resumed from {Path(resume).name}: no optimizer step was left to take, the model was not trained "
                    "further (only evaluation and outputs were redone)")
            logger.warning(note)
            run.notes["note"] = note


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


def _take_over_push(training_args) -> str | None:
    """We push the finished `model/` (with its card) ourselves, not the Trainer's whole output dir.

    The Trainer would upload the run directory root at every save: checkpoints aside, the model would not sit
    at the repo root where `from_pretrained(repo id)` looks for it.
    """
    if not training_args.push_to_hub:
        return None
    if not training_args.hub_model_id:
        raise UsageError("--push_to_hub needs --hub_model_id user/name (the model repo to create or update)")
    training_args.push_to_hub = False
    return training_args.hub_model_id


def score_file(model, tokenizer, labeled: LabeledFile, training_args, data_args) -> Scores:
    texts = list(labeled.dataset["text"])
    return predict_scores(model, tokenizer, texts, training_args.per_device_eval_batch_size, data_args.max_seq_length)


def draw_plots(run_dir: Path) -> None:
    try:
        from multitask.plots import redraw

        redraw(run_dir)
    except Exception as error:  # a figure must never cost the user a finished run
        logger.warning("plots not drawn: %s", error)


def draw_reliability(run_dir: Path, curves: dict) -> None:
    try:
        from multitask.plots import plot_reliability

        for head, curve in curves.items():
            plot_reliability(curve, run_dir / "plots" / f"reliability_{head}.png", f"{head} head (validation)")
    except Exception as error:  # a figure must never cost the user a finished run
        logger.warning("reliability diagrams not drawn: %s", error)


def _check_metric_name(training_args, compute_metrics, data, heads: tuple[str, ...], chunked: bool = False) -> None:
    """Fail at start-up, not after training, when the best-model metric is not one we compute."""
    name = training_args.metric_for_best_model
    if not name or name in ("loss", "eval_loss"):
        return
    from transformers import EvalPrediction

    rows = 4
    gate = np.zeros((rows, 2), dtype=np.float32)
    category = np.zeros((rows, max(len(data.category_labels), 1)), dtype=np.float32)
    by_head = {"gate": (gate, np.array([0, 1, 0, 1])), "category": (category, np.zeros(rows, dtype=np.int64))}
    # Shaped as the Trainer passes them: a bare array when the model has one head.
    predictions = tuple(by_head[head][0] for head in heads)
    labels = tuple(by_head[head][1] for head in heads)
    if chunked:
        labels = (*labels, np.arange(rows))
    if len(heads) == 1:
        predictions = predictions[0]
        labels = labels if chunked else labels[0]
    keys = compute_metrics(EvalPrediction(predictions=predictions, label_ids=labels)).keys()
    bare = name[len("eval_"):] if name.startswith("eval_") else name
    if bare not in keys:
        raise UsageError(f"--metric_for_best_model {name!r} is not a validation metric{closest(bare, keys)}; "
                         f"choose one of: {', '.join(sorted(keys))}")


if __name__ == "__main__":
    sys.exit(cli(main, bare_debug_only=True))
