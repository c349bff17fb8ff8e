"""multitask.train.parser: run_finetune.py's `--help` lists our groups, in order, before the Trainer's flags; parsing
is the same as HfArgumentParser's."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
from typing import ClassVar

import pytest
from transformers import HfArgumentParser

import run_finetune
from multitask.train.arguments import (
    ARGUMENT_GROUPS,
    TRAINER_GROUP,
    DataArguments,
    ModelArguments,
    MultitaskTrainingArguments,
)
from multitask.train.parser import MultitaskArgumentParser, finetune_parser

OURS = (ModelArguments, DataArguments, MultitaskTrainingArguments)


def help_sections() -> dict[str, str]:
    """run_finetune.py --help split into its groups: title -> the text under it."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit):
        run_finetune.main(["--help"])
    text = buffer.getvalue()
    titles = ["options", *ARGUMENT_GROUPS, TRAINER_GROUP]
    positions = [text.index(f"\n{title}:\n") for title in titles]
    assert positions == sorted(positions), "the groups are listed in the fixed order, the Trainer's last"
    ends = [*positions[1:], len(text)]
    return {title: text[start:end] for title, start, end in zip(titles, positions, ends)}


def own_fields():
    """Every field this project declares (the TrainingArguments fields it only inherits excluded)."""
    for dtype in OURS:
        own = set(vars(dtype).get("__annotations__", {}))  # declared in this class, with `from __future__` strings
        for field in dataclasses.fields(dtype):
            if field.init and (dtype is not MultitaskTrainingArguments or field.name in own):
                yield dtype, field


def group_of(dtype, name: str) -> str | None:
    return next((group for group, names in dtype.argument_groups.items() if name in names), None)


def test_every_own_field_has_help_and_one_known_group():
    for dtype, field in own_fields():
        assert field.metadata.get("help"), f"{dtype.__name__}.{field.name} has no help"
        assert group_of(dtype, field.name) in ARGUMENT_GROUPS, f"{dtype.__name__}.{field.name}: no known group"
        assert sum(field.name in names for names in dtype.argument_groups.values()) == 1, field.name


def test_help_lists_our_groups_first_and_each_flag_in_its_group():
    sections = help_sections()
    flag = re.compile(r"^  (--\w+)", re.MULTILINE)
    listed = {title: set(flag.findall(text)) for title, text in sections.items()}
    for title in ARGUMENT_GROUPS:
        assert listed[title], f"group {title!r} is empty"
    for dtype, field in own_fields():
        assert f"--{field.name}" in listed[group_of(dtype, field.name)], field.name
    # The Trainer's own flags come after ours, in the last group.
    for name in ("--gradient_accumulation_steps", "--report_to", "--push_to_hub", "--seed", "--bf16"):
        assert name in listed[TRAINER_GROUP], name
    assert "-h, --help" in sections["options"] and not listed["options"]  # only -h there
    usage = next(iter(sections.values()))
    assert len(usage.splitlines()) < 10  # a short usage line, not all ~210 flags


def test_parsing_is_unchanged_by_the_groups(tmp_path):
    argv = ["--output_dir", str(tmp_path), "--lora_r", "4", "--text_columns", "title", "--gate_score", "knn",
            "--max_steps", "3", "--no_freeze_embeddings", "--use_cpu", "true", "--label_column", "topic"]
    grouped = finetune_parser().parse_args_into_dataclasses(argv)
    plain = HfArgumentParser(OURS).parse_args_into_dataclasses(argv)
    assert grouped[:2] == plain[:2]
    assert grouped[2].to_dict() == plain[2].to_dict()
    model_args, data_args, training_args = grouped
    assert (model_args.lora_r, model_args.freeze_embeddings, data_args.category_column) == (4, False, "topic")
    assert training_args.gate_score == "knn" and training_args.max_steps == 3


@dataclasses.dataclass
class UnknownGroup:
    argument_groups: ClassVar[dict] = {"no such group": ("x",)}
    x: int = dataclasses.field(default=1, metadata={"help": "x"})


@dataclasses.dataclass
class UnknownField:
    argument_groups: ClassVar[dict] = {"data": ("y",)}
    x: int = dataclasses.field(default=1, metadata={"help": "x"})


def test_a_wrong_group_listing_is_a_bug():
    with pytest.raises(ValueError, match="argument group 'no such group'"):
        MultitaskArgumentParser(UnknownGroup)
    with pytest.raises(ValueError, match=r"names fields it does not have: \['y'\]"):
        MultitaskArgumentParser(UnknownField)
