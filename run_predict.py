#!/usr/bin/env python
"""Run a trained multitask model on CSV files.

    python run_predict.py --model output/output_20260101_120000 --input_files x.csv y.csv --output_dir preds/
    python run_predict.py --model user/my-model --input_files x.csv --threshold f1

Writes <output_dir>/predictions_<input stem>.csv (every input column kept, plus pick_prob, pick_pred,
category_pred, category_prob, category_top<k>, decision) and, where the CSV carries gold labels,
metrics_<input stem>.json.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from multitask.data import DataError, load_labeled_file
from multitask.hub import resolve_token
from multitask.metrics import compute_all
from multitask.precision import cpu_has_native_bf16, precision_warnings, resolve_inference_dtype
from multitask.predict import load_model, predict_scores, prediction_records, prediction_table
from multitask.rundir import setup_logging, write_json
from multitask.thresholds import resolve_threshold

logger = logging.getLogger("run_predict")


@dataclass
class PredictArguments:
    model: str = field(metadata={"help": "A run directory, its model/ directory, or a Hub model id."})
    input_files: list[str] = field(metadata={"help": "CSV files to predict (text columns as in training)."})
    output_dir: str = field(default="predictions", metadata={"help": "Where predictions_<stem>.csv are written."})
    threshold: str = field(
        default="default",
        metadata={"help": "Gate threshold on P(Pick): a name stored in the model (default, f1, acc, leak) or a number."},
    )
    top_k: int = field(default=3, metadata={"help": "How many categories the category_top<k> column lists."})
    batch_size: int = field(default=64, metadata={"help": "Rows per forward pass."})
    max_seq_length: int = field(default=256, metadata={"help": "Inputs are truncated to this many tokens."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps.", "choices": ["auto", "cpu", "cuda", "mps"]})
    dtype: str = field(
        default="auto",
        metadata={"help": "Forward-pass precision (autocast). auto: bfloat16 on a CUDA GPU that supports it, else "
                  "float32. bfloat16 on a CPU with AVX512-BF16/AMX is about 2.5x faster than float32 (bench/README).",
                  "choices": ["auto", "float32", "bfloat16", "float16"]},
    )
    text_columns: list[str] | None = field(
        default=None, metadata={"help": "Text columns; empty: the ones the model was trained with."}
    )
    encoding: str | None = field(
        default=None, metadata={"help": "CSV encoding. Empty: UTF-8 (with or without BOM), else CP932/Shift-JIS."}
    )
    allow_unknown_labels: bool = field(
        default=False,
        metadata={"help": "A gold category the model does not know: count and report it, leave the row unscored "
                  "(default: an error naming the row)."},
    )


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = HfArgumentParser(PredictArguments)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        parse = parser.parse_json_file if argv[0].endswith(".json") else parser.parse_yaml_file
        (args,) = parse(argv[0])
    else:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    setup_logging()

    model, tokenizer = load_model(args.model, args.device, token=resolve_token())  # token only for private repos
    config = model.config
    device = next(model.parameters()).device
    dtype = resolve_inference_dtype(args.dtype, device)
    dtype_name = str(dtype).removeprefix("torch.")
    logger.info("predicting on %s in %s", device, dtype_name)
    for message in precision_warnings(config.encoder_config.model_type, dtype == torch.float16,
                                      dtype == torch.bfloat16, device.type,
                                      flags=("--dtype float16", "--dtype bfloat16")):
        logger.warning(message)
    if device.type == "cpu" and dtype == torch.float32 and cpu_has_native_bf16():
        logger.info("this CPU has native bf16: --dtype bfloat16 predicts about 2.5x faster (bench/README)")
    threshold = resolve_threshold(args.threshold, config.gate_thresholds)
    text_columns = args.text_columns or config.text_columns
    separator = f" {tokenizer.sep_token} " if tokenizer.sep_token else " "
    label2id = config.category_label2id

    # Validate every file before writing anything, so a bad file leaves no partial output behind.
    labeled_files = []
    for input_file in args.input_files:
        labeled_files.append(
            load_labeled_file(input_file, text_columns, separator, label2id, config.has_gate, args.encoding,
                              allow_unknown_labels=args.allow_unknown_labels)
        )
    stems = [labeled.path.stem for labeled in labeled_files]
    if len(set(stems)) != len(stems):
        raise DataError(f"input files share a name, their outputs would overwrite each other: {stems}")

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    all_metrics = {}
    for labeled in labeled_files:
        scores = predict_scores(model, tokenizer, list(labeled.dataset["text"]), args.batch_size, args.max_seq_length,
                                progress=True, dtype=dtype)
        table = prediction_table(labeled.frame, scores, config, threshold, args.top_k)
        target = output_dir / f"predictions_{labeled.path.stem}.csv"
        table.to_csv(target, index=False, encoding="utf-8")
        logger.info("%s: %d rows → %s", labeled.path, len(table), target)
        gate_labels, category_labels = list(labeled.dataset["gate_labels"]), list(labeled.dataset["category_labels"])
        with (output_dir / f"predictions_{labeled.path.stem}.jsonl").open("w", encoding="utf-8") as handle:
            for record in prediction_records(table, gate_labels, category_labels, config):
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        metrics = compute_all(scores.pick_prob, scores.category_probs, gate_labels, category_labels, threshold)
        if labeled.unknown_categories:
            logger.warning("%s: rows with categories the model does not know were not scored: %s",
                           labeled.path, labeled.unknown_categories)
        if metrics or labeled.unknown_categories:
            metrics = {"threshold": threshold, "dtype": dtype_name, "label_maps_hash": config.label_maps_hash(),
                       "unscored_unknown_categories": labeled.unknown_categories, **metrics}
            write_json(output_dir / f"metrics_{labeled.path.stem}.json", metrics)
            logger.info("%s: %s", labeled.path.stem, metrics)
        all_metrics[labeled.path.stem] = metrics
    return all_metrics


if __name__ == "__main__":
    main()
