"""One training run from the three argument dataclasses: `finetune` (what run_finetune.py runs) and `start_run`.

One run, step by step: `check_finetune_arguments` → `inputs.prepare_inputs` (demo/Hub inputs, tokenizer, checks,
data) → `build.build_model` → `build.build_trainer` → `start_run` (the run directory) →
[`build.search_and_keep_best` with `hp_search_trials`] → `trainer.train` → `finish.finish_run` (evaluation,
settings fitted on validation, predictions, reports, model, card, push).
"""

from __future__ import annotations

import logging

import transformers
from transformers import set_seed

from multitask.checks import check_training_steps, refused_pickle
from multitask.errors import output_fault
from multitask.io.rundir import RunDirectory, arguments_record, library_versions, setup_logging
from multitask.io.tables import set_read_limits
from multitask.train.arguments import DataArguments, ModelArguments, MultitaskTrainingArguments
from multitask.train.build import build_model, build_trainer, search_and_keep_best
from multitask.train.callbacks import CartographyCallback, find_callback
from multitask.train.checks import check_finetune_arguments
from multitask.train.finish import finish_run
from multitask.train.inputs import RunInputs, data_file_hashes, prepare_inputs

# The name run_finetune.py has always logged under (train.log lines, `caplog` filters).
logger = logging.getLogger("run_finetune")


def finetune(
    model_args: ModelArguments | None = None,
    data_args: DataArguments | None = None,
    training_args: MultitaskTrainingArguments | None = None,
) -> dict:
    """Train one run, as `python run_finetune.py` does with the same flags, and return its metrics.

    The arguments are checked before anything is loaded or written; the run directory
    (`training_args.output_dir`) then holds the model (`model/`), thresholds, predictions, reports and
    `run_status.json`. A run that fails is marked failed; a refused one leaves nothing behind. The arguments
    are changed in place where the run takes something over (the demo's files and settings, a run directory
    given as the model becomes its `model/`).

    Args:
        model_args (`ModelArguments`, *optional*):
            The encoder and model settings. None, or no `model_name_or_path`: the demo's tiny encoder, built
            offline (with the demo data only).
        data_args (`DataArguments`, *optional*):
            The data files or Hub dataset and their columns. None: the demo data (`data/demo/`).
        training_args (`MultitaskTrainingArguments`, *optional*):
            The Trainer's and this project's training settings. None: the defaults, in a timestamped
            `output/output_<time>/`.

    Returns:
        `dict`: The run's metrics (as `metrics.json`: validation, test files, settings fitted after training).

    Raises:
        `UserError`: A bad argument, data file or model file (before the run directory exists), or a run
        that would train nothing.
    """
    model_args = model_args if model_args is not None else ModelArguments()
    data_args = data_args if data_args is not None else DataArguments()
    training_args = training_args if training_args is not None else MultitaskTrainingArguments()
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
    """Create the run directory once the inputs are validated, and take up a resumed run's history.

    The main process writes run_config.json and label_map.json; other processes show their held log lines
    instead. On a resume, every process takes up the cartography history saved in the checkpoint.

    Args:
        run (`RunDirectory`):
            The run directory, not yet started.
        trainer (`MultitaskTrainer`):
            The built trainer (its arguments, datasets and model config are recorded).
        model_args (`ModelArguments`):
            Recorded in run_config.json.
        data_args (`DataArguments`):
            Recorded in run_config.json; its files are hashed.
        inputs (`RunInputs`):
            The run's loaded inputs.

    Returns:
        `dict[str, str]`: The data files' hashes (`multitask.train.inputs.data_file_hashes`).
    """
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
