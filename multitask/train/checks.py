"""Checks across run_finetune.py's three dataclasses, or needing the environment, before anything is loaded or
written; the checks every stage shares are in `multitask.checks`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from multitask.checks import (
    TOKENIZER_FILES,
    check_optimizer,
    looks_local,
    require,
    resolve_model_source,
)
from multitask.errors import ModelFileError, UsageError
from multitask.io.tables import check_readable_file


def check_finetune_arguments(model_args: Any, data_args: Any, training_args: Any) -> None:
    """Refuse, before anything is loaded or written, arguments that cannot work or would train nothing.

    Each dataclass checks its own values when it is built (`__post_init__` in `multitask.train.arguments`); these
    are the checks that need the environment (files, models, installed packages) or more than one dataclass.
    Local input files are checked to exist and be readable, not parsed. One side effect: a local
    `model_args.model_name_or_path` is replaced by the directory to load (a run directory becomes its `model/`).

    Args:
        model_args (`ModelArguments`):
            run_finetune.py's model arguments (modified in place, see above).
        data_args (`DataArguments`):
            Its data arguments.
        training_args (`MultitaskTrainingArguments`):
            Its training arguments.

    Raises:
        `UsageError`: A value out of range or a combination that cannot work (the message names the flag).
        `DataError`: A local input file that is missing, a directory or unreadable.
        `ModelFileError`: A local model or tokenizer directory that is missing or incomplete.
    """
    args = training_args
    for arguments in (model_args, data_args, training_args):
        arguments.validate()  # again: a Python caller may have changed a value after building the dataclass
    check_optimizer(args)
    check_hp_search_arguments(args)

    own_data = any([data_args.train_file, data_args.task1_file, data_args.task2_file, data_args.validation_file,
                    data_args.dataset_repo])
    if model_args.model_name_or_path is None and own_data:
        raise UsageError("--model_name_or_path is required with your own data (the demo encoder knows only demo text)")
    hub_only = [flag for flag, given in (
        ("--dataset_config_name", data_args.dataset_config_name), ("--dataset_revision", data_args.dataset_revision),
        ("--train_split_name", data_args.train_split_name != "train"),
        ("--validation_split_name", data_args.validation_split_name), ("--test_split_names", data_args.test_split_names),
    ) if given]
    if hub_only and not data_args.dataset_repo:
        raise UsageError(f"{hub_only[0]} applies to a Hub dataset: give --dataset_repo user/name too")
    file_arguments = [data_args.train_file, data_args.task1_file, data_args.task2_file, data_args.validation_file,
                      *data_args.test_files]
    # A revision applies to files fetched from the repo too; the other Hub flags only to load_dataset's splits.
    split_flags = [flag for flag in hub_only if flag not in ("--dataset_revision",)]
    if data_args.dataset_repo and split_flags and any(file_arguments):
        raise UsageError(f"{split_flags[0]} names a split of a dataset loaded with datasets.load_dataset, but file "
                         "arguments were given (they are paths inside --dataset_repo); drop one or the other")
    if not data_args.dataset_repo:  # with a repo, file arguments are paths inside it, checked after download
        for flag, path in (("--train_file", data_args.train_file), ("--task1_file", data_args.task1_file),
                           ("--task2_file", data_args.task2_file), ("--validation_file", data_args.validation_file)):
            if path:
                check_readable_file(path, flag)
        for path in data_args.test_files:
            check_readable_file(path, "--test_files")
        stems = [Path(path).stem for path in data_args.test_files]
        duplicate = next((stem for stem in stems if stems.count(stem) > 1), None)
        if duplicate is not None:
            raise UsageError(f"--test_files: two files are named {duplicate!r}; their predictions would overwrite "
                             "each other")
    if model_args.model_name_or_path is not None:
        model_args.model_name_or_path = resolve_model_source(
            model_args.model_name_or_path, "--model_name_or_path", need_tokenizer=not model_args.tokenizer_name)
    if model_args.tokenizer_name:
        source = Path(model_args.tokenizer_name).expanduser()
        if source.exists() and not any((source / name).is_file() for name in TOKENIZER_FILES):
            raise ModelFileError(f"--tokenizer_name {model_args.tokenizer_name}: no tokenizer files in this directory")
        if not source.exists() and looks_local(model_args.tokenizer_name):
            raise ModelFileError(f"--tokenizer_name {model_args.tokenizer_name}: no such directory")
    resume = args.resume_from_checkpoint
    if resume and resume.lower() not in ("true", "last", "false") and not Path(resume).is_dir():
        raise UsageError(f"--resume_from_checkpoint {resume}: no such checkpoint directory (or pass true for the "
                         "newest checkpoint-* in --output_dir)")


def check_hp_search_arguments(args: Any) -> None:
    """--hp_search_*: a whole number of trials, an installed backend, a valid space file, nothing given in vain.

    Args:
        args (`MultitaskTrainingArguments`):
            The training arguments holding the `hp_search_*` fields and `resume_from_checkpoint`.

    Raises:
        `UsageError`: A bad trial count, a search flag without `--hp_search_trials`, a missing backend
        package, a bad search-space file, or a search combined with `--resume_from_checkpoint`.
    """
    trials = args.hp_search_trials
    require(isinstance(trials, int) and trials >= 0,
            f"--hp_search_trials {trials}: must be a whole number >= 0 (0 = no search)")
    if not trials:
        for flag, given in (("--hp_search_space", args.hp_search_space), ("--hp_search_metric", args.hp_search_metric),
                            ("--hp_search_backend", args.hp_search_backend != "optuna")):
            require(not given, f"{flag} applies to a hyper-parameter search: give --hp_search_trials N too")
        return
    from multitask.train.hp_search import (  # only now: it loads optuna's types
        check_backend,
        load_search_space,
    )

    check_backend(args.hp_search_backend)
    if args.hp_search_space:
        load_search_space(args.hp_search_space)
    resume = args.resume_from_checkpoint
    require(not resume or resume.lower() == "false",
            "--resume_from_checkpoint continues one training; it cannot be combined with --hp_search_trials")
