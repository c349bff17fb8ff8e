"""Modules of the flat 0.0 layout, and where each lives now: importing an old name fails with the new one.

Installed at the end of `sys.meta_path` by `multitask/__init__.py`, so it is asked only after every real finder
found nothing. A clear ModuleNotFoundError rather than an alias: two names for one module would drift.
"""

from __future__ import annotations

import importlib.abc

MOVED = {
    "agreement": "export.agreement", "arguments": "train.arguments", "awp": "train.awp", "build": "train.build",
    "calibration": "scoring.calibration", "callbacks": "train.callbacks", "configuration": "model.configuration",
    "distributed": "train.distributed", "finish": "train.finish", "gate_selection": "scoring.gate_selection",
    "hp_search": "train.hp_search", "inputs": "train.inputs", "lora": "model.lora", "losses": "model.losses",
    "metrics": "scoring.metrics", "model_card": "scoring.model_card", "modeling": "model.modeling",
    "onnx_backend": "serve.onnx_backend", "ood": "model.ood", "optim": "train.optim", "precision": "model.precision",
    "predict": "serve.predict", "quantization": "export.quantization", "reporting": "train.reporting",
    "rundir": "io.rundir", "smoothing": "export.smoothing", "splits": "data.splits", "stats": "scoring.stats",
    "tables": "io.tables", "text_encoding": "data.text_encoding", "thresholds": "scoring.thresholds",
    "trainer": "train.trainer",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Answers an import of `multitask.<old>` that no other finder resolved with where the module went."""

    def find_spec(self, fullname: str, path=None, target=None):
        old = fullname.removeprefix("multitask.")
        if fullname.startswith("multitask.") and old in MOVED:
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: it moved to 'multitask.{MOVED[old]}' when the package was split "
                "into stages (docs/layout.md); the public names are also importable from 'multitask' itself",
                name=fullname)
        return None
