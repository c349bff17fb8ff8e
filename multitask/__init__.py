"""multitask: hierarchical multitask text classification (a Pick/Decline gate and an N-way category head).

The public API, for training and predicting from Python (the scripts do the same from a shell)::

    from multitask import DataArguments, ModelArguments, MultitaskTrainingArguments, Predictor, finetune

    finetune(ModelArguments(model_name_or_path="microsoft/deberta-v3-base"),
             DataArguments(task1_file="task1.csv", task2_file="task2.csv", validation_file="val.csv"),
             MultitaskTrainingArguments(output_dir="runs/mine"))        # = python run_finetune.py --...
    Predictor.from_pretrained("runs/mine", threshold="acc").predict(["a text", "another"])

Every name is imported on first use (PEP 562), so `import multitask` and `python -m multitask.<tool>` stay fast.
The stages live in subpackages: `io`, `data`, `model`, `train`, `scoring`, `serve`, `export`.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from multitask._moved import MovedModuleFinder

__version__ = "0.1.0"

# `import multitask.modeling` (the flat layout) then says where the module went, instead of a bare "not found".
if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(MovedModuleFinder())

# Public name -> the module that defines it; imported by `__getattr__` on first access.
_PUBLIC = {
    "MultitaskConfig": "multitask.model.configuration",
    "MultitaskModel": "multitask.model.modeling",
    "MultitaskTrainer": "multitask.train.trainer",
    "MultitaskTrainingArguments": "multitask.train.arguments",
    "ModelArguments": "multitask.train.arguments",
    "DataArguments": "multitask.train.arguments",
    "finetune": "multitask.train.finetune",
    "load_model": "multitask.serve.predictor",
    "Predictor": "multitask.serve.predictor",
    "Decision": "multitask.serve.predictor",
    "UserError": "multitask.errors",
}

__all__ = [  # spelled out (not derived from _PUBLIC) so linters and IDEs read it; test_api checks they agree
    "DataArguments",
    "Decision",
    "ModelArguments",
    "MultitaskConfig",
    "MultitaskModel",
    "MultitaskTrainer",
    "MultitaskTrainingArguments",
    "Predictor",
    "UserError",
    "__version__",
    "finetune",
    "load_model",
]

if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from multitask.errors import UserError
    from multitask.model.configuration import MultitaskConfig
    from multitask.model.modeling import MultitaskModel
    from multitask.serve.predictor import Decision, Predictor, load_model
    from multitask.train.arguments import DataArguments, ModelArguments, MultitaskTrainingArguments
    from multitask.train.finetune import finetune
    from multitask.train.trainer import MultitaskTrainer


def __getattr__(name: str) -> Any:
    """Import a public name on first use and keep it, so later lookups are plain attribute reads."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'multitask' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(__all__) | {name for name in globals() if name.startswith("__")})
