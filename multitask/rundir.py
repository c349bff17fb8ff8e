"""The run directory: status marker, train.log, JSON files, and the provenance recorded in run_config.json.

A run starts with `run_status.json` = running; only a run that reached its end says `complete`, and one that
raised says `failed` with the error, so a half-written directory never looks like a finished one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

STATUS_FILE = "run_status.json"
_LIBRARIES = ("torch", "transformers", "datasets", "accelerate", "huggingface_hub", "scikit-learn", "tokenizers")


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
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
            key: ("<redacted>" if "token" in key and value not in (None, "") and key != "hub_always_push" else value)
            for key, value in values.items()
            if not key.startswith("_")
        }
    return record


def setup_logging(main_process: bool = True) -> None:
    """INFO from our scripts and package, to the console; transformers stays at WARNING.

    Other ranks of a distributed run log warnings only (as the Trainer's `log_level_replica` does).
    """
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for name in ("run_finetune", "run_predict", "multitask", "analysis"):
        logging.getLogger(name).setLevel(logging.INFO if main_process else logging.WARNING)


class RunDirectory:
    """Owns one run's output folder. Only the main process should create one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._log_handler: logging.Handler | None = None

    def start(self) -> RunDirectory:
        if (self.path / STATUS_FILE).is_file():
            status = json.loads((self.path / STATUS_FILE).read_text(encoding="utf-8")).get("status")
            if status == "complete":
                raise FileExistsError(f"{self.path} holds a complete run; choose another --output_dir")
        self.path.mkdir(parents=True, exist_ok=True)
        self.set_status("running")
        self._log_handler = logging.FileHandler(self.path / "train.log", encoding="utf-8")
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for name in ("", "transformers"):
            logging.getLogger(name).addHandler(self._log_handler)
        return self

    def set_status(self, status: str, **details: Any) -> None:
        write_json(self.path / STATUS_FILE, {"status": status, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **details})

    def write_json(self, name: str, payload: Any) -> Path:
        target = self.path / name
        write_json(target, payload)
        return target

    def close(self, error: BaseException | None = None) -> None:
        if error is None:
            self.set_status("complete")
        else:
            self.set_status("failed", error=f"{type(error).__name__}: {error}")
        if self._log_handler is not None:
            for name in ("", "transformers"):
                logging.getLogger(name).removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
