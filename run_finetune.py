#!/usr/bin/env python
"""Fine-tune a shared encoder with a Pick/Decline gate head and an N-way category head.

    python run_finetune.py                                   # the embedded demo (tiny DeBERTa, offline)
    python run_finetune.py --model_name_or_path microsoft/deberta-v3-base \
        --task1_file data/train/task1_cleaned.csv --task2_file data/train/task2_cleaned.csv \
        --validation_file data/val.csv --test_files data/test_a.csv data/test_b.csv [any TrainingArguments flag]
    python run_finetune.py config.yaml                       # or config.json: the same flags as keys

A mistake in the arguments or data ends in one `error: …` line (exit status 2) before anything is written;
a bare `--debug` (or MULTITASK_DEBUG=1) adds the traceback. See multitask/errors.py.

`--help` lists this project's flags first, in groups (data, model, loss, gate and thresholds, ...), then the
Trainer's. The run itself is `multitask.train.finetune.finetune` (also `multitask.finetune` from Python).
"""

from __future__ import annotations

import sys

from multitask.errors import cli, parse_arguments
from multitask.train.finetune import finetune
from multitask.train.parser import finetune_parser


def parse_args(argv: list[str] | None):
    """The three argument dataclasses from a command line or a JSON/YAML file; a mistake is a `UsageError`."""
    return parse_arguments(finetune_parser(), sys.argv[1:] if argv is None else argv)


def main(argv: list[str] | None = None) -> dict:
    """Train one run (`multitask.train.finetune.finetune`); returns its metrics. A `UserError` (bad argument,
    data or model file) is raised before the run directory exists; `cli(main)` turns it into one `error:` line."""
    return finetune(*parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli(main, bare_debug_only=True))
