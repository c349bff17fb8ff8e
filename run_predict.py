#!/usr/bin/env python
"""Run a trained multitask model on data files (CSV, TSV, JSON Lines, JSON or Parquet).

    python run_predict.py --model output/output_20260101_120000 --input_files x.csv y.csv --output_dir preds/
    python run_predict.py --model user/my-model --input_files x.csv --threshold f1

Writes <output_dir>/predictions_<input stem>.csv (every input column kept, one named like an output column as
<name>_input, plus pick_prob, pick_pred, category_pred, category_prob, category_top<k> (a JSON list of [label,
probability] pairs), decision; cells a spreadsheet would run as formulas start with ' unless --csv_formula_guard
false), predictions_<stem>.jsonl (raw) and, where the file carries gold labels (in the columns
the model was trained with, or --pick_column / --category_column),
metrics_<input stem>.json. Every argument, the model and every input file are checked before anything is
written; the files are written under temporary names and moved into place at the end, so a failed or killed
run leaves no partial output. A mistake ends in one `error: …` line (exit status 2; `--debug` adds the traceback).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from multitask.checks import check_predict_arguments
from multitask.data.loading import load_labeled_file
from multitask.data.text_encoding import text_separator
from multitask.errors import cli, parse_arguments
from multitask.io.rundir import check_output_dir, setup_logging, staged_files, write_json
from multitask.io.tables import FORMATS, guard_formulas, read_limit_fields, set_read_limits
from multitask.scoring.metrics import compute_all
from multitask.serve.onnx_backend import BACKENDS
from multitask.serve.predict import prediction_records
from multitask.serve.predictor import Predictor, prepare_prediction

logger = logging.getLogger("run_predict")


@dataclass
class PredictArguments:
    """run_predict.py's flags; the defaults for columns, length and truncation come from the model, not from here."""

    model: str = field(metadata={"help": "A run directory, its model/ directory, or a Hub model id."})
    input_files: list[str] = field(
        metadata={"help": "Files to predict (text columns as in training): CSV, TSV, JSON Lines, JSON or Parquet, by "
                  "extension or --format."}
    )
    output_dir: str = field(default="predictions", metadata={"help": "Where predictions_<stem>.csv are written."})
    threshold: str = field(
        default="default",
        metadata={"help": "Gate threshold on the model's gate score (config gate_score; Pick iff score >= threshold): a "
                  "name stored in the model (default, f1, acc, leak, cost) or a number in [0, 1]. 'default' is 0.5 "
                  "on a probability score (pick, joint, msp) and the leak threshold on a squashed feature score, "
                  "where 0.5 is only the median training item."},
    )
    review: bool = field(
        default=False,
        metadata={"help": "Items whose gate score falls in the review band the model stores for --threshold (trained "
                  "with --review_share) get the decision 'review' instead of a Pick/Decline decision."},
    )
    top_k: int = field(default=3, metadata={"help": "How many categories the category_top<k> column lists."})
    batch_size: int = field(default=64, metadata={"help": "Rows per forward pass."})
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Inputs are cut to this many tokens, the way the model was trained to (its stored "
                  "--truncation: head, tail or head_tail). Empty: the length the model was trained with (256 for "
                  "models saved before it was stored)."},
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps.", "choices": ["auto", "cpu", "cuda", "mps"]})
    dtype: str = field(
        default="auto",
        metadata={"help": "Forward-pass precision (autocast). auto: bfloat16 on a CUDA GPU that supports it, else "
                  "float32. bfloat16 on a CPU with AVX512-BF16/AMX is about 2.5x faster than float32 (bench/README).",
                  "choices": ["auto", "float32", "bfloat16", "float16"]},
    )
    backend: str = field(
        default="auto",
        metadata={"help": "torch, or onnx: ONNX Runtime on a model exported with python -m multitask.export (an "
                  "export directory, or a run directory's onnx/). auto: onnx when --model is an export directory.",
                  "choices": list(BACKENDS)},
    )
    text_columns: list[str] | None = field(
        default=None, metadata={"help": "Text columns; empty: the ones the model was trained with."}
    )
    pick_column: str | None = field(
        default=None, metadata={"help": "Column of gold gate labels; empty: the one the model was trained with."}
    )
    category_column: str | None = field(
        default=None,
        metadata={"help": "Column of gold categories; empty: the one the model was trained with.",
                  "aliases": ["--label_column"]},
    )
    format: str | None = field(
        default=None,
        metadata={"help": "Format of the input files when the extension does not say it.",
                  "choices": list(FORMATS)},
    )
    encoding: str | None = field(
        default=None,
        metadata={"help": "Encoding of text input files. Empty: UTF-8 (with or without BOM), else CP932/Shift-JIS."},
    )
    max_input_bytes: int = read_limit_fields()["max_input_bytes"]
    max_cell_chars: int = read_limit_fields()["max_cell_chars"]
    allow_unknown_labels: bool = field(
        default=False,
        metadata={"help": "A gold category the model does not know: count and report it, leave the row unscored "
                  "(default: an error naming the row)."},
    )
    csv_formula_guard: bool = field(
        default=True,
        metadata={"help": "In predictions_<stem>.csv, put a ' before text and label cells starting with =, +, -, @, "
                  "tab or CR (not plain numbers such as -0.5), so a spreadsheet shows them as text instead of "
                  "running them as formulas (OWASP CSV injection). `python -m analysis` removes the quote again. "
                  "false: write every cell unchanged. The .jsonl records are always unchanged."},
    )
    debug: bool = field(
        default=False, metadata={"help": "On an error, print the full traceback too (or set MULTITASK_DEBUG=1)."}
    )


def main(argv: list[str] | None = None) -> dict[str, dict]:
    """Predict every input file; returns the metrics per file stem. Raises a `UserError` before writing anything
    when an argument, the model or an input file is unusable; `cli(main)` turns it into one `error:` line."""
    parser = HfArgumentParser(PredictArguments)
    (args,) = parse_arguments(parser, sys.argv[1:] if argv is None else argv)
    check_predict_arguments(args)
    set_read_limits(args.max_input_bytes, args.max_cell_chars)
    output_dir = check_output_dir(args.output_dir)
    setup_logging()
    # Config and tokenizer only: every input file is checked below before the weights are loaded.
    setup = prepare_prediction(args.model, args.threshold, args.review, args.max_seq_length, args.device,
                               args.dtype, args.backend)
    config, tokenizer, threshold = setup.config, setup.tokenizer, setup.threshold
    text_columns = args.text_columns or config.text_columns
    # Gold labels are read from the columns the model was trained with unless named; recorded in metrics_<stem>.json
    # so `python -m analysis` reads the same ones.
    columns = {"text_columns": list(text_columns),
               "pick_column": args.pick_column or getattr(config, "pick_column", "pick"),
               "category_column": args.category_column or getattr(config, "category_column", "category")}
    separator = text_separator(tokenizer)
    # Validate every file before writing anything, so a bad file leaves no partial output behind.
    labeled_files = [
        load_labeled_file(input_file, text_columns, separator, config.category_label2id, config.has_gate,
                          args.encoding, allow_unknown_labels=args.allow_unknown_labels, file_format=args.format,
                          pick_column=columns["pick_column"], category_column=columns["category_column"],
                          flag="--input_files")
        for input_file in args.input_files
    ]

    predictor = Predictor.load(setup, top_k=args.top_k, batch_size=args.batch_size)
    config = predictor.config

    all_metrics = {}
    with staged_files() as stage:  # every file appears at the end, or none does
        for labeled in labeled_files:
            stem = labeled.path.stem
            scores = predictor.scores(list(labeled.dataset["text"]), progress=True)
            table = predictor.table(labeled.frame, scores, str(labeled.path))
            target = output_dir / f"predictions_{stem}.csv"
            (guard_formulas(table) if args.csv_formula_guard else table).to_csv(stage.path(target), index=False,
                                                                               encoding="utf-8")
            logger.info("%s: %d rows → %s", labeled.path, len(table), target)
            gate_labels, category_labels = list(labeled.dataset["gate_labels"]), list(labeled.dataset["category_labels"])
            with stage.path(output_dir / f"predictions_{stem}.jsonl").open("w", encoding="utf-8") as handle:
                numbers = labeled.table.numbers if labeled.table is not None else None
                unit = labeled.table.unit if labeled.table is not None else "row"
                for record in prediction_records(table, gate_labels, category_labels, config, numbers, unit):
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            metrics = compute_all(scores.pick_prob, scores.category_probs, gate_labels, category_labels, threshold)
            if labeled.unknown_categories:
                logger.warning("%s: rows with categories the model does not know were not scored: %s",
                               labeled.path, labeled.unknown_categories)
            if metrics or labeled.unknown_categories:
                metrics = {"threshold": threshold, "dtype": predictor.dtype_name,
                           "backend": "onnx" if setup.onnx_dir else "torch",
                           "label_maps_hash": config.label_maps_hash(),
                           "unscored_unknown_categories": labeled.unknown_categories, "columns": columns,
                           "csv_formula_guard": args.csv_formula_guard, **metrics}
                write_json(stage.path(output_dir / f"metrics_{stem}.json"), metrics)
                logger.info("%s: %s", stem, metrics)
            all_metrics[stem] = metrics
    return all_metrics


if __name__ == "__main__":
    sys.exit(cli(main))
