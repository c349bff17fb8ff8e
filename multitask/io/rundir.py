"""The run directory: status marker, train.log, JSON files, and the provenance recorded in run_config.json.

Nothing is created before the inputs are validated: `RunDirectory.check_target` refuses an unusable path
up front, log lines are held back (`hold_logs`) until the run starts, and a run refused before it started
leaves nothing behind (`discard`). A started run has `run_status.json` = running; only a run that reached its
end says `complete`, and one that raised says `failed` with the error, so a half-written directory never looks
like a finished one. Other outputs are written under a temporary name and moved into place (`staged_files`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from multitask.errors import OutputError, UsageError, UserError

STATUS_FILE = "run_status.json"
EPOCH_LOG = "epoch_log.jsonl"  # multitask.train.callbacks.EpochLogCallback's file
PREFIX_CHECKPOINT_DIR = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR (not imported: light module)
_LIBRARIES = ("torch", "transformers", "datasets", "accelerate", "huggingface_hub", "scikit-learn", "tokenizers")



def saved_model_dir(model: str | Path) -> str:
    """Where a model's files are: a run directory of run_finetune.py holds them in `model/` (it has no config.json
    itself); any other path or a Hub id is returned as given."""
    path = Path(model)
    if path.is_dir() and not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        return str(path / "model")
    return str(model)

def write_json(path: Path, payload: Any) -> None:
    """Write JSON under a temporary name, then move it into place: a reader never sees half a file.

    UTF-8, indented, non-ASCII kept as is; values JSON cannot hold (paths, numpy scalars other than float64)
    are written as their `str()`.
    """
    path = Path(path)
    # Same folder (so os.replace is a rename), hidden, and per process (two writers never share a temporary).
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        temporary.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _existing_ancestor(path: Path) -> Path:
    """`path` itself if it exists, else its nearest existing parent (the root at worst)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: str | Path, flag: str = "--output_dir") -> Path:
    """An `OutputError` unless `path` is (or can become) a writable directory; creates nothing."""
    if not str(path).strip():  # Path("") is ".", so an empty value would write into the current folder unasked
        raise OutputError(f"{flag} is empty; name a folder (e.g. {flag} runs/first)")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path}: is a file, not a directory; choose another path")
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise OutputError(f"{flag} {path}: {ancestor} is a file, so no directory can be created below it")
    # Creating an entry in a folder takes write and search (x) permission on it.
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: {ancestor} is not writable (permission denied)")
    return path


def check_output_file(path: str | Path, flag: str) -> Path:
    """An `OutputError` unless `path` can be written as a file (its folder may not exist yet); creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path}: is a directory, expected a file name")
    ancestor = _existing_ancestor(path.parent)
    if not ancestor.is_dir():
        raise OutputError(f"{flag} {path}: {ancestor} is a file, so no folder can be created below it")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: {ancestor} is not writable (permission denied)")
    return path


def current_umask() -> int:
    """The process umask (read by setting it and putting it back: the only portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_PARTIAL_PID = re.compile(r"\.partial-(\d+)-")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or a platform that cannot tell: keep its files
    return True


def remove_stale_partials(folder: Path, target: Path) -> list[Path]:
    """Delete the temporaries of `target` in `folder` whose writing process is gone (a killed run); returns them.

    Only names `StagedFiles.path` gives (`.<stem>.partial-<pid>-…<suffix>`) with a dead process id are touched:
    a run writing the same target right now keeps its file.
    """
    removed = []
    pattern = f".{glob.escape(target.stem)}.partial-*{glob.escape(target.suffix)}"
    for candidate in Path(folder).glob(pattern):
        match = _PARTIAL_PID.search(candidate.name)
        if match and int(match.group(1)) != os.getpid() and not _process_alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed.append(candidate)
    if removed:
        logging.getLogger(__name__).warning("removed %d partial file(s) a killed run left: %s", len(removed),
                                            ", ".join(str(path) for path in removed))
    return removed


class StagedFiles:
    """Output files written under temporary names and moved into place together at `commit`.

    Temporary files live in the nearest existing folder of their target (same filesystem, so the move is a
    rename) and keep the target's suffix (writers that infer the format from it still work).
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def path(self, target: str | Path) -> Path:
        """A new, empty temporary file to write `target`'s content to; `target`'s folder need not exist yet.

        Its mode follows the umask (0644 under 022), as every other file of a run does. Temporaries of the same
        target left by a killed process (the process id in their name is gone) are removed first, with a warning.
        """
        target = Path(target)
        home = _existing_ancestor(target.parent)
        remove_stale_partials(home, target)
        # mkstemp creates the file exclusively: two stages writing the same target never share a temporary. The
        # process id in the name tells a later run whether its writer is still alive.
        handle, temporary = tempfile.mkstemp(dir=home, prefix=f".{target.stem}.partial-{os.getpid()}-",
                                             suffix=target.suffix)
        try:
            os.fchmod(handle, 0o666 & ~current_umask())  # mkstemp's 0600 would make outputs private to the user
        finally:
            os.close(handle)
        self._staged.append((Path(temporary), target))
        return Path(temporary)

    def commit(self) -> None:
        """Move every staged file onto its target (creating folders), in the order staged. Not atomic as a set:
        an error part-way leaves the earlier targets in place."""
        for temporary, target in self._staged:
            # Folders only now: a failed write leaves no empty output folder behind.
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temporary, target)
        self._staged = []

    def discard(self) -> None:
        """Delete the temporary files not yet moved; targets are never touched."""
        for temporary, _ in self._staged:
            temporary.unlink(missing_ok=True)
        self._staged = []


@contextlib.contextmanager
def staged_files() -> Iterator[StagedFiles]:
    """`with staged_files() as stage: write to stage.path(target)…`: all targets appear at the end, or none."""
    stage = StagedFiles()
    try:
        yield stage
    except BaseException:
        stage.discard()
        raise
    try:
        stage.commit()
    except OSError as error:
        stage.discard()
        raise OutputError(f"cannot move the outputs into place: {error}") from error


class _HeldLogs(logging.Handler):
    """Holds the root logger's records (console included) until the run starts or is refused.

    A run refused before it starts then prints only its one error line; a started run replays the held lines
    to the console and into train.log.
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.root = logging.getLogger()
        self.console = [h for h in self.root.handlers if not isinstance(h, logging.FileHandler)]
        for handler in self.console:
            self.root.removeHandler(handler)
        self.root.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record for `let_go`; nothing is printed now."""
        self.records.append(record)

    def let_go(self, replay: bool, *targets: logging.Handler) -> None:
        """Put the console handlers back; with `replay`, pass the held records to them and to `targets`."""
        self.root.removeHandler(self)
        for handler in self.console:
            self.root.addHandler(handler)
        if replay:
            for record in self.records:
                for handler in (*self.console, *targets):
                    # Handler.handle() ignores the handler's level (the logger checks it): do it here.
                    if record.levelno >= handler.level:
                        handler.handle(record)
        self.records = []


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (run_config.json's record of the data used)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_resume_checkpoint(value: str | None, output_dir: str | Path) -> str | None:
    """`--resume_from_checkpoint true|last` (any case) means the newest `checkpoint-*` folder in `output_dir`;
    any other value (a path, or None) is returned unchanged and checked later by the Trainer. A `UsageError` when
    `true|last` finds no checkpoint, so a resume that cannot resume is refused before the run starts."""
    from transformers.trainer_utils import get_last_checkpoint

    if value is None or value.lower() not in ("true", "last"):
        return value
    # get_last_checkpoint lists the folder and would raise on a missing one; no folder means no checkpoint.
    checkpoint = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
    if checkpoint is None:
        raise UsageError(f"--resume_from_checkpoint {value}: no checkpoint-* folder in {output_dir}")
    # The Trainer writes trainer_state.json last: a checkpoint without it was cut off (a kill, a full disk).
    steps = sorted((int(p.name.rsplit("-", 1)[1]), p) for p in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
                   if p.is_dir() and p.name.rsplit("-", 1)[1].isdigit())
    whole = [path for _, path in steps if (path / "trainer_state.json").is_file()]
    cut_off = [path.name for _, path in steps if not (path / "trainer_state.json").is_file()]
    if cut_off:
        if not whole:
            raise UsageError(f"--resume_from_checkpoint {value}: {', '.join(cut_off)} in {output_dir} was cut off "
                             "while being written (no trainer_state.json); no whole checkpoint to resume from")
        logging.getLogger(__name__).warning("%s: cut off while being written (no trainer_state.json), skipped; "
                                            "resuming from %s", ", ".join(cut_off), whole[-1].name)
        return str(whole[-1])
    return checkpoint


def library_versions() -> dict[str, str]:
    """Python's and the key libraries' installed versions (distribution names); "not installed" when absent."""
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def arguments_record(*argument_objects: Any) -> dict[str, Any]:
    """All argument dataclasses as plain JSON; secrets (hub tokens) are never recorded."""
    record: dict[str, Any] = {}
    for arguments in argument_objects:
        values = arguments.to_dict() if hasattr(arguments, "to_dict") else dataclasses.asdict(arguments)
        record[type(arguments).__name__] = {
            # Any field named like a token; hub_always_push is a bool that only happens to match.
            key: ("<redacted>" if "token" in key and value not in (None, "") and key != "hub_always_push" else value)
            for key, value in values.items()
            if not key.startswith("_")
        }
    return record


def setup_logging(main_process: bool = True) -> None:
    """INFO from our scripts and package, to the console; transformers stays at WARNING.

    Other ranks of a distributed run log warnings only (as the Trainer's `log_level_replica` does).
    """
    # A no-op when the root logger already has handlers (pytest, a notebook): theirs stay in charge.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for name in ("run_finetune", "run_predict", "multitask", "analysis"):
        logging.getLogger(name).setLevel(logging.INFO if main_process else logging.WARNING)


class RunDirectory:
    """Owns one run's output folder. Only the main process should create one."""

    def __init__(self, path: str | Path, resuming: bool = False) -> None:
        self.path = Path(path)
        self.resuming = resuming  # --resume_from_checkpoint was given: another run's checkpoints are expected
        self._log_handler: logging.Handler | None = None
        self._held: _HeldLogs | None = None
        # What was there before this run, so `discard` removes only what the run itself created.
        self._entries_before = set(os.listdir(self.path)) if self.path.is_dir() else None
        self.started = False
        self.notes: dict[str, Any] = {}  # said plainly in run_status.json at the end (e.g. what was not done)

    def check_target(self) -> None:
        """Refuse, before anything is created, a path that is a file, not writable, or holds a complete run; and,
        unless resuming, one that holds another run's traces (checkpoints, epoch log, a running/failed status):
        a fresh run there would mix its files with the old ones, and a later resume would take up the old run's
        checkpoint."""
        check_output_dir(self.path)
        status = None
        if (self.path / STATUS_FILE).is_file():
            try:
                status = json.loads((self.path / STATUS_FILE).read_text(encoding="utf-8")).get("status")
            # AttributeError: valid JSON that is not an object has no .get; such a file marks no complete run.
            except (OSError, ValueError, AttributeError):
                status = "unreadable"
            if status == "complete":
                raise OutputError(f"--output_dir {self.path}: holds a complete run; choose another --output_dir")
        if self.resuming or not self.path.is_dir():
            return
        checkpoints = sorted(p.name for p in self.path.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir())
        traces = [*checkpoints[-1:], *(name for name in (EPOCH_LOG,) if (self.path / name).exists())]
        if status is None and not traces:
            return
        found = ", ".join([*([f"status {status}"] if status else []), *traces])
        fix = ("continue it with --resume_from_checkpoint true, or choose another --output_dir" if checkpoints else
               "it has no checkpoint to resume from: remove it, or choose another --output_dir")
        raise OutputError(f"--output_dir {self.path}: holds another run that did not complete ({found}); {fix}")

    def hold_logs(self) -> None:
        """Keep log lines back until `start` (replayed to the console and train.log) or `discard` (dropped)."""
        if self._held is None:
            self._held = _HeldLogs()

    def start(self) -> RunDirectory:
        """Create the folder, mark it `running`, open train.log and replay the held log lines into it.

        From here on `discard` leaves the folder alone; end the run with `close`.
        """
        self.check_target()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # passed the up-front check, yet cannot be created (a special filesystem)
            raise OutputError(f"--output_dir {self.path}: cannot be created ({error.strerror or error}); choose "
                              "another --output_dir") from error
        self.set_status("running")
        self._log_handler = logging.FileHandler(self.path / "train.log", encoding="utf-8")
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        if self._held is not None:
            self._held.let_go(True, self._log_handler)
            self._held = None
        # transformers' library logger does not propagate to the root logger, so it needs the handler itself.
        for name in ("", "transformers"):
            logging.getLogger(name).addHandler(self._log_handler)
        self.started = True
        return self

    def release_logs(self) -> None:
        """Stop holding log lines and show the held ones (a process that writes no run directory, e.g. rank > 0)."""
        if self._held is not None:
            self._held.let_go(True)
            self._held = None

    def discard(self, error: BaseException | None = None, remove: bool = True) -> None:
        """A run refused before it started: remove what this process created there (with `remove`; only the main
        process may), drop the held log lines. They are replayed for a bug (not a `UserError`), where they help.
        """
        if self._held is not None:
            self._held.let_go(error is not None and not isinstance(error, UserError))
            self._held = None
        if self.started or not remove or not self.path.is_dir():
            return
        if self._entries_before is None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for name in set(os.listdir(self.path)) - self._entries_before:
            target = self.path / name
            # A link to a folder is unlinked, never followed: the folder it points to is not this run's.
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)

    def set_status(self, status: str, **details: Any) -> None:
        """Rewrite run_status.json as {"status", "time" (local, to the second), **details}."""
        write_json(self.path / STATUS_FILE, {"status": status, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **details})

    def write_json(self, name: str, payload: Any) -> Path:
        """`write_json` to `name` inside the run folder; returns the path written."""
        target = self.path / name
        write_json(target, payload)
        return target

    def _to_log_file(self, level: int, message: str, exc_info: Any = None) -> None:
        # The console already shows the error (one line, or the traceback of a bug): only train.log gets it here.
        if self._log_handler is not None:
            record = logging.getLogger("run_finetune").makeRecord(
                "run_finetune", level, __file__, 0, message, (), exc_info
            )
            self._log_handler.handle(record)

    def close(self, error: BaseException | None = None) -> None:
        """End a started run: `complete` without `error`, else `failed` with it (traceback in train.log for a bug).

        `notes` go into run_status.json either way; train.log is closed and detached from the loggers.
        """
        if error is None:
            logging.getLogger("run_finetune").info("run complete: %s", self.path)  # console and train.log
            self.set_status("complete", **self.notes)
        else:
            # Ctrl-C is the user's choice, not a bug: no traceback in train.log.
            bug = not isinstance(error, (UserError, KeyboardInterrupt))
            self._to_log_file(logging.ERROR, f"run failed: {type(error).__name__}: {error}",
                              (type(error), error, error.__traceback__) if bug else None)
            try:
                self.set_status("failed", error=f"{type(error).__name__}: {error}", **self.notes)
            except OSError as status_error:
                # The disk that failed the run may refuse this small file too; its earlier "running" still says
                # the run did not complete, and the error line the user sees is the run's own.
                logging.getLogger("run_finetune").warning("could not mark %s failed: %s", self.path, status_error)
        if self._log_handler is not None:
            for name in ("", "transformers"):
                logging.getLogger(name).removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
