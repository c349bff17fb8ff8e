#!/usr/bin/env python
"""Fine-tune a shared encoder with a Pick/Decline gate head and an N-way category head.

    python run_finetune.py                                   # the embedded demo (tiny DeBERTa, offline)
    python run_finetune.py --model_name_or_path microsoft/deberta-v3-base \
        --task1_file data/train/task1_cleaned.csv --task2_file data/train/task2_cleaned.csv \
        --validation_file data/val.csv --test_files data/test_a.csv data/test_b.csv [any TrainingArguments flag]
    python run_finetune.py config.yaml                       # or config.json: the same flags as keys

A mistake in the arguments or data ends in one `error: …` line (exit status 2) before anything is written;
a bare `--debug` (or MULTITASK_DEBUG=1) adds the traceback. See multitask/errors.py.

One run, step by step: `parse_args` → `inputs.prepare_inputs` (demo/Hub inputs, tokenizer, checks, data) →
`build.build_model` → `build.build_trainer` → `start_run` (the run directory) → [`build.search_and_keep_best`
with `--hp_search_trials`] → `trainer.train` →
`finish.finish_run` (evaluation, settings fitted on validation, predictions, reports, model, card, push).
"""

from __future__ import annotations

import logging
import sys

import transformers
from transformers import HfArgumentParser, set_seed

from multitask.errors import cli, output_fault, parse_arguments
from multitask.io.rundir import RunDirectory, arguments_record, library_versions, setup_logging
from multitask.io.tables import set_read_limits
from multitask.train.arguments import DataArguments, ModelArguments, MultitaskTrainingArguments
from multitask.train.build import build_model, build_trainer, search_and_keep_best
from multitask.train.callbacks import CartographyCallback, find_callback
from multitask.train.checks import check_finetune_arguments, check_training_steps, refused_pickle
from multitask.train.finish import finish_run
from multitask.train.inputs import RunInputs, data_file_hashes, prepare_inputs

logger = logging.getLogger("run_finetune")


def parse_args(argv: list[str] | None):
    """The three argument dataclasses from a command line or a JSON/YAML file; a mistake is a `UsageError`."""
    parser = HfArgumentParser((ModelArguments, DataArguments, MultitaskTrainingArguments))
    return parse_arguments(parser, sys.argv[1:] if argv is None else argv)


def main(argv: list[str] | None = None) -> dict:
    """Train one run; returns its metrics. A `UserError` (bad argument, data or model file) is raised before the
    run directory exists; `cli(main)` turns it into one `error:` line."""
    model_args, data_args, training_args = parse_args(argv)
    check_finetune_arguments(model_args, data_args, training_args)
    set_read_limits(data_args.max_input_bytes, data_args.max_cell_chars)
    is_main = training_args.process_index == 0
    run = RunDirectory(training_args.output_dir, resuming=bool(training_args.resume_from_checkpoint))
    if is_main:
        run.check_target()
    setup_logging(main_process=is_main)
    transformers.utils.logging.set_verbosity_warning()
    run.hold_logs()  # replayed to the console and train.log when the run starts; dropped if it is refused
    try:
        # Everything up to start_run() validates and loads; it may refuse the run, leaving nothing behind.
        set_seed(training_args.seed)
        inputs = prepare_inputs(model_args, data_args, training_args, run.path)
        model = build_model(model_args, data_args, training_args, inputs)
        trainer = build_trainer(model, data_args, training_args, inputs, run.path)
        data_files = start_run(run, trainer, model_args, data_args, inputs)
        if training_args.hp_search_trials:  # trials first; the best trial's values then train this run's model
            search_and_keep_best(trainer, run.path, model_args, data_args, training_args, inputs)
        try:
            train_result = trainer.train(resume_from_checkpoint=inputs.resume)
        except Exception as error:  # noqa: BLE001 - only a refused checkpoint pickle is translated
            refused = refused_pickle(inputs.resume, "--resume_from_checkpoint", error) if inputs.resume else None
            if refused is None:
                raise
            raise refused from error
        metrics = finish_run(trainer, train_result, run, model_args, data_args, inputs, data_files)
    except BaseException as error:
        # A full disk or an unwritable path (a checkpoint, the model, a report): one error line, status failed.
        fault = output_fault(error, resumable=run.started)
        if is_main and run.started:
            run.close(fault or error)
        else:
            run.discard(fault or error, remove=is_main)
        if fault is not None:
            raise fault from error
        raise
    if is_main:
        run.close()
    return metrics


def start_run(run: RunDirectory, trainer, model_args, data_args, inputs: RunInputs) -> dict[str, str]:
    """Inputs validated: create the run directory (main process) with run_config.json and label_map.json; other
    processes show their held log lines instead. On a resume, take up the cartography history saved in the
    checkpoint (every process). Returns the data files' hashes (`multitask.train.inputs.data_file_hashes`)."""
    training_args = trainer.args
    data_files = data_file_hashes(data_args, inputs.hub_data)
    if trainer.is_world_process_zero():
        run.start()  # from here on the run directory exists and says running/complete/failed
        # Counted on the tokenized set: with --long_text chunk a row may become several windows.
        logger.info("training: %d optimizer steps planned over %d training rows (by labels carried: %s)",
                    check_training_steps(len(trainer.train_dataset), training_args), len(inputs.data.train),
                    ", ".join(f"{name} {count}" for name, count in inputs.data.report["train_rows_by_labels"].items()))
        run.write_json("run_config.json", {
            "arguments": arguments_record(model_args, data_args, training_args),
            "versions": library_versions(),
            "data_files": data_files,
            "data_report": inputs.data.report,
        })
        config = trainer.model.config
        run.write_json("label_map.json", {"category_id2label": config.category_id2label,
                                          "gate_id2label": config.gate_id2label})
    else:
        run.release_logs()  # other ranks write no run directory: their held lines go to the console now
    cartography = find_callback(trainer, CartographyCallback)
    if inputs.resume and cartography is not None:
        cartography.restore(inputs.resume)
    return data_files


if __name__ == "__main__":
    sys.exit(cli(main, bare_debug_only=True))
