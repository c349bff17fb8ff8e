"""What a training run reads, resolved and checked before anything is written: `prepare_inputs`.

The demo default or a Hub dataset stands in for missing arguments (`resolve_inputs`), then the tokenizer, the
encoder config and the data are loaded and every setting that depends on them is checked. Whatever is wrong ends
in a `UserError` here, before the run directory exists (see `multitask.io.rundir`). `data_file_hashes` is the
record of which data was read (run_config.json and the model card).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer

from multitask.checks import check_sequence_length, check_training_steps, model_load_errors
from multitask.data.demo import DEMO_MODEL_OVERRIDES, DEMO_OVERRIDES, use_demo_inputs
from multitask.data.loading import (
    HubData,
    TrainingData,
    check_trainable,
    load_hub_dataset,
    load_training_data,
)
from multitask.data.text_encoding import check_chunking, check_truncation, special_template, text_separator
from multitask.io.hub import download_data_files, resolve_dataset_repo, resolve_token, take_over_push
from multitask.io.rundir import file_sha256, resolve_resume_checkpoint
from multitask.model.lora import quantization_kwargs
from multitask.train.reporting import category_bands

# The run's own lines keep the script's name in the console and train.log, whichever module writes them.
logger = logging.getLogger("run_finetune")


@dataclass
class RunInputs:
    """Everything `prepare_inputs` resolved: what `build_model`, `build_trainer` and `finish_run` read besides the
    three argument dataclasses."""

    tokenizer: Any
    data: TrainingData
    hub_data: HubData | None  # a Hub dataset's splits (no file named in --dataset_repo), else None
    head_tokens: int | None  # --truncation head_tail: tokens kept from the head (resolved default)
    chunk_stride: int | None  # --long_text chunk: tokens between window starts (resolved default)
    chunk_aggregation: str  # what training and per-epoch evaluation use: `auto` is `mean` until validation chooses
    category_bands: list[str] | None  # High/Mid/Low training frequency of each category (None: no category head)
    resume: str | None  # the checkpoint to resume from (`true|last` resolved), else None
    quantization: dict | None  # `from_pretrained` arguments of a k-bit encoder, else None
    hub_kwargs: dict[str, Any]  # revision, cache_dir and token for every `from_pretrained`
    push_repo: str | None  # the model repo to push the finished model to (we push, not the Trainer)

    @property
    def token(self) -> str | None:
        """The Hub token (explicit, HF_TOKEN or .env); never kept in the training arguments."""
        return self.hub_kwargs["token"]


def resolve_inputs(model_args, data_args, training_args, run_dir: Path) -> HubData | None:
    """Fill in missing inputs, changing the arguments in place; returns a `HubData` or None.

    No `--model_name_or_path`: the demo (`demo.use_demo_inputs`, which builds its encoder under `run_dir`). With
    `--dataset_repo`: the files it names are downloaded and the file arguments point at the local copies; with no
    file named, its splits are loaded with `datasets.load_dataset` and returned as a `HubData`.

    Args:
        model_args (`ModelArguments`):
            Gets the demo encoder when no model is named.
        data_args (`DataArguments`):
            Gets the demo files, or the local copies of files downloaded from `dataset_repo`.
        training_args (`MultitaskTrainingArguments`):
            Gets the demo's settings; its `hub_token` is used for the download.
        run_dir (`Path`):
            Where the demo encoder is built.

    Returns:
        `HubData` for a Hub dataset loaded by splits, else None.
    """
    if model_args.model_name_or_path is None:
        use_demo_inputs(model_args, data_args, training_args, run_dir)
        logger.info("No model given: demo run (data/demo, tiny DeBERTa-v2 from scratch) with %s",
                    {**DEMO_OVERRIDES, **DEMO_MODEL_OVERRIDES})
    elif data_args.dataset_repo:
        data_args.dataset_repo = resolve_dataset_repo(data_args.dataset_repo, "--dataset_repo")
        names = [data_args.train_file, data_args.task1_file, data_args.task2_file, data_args.validation_file,
                 *data_args.test_files]
        # dict.fromkeys: a file named by two flags is downloaded once; the order of first mention is kept.
        wanted = list(dict.fromkeys(name for name in names if name))
        token = resolve_token(training_args.hub_token)
        if not wanted:  # no file named: the repo is a dataset, loaded with datasets.load_dataset
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


def prepare_inputs(model_args, data_args, training_args, run_dir: Path) -> RunInputs:
    """Resolve, load and check everything the run reads, in this order: k-bit loading, the checkpoint to resume,
    demo/Hub inputs, the Hub push target and token, tokenizer and encoder config, text cutting, the data.

    Changes the arguments in place where the run takes something over: the demo's files and settings, downloaded
    file paths, `push_to_hub` (off: we push, see `hub.take_over_push`) and `hub_token` (None: the Trainer pickles
    its arguments into every checkpoint). Any mistake is a `UserError`. Nothing is written but the Hub cache and
    the demo encoder (under `run_dir`; `RunDirectory.discard` removes it from a refused run).

    Args:
        model_args (`ModelArguments`):
            The model settings (changed in place, see above).
        data_args (`DataArguments`):
            The data settings (changed in place).
        training_args (`MultitaskTrainingArguments`):
            The training settings (changed in place).
        run_dir (`Path`):
            The run directory (not created here).

    Returns:
        `RunInputs`: The data, tokenizer, encoder config, resume checkpoint, Hub settings.

    Raises:
        `UserError`: Any mistake in the inputs.
    """
    compute_dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32
    quantization = quantization_kwargs(model_args.load_in_4bit, model_args.load_in_8bit, model_args.lora_r,
                                       compute_dtype)
    resume = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    with training_args.main_process_first(desc="demo encoder / Hub data"):  # other ranks reuse what rank 0 built
        hub_data = resolve_inputs(model_args, data_args, training_args, run_dir)
    push_repo = take_over_push(training_args)
    token = resolve_token(training_args.hub_token)  # explicit, HF_TOKEN, or .env; for private models
    # The Trainer pickles its arguments into every checkpoint (training_args.bin): keep the token out of them.
    training_args.hub_token = None
    hub_kwargs = {"revision": model_args.model_revision, "cache_dir": model_args.cache_dir, "token": token}
    tokenizer_source = model_args.tokenizer_name or model_args.model_name_or_path
    with model_load_errors(tokenizer_source, "--tokenizer_name" if model_args.tokenizer_name else "--model_name_or_path"):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, **hub_kwargs)
    with model_load_errors(model_args.model_name_or_path, "--model_name_or_path"):
        encoder_config = AutoConfig.from_pretrained(model_args.model_name_or_path, **hub_kwargs)
    # Starting from a trained multitask model gives a MultitaskConfig; the limit is its encoder's.
    check_sequence_length(getattr(encoder_config, "encoder_config", encoder_config), data_args.max_seq_length)
    special_tokens = special_template(tokenizer).size
    head_tokens = check_truncation(data_args.truncation, data_args.head_tokens, data_args.max_seq_length,
                                   special_tokens)
    chunk_stride = check_chunking(data_args.long_text, data_args.chunk_stride, data_args.max_chunks,
                                  data_args.max_seq_length, special_tokens, data_args.truncation,
                                  data_args.chunk_aggregation)
    data = _load_data(data_args, training_args, text_separator(tokenizer), hub_data)
    check_training_steps(len(data.train), training_args)
    bands = None
    if data.has_category:
        bands = category_bands(list(data.train["category_labels"]), len(data.category_labels),
                               training_args.frequency_band_quantiles)
    return RunInputs(
        tokenizer=tokenizer, data=data, hub_data=hub_data, head_tokens=head_tokens, chunk_stride=chunk_stride,
        # Per-epoch evaluation needs one aggregation before validation can choose (`auto`): the mean.
        chunk_aggregation="mean" if data_args.chunk_aggregation == "auto" else data_args.chunk_aggregation,
        category_bands=bands, resume=resume, quantization=quantization, hub_kwargs=hub_kwargs, push_repo=push_repo,
    )


def _load_data(data_args, training_args, separator: str, hub_data: HubData | None) -> TrainingData:
    """Load and merge the training, validation and test data, log its report, and refuse untrainable data."""
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
        report_split=data_args.report_split,
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
    return data


def data_file_hashes(data_args, hub_data: HubData | None) -> dict[str, str]:
    """The SHA-256 of every data file the run read, by path; a Hub dataset's splits by the fingerprint `datasets`
    gives the loaded data (keyed `repo@revision split name`).

    Args:
        data_args (`DataArguments`):
            The data files.
        hub_data (`HubData`, *optional*):
            A Hub dataset loaded by splits.

    Returns:
        `dict[str, str]`: Path (or `repo@revision split`) -> hash.
    """
    data_files = {
        str(path): file_sha256(path)
        for path in [data_args.train_file, data_args.task1_file, data_args.task2_file, data_args.validation_file,
                     *data_args.test_files]
        if path
    }
    if hub_data:
        revision = hub_data.record["revision"] or "main"
        data_files.update({f"{data_args.dataset_repo}@{revision} split {name}": split["fingerprint"]
                           for name, split in hub_data.record["splits"].items()})
    return data_files
