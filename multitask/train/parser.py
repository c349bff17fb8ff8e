"""`MultitaskArgumentParser`: an `HfArgumentParser` whose `--help` lists this project's flags first, in named groups,
and the Trainer's after.

`HfArgumentParser` groups flags by dataclass only, and `MultitaskTrainingArguments` holds both ours and every
`TrainingArguments` field. Here each of our dataclasses lists its fields by group in its `argument_groups` class
variable (groups from `multitask.train.arguments.ARGUMENT_GROUPS`; kept out of the fields' metadata, which
HfArgumentParser passes to argparse, so a plain HfArgumentParser still parses our dataclasses). The groups are
created in that fixed order, and every field in none (the Trainer's own) goes to `TRAINER_GROUP`, last. Parsing is
unchanged: groups only change `--help`.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, get_type_hints

from transformers import HfArgumentParser

from multitask.train.arguments import ARGUMENT_GROUPS, TRAINER_GROUP


class MultitaskArgumentParser(HfArgumentParser):
    """`HfArgumentParser` with grouped `--help`: our groups in `ARGUMENT_GROUPS` order, then the Trainer's flags.

    Args:
        dataclass_types (`DataClassType` or `Iterable[DataClassType]`):
            The argument dataclasses, as for `HfArgumentParser`.
        **kwargs:
            Passed to `argparse.ArgumentParser`.
    """

    def __init__(self, dataclass_types: Any, **kwargs: Any) -> None:
        kwargs.setdefault("description", "Fine-tune a shared encoder with a Pick/Decline gate head and an N-way "
                                         "category head. This project's flags come first, by topic; every "
                                         "transformers.TrainingArguments flag is accepted too (last group).")
        # argparse's usage line would list all ~210 flags (180 lines) before the first group.
        kwargs.setdefault("usage", "%(prog)s [--flag VALUE ...] | %(prog)s CONFIG.yaml (or .json, the flags as keys)")
        self._named_groups: dict[str, argparse._ArgumentGroup] = {}
        super().__init__(dataclass_types, **kwargs)

    def _group(self, name: str) -> argparse._ArgumentGroup:
        if not self._named_groups:  # first field: create every group now, so --help shows them in a fixed order
            for title, description in ARGUMENT_GROUPS.items():
                self._named_groups[title] = self.add_argument_group(title, description)
            self._named_groups[TRAINER_GROUP] = self.add_argument_group(TRAINER_GROUP)
        if name not in self._named_groups:
            raise ValueError(f"argument group {name!r} is not one of {list(self._named_groups)}")
        return self._named_groups[name]

    def _add_dataclass_arguments(self, dtype: Any) -> None:
        """As `HfArgumentParser._add_dataclass_arguments`, but each field goes to the group `dtype.argument_groups`
        puts it in (`TRAINER_GROUP` when none does)."""
        groups = {name: group for group, names in getattr(dtype, "argument_groups", {}).items() for name in names}
        type_hints = get_type_hints(dtype)
        fields = {field.name for field in dataclasses.fields(dtype)}
        unknown = sorted(set(groups) - fields)
        if unknown:
            raise ValueError(f"{dtype.__name__}.argument_groups names fields it does not have: {unknown}")
        for field in dataclasses.fields(dtype):
            if not field.init:
                continue
            field.type = type_hints[field.name]  # as HfArgumentParser does: resolve `from __future__` annotations
            self._parse_dataclass_field(self._group(groups.get(field.name, TRAINER_GROUP)), field)


def finetune_parser() -> MultitaskArgumentParser:
    """run_finetune.py's parser: `ModelArguments`, `DataArguments` and `MultitaskTrainingArguments`, grouped.

    Returns:
        `MultitaskArgumentParser`: Ready for `multitask.errors.parse_arguments`.
    """
    from multitask.train.arguments import DataArguments, ModelArguments, MultitaskTrainingArguments

    return MultitaskArgumentParser((ModelArguments, DataArguments, MultitaskTrainingArguments))
