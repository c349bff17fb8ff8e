"""Checks run before anything is loaded or written: arguments, input files, model directories.

Each raises a `multitask.errors.UserError` whose message names the flag or file and says what to do, so the
CLIs refuse a run that cannot work (or would train nothing) before they create any output. `model_load_errors`
translates what transformers/safetensors/huggingface_hub raise while a model loads.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from multitask.errors import ModelFileError, UsageError, UserError, closest, one_line
from multitask.io.rundir import saved_model_dir
from multitask.io.tables import check_encoding, check_format, check_readable_file

TOKENIZER_FILES = ("tokenizer.json", "spm.model", "vocab.txt", "vocab.json", "sentencepiece.bpe.model",
                   "tokenizer.model", "spiece.model")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
_REFETCH = "re-download it (or re-save the model with save_pretrained)"


# ------------------------------------------------------------------------------------------------ small checks
def require(condition: bool, message: str) -> None:
    """Raise `UsageError(message)` unless `condition`; `message` should start with the flag and its value.

    Args:
        condition (`bool`):
            What must hold.
        message (`str`):
            The whole error message, e.g. `"--lora_r -1: must be >= 0"`.

    Raises:
        `UsageError`: When `condition` is false.
    """
    if not condition:
        raise UsageError(message)


def finite(value: float) -> bool:
    """True for an int or float that is neither NaN nor infinite (False for None, strings and the like)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def check_positive(value: Any, flag: str, what: str = "") -> None:
    """`value` is a finite number > 0 (NaN, inf and non-numbers fail); `what` is appended to the message.

    Args:
        value (`Any`):
            The parsed flag value.
        flag (`str`):
            The flag as the user types it, e.g. `"--learning_rate"`.
        what (`str`, *optional*, defaults to `""`):
            Extra text after "must be a positive number", starting with a space.

    Raises:
        `UsageError`: When the check fails.
    """
    require(finite(value) and value > 0, f"{flag} {value}: must be a positive number{what}")


def check_fraction(value: float, flag: str, low_open: bool = False, high_open: bool = False) -> None:
    """`value` is finite and in [0, 1], with either end excluded by `low_open` / `high_open`.

    Args:
        value (`float`):
            The parsed flag value; a non-number raises `TypeError` from the comparison rather than a
            `UsageError`.
        flag (`str`):
            The flag as the user types it.
        low_open (`bool`, *optional*, defaults to `False`):
            Exclude 0.
        high_open (`bool`, *optional*, defaults to `False`):
            Exclude 1.

    Raises:
        `UsageError`: When `value` is NaN, inf or outside the interval; the message shows the interval.
    """
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    require(finite(value) and low_ok and high_ok, f"{flag} {value}: must be in {interval}")


# --------------------------------------------------------------------------------------------- model sources
def looks_local(name: str) -> bool:
    """True when `name` can only be a local path (huggingface_hub would reject it as a repo id)."""
    # A Hub id is `name` or `user/name`: a leading . / ~, a backslash, a trailing or second slash mean a path.
    if name.startswith(("/", ".", "~", "\\")) or "\\" in name or name.endswith("/") or name.count("/") > 1:
        return True
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def _check_json(path: Path, what: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
        value = json.loads(text)
    except UnicodeDecodeError:
        raise ModelFileError(f"{path}: not a text file, the {what} is corrupt; {_REFETCH}") from None
    except json.JSONDecodeError as error:
        state = "empty" if not text.strip() else f"not valid JSON (line {error.lineno}: {error.msg})"
        raise ModelFileError(f"{path}: {state}, the {what} is truncated or corrupt; {_REFETCH}") from None
    if not isinstance(value, dict):
        raise ModelFileError(f"{path}: expected a JSON object, the {what} is corrupt; {_REFETCH}")
    return value


def _check_safetensors(path: Path) -> None:
    """Open the header and list the tensors: catches truncation and garbage without reading the weights."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as error:
        raise ModelFileError(f"{path}: truncated or corrupt weights ({one_line(str(error))}); {_REFETCH}") from None


def _check_head_sizes(path: Path, config: dict) -> None:
    """The category head must have one row per category config.json names (from_pretrained would otherwise print a
    report and raise, or silently re-initialise the head)."""
    from safetensors import safe_open

    categories = config.get("category_id2label") or {}
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            if key.endswith("category_head.weight"):
                rows = handle.get_slice(key).get_shape()[0]
                if categories and rows != len(categories):
                    raise ModelFileError(
                        f"{path}: the category head has {rows} outputs but {path.parent / 'config.json'} names "
                        f"{len(categories)} categories; the two files come from different models; {_REFETCH}")


def check_model_dir(path: Path, flag: str, need_tokenizer: bool = True, multitask_only: bool = False) -> None:
    """Everything `from_pretrained` needs in a local model directory, each file readable and not truncated.

    Checks config.json (valid JSON with a `model_type`), a weights file (safetensors headers opened, every
    shard of an index present, a .bin not empty) and, with `need_tokenizer`, a tokenizer file (tokenizer.json
    and tokenizer_config.json must parse when present). Weights are not loaded.

    Args:
        path (`Path`):
            The model directory (not a run directory: see `resolve_model_source`).
        flag (`str`):
            The flag that named it, for the messages.
        need_tokenizer (`bool`, *optional*, defaults to `True`):
            Also require tokenizer files (False when `--tokenizer_name` points elsewhere).
        multitask_only (`bool`, *optional*, defaults to `False`):
            Refuse a plain encoder checkpoint (prediction and export need a trained `MultitaskModel`).

    Raises:
        `ModelFileError`: Naming the missing, empty or corrupt file and how to fix it.
    """
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelFileError(f"{flag} {path}: no config.json, this is not a model directory (a run directory "
                             "holds its model in model/)")
    config = _check_json(config_path, "model config")
    model_type = config.get("model_type")
    if not model_type:
        raise ModelFileError(f"{config_path}: no 'model_type' key, the config is incomplete; {_REFETCH}")
    if multitask_only and model_type != "multitask":
        raise ModelFileError(f"{flag} {path}: a plain {model_type!r} encoder, not a trained multitask model; give a "
                             "run directory of run_finetune.py or its model/ folder")
    weights = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
    if not weights:
        # [::2]: the message names the single-file forms; their .index.json variants are implied.
        raise ModelFileError(f"{flag} {path}: no weights file ({' or '.join(WEIGHT_FILES[::2])}); {_REFETCH}")
    for weight in weights:
        if weight.name == "model.safetensors":
            _check_safetensors(weight)
            if model_type == "multitask":
                _check_head_sizes(weight, config)
        elif weight.name.endswith(".index.json"):
            index = _check_json(weight, "weights index")
            # weight_map names a shard once per tensor: check each file once, in a fixed order.
            for shard in sorted(set((index.get("weight_map") or {}).values())):
                if not (path / shard).is_file():
                    raise ModelFileError(f"{path / shard}: missing weights shard (listed in {weight.name}); {_REFETCH}")
                if shard.endswith(".safetensors"):
                    _check_safetensors(path / shard)
        # A .bin cannot be checked without unpickling it; an empty file is the common truncation.
        elif weight.stat().st_size == 0:
            raise ModelFileError(f"{weight}: empty weights file; {_REFETCH}")
    if need_tokenizer:
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise ModelFileError(
                f"{flag} {path}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, …); save the tokenizer with "
                "the model, or pass --tokenizer_name"
            )
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if (path / name).is_file():
                _check_json(path / name, "tokenizer")


def resolve_model_source(name: str, flag: str, need_tokenizer: bool = True, multitask_only: bool = False) -> str:
    """What to pass to `from_pretrained` for `name`: a checked local directory, or a Hub id (checked on download).

    A run directory of run_finetune.py stands for its `model/` folder. A path that cannot be a Hub id and does
    not exist is "no such directory" (huggingface_hub would report a malformed repo id).

    Args:
        name (`str`):
            A local path (`~` expanded) or a Hub id.
        flag (`str`):
            The flag that named it, for the messages.
        need_tokenizer (`bool`, *optional*, defaults to `True`):
            Passed to `check_model_dir`.
        multitask_only (`bool`, *optional*, defaults to `False`):
            Passed to `check_model_dir`.

    Returns:
        `str`: The directory to load (for a run directory, its `model/`), or `name` unchanged as a Hub id.

    Raises:
        `ModelFileError`: A file where a directory is expected, a run directory without a saved model (its
        run_status.json is quoted), a local-looking path that does not exist, or a failed `check_model_dir`.
    """
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelFileError(f"{flag} {name}: is a file; give the model directory (config.json and weights)")
        if Path(saved_model_dir(path)) != path:  # a run directory: its model/ folder
            path = Path(saved_model_dir(path))
        elif not (path / "config.json").is_file() and (path / "run_status.json").is_file():
            try:
                status = json.loads((path / "run_status.json").read_text(encoding="utf-8"))
            # A half-written run_status.json must not hide the real message (no saved model).
            except (OSError, ValueError):
                status = {}
            said = f"status {status.get('status', 'unknown')}" + (f": {status['error']}" if status.get("error") else "")
            raise ModelFileError(f"{flag} {name}: a run directory without a saved model ({one_line(said)})")
        check_model_dir(path, flag, need_tokenizer, multitask_only)
        return str(path)
    if looks_local(name):
        parent = next((p for p in path.absolute().parents if p.exists()), None)
        # "/" or "." existing tells the user nothing.
        hint = f" ({parent} exists)" if parent is not None and str(parent) not in ("/", ".") else ""
        raise ModelFileError(f"{flag} {name}: no such directory{hint}")
    return name


@contextlib.contextmanager
def model_load_errors(name: str, flag: str) -> Iterator[None]:
    """Translate what loading a model or tokenizer raises into a `ModelFileError` naming it and the fix.

    Wrap the `from_pretrained` calls in it. A `UserError` passes unchanged, and so does any exception it does
    not recognise (a bug keeps its traceback); a translated one is chained to the original.

    Args:
        name (`str`):
            The model path or Hub id being loaded.
        flag (`str`):
            The flag that named it, for the message.

    Raises:
        `ModelFileError`: For known failures: corrupt or truncated files, unknown or unreachable Hub repos,
        weights of the wrong shape, unreadable tokenizer files.
    """
    try:
        yield
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - only the known library failures are translated below
        translated = _translate_load_error(name, flag, error)
        if translated is None:
            raise
        raise translated from error


def refused_pickle(name: str | None, flag: str, error: BaseException) -> ModelFileError | None:
    """The error for a pickled file (.bin, .pt, .pth) that torch's safe loader (`weights_only=True`) refused, or
    None for any other error. It says why, and never suggests loading the file unsafely: a pickle that holds more
    than tensors can run code when loaded.

    Args:
        name (`str`):
            The model or checkpoint being loaded.
        flag (`str`):
            The flag that named it.
        error (`BaseException`):
            What loading raised (torch raises `pickle.UnpicklingError`).
    """
    message = str(error)
    if type(error).__name__ != "UnpicklingError" and "Weights only load failed" not in message:
        return None
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    what = f" (it refers to {found.group(1)})" if found else ""
    return ModelFileError(
        f"{flag} {name}: refused a pickled file that holds Python objects beyond plain tensors{what}: unpickling it "
        "could run code from the file. Use a model saved as model.safetensors (save_pretrained writes one), or "
        "get the file again from a source you trust and convert it to safetensors there"
    )


def _translate_load_error(name: str, flag: str, error: Exception) -> UserError | None:
    """The `ModelFileError` for a known loading failure, or None for anything else (a bug keeps its traceback).

    Hub error classes are matched by name so this module need not import huggingface_hub/safetensors up front.
    """
    message = one_line(str(error))
    local = Path(name).expanduser().exists()
    kind = type(error).__name__
    refused = refused_pickle(name, flag, error)
    if refused is not None:
        return refused
    if isinstance(error, RuntimeError) and "ignore_mismatched_sizes" in message:
        return ModelFileError(f"{flag} {name}: the weights' shapes do not match config.json (e.g. a head for another "
                              f"number of categories): the two files come from different models; {_REFETCH}")
    if kind == "SafetensorError":
        return ModelFileError(f"{flag} {name}: truncated or corrupt model.safetensors ({message}); {_REFETCH}")
    # transformers hands a missing local path to huggingface_hub, which rejects it as a repo id.
    if kind == "HFValidationError":
        return ModelFileError(f"{flag} {name}: no such directory")
    if kind in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError", "LocalEntryNotFoundError",
                "EntryNotFoundError", "RemoteEntryNotFoundError", "OfflineModeIsEnabled") or (
        # transformers re-raises Hub failures as OSError with these phrases; for a local path they mislead.
        isinstance(error, OSError) and not local and re.search(
            r"couldn't connect|not a local folder|not a valid model identifier|Repository Not Found|offline",
            message, re.IGNORECASE)
    ):
        return ModelFileError(
            f"{flag} {name}: not a local directory, and no Hub model of that name could be loaded ({message[:300]}); "
            "check the path, or the model id, your token (HF_TOKEN) and connection"
        )
    if isinstance(error, json.JSONDecodeError) or isinstance(error, UnicodeDecodeError):
        return ModelFileError(f"{flag} {name}: a JSON file is truncated or corrupt ({message}); {_REFETCH}")
    if isinstance(error, OSError):
        return ModelFileError(f"{flag} {name}: {message}")
    if isinstance(error, ValueError) and re.search(r"Unrecognized model|model_type|not a multitask model", message):
        return ModelFileError(f"{flag} {name}: {message}")
    if isinstance(error, RuntimeError) and re.search(r"PytorchStreamReader|size mismatch|Error\(s\) in loading",
                                                     message):
        return ModelFileError(f"{flag} {name}: the weights do not load ({message[:300]}); {_REFETCH}")
    if type(error) is Exception:  # the tokenizers library raises bare Exceptions for a corrupt tokenizer.json
        return ModelFileError(f"{flag} {name}: the tokenizer does not load ({message[:300]}); {_REFETCH}")
    return None


def check_columns(text_columns: list[str] | None, pick_column: str | None, category_column: str | None) -> None:
    """The column mapping: names given, distinct roles, and no label column fed to the model as text.

    Args:
        text_columns (`list[str]`, *optional*):
            `--text_columns`; None when not given (prediction then uses the model's own).
        pick_column (`str`, *optional*):
            `--pick_column`; None when not given.
        category_column (`str`, *optional*):
            `--category_column`; None when not given.

    Raises:
        `UsageError`: A blank label column name, a label column also listed as text, or one column for both
        labels.
    """
    for flag, name in (("--pick_column", pick_column), ("--category_column", category_column)):
        require(name is None or bool(str(name).strip()), f"{flag}: give a column name")
        if name and text_columns and name in text_columns:
            raise UsageError(f"{flag} {name} is also one of --text_columns: the label would be part of the model input")
    if pick_column and category_column:
        require(pick_column != category_column,
                f"--pick_column and --category_column are both {pick_column!r}: the gate and category labels need "
                "their own columns")


# pip names of the integrations whose name is not their package's.
_REPORT_TO_PACKAGES = {"azure_ml": "azureml-core", "flyte": "flytekit", "codecarbon": "codecarbon"}


def check_report_to(report_to: Any) -> None:
    """An unknown --report_to name fails at start-up, not after the data is loaded and tokenized.

    Args:
        report_to (`str` or `list[str]`, *optional*):
            `TrainingArguments.report_to`: integration names, `all` or `none`.

    Raises:
        `UsageError`: For a name transformers has no integration for (the closest one is suggested).
    """
    try:
        # A private module: if a release moves it, skip this early check (the Trainer still rejects the name).
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK
    except ImportError:
        return
    from transformers.integrations import integration_utils

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        if name not in ("all", "none") and name not in INTEGRATION_TO_CALLBACK:
            raise UsageError(f"--report_to {name}: unknown integration{closest(name, INTEGRATION_TO_CALLBACK)}; "
                             f"choose from none, all, {', '.join(sorted(INTEGRATION_TO_CALLBACK))}")
        # Its callback would raise a RuntimeError only when the Trainer is built, after the data is read.
        checks = (f"is_{name}_available", f"is_{name.replace('_', '')}_available", f"is_{name.split('_')[0]}_available")
        available = next((getattr(integration_utils, check) for check in checks if hasattr(integration_utils, check)),
                         None)
        if available is not None and not available():
            package = _REPORT_TO_PACKAGES.get(name, name)
            raise UsageError(f"--report_to {name}: the {package} package is not installed; pip install {package}, or "
                             "choose another --report_to (none: no tracking)")


def check_optimizer(training_args: Any, model: Any = None) -> None:
    """A --optim whose package is missing (bitsandbytes, galore, …) fails before training, not at its first step.

    Without the model only the missing packages are checked (some optimizers need the model for the rest).

    Args:
        training_args (`TrainingArguments`):
            Arguments holding `optim` (and `optim_args`, `optim_target_modules`).
        model (`nn.Module`, *optional*):
            The model; with it, every `ValueError` of the Trainer's optimizer lookup is reported too.

    Raises:
        `UsageError`: Naming `--optim` and the library's reason.
    """
    from transformers import Trainer

    try:
        Trainer.get_optimizer_cls_and_kwargs(training_args, model)
    except (ImportError, ValueError) as error:
        # Without the model a ValueError may only mean the optimizer needs one: decide once it is loaded.
        if model is None and not isinstance(error, ImportError):
            return
        name = getattr(training_args.optim, "value", training_args.optim)
        raise UsageError(f"--optim {name}: {one_line(str(error))}") from error


def check_sequence_length(encoder_config: Any, max_seq_length: int, flag: str = "--max_seq_length") -> None:
    """An encoder with absolute position embeddings cannot read past them: refuse before the first batch fails.

    Args:
        encoder_config (`PretrainedConfig`):
            The encoder's config; without `max_position_embeddings`, or with `position_biased_input=False`
            (DeBERTa-v3: relative positions only), any length passes.
        max_seq_length (`int`):
            The requested input length in tokens.
        flag (`str`, *optional*, defaults to `"--max_seq_length"`):
            The flag named in the message.

    Raises:
        `UsageError`: When the length exceeds the position embeddings (2 fewer for RoBERTa-family encoders,
        whose position ids start after the padding index).
    """
    limit = getattr(encoder_config, "max_position_embeddings", None)
    if not limit or getattr(encoder_config, "position_biased_input", True) is False:
        return  # relative positions only (DeBERTa-v3): any length works, only slower
    if getattr(encoder_config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer"):
        limit -= 2  # position ids start after the padding index
    if max_seq_length > limit:
        raise UsageError(f"{flag} {max_seq_length}: the encoder ({encoder_config.model_type}) has position embeddings "
                         f"for {limit} tokens; use at most {limit}")


def check_training_steps(train_rows: int, training_args: Any) -> int:
    """The optimizer steps the Trainer will take (as `Trainer.set_initial_training_values` counts them); refuses 0.

    Args:
        train_rows (`int`):
            Training examples the dataloader will iterate (`len(train_dataset)`).
        training_args (`TrainingArguments`):
            Batch size, world size, accumulation, epochs, `max_steps` and `dataloader_drop_last`.

    Returns:
        `int`: `max_steps` when > 0, else ceil(epochs × optimizer steps per epoch).

    Raises:
        `UsageError`: When no full batch exists under `--dataloader_drop_last`, or the epochs give 0 steps.
    """
    # Every process takes its own batch per step, so one step consumes batch × world_size rows.
    batch = training_args.per_device_train_batch_size * max(training_args.world_size, 1)
    batches = train_rows // batch if training_args.dataloader_drop_last else math.ceil(train_rows / batch)
    # Checked before --max_steps: an epoch without one full batch trains nothing, however many steps are asked for.
    if batches == 0:
        raise UsageError(
            f"{train_rows} training row(s) and --dataloader_drop_last with a batch of {batch}: not one full batch, "
            "nothing would train; lower --per_device_train_batch_size"
        )
    if training_args.max_steps > 0:
        return training_args.max_steps
    # A last partial accumulation window still makes a step, and every epoch makes at least one.
    per_epoch = max(math.ceil(batches / training_args.gradient_accumulation_steps), 1)
    steps = math.ceil(training_args.num_train_epochs * per_epoch)
    if steps <= 0:
        raise UsageError(f"--num_train_epochs {training_args.num_train_epochs}: 0 optimizer steps, nothing would train")
    return steps


# ----------------------------------------------------------------------------------------- run_predict.py
def check_predict_arguments(args: Any) -> None:
    """run_predict.py's arguments that can be checked before the model is loaded.

    A `--threshold` that is not a number is taken as a stored threshold name and checked once the config is
    read.

    Args:
        args (`PredictArguments`):
            run_predict.py's parsed arguments.

    Raises:
        `UsageError`: A value out of range, a bad column mapping, an unavailable `--device`, or two input
        files with the same stem (their outputs would collide). `DataError`: An input file that is missing, a
        directory or unreadable.
    """
    require(bool(args.input_files), "--input_files: give at least one data file (CSV, TSV, JSONL, JSON or Parquet)")
    for flag in ("batch_size", "top_k", "max_seq_length"):
        value = getattr(args, flag)
        if flag == "max_seq_length" and value is None:
            continue  # the length stored in the model
        require(isinstance(value, int) and value >= 1, f"--{flag} {value}: must be a whole number >= 1")
    check_encoding(args.encoding)
    check_format(getattr(args, "format", None))
    if args.text_columns is not None:
        require(bool(args.text_columns), "--text_columns: give at least one column")
    check_columns(args.text_columns, getattr(args, "pick_column", None), getattr(args, "category_column", None))
    try:
        value = float(args.threshold)
    except ValueError:
        value = None  # a stored threshold name, checked once the model config is read
    if value is not None:
        require(0.0 <= value <= 1.0, f"--threshold {args.threshold}: a number must be in [0, 1]")
    check_device(args.device)
    for path in args.input_files:
        check_readable_file(path, "--input_files")
    stems = [Path(path).stem for path in args.input_files]
    duplicate = next((stem for stem in stems if stems.count(stem) > 1), None)
    if duplicate is not None:
        raise UsageError(f"--input_files: two files are named {duplicate!r}; their outputs would overwrite each other")


def check_device(name: str) -> None:
    """`--device cuda…` / `mps` is refused when that accelerator is absent; other names pass (torch checks them).

    Args:
        name (`str`):
            `--device`: `auto`, `cpu`, `cuda`, `cuda:N`, `mps`, ….

    Raises:
        `UsageError`: For a CUDA device without a CUDA GPU, or `mps` without Apple MPS.
    """
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available here; use --device auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: Apple MPS is not available here; use --device auto or cpu")
