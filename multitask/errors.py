"""One error contract for every command line: a user mistake ends in one line on stderr, never a traceback.

    error: <where>: <what is wrong, and what to do>

`UserError` (and its subclasses) is what a user can fix: arguments, data files, paths, model files, the Hub.
Each CLI's `main(argv)` raises it like any exception (tests and scripts calling `main` in-process see the
exception); the `if __name__ == "__main__"` block runs `sys.exit(cli(main))`, which prints the one line and
exits with status 2 (as argparse does for a usage error). `--debug` (a bare flag, stripped before parsing) or
`MULTITASK_DEBUG=1` also prints the traceback. Any other exception is a bug and keeps its traceback.

Library errors that reach users (pandas, safetensors, transformers, huggingface_hub) are translated into a
`UserError` where the project calls the library, so the message can name the file and the fix.
No heavy imports here: every CLI loads this module first.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT (2): what a shell reports for Ctrl-C
DEBUG_FLAG = "--debug"
DEBUG_ENV = "MULTITASK_DEBUG"


class UserError(Exception):
    """A mistake the user can fix; the message says where (file, row, column, flag) and what to do."""

    exit_code = EXIT_USER_ERROR


# Each also derives from the builtin it refines: code catching ValueError/OSError still catches it.
class UsageError(UserError, ValueError):
    """A bad argument value or combination of arguments (also a bad or mistyped config-file key)."""


class DataError(UserError, ValueError):
    """Bad input data; the message names file, row (as a spreadsheet shows it) and column."""


class ModelFileError(UserError, OSError):
    """A model directory or Hub model that cannot be loaded: missing, truncated or corrupt files."""


class MissingInputError(UserError, FileNotFoundError):
    """An input path that does not exist (or holds no usable file)."""


class OutputError(UserError, OSError):
    """An output path that cannot be written (a file where a folder is expected, no permission, a finished run)."""


# What the user can do about an OSError met while writing outputs (the one fault boundary: `output_fault`).
WRITE_FAULTS = {
    errno.ENOSPC: "the disk is full: free some space (or choose a folder on another disk) and run again",
    errno.EDQUOT: "the disk quota is used up: free some space (or choose a folder on another disk) and run again",
    errno.EFBIG: "the file is too large for this filesystem: choose a folder on another disk",
    errno.EACCES: "no permission to write there: choose a folder you can write to",
    errno.EPERM: "no permission to write there: choose a folder you can write to",
    errno.EROFS: "the filesystem is read-only: choose a folder on a writable disk",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "a folder is in the way of a file of the same name: choose another path",
    errno.ENAMETOOLONG: "the name is too long for this filesystem: choose a shorter path",
}


def output_fault(error: BaseException, resumable: bool = False) -> UserError | None:
    """The one `error:` line for an out-of-space, permission or path fault met while writing (`WRITE_FAULTS`),
    naming the file and what to do; None for any other error (a bug keeps its traceback).

    Args:
        error (`BaseException`):
            What the write raised. An `OSError` with one of `WRITE_FAULTS`' errno values, or torch's
            `RuntimeError` for a failed checkpoint write (its stream writer does not raise OSError).
        resumable (`bool`, *optional*, defaults to `False`):
            A training run: say that `--resume_from_checkpoint true` continues from the last whole checkpoint.
    """
    if isinstance(error, UserError):
        return None
    if isinstance(error, OSError) and error.errno in WRITE_FAULTS:
        where = error.filename or "an output file"
        advice = WRITE_FAULTS[error.errno]
        what = error.strerror or one_line(str(error))
    elif isinstance(error, RuntimeError) and re.search(r"file write failed|No space left on device", str(error)):
        where, what = "a checkpoint file", one_line(str(error))[:200]
        advice = "the disk is probably full: free some space and run again"
    else:
        return None
    if resumable:
        advice += " (with --resume_from_checkpoint true it continues from the last whole checkpoint)"
    fault = OutputError(f"{where}: cannot write ({what}); {advice}")
    fault.__cause__ = error
    return fault


def one_line(message: str) -> str:
    """Collapse a (library's) multi-line message into one line."""
    return re.sub(r"\s*\n\s*", "; ", str(message).strip()).strip("; ") or "unknown error"


EXCERPT_CHARS = 80  # how much of a user's cell an error line quotes


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """`repr` of a (user's) cell cut to `limit` characters with "…" and its full length, so a huge cell never
    floods the one error line; line breaks show as \\n (repr), so the line stays one line."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text):,} characters)"


def format_error(error: BaseException) -> str:
    """The one stderr line for `error`: `error: ` and its message collapsed to one line."""
    return f"error: {one_line(str(error))}"


def debug_requested(argv: Sequence[str], bare_only: bool = False) -> tuple[list[str], bool]:
    """`argv` without our `--debug`, and whether tracebacks were asked for (`--debug` or MULTITASK_DEBUG=1).

    With `bare_only` (run_finetune.py) only a `--debug` followed by nothing or another flag is ours:
    `--debug underflow_overflow` is TrainingArguments' own option and is left alone.
    """
    argv = list(argv)
    debug = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    kept = []
    for index, arg in enumerate(argv):
        following = argv[index + 1] if index + 1 < len(argv) else None
        if arg == DEBUG_FLAG and (not bare_only or following is None or following.startswith("-")):
            debug = True
        else:
            kept.append(arg)
    return kept, debug


# Set by `cli` for the duration of one `main` call, so code deep inside can ask `debugging()` without argv.
_debugging = False


def debugging() -> bool:
    """Whether this process was asked for tracebacks (`--debug` through `cli`, or MULTITASK_DEBUG=1)."""
    return _debugging or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def cli(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None, bare_debug_only: bool = False) -> int:
    """Run a CLI `main(argv)` behind the error contract; returns the exit status for `sys.exit`.

    UserError: one `error: …` line on stderr, status 2 (traceback too with --debug / MULTITASK_DEBUG=1); so is
    a write fault (disk full, permission, read-only or impossible path: `output_fault`), wherever it happens.
    KeyboardInterrupt: one line, status 130. Anything else propagates with its traceback (a bug).
    """
    global _debugging
    argv, debug = debug_requested(sys.argv[1:] if argv is None else argv, bare_debug_only)
    _debugging = debug
    try:
        main(argv)
    except UserError as error:
        if debug:
            traceback.print_exc()
        # Redirected stdout is block-buffered: flush it so the error line comes after the run's output.
        sys.stdout.flush()
        print(format_error(error), file=sys.stderr, flush=True)
        return error.exit_code
    except (OSError, RuntimeError) as error:
        fault = output_fault(error)  # a full disk or a path that cannot be written is no bug: one line too
        if fault is None:
            raise
        if debug:
            traceback.print_exc()
        sys.stdout.flush()
        print(format_error(fault), file=sys.stderr, flush=True)
        return fault.exit_code
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("error: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    finally:
        _debugging = False
    return 0


def closest(name: str, choices: Iterable[str], prefix: str = "") -> str:
    """' (did you mean X?)' for the nearest valid name, or ''."""
    choices = list(choices)
    lowered: dict[str, str] = {}
    for choice in choices:  # the first spelling wins (HfArgumentParser lists --a_b before its --a-b alias)
        lowered.setdefault(choice.lower().replace("-", "_"), choice)
    key = name.lower().replace("-", "_")
    if key in lowered and lowered[key] != name:
        return f" (did you mean {prefix}{lowered[key]}?)"
    match = difflib.get_close_matches(key, list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {prefix}{lowered[match[0]]}?)" if match else ""


def raise_usage_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make `parser` (argparse or HfArgumentParser) raise `UsageError` instead of printing usage and exiting.

    An unrecognized flag names the closest real one.
    """
    flags = [option for action in parser._actions for option in action.option_strings]

    def error(message: str) -> NoReturn:
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            raise UsageError(unknown_arguments(unknown.group(1).split(), flags))
        raise UsageError(f"{message} (see --help)")

    parser.error = error  # type: ignore[method-assign]
    # No prefix matching: `--dedup` is an unknown flag with a suggestion, not "ambiguous" between the --a_b and
    # --a-b spellings of one option, and a shortened flag never silently means another one.
    parser.allow_abbrev = False
    return parser


def unknown_arguments(remaining: Sequence[str], flags: Iterable[str]) -> str:
    """The message for flags a parser did not use, with the closest valid flag for each."""
    flags = list(flags)
    unknown = [arg for arg in remaining if arg.startswith("-")] or list(remaining)
    parts = []
    for arg in unknown:
        name = arg.split("=", 1)[0]
        parts.append(f"{name}{closest(name.lstrip('-'), [f.lstrip('-') for f in flags if f.startswith('--')], '--')}")
    noun = "argument" if len(parts) == 1 else "arguments"
    return f"unknown {noun} {', '.join(parts)} (see --help)"


CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def parse_arguments(parser: Any, argv: Sequence[str]) -> tuple:
    """Parse a command line, or a JSON/YAML config file given as the only argument, with an `HfArgumentParser`.

    Every mistake is a `UsageError`: an unknown or mistyped flag or config key (the closest valid name is
    suggested), a value of the wrong type or outside the choices, a config file that is missing or not valid
    JSON/YAML (with the line), and the dataclasses' own checks (e.g. TrainingArguments' strategy rules).
    """
    raise_usage_errors(parser)
    argv = list(argv)
    if len(argv) == 1 and argv[0].lower().endswith(CONFIG_SUFFIXES):
        return parse_config_file(parser, argv[0])
    try:
        # Unused strings come back instead of HfArgumentParser's bare ValueError: unknown flags get a hint.
        *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as error:
        if isinstance(error, UserError):
            raise
        raise UsageError(_name_the_flag(one_line(str(error)), argv)) from error
    if remaining:
        config = [arg for arg in remaining if arg.lower().endswith(CONFIG_SUFFIXES)]
        if config:
            raise UsageError(f"{config[0]}: a config file must be the only argument (put the other flags in it as keys)")
        flags = [option for action in parser._actions for option in action.option_strings]
        raise UsageError(unknown_arguments(remaining, flags))
    return tuple(parsed)


def _name_the_flag(message: str, argv: Sequence[str]) -> str:
    """Prefix a dataclass's own error ("sometimes is not a valid IntervalStrategy") with the flag that gave it."""
    if message.startswith("--"):
        return message
    # Such messages start with the rejected value; the argv entry just before that value is its flag.
    first = message.split(" ", 1)[0].strip("'\"")
    for index, arg in enumerate(argv[1:], start=1):
        if arg == first and argv[index - 1].startswith("--"):
            return f"{argv[index - 1]} {arg}: {message}"
    return message


def read_json_or_yaml(path: Any, flag: str = "", what: str = "config file") -> Any:
    """The parsed content of a JSON (by suffix) or YAML (otherwise) file, None when empty; a missing file, a
    directory, a non-UTF-8 file or a syntax error is a `UsageError` naming `flag` (if any), the file and the
    line and column. Shared by config files and search-space files (`multitask.train.hp_search`)."""
    from pathlib import Path

    path = Path(path)
    prefix = f"{flag} " if flag else ""
    if path.is_dir():
        raise UsageError(f"{prefix}{path}: is a directory, expected a JSON or YAML {what}")
    if not path.is_file():
        raise UsageError(f"{prefix}{path}: {what} not found")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: editors on Windows save JSON/YAML with a BOM
    except UnicodeDecodeError as error:
        raise UsageError(f"{path}: not a UTF-8 text file") from error
    if path.suffix.lower() == ".json":
        import json

        try:
            return json.loads(text) if text.strip() else None
        except json.JSONDecodeError as error:
            raise UsageError(f"{path}, line {error.lineno}, column {error.colno}: not valid JSON ({error.msg})") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        place = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or one_line(str(error))
        raise UsageError(f"{path}{place}: not valid YAML ({problem})") from None


def _load_config(path: Any) -> dict:
    """The top-level mapping of a JSON (by suffix) or YAML (otherwise) file; every failure a `UsageError` with line."""
    values = read_json_or_yaml(path)
    if values is None:
        raise UsageError(f"{path}: the config file is empty")
    if not isinstance(values, dict):
        raise UsageError(f"{path}: expected a mapping of argument names to values, found a {type(values).__name__}")
    return values


def _convert(path: Any, key: str, value: Any, action: argparse.Action) -> Any:
    """A config value as the command line would have parsed it (YAML/JSON give no type checking of their own)."""
    if value is None or isinstance(value, dict):
        return value
    many = action.nargs in ("+", "*")
    if isinstance(value, list) and not many:
        raise UsageError(f"{path}, key '{key}': expected one value, got a list")
    items = (value if isinstance(value, list) else [value]) if many else [value]
    convert = action.type
    name = getattr(convert, "__name__", "")
    checked = name in ("int", "float", "str", "string_to_bool") or bool(action.choices)
    converted = []
    for item in items:
        if not checked or isinstance(item, (dict, list)):
            converted.append(item)
            continue
        if isinstance(item, bool) and name != "string_to_bool":
            if name == "str" or action.choices:
                raise UsageError(f"{path}, key '{key}': read as {str(item).lower()}; quote the value "
                                 f"(YAML reads a bare no/yes/off/on as false/true)")
            raise UsageError(f"{path}, key '{key}': expected a number, got {str(item).lower()}")
        if name == "int" and isinstance(item, float) and item.is_integer():
            item = int(item)  # YAML/JSON 8.0 for a whole-number flag: int("8.0") would fail below
        try:
            # str(): argparse type functions expect command-line text; string_to_bool also takes a real bool.
            result = convert(item if isinstance(item, bool) else str(item)) if convert else item
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            kind = {"int": "a whole number", "float": "a number", "string_to_bool": "true or false"}.get(
                name, "a valid value"
            )
            raise UsageError(f"{path}, key '{key}': expected {kind}, got {item!r}") from None
        if action.choices and result not in action.choices:
            choices = ", ".join(str(getattr(c, "value", c)) for c in action.choices)
            raise UsageError(f"{path}, key '{key}': {item!r} is not one of {choices}")
        converted.append(result)
    return converted if many else converted[0]


def parse_config_file(parser: Any, path: Any) -> tuple:
    """The dataclasses from a JSON/YAML config file, every key checked against the parser's arguments."""
    values = _load_config(path)
    actions = {}
    aliases = {}  # e.g. label_column -> category_column (a field's "aliases" metadata)
    for action in parser._actions:  # a bool field's --no_x action comes after --x and is skipped
        if action.dest != "help" and action.option_strings:
            actions.setdefault(action.dest, action)
            for option in action.option_strings:
                name = option.lstrip("-")
                # Not HfArgumentParser's --a-b twin of --a_b nor a --no_x: only "aliases" metadata remain.
                if name != action.dest and "-" not in name and not name.startswith("no_"):
                    aliases.setdefault(name, action.dest)
    unknown = [key for key in values if key not in actions and key not in aliases]
    if unknown:
        parts = [f"'{key}'{closest(str(key), actions)}" for key in unknown]
        noun = "key" if len(parts) == 1 else "keys"
        raise UsageError(f"{path}: unknown {noun} {', '.join(parts)} (every key is a flag of --help, without the --)")
    converted = {aliases.get(key, key): _convert(path, key, value, actions[aliases.get(key, key)])
                 for key, value in values.items()}
    try:
        return tuple(parser.parse_dict(converted, allow_extra_keys=False))
    except ValueError as error:
        if isinstance(error, UserError):
            raise
        raise UsageError(f"{path}: {one_line(str(error))}") from error


class usage_errors:  # noqa: N801 - used as `with usage_errors("…"):`
    """Turn a `ValueError` raised by a library from the user's arguments into a `UsageError` (prefix + message)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: BaseException | None, trace: Any) -> bool:
        if isinstance(error, ValueError) and not isinstance(error, UserError):
            raise UsageError(f"{self.prefix}{one_line(str(error))}") from error
        return False
