"""Export a trained multitask model to ONNX (optionally int8), and check it against the PyTorch model.

    python -m multitask.export output/output_20260101_120000 --onnx                    # → <run dir>/onnx/
    python -m multitask.export output/output_20260101_120000 --onnx --quantize int8    # → <run dir>/onnx_int8/
    python -m multitask.export user/model --onnx --output_dir exported/ --check_file val.csv
    python -m multitask.export <run dir> --quantize int8 --per_channel --min_top1_agreement 0.995 --max_gate_changed 0.005
    python -m multitask.export <run dir> --quantize int8 --per_channel --smooth_alpha 0.85 --min_top1_agreement 0.995
    python run_predict.py --model output/output_20260101_120000/onnx_int8 --input_files new.csv

The graph comes from `torch.onnx.export(..., dynamo=True)` with dynamic batch and sequence axes (tested with
torch 2.13 on DeBERTa-v2 and BERT; the TorchScript exporter, `dynamo=False`, gave graphs that disagreed with
PyTorch at shapes other than the traced one for both, max |Δ feature| ≈ 0.3). int8 is ONNX Runtime's
`quantize_dynamic` (int8 weights, activations quantized per batch at run time; `multitask.export.quantization`). The
export directory's layout is described in `multitask.serve.onnx_backend`.

Mixed precision: `--keep_float REGEX` keeps the matching linear layers (module names such as
`encoder.encoder.layer.0.output.dense`) in float32; `--min_top1_agreement` / `--max_gate_changed` choose them:
the check texts are split in two seeded halves, the layers whose quantization moves the outputs most are kept
float until the first half meets the targets, and the agreement is reported on the second half (rows the choice
did not see) as well as on all rows. `--smooth_alpha A` first applies SmoothQuant smoothing (`multitask.export.smoothing`)
with scales measured on the same first half, which on MiniLM-L6 removes most of int8's disagreement by itself.

The check scores the same texts with both models through `multitask.serve.predict.predict_scores` (same batching,
same gate scores) and reports max |Δ pick_prob|, top-1 category agreement and the gate decisions changed at each
threshold stored in the model; it is printed and written to `agreement.json`. Texts: `--check_file`, else the
validation file named in a run directory's `run_config.json` when it still exists.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from torch import nn
from transformers import HfArgumentParser

from multitask.checks import model_load_errors, resolve_model_source
from multitask.data.text_encoding import text_separator
from multitask.errors import UsageError, cli, parse_arguments
from multitask.export.agreement import (
    agreement,
    check_agreement,
    format_agreement,
    meets_targets,
    output_change,
    split_halves,
)
from multitask.export.quantization import choose_float_layers, linear_layers, matching_layers, quantize_int8
from multitask.export.smoothing import smoothed_copy
from multitask.io.hub import resolve_token
from multitask.io.rundir import saved_model_dir, setup_logging, write_json
from multitask.model.modeling import MultitaskModel
from multitask.serve.onnx_backend import (
    AGREEMENT_FILE,
    EXPORT_INFO_FILE,
    GATE_STATISTICS_BUFFERS,
    GATE_STATISTICS_FILE,
    ONNX_FILE,
    OnnxMultitaskModel,
)
from multitask.serve.predict import Scores, load_model, predict_scores

logger = logging.getLogger("multitask.export.onnx_export")  # also when run as __main__

# No token_type_ids: every input is one joined text, whose token types are all 0 (the encoder's default).
INPUT_NAMES = ("input_ids", "attention_mask")
QUANTIZATIONS = ("int8",)
# One ONNX protobuf file holds at most 2 GiB; above this the weights go to an external-data file next to it.
_EXTERNAL_DATA_BYTES = 1_800_000_000  # below 2 GiB: the graph's nodes need room too
# Two lengths: the traced example batch holds padding, as real batches do.
_EXAMPLE_TEXTS = ["an example input for tracing the graph", "a shorter one"]


@dataclass
class ExportArguments:
    """`python -m multitask.export`'s flags (parsed by `HfArgumentParser`, so a JSON/YAML file works too)."""

    model: str = field(
        metadata={
            "help": "A run directory, its model/ directory, or a Hub model id (may also be "
            "given as the first, unnamed argument)."
        }
    )
    onnx: bool = field(default=True, metadata={"help": "Export to ONNX (the only format so far)."})
    quantize: str | None = field(
        default=None,
        metadata={
            "help": "int8: ONNX Runtime dynamic quantization (int8 weights; activations "
            "quantized per batch). Empty: float32.",
            "choices": list(QUANTIZATIONS),
        },
    )
    per_channel: bool = field(
        default=False,
        metadata={"help": "With --quantize int8: one scale per output channel instead of per tensor."},
    )
    keep_float: list[str] | None = field(
        default=None,
        metadata={
            "help": "With --quantize int8: regular expressions over linear-layer module names (e.g. "
            "'layer\\.[01]\\.(intermediate|output)\\.dense'); matching layers stay float32."
        },
    )
    smooth_alpha: float | None = field(
        default=None,
        metadata={
            "help": "With --quantize int8: SmoothQuant migration strength in [0, 1] (e.g. 0.85): the encoder's "
            "linear inputs are divided per channel by scales measured on half of the check rows, the weights "
            "multiplied by them (same function in fp32, fewer activation outliers for int8). Empty: off."
        },
    )
    min_top1_agreement: float | None = field(
        default=None,
        metadata={
            "help": "With --quantize int8: keep the most output-moving linear layers in float32 until top-1 "
            "category agreement with PyTorch reaches this share (e.g. 0.995) on half of the check rows; "
            "reported on the other half."
        },
    )
    max_gate_changed: float | None = field(
        default=None,
        metadata={
            "help": "With --quantize int8: as --min_top1_agreement, for the share of gate decisions changed at "
            "every stored threshold (e.g. 0.005)."
        },
    )
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the export goes. Empty: onnx/ (or onnx_int8/) next to the model/ "
            "directory, i.e. inside the run directory."
        },
    )
    check_file: list[str] | None = field(
        default=None,
        metadata={
            "help": "CSV files (text columns as in training) to compare ONNX with PyTorch on. "
            "Empty: the run's validation file when run_config.json names one that exists."
        },
    )
    batch_size: int = field(default=64, metadata={"help": "Rows per forward pass in the agreement check."})
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Agreement check: inputs are cut to this many tokens as in training (the model's stored "
                  "truncation). Empty: the length the model was trained with."},
    )
    encoding: str | None = field(
        default=None,
        metadata={"help": "CSV encoding of --check_file. Empty: UTF-8 (with or without BOM), else CP932."},
    )


class _ExportedForward(nn.Module):
    """The model as the exported graph sees it: token ids and mask in, a tuple of logits and features out."""

    def __init__(self, model: MultitaskModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The outputs in `output_names` order (a tuple: the exporter cannot return a ModelOutput)."""
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, output_features=True)
        return tuple(getattr(outputs, name) for name in output_names(self.model.config))


def output_names(config) -> list[str]:
    """The graph's outputs: the heads the model has, then the pooled feature vector.

    Args:
        config (`MultitaskConfig`):
            The model's config (`has_gate`, `has_category`).

    Returns:
        `list[str]`: `gate_logits` and/or `category_logits`, then `features`: the `MultitaskOutput` field
        names, in the order the exported graph returns them.
    """
    names = ["gate_logits"] if config.has_gate else []
    return [*names, *(["category_logits"] if config.has_category else []), "features"]


def export_onnx(model: MultitaskModel, tokenizer, path: str | Path) -> Path:
    """`torch.onnx.export` (dynamo) of the model in eval mode, with dynamic batch and sequence axes.

    Side effect: `model` is cast to float32 and put in eval mode in place. Weights above ~1.8 GB go to an
    external `<path>.data` file beside the graph.

    Args:
        model (`MultitaskModel`):
            The trained model, on any device the example inputs can follow (`model.device`).
        tokenizer (`PreTrainedTokenizerBase`):
            Its tokenizer; tokenizes two example texts to trace the graph (batch and sequence stay dynamic).
        path (`str` or `Path`):
            The `.onnx` file to write; its folder must exist.

    Returns:
        `Path`: `path`.
    """
    path = Path(path)
    # In place: a model loaded in bf16 exports in fp32, the precision the thresholds were tuned in.
    model = model.float().eval()
    example = tokenizer(_EXAMPLE_TEXTS, padding=True, return_tensors="pt")
    example = tuple(example[name].to(model.device) for name in INPUT_NAMES)
    axes = {0: "batch", 1: "sequence"}
    # Parameters only: the gate-statistics buffers are not used by forward(), so they are not in the graph.
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > _EXTERNAL_DATA_BYTES
    with warnings.catch_warnings(), _eager_attention(model):
        # Both inputs share the "sequence" axis; the exporter says so for the second one. Expected.
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*")
        # A deprecation inside torch.export itself, not in our code.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        torch.onnx.export(
            _ExportedForward(model).eval(),
            example,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=output_names(model.config),
            # Keyed by forward()'s parameter names: INPUT_NAMES must match _ExportedForward.forward.
            dynamic_shapes={name: axes for name in INPUT_NAMES},
            dynamo=True,
            external_data=external,
            verbose=False,
        )
    return path


@contextlib.contextmanager
def _eager_attention(model: MultitaskModel) -> Iterator[None]:
    """Trace the encoder with its eager attention, then restore the implementation it had.

    SDPA attention exports as a decomposition with NaN guards in every layer (IsNaN/Where around the softmax);
    eager attention gives the plain MatMul-Softmax-MatMul graph, with the same outputs, which ONNX Runtime ran
    ≈ 10 % faster in fp32 on MiniLM-L6 (3,100 CLINC150 rows). Encoders that only have eager attention (DeBERTa-v2)
    are left as they are.
    """
    encoder = model.encoder
    before = getattr(encoder.config, "_attn_implementation", None)
    switch = before not in (None, "eager") and hasattr(encoder, "set_attn_implementation")
    if switch:
        encoder.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            encoder.set_attn_implementation(before)


@contextlib.contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    """The exporter and its graph optimizer log every rewrite, and ORT's quantizer every tensor through the root
    logger (with a hint to run its shape pre-processing, which fails on BERT's position ids and changes nothing
    quantize_dynamic needs here); keep their errors, drop the rest."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.ERROR)
    root = logging.getLogger()
    root.addFilter(_drop_quantizer_notes)
    try:
        yield
    finally:
        root.removeFilter(_drop_quantizer_notes)
        for each, level in zip(loggers, levels):
            each.setLevel(level)


def _drop_quantizer_notes(record: logging.LogRecord) -> bool:
    """Logging filter: keep errors and anything not logged on the root logger itself (where ORT's quantizer logs)."""
    return record.levelno >= logging.ERROR or record.name != "root"


@dataclass
class Int8Calibration:
    """What an int8 export fits on calibration rows (one half of the check rows): SmoothQuant smoothing
    (`smooth_alpha`) and the float-layer search (`min_top1_agreement`, `max_gate_changed`).

    A target left None is not checked (see `agreement.meets_targets`).
    """

    texts: list[str]
    smooth_alpha: float | None = None
    min_top1_agreement: float | None = None
    max_gate_changed: float | None = None
    batch_size: int = 64
    max_length: int | None = None
    # The PyTorch model's scores of `texts`, when the caller has them already (`main` scores every check row once).
    reference: Scores | None = None

    @property
    def searches(self) -> bool:
        """Whether float layers are to be chosen (a target is set)."""
        return self.min_top1_agreement is not None or self.max_gate_changed is not None

    def passes(self, result: dict) -> bool:
        """Whether an `agreement` result meets both targets (`agreement.meets_targets`)."""
        return meets_targets(result, self.min_top1_agreement, self.max_gate_changed)

    def scores(self, model, tokenizer) -> Scores:
        """`predict_scores` of `model` (PyTorch or ONNX) on the calibration rows."""
        return predict_scores(model, tokenizer, self.texts, self.batch_size, self.max_length)


def search_float_layers(
    model: MultitaskModel,
    tokenizer,
    fp32_graph: Path,
    candidate_dir: Path,
    layers: dict[str, str],
    kept: list[str],
    per_channel: bool,
    calibration: Int8Calibration,
) -> tuple[list[str], dict]:
    """`quantization.choose_float_layers` with this model's outputs: each candidate graph is quantized into
    `candidate_dir` (which must already hold the config and gate statistics) and scored on the calibration rows
    against the PyTorch model. Costs one quantization and one pass over the rows per linear layer, plus one per
    step of the scan (k + 1 for k layers kept float).

    Returns:
        `tuple`: the node names to keep float, and a report (targets, per-layer sensitivity by module name,
        quantizations tried).
    """
    reference = calibration.reference if calibration.reference is not None else calibration.scores(model, tokenizer)
    graph = candidate_dir / ONNX_FILE

    def scores(**which) -> Scores:
        quantize_int8(fp32_graph, graph, per_channel, **which)
        return calibration.scores(OnnxMultitaskModel(candidate_dir), tokenizer)

    candidates = [node for node in layers if node not in kept]
    chosen, sensitivity, calls = choose_float_layers(
        candidates,
        lambda node: output_change(reference, scores(only=[node])),
        lambda keep: calibration.passes(agreement(reference, scores(keep_float=keep), model.config.gate_thresholds)),
        kept,
    )
    report = {
        "min_top1_agreement": calibration.min_top1_agreement,
        "max_gate_changed": calibration.max_gate_changed,
        "sensitivity": {layers[node]: value for node, value in sorted(sensitivity.items(), key=lambda i: -i[1])},
        "quantizations_tried": len(candidates) + calls,
    }
    return chosen, report


def export_model(
    model: MultitaskModel,
    tokenizer,
    output_dir: str | Path,
    quantize: str | None = None,
    per_channel: bool = False,
    source: str | None = None,
    keep_float: list[str] | tuple[str, ...] = (),
    calibration: Int8Calibration | None = None,
) -> Path:
    """Write a complete export directory (`multitask.serve.onnx_backend`): graph, config, tokenizer, gate statistics.

    Files of an earlier export in `output_dir` (graph, external data, statistics) are replaced, never mixed
    with the new ones; `model` is left in float32 eval mode (a smoothed export smooths a copy).

    Args:
        model (`MultitaskModel`):
            The trained model; its three gate-statistics buffers, when present, go to the statistics file.
        tokenizer (`PreTrainedTokenizerBase`):
            Saved beside the graph, so the directory loads on its own.
        output_dir (`str` or `Path`):
            The export directory; created if missing.
        quantize (`str`, *optional*):
            `"int8"` (see `QUANTIZATIONS`), or None for float32.
        per_channel (`bool`, *optional*, defaults to `False`):
            With `quantize`, one scale per output channel.
        source (`str`, *optional*):
            Where the model came from; only recorded in export_info.json.
        keep_float (`list[str]`, *optional*):
            With `quantize`: regular expressions over linear-layer module names kept in float32
            (`quantization.matching_layers`).
        calibration (`Int8Calibration`, *optional*):
            With `quantize`: smooth the encoder's linear layers (`multitask.export.smoothing`) and/or choose further
            layers to keep float until the targets hold (`search_float_layers`), both on its rows.

    Returns:
        `Path`: `output_dir`.

    Raises:
        `ValueError`: For an unknown `quantize`, or `keep_float`/`calibration` without it, before anything is
        written; for a `keep_float` pattern that matches no layer.
    """
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"quantize: {quantize!r}; choose one of {QUANTIZATIONS} or None")
    if quantize is None and (keep_float or calibration):
        raise ValueError("keep_float and calibration apply to a quantized export only")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Removed first: a stale external-data file beside a new graph would be read as its weights, and an earlier
    # export's agreement must not vouch for this one.
    for stale in (ONNX_FILE, f"{ONNX_FILE}.data", AGREEMENT_FILE):
        (output_dir / stale).unlink(missing_ok=True)
    model.config.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    _save_gate_statistics(model, output_dir)
    model = model.float().eval()
    traced, smoothed_layers = model, 0
    if calibration is not None and calibration.smooth_alpha is not None:
        traced, smoothed_layers = smoothed_copy(
            model, calibration.smooth_alpha, lambda each: calibration.scores(each, tokenizer)
        )
    layers, kept, search_report = {}, [], None
    with _quiet_exporter_logs():
        if quantize is None:
            export_onnx(model, tokenizer, output_dir / ONNX_FILE)
        else:
            # The fp32 graph is only the quantizer's input: written beside the target (same disk), then deleted.
            with tempfile.TemporaryDirectory(dir=output_dir) as scratch:
                fp32 = export_onnx(traced, tokenizer, Path(scratch) / ONNX_FILE)
                layers = linear_layers(fp32)
                kept = matching_layers(layers, keep_float)
                if calibration is not None and calibration.searches:
                    # Candidate graphs are scored from the scratch folder: the export directory only ever gets
                    # the chosen graph, also when the search stops half-way.
                    candidates = Path(scratch) / "candidate"
                    model.config.save_pretrained(candidates)
                    _save_gate_statistics(model, candidates)
                    kept, search_report = search_float_layers(
                        model, tokenizer, fp32, candidates, layers, kept, per_channel, calibration
                    )
                quantize_int8(fp32, output_dir / ONNX_FILE, per_channel, keep_float=kept)
    write_json(
        output_dir / EXPORT_INFO_FILE,
        {
            "source": source,
            "format": "onnx",
            "precision": quantize or "float32",
            "quantization": {
                "method": "onnxruntime.quantization.quantize_dynamic",
                "weight_type": "QInt8",
                "per_channel": per_channel,
                "smoothing": None
                if not smoothed_layers
                else {"method": "SmoothQuant", "alpha": calibration.smooth_alpha, "layers": smoothed_layers},
                "calibration_rows": None if calibration is None else len(calibration.texts),
                "kept_float": [layers[node] for node in kept],
                "kept_float_patterns": list(keep_float),
                "float_layer_search": search_report,
            }
            if quantize
            else None,
            "inputs": list(INPUT_NAMES),
            "outputs": output_names(model.config),
            "dynamic_axes": {"batch": 0, "sequence": 1},
            "gate_score": model.config.gate_score,
            "versions": {
                name: _version(name)
                for name in ("torch", "transformers", "onnx", "onnxscript", "onnxruntime")
            },
        },
    )
    return output_dir


def _save_gate_statistics(model: MultitaskModel, output_dir: Path) -> None:
    """The three gate-statistics buffers to GATE_STATISTICS_FILE; an earlier export's file is removed when the
    model has none, so a model without statistics never inherits one."""
    buffers = {
        # safetensors' save_file raises on a non-contiguous tensor (e.g. a transposed view).
        name: getattr(model, name).detach().float().cpu().contiguous()
        for name in GATE_STATISTICS_BUFFERS
        if name in model._buffers
    }
    (output_dir / GATE_STATISTICS_FILE).unlink(missing_ok=True)
    if buffers:
        from safetensors.torch import save_file

        save_file(buffers, output_dir / GATE_STATISTICS_FILE)


def _version(name: str) -> str:
    """Installed version of distribution `name`, or "not installed"."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def default_output_dir(model_dir: str, quantize: str | None) -> Path:
    """`onnx/` or `onnx_<quantize>/` beside the model directory (inside the run directory).

    Args:
        model_dir (`str`):
            The local model directory (`saved_model_dir` of `--model`).
        quantize (`str`, *optional*):
            The quantization, or None for float32.

    Returns:
        `Path`: The export directory; not created here.

    Raises:
        `UsageError`: When `model_dir` is not a local directory (a Hub id needs `--output_dir`).
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise UsageError(f"--model {model_dir}: not a local directory; pass --output_dir for the export")
    return path.parent / ("onnx" if quantize is None else f"onnx_{quantize}")


def default_check_files(model: str) -> list[str]:
    """The validation file a run directory was trained with, when its run_config.json names one that exists.

    Args:
        model (`str`):
            `--model`: a run directory or its `model/` folder; anything else gives `[]`.

    Returns:
        `list[str]`: The validation file, or `[]` (also when the run read its data from a Hub dataset repo,
        whose file paths are not local).
    """
    run_dir = Path(model)
    if (run_dir / "config.json").is_file() and not (run_dir / "run_config.json").is_file():
        run_dir = run_dir.parent  # given <run dir>/model
    run_config = run_dir / "run_config.json"
    if not run_config.is_file():
        return []
    data_arguments = (
        json.loads(run_config.read_text(encoding="utf-8")).get("arguments", {}).get("DataArguments", {})
    )
    validation_file = data_arguments.get("validation_file")
    if validation_file and not data_arguments.get("dataset_repo") and Path(validation_file).is_file():
        return [validation_file]
    return []


def check_texts(files: list[str], config, tokenizer, encoding: str | None = None) -> list[str]:
    """The model-input texts of `files`, built as at training time.

    The model's stored column mapping and the tokenizer's separator are used; labels are read leniently
    (unknown categories allowed) since only the texts are used.

    Args:
        files (`list[str]`):
            Data files in any supported format.
        config (`MultitaskConfig`):
            The model's config (`text_columns`, label maps, label column names).
        tokenizer (`PreTrainedTokenizerBase`):
            Gives the separator between text columns.
        encoding (`str`, *optional*):
            The files' encoding; None tries UTF-8, then CP932.

    Returns:
        `list[str]`: One text per row, all files concatenated in order.

    Raises:
        `DataError`: A file that cannot be read, lacks a text column, has an empty text or a malformed gate
        label.
    """
    from multitask.data.loading import load_labeled_file

    separator = text_separator(tokenizer)
    texts = []
    for path in files:
        labeled = load_labeled_file(
            path,
            config.text_columns,
            separator,
            config.category_label2id,
            config.has_gate,
            encoding,
            allow_unknown_labels=True,
            pick_column=getattr(config, "pick_column", "pick"),
            category_column=getattr(config, "category_column", "category"),
        )
        texts.extend(labeled.dataset["text"])
    return texts


def calibration_flags(args: ExportArguments) -> list[str]:
    """The int8 calibration flags given (`--smooth_alpha`, `--min_top1_agreement`, `--max_gate_changed`): any of
    them makes the export fit on half of the check rows."""
    given = (("--smooth_alpha", args.smooth_alpha), ("--min_top1_agreement", args.min_top1_agreement),
             ("--max_gate_changed", args.max_gate_changed))
    return [flag for flag, value in given if value is not None]


def check_int8_options(args: ExportArguments, model: MultitaskModel, check_rows: int) -> None:
    """Refuse int8-only flags without `--quantize int8`, shares and strengths out of range, calibration (smoothing or
    a float-layer search) without check rows, and `--keep_float` patterns that are no regular expression or match
    no linear layer of `model`.

    Raises:
        `UsageError`: Naming the flag.
    """
    calibrated = calibration_flags(args)
    if args.quantize is None and (calibrated or args.keep_float):
        raise UsageError(f"{(calibrated or ['--keep_float'])[0]}: applies to --quantize int8 only")
    if args.smooth_alpha is not None and not 0 <= args.smooth_alpha <= 1:
        raise UsageError(f"--smooth_alpha {args.smooth_alpha}: a migration strength in [0, 1], e.g. 0.85")
    if args.min_top1_agreement is not None and not 0 < args.min_top1_agreement <= 1:
        raise UsageError(f"--min_top1_agreement {args.min_top1_agreement}: a share in (0, 1], e.g. 0.995")
    if args.max_gate_changed is not None and not 0 <= args.max_gate_changed < 1:
        raise UsageError(f"--max_gate_changed {args.max_gate_changed}: a share in [0, 1), e.g. 0.005")
    if calibrated and check_rows < 20:
        raise UsageError(
            f"{calibrated[0]}: needs check rows to calibrate on (--check_file, at least 20 rows; got {check_rows})"
        )
    if args.keep_float:
        names = {name: name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
        try:
            matching_layers(names, args.keep_float)
        except ValueError as error:
            raise UsageError(str(error)) from None


def main(argv: list[str] | None = None) -> dict:
    """Export (and check) as the command line says.

    Args:
        argv (`list[str]`, *optional*):
            Command-line arguments without the program name; None reads `sys.argv`. The model may come first,
            unnamed.

    Returns:
        `dict`: `{"output_dir", "agreement"}`; agreement is None when there were no texts to check on (any
        earlier agreement.json in the directory is removed then).

    Raises:
        `UsageError`: Bad arguments (also `--no_onnx`, as ONNX is the only format).
        `ModelFileError`: A model that cannot be found or loaded.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--model", *argv]  # the model may come first, unnamed
    (args,) = parse_arguments(HfArgumentParser(ExportArguments), argv)
    setup_logging()
    if not args.onnx:
        raise UsageError("nothing to export: --onnx is the only format so far")
    source = resolve_model_source(args.model, "--model", multitask_only=True)
    with model_load_errors(args.model, "--model"):
        model, tokenizer = load_model(source, "cpu", token=resolve_token())  # token only for private repos
    model_dir = saved_model_dir(args.model)
    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(model_dir, args.quantize)
    check_files = args.check_file or default_check_files(args.model)
    # Read before exporting, so a bad file fails before anything is written.
    texts = check_texts(check_files, model.config, tokenizer, args.encoding)
    check_int8_options(args, model, len(texts))
    # The reference every comparison below is made against, scored once (fp32, as export_model leaves the model).
    model = model.float().eval()
    reference = predict_scores(model, tokenizer, texts, args.batch_size, args.max_seq_length) if texts else None
    calibration, held_out = None, None
    if calibration_flags(args):
        fit, held_out = split_halves(len(texts))
        calibration = Int8Calibration(
            [texts[i] for i in fit], args.smooth_alpha, args.min_top1_agreement, args.max_gate_changed,
            args.batch_size, args.max_seq_length, reference.rows(fit),
        )

    export_model(
        model, tokenizer, output_dir, args.quantize, args.per_channel, args.model, args.keep_float or (), calibration
    )
    logger.info("exported %s → %s (%s)", args.model, output_dir / ONNX_FILE, args.quantize or "float32")
    exported = OnnxMultitaskModel(output_dir)
    if not texts:
        logger.warning("agreement with PyTorch not checked: pass --check_file (e.g. the validation CSV)")
        return {"output_dir": str(output_dir), "agreement": None}
    result = {
        "check_files": [str(path) for path in check_files],
        **check_agreement(model, tokenizer, exported, texts, args.batch_size, args.max_seq_length, held_out,
                          reference),
    }
    quantization = json.loads((output_dir / EXPORT_INFO_FILE).read_text(encoding="utf-8"))["quantization"]
    if quantization and quantization["kept_float"]:
        result["kept_float"] = quantization["kept_float"]
    write_json(output_dir / AGREEMENT_FILE, result)
    print(format_agreement(result), flush=True)
    return {"output_dir": str(output_dir), "agreement": result}


if __name__ == "__main__":
    sys.exit(cli(main))
