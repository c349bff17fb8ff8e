"""The model and the Trainer of a training run, built from its arguments and `inputs.RunInputs`.

`build_model` makes a fresh model (also usable as the Trainer's `model_init`); `build_trainer` wraps it in a
`MultitaskTrainer` with its datasets, metrics, class weights and callbacks. Both may refuse the run with a
`UserError`; neither writes a file (the Trainer creates the empty output folder, which `RunDirectory.discard`
removes from a refused run).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from transformers import EarlyStoppingCallback

from multitask.checks import check_optimizer, check_training_steps, model_load_errors
from multitask.data.loading import MultitaskCollator, TrainingData, label_counts, tokenize
from multitask.errors import usage_errors
from multitask.io.rundir import write_json
from multitask.model.lora import apply_lora
from multitask.model.losses import inverse_frequency_weights
from multitask.model.modeling import freeze_word_embeddings, load_for_training, parameter_counts
from multitask.model.precision import precision_warnings
from multitask.scoring.metrics import build_compute_metrics, check_metric_name
from multitask.train.callbacks import CartographyCallback, EpochLogCallback, TrainingRecord, find_callback
from multitask.train.inputs import RunInputs
from multitask.train.trainer import MultitaskTrainer

# The run's own lines keep the script's name in the console and train.log, whichever module writes them.
logger = logging.getLogger("run_finetune")


def build_model(model_args, data_args, training_args, inputs: RunInputs):
    """A fresh model for this run: the encoder with the heads its data needs, the run's settings in its config,
    word embeddings frozen and LoRA adapters added when asked.

    A function of its arguments only, so it can be called again for a fresh model (the Trainer's `model_init`,
    e.g. `functools.partial(build_model, model_args, data_args, training_args, inputs)` for a hyper-parameter
    search); it reads `training_args` at call time (`gate_score`, `msd_samples`, …). Side effects: log lines only
    (precision warnings, parameter counts).

    Args:
        model_args (`ModelArguments`):
            The encoder, pooling, dropout, LoRA and embedding settings.
        data_args (`DataArguments`):
            The text-cutting settings stored in the config.
        training_args (`MultitaskTrainingArguments`):
            Read at call time (`gate_score`, `msd_samples`, …).
        inputs (`RunInputs`):
            The run's loaded inputs (label maps, encoder config, k-bit loading).

    Returns:
        `MultitaskModel`, or its peft wrapper with `--lora_r`.
    """
    data = inputs.data
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
                "head_tokens": inputs.head_tokens,
                "long_text": data_args.long_text,
                "chunk_stride": inputs.chunk_stride,
                "max_chunks": data_args.max_chunks,
                "chunk_aggregation": inputs.chunk_aggregation,
                # Stored so run_predict.py and analysis read gold labels from the same columns.
                "pick_column": data_args.pick_column,
                "category_column": data_args.category_column,
            },
            encoder_kwargs=inputs.quantization,
            **inputs.hub_kwargs,
        )
    logger.info("precision: %s; evaluation during training runs the same way, the thresholds, gate statistics "
                "and reports after it in fp32", getattr(training_args, "precision_reason", "fp32"))
    for message in precision_warnings(model.config.encoder_config.model_type, training_args.fp16,
                                      training_args.bf16, training_args.device.type):
        logger.warning(message)
    if model_args.freeze_embeddings:
        logger.info("--freeze_embeddings: %d word-embedding parameters frozen", freeze_word_embeddings(model))
    if model_args.lora_r:
        model = apply_lora(model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout,
                           model_args.lora_target_modules, model_args.model_name_or_path,
                           quantized=inputs.quantization is not None,
                           gradient_checkpointing=bool(training_args.activation_checkpointing))
    trainable, total = parameter_counts(model)
    logger.info("trainable parameters: %d of %d (%.1f%%)", trainable, total, 100.0 * trainable / max(total, 1))
    return model


def class_weights(data: TrainingData, training_args) -> dict[str, torch.Tensor | None]:
    """`MultitaskTrainer`'s `gate_class_weights` and `category_class_weights`: inverse-frequency weights of the
    training labels clipped to [--class_weight_min, --class_weight_max], or None where that weighting is off or
    the head is absent.

    Keyed by the trainer's argument (and attribute) names, so `MultitaskTrainer(..., **class_weights(...))` and a
    recomputation after the arguments changed (`setattr(trainer, name, weights)`) read the same. Logs a warning
    naming the classes without a training row (they get the maximum weight).

    Args:
        data (`TrainingData`):
            The loaded training data (its gate and category labels are counted).
        training_args (`MultitaskTrainingArguments`):
            `gate_class_weighting`, `category_class_weighting`, `class_weight_min` and `class_weight_max`.

    Returns:
        `dict[str, torch.Tensor | None]`: `gate_class_weights` and `category_class_weights`.
    """
    heads = (("gate", 2 if data.has_gate else 0, training_args.gate_class_weighting),
             ("category", len(data.category_labels), training_args.category_class_weighting))
    weights = {}
    for head, num_classes, enabled in heads:
        weights[f"{head}_class_weights"] = None
        if enabled and num_classes:
            counts = label_counts(list(data.train[f"{head}_labels"]), num_classes)
            zero = [index for index, count in enumerate(counts) if count == 0]
            if zero:
                logger.warning("classes with no training row (weight clipped to max): %s", zero)
            weights[f"{head}_class_weights"] = inverse_frequency_weights(
                counts, training_args.class_weight_min, training_args.class_weight_max)
    return weights


def build_trainer(model: torch.nn.Module, data_args, training_args, inputs: RunInputs,
                  run_dir: Path) -> MultitaskTrainer:
    """The run's `MultitaskTrainer`: tokenized training and validation sets, `compute_metrics` for the heads
    present, class weights, and the callbacks (epoch log into `run_dir`, cartography, early stopping).

    Surprising: it fits `training_args` to the data in place. A single-head run keeps only that head's
    `label_names` (and `--long_text chunk` adds `document`, the window's row, for per-document metrics); a
    gate-only run with a category `--metric_for_best_model` is switched to `gate_f1`. Refuses (`UsageError`) an
    optimizer whose package is missing, a best-model metric that is not computed, a chunked training set that
    makes no step, and arguments the Trainer itself rejects.

    Args:
        model (`torch.nn.Module`):
            The model (`build_model`).
        data_args (`DataArguments`):
            Tokenization settings.
        training_args (`MultitaskTrainingArguments`):
            The Trainer's arguments (fitted to the data in place, see above).
        inputs (`RunInputs`):
            The run's loaded data and tokenizer.
        run_dir (`Path`):
            Where the callbacks write the epoch log.

    Returns:
        `MultitaskTrainer`: Ready to `train()`.

    Raises:
        `UsageError`: See above.
    """
    data = inputs.data
    chunked = data_args.long_text == "chunk"
    unlabelled_picks = data.report.get("train_rows_by_labels", {}).get("gate_only_pick", 0)
    if training_args.pseudo_label_weight > 0 and not unlabelled_picks:
        logger.warning("--pseudo_label_weight %g has nothing to act on: no training row is a Pick without a "
                       "category (it needs a task1 table with more Pick rows than the task2 table labels)",
                       training_args.pseudo_label_weight)
    smoothing, categories = training_args.category_label_smoothing, max(len(data.category_labels), 1)
    ceiling = 1.0 - smoothing + smoothing / categories  # the top probability label smoothing trains a head towards
    if training_args.pseudo_label_weight > 0 and training_args.pseudo_label_threshold >= ceiling:
        logger.warning("--pseudo_label_threshold %g: with --category_label_smoothing %g over %d categories a head's "
                       "top probability tends to %.3f, so almost no row will be pseudo-labelled; use a lower "
                       "threshold", training_args.pseudo_label_threshold, smoothing, categories, ceiling)
    # Before the Trainer exists: Trainer.__init__ copies args.label_names once and never reads them again.
    _fit_label_names(training_args, data, chunked)
    # Again, now with the model: the optimizer lookups that need its parameters can only fail here.
    check_optimizer(training_args, model)
    heads = tuple(head for head, present in (("gate", data.has_gate), ("category", data.has_category)) if present)
    compute_metrics = build_compute_metrics(heads=heads, category_bands=inputs.category_bands,
                                            chunk_aggregation=inputs.chunk_aggregation if chunked else None)
    check_metric_name(training_args.metric_for_best_model, compute_metrics, len(data.category_labels), heads, chunked)
    encoding = {"max_length": data_args.max_seq_length, "truncation": data_args.truncation,
                "head_tokens": inputs.head_tokens, "num_proc": data_args.preprocessing_num_workers,
                "long_text": data_args.long_text, "chunk_stride": inputs.chunk_stride,
                "max_chunks": data_args.max_chunks}
    train_dataset = tokenize(data.train, inputs.tokenizer, **encoding)
    eval_dataset = tokenize(data.validation, inputs.tokenizer, **encoding)
    if chunked:
        check_training_steps(len(train_dataset), training_args)
        logger.info("--long_text chunk: %d training windows from %d rows, %d validation windows from %d rows",
                    len(train_dataset), len(data.train), len(eval_dataset), len(data.validation))
    record = TrainingRecord()
    callbacks = _callbacks(record, data, training_args, run_dir)
    with usage_errors("training arguments: "):  # what the Trainer itself refuses (e.g. --report_to)
        trainer = MultitaskTrainer(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=inputs.tokenizer,
            # row_id feeds cartography; `document` lets compute_metrics pool each text's windows.
            data_collator=MultitaskCollator(inputs.tokenizer,
                                            keep_keys=("row_id", "document") if chunked else ("row_id",)),
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            **class_weights(data, training_args),
            training_record=record,
        )
    if training_args.fsdp and not trainer.is_fsdp_enabled:
        # accelerate turns FSDP on only for multi-process GPU/accelerator runs; elsewhere it quietly does not shard.
        logger.warning("--fsdp is ignored: accelerate runs FSDP only with several GPU/accelerator processes; "
                       "this run trains on %s with %d process(es), parameters not sharded",
                       training_args.device.type, training_args.world_size)
    return trainer


def _fit_label_names(training_args, data: TrainingData, chunked: bool) -> None:
    """The label columns the Trainer hands to `compute_metrics`, and a best-model metric the heads can compute."""
    if not data.has_gate or not data.has_category:
        # Single-head run: the missing head's labels are not model outputs.
        training_args.label_names = ["gate_labels"] if data.has_gate else ["category_labels"]
    if chunked:  # windows carry their document's index to compute_metrics, which scores documents
        training_args.label_names = [*training_args.label_names, "document"]
    if training_args.metric_for_best_model and not data.has_category and "category" in training_args.metric_for_best_model:
        training_args.metric_for_best_model = "gate_f1"
        logger.info("gate-only run: best model chosen by eval_gate_f1")


def _callbacks(record: TrainingRecord, data: TrainingData, training_args, run_dir: Path) -> list:
    """Epoch log (always), cartography (`--cartography`) and early stopping (`--early_stopping_patience`)."""
    loss_weights = {"gate": training_args.gate_loss_weight, "category": training_args.category_loss_weight}
    callbacks = [EpochLogCallback(record, run_dir, loss_weights)]
    if training_args.cartography:
        callbacks.append(CartographyCallback(record, data.train.select_columns(
            ["row_id", "text", "gate_labels", "category_labels"]).to_pandas(), data.category_labels))
    if training_args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=training_args.early_stopping_patience))
    return callbacks


def search_and_keep_best(trainer, run_dir: Path, model_args, data_args, training_args, inputs) -> dict:
    """`--hp_search_trials N`: `multitask.train.hp_search.search_hyperparameters` over fresh models built exactly as this
    run builds its own (`build_model`), writing hp_trials.csv/.md/.png and hp_search.json into the run directory.

    Per trial (and once more for the best), what the run derived from the arguments is recomputed: class weights
    (they depend on `class_weight_max`) and the loss weights the epoch log reports. The best values stay on
    `trainer.args` and `model_init` on the trainer, so the caller's `trainer.train()` retrains the best trial from
    a fresh model. Returns the search record.
    """
    from multitask.train.hp_search import search_hyperparameters

    data = inputs.data

    def on_trial_start(trial_trainer) -> None:
        for name, weights in class_weights(data, trial_trainer.args).items():
            setattr(trial_trainer, name, weights)
        epoch_log = find_callback(trial_trainer, EpochLogCallback)
        if epoch_log is not None:
            epoch_log.loss_weights.update(gate=trial_trainer.args.gate_loss_weight,
                                          category=trial_trainer.args.category_loss_weight)

    heads = tuple(head for head, present in (("gate", data.has_gate), ("category", data.has_category)) if present)
    search = search_hyperparameters(trainer, run_dir,
                                    model_init=functools.partial(build_model, model_args, data_args, training_args,
                                                                 inputs),
                                    heads=heads, on_trial_start=on_trial_start)
    record = search.record()
    if trainer.is_world_process_zero():
        write_json(Path(run_dir) / "hp_search.json", record)
    return record
