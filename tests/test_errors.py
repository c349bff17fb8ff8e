"""multitask.errors: the one-line error contract, flag suggestions, and command lines or config files parsed into
dataclasses with every mistake a `UsageError`. The four real CLIs are exercised in test_bad_inputs.py."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from transformers import HfArgumentParser

from multitask.errors import (
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    DataError,
    UsageError,
    cli,
    closest,
    debug_requested,
    format_error,
    one_line,
    parse_arguments,
    unknown_arguments,
    usage_errors,
)


@dataclass
class Toy:
    steps: int = field(default=1, metadata={"help": "Steps."})
    name: str = field(default="a", metadata={"help": "Name."})
    mode: str = field(default="fast", metadata={"help": "Mode.", "choices": ["fast", "slow"]})
    rates: list[float] = field(default_factory=list, metadata={"help": "Rates."})


def parse(argv):
    return parse_arguments(HfArgumentParser(Toy), argv)[0]


def test_one_line_and_format_error():
    assert one_line("a\n  b\n\nc  ") == "a; b; c"
    assert one_line("") == one_line("\n") == "unknown error"
    assert format_error(DataError("x.csv, row 3\ncolumn 'pick'")) == "error: x.csv, row 3; column 'pick'"


def test_debug_flag_is_stripped_and_bare_only_leaves_trainings_own(monkeypatch):
    monkeypatch.delenv("MULTITASK_DEBUG", raising=False)
    assert debug_requested(["--x", "--debug", "1"]) == (["--x", "1"], True)
    # run_finetune.py: `--debug underflow_overflow` is TrainingArguments' option, not ours.
    assert debug_requested(["--debug", "underflow_overflow"], bare_only=True) == (["--debug", "underflow_overflow"], False)
    assert debug_requested(["--debug", "--x"], bare_only=True) == (["--x"], True)
    monkeypatch.setenv("MULTITASK_DEBUG", "1")
    assert debug_requested([]) == ([], True)
    monkeypatch.setenv("MULTITASK_DEBUG", "no")
    assert debug_requested([]) == ([], False)


def test_closest_suggests_a_spelling_or_a_near_name():
    assert closest("learning-rate", ["learning_rate", "seed"], "--") == " (did you mean --learning_rate?)"
    assert closest("lerning_rate", ["learning_rate", "seed"], "--") == " (did you mean --learning_rate?)"
    assert closest("zzz", ["learning_rate", "seed"]) == ""
    assert (unknown_arguments(["--lerning_rate", "3"], ["--learning_rate", "--seed", "-h"])
            == "unknown argument --lerning_rate (did you mean --learning_rate?) (see --help)")


def test_cli_exit_status_and_one_line(capsys, monkeypatch):
    monkeypatch.delenv("MULTITASK_DEBUG", raising=False)

    def refuse(argv):
        raise UsageError("--steps -1: must be >= 1\n(see --help)")

    def interrupted(argv):
        raise KeyboardInterrupt

    def bug(argv):
        raise RuntimeError("a bug")

    assert cli(lambda argv: None, []) == 0
    assert cli(refuse, []) == EXIT_USER_ERROR == 2
    assert capsys.readouterr().err == "error: --steps -1: must be >= 1; (see --help)\n"
    assert cli(interrupted, []) == EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == "error: interrupted\n"
    with pytest.raises(RuntimeError, match="a bug"):  # a bug keeps its traceback
        cli(bug, [])


def test_command_line_mistakes_are_usage_errors():
    assert parse(["--steps", "3", "--rates", "0.1", "0.2"]) == Toy(steps=3, rates=[0.1, 0.2])
    with pytest.raises(UsageError, match="unknown argument --step .did you mean --steps"):
        parse(["--step", "3"])
    with pytest.raises(UsageError):
        parse(["--mode", "medium"])
    with pytest.raises(UsageError, match="must be the only argument"):
        parse(["config.json", "--steps", "3"])


def test_config_file_values_are_converted_and_checked(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"steps": 8.0, "mode": "slow", "rates": [1, 2]}))
    assert parse([str(path)]) == Toy(steps=8, mode="slow", rates=[1.0, 2.0])  # 8.0 is a whole number
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text("name: no\n")  # YAML 1.1 reads a bare no as false
    with pytest.raises(UsageError, match="key 'name': read as false; quote the value"):
        parse([str(yaml_path)])


@pytest.mark.parametrize(("text", "message"), [
    ('{"stepz": 1}', "unknown key 'stepz' .did you mean steps"),
    ('{"steps": [1, 2]}', "key 'steps': expected one value, got a list"),
    ('{"steps": "many"}', "key 'steps': expected a whole number, got 'many'"),
    ('{"steps": 1,}', "line 1, column 13: not valid JSON"),
    ("[1, 2]", "expected a mapping of argument names to values, found a list"),
])
def test_bad_config_files_name_the_key_or_the_line(tmp_path, text, message):
    path = tmp_path / "run.json"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        parse([str(path)])


def test_empty_and_missing_config_files(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(UsageError, match="the config file is empty"):
        parse([str(tmp_path / "empty.yaml")])
    with pytest.raises(UsageError, match="config file not found"):
        parse([str(tmp_path / "missing.yaml")])


def test_usage_errors_wraps_only_plain_value_errors():
    with pytest.raises(UsageError, match="^--threshold: bad value$"):
        with usage_errors("--threshold: "):
            raise ValueError("bad value")
    with pytest.raises(DataError):  # already a UserError: passed through unchanged
        with usage_errors("--threshold: "):
            raise DataError("x.csv: bad")
    with pytest.raises(KeyError):
        with usage_errors():
            raise KeyError("not a ValueError")
