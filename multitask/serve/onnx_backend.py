"""Prediction on ONNX Runtime: a model exported by `python -m multitask.export`, behind the model interface that
`multitask.serve.predict.predict_scores` uses, so batching, gate scores and the prediction files are the PyTorch path's.

An export directory holds:

- `model.onnx`: the encoder, the pooling and both heads; inputs `input_ids`, `attention_mask` (dynamic batch and
  sequence axes); outputs `gate_logits`, `category_logits` (each only where the model has that head), `features`
  (the pooled vector both heads read, for the feature-based gate scores);
- `config.json`: the `MultitaskConfig` (label maps, gate thresholds, `gate_score`, `gate_statistics`);
- `gate_statistics.safetensors`: the class means, precision matrix and kNN bank behind the `maha`/`knn` gate
  scores (only when the model has fitted gate statistics);
- the tokenizer files, `export_info.json` (how it was exported) and `agreement.json` (the check against PyTorch).

Gate scores are computed from the ONNX outputs by the same code as in PyTorch (`MultitaskModel.in_scope_scores`,
which calls `multitask.model.ood.in_scope_scores`), so every `config.gate_score` works unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from multitask.errors import UsageError
from multitask.model.configuration import MultitaskConfig
from multitask.model.modeling import MultitaskModel, MultitaskOutput

ONNX_FILE = "model.onnx"
GATE_STATISTICS_FILE = "gate_statistics.safetensors"
EXPORT_INFO_FILE = "export_info.json"
AGREEMENT_FILE = "agreement.json"
# The model buffers behind the feature gate scores; stored under these names in GATE_STATISTICS_FILE.
GATE_STATISTICS_BUFFERS = ("gate_class_means", "gate_precision", "gate_bank")
BACKENDS = ("auto", "torch", "onnx")


def is_onnx_export(path: str | Path) -> bool:
    """Whether `path` is a directory holding both `model.onnx` and `config.json` (a Hub id never is)."""
    return (Path(path) / ONNX_FILE).is_file() and (Path(path) / "config.json").is_file()


def find_onnx_export(model: str | Path) -> Path:
    """The export directory for `model`: the directory itself, or a run directory's `onnx/` (the default export)."""
    path = Path(model)
    for candidate in (path, path / "onnx"):
        if is_onnx_export(candidate):
            return candidate
    raise ValueError(
        f"{model}: no ONNX export ({ONNX_FILE} and config.json) here or in {path / 'onnx'}; "
        f"export one with: python -m multitask.export {model} --onnx"
    )


def onnx_providers(device: str) -> list[str]:
    """ONNX Runtime execution providers for a `--device` choice: CPU, or CUDA where onnxruntime-gpu is installed."""
    import onnxruntime

    if device in ("auto", "cpu"):
        return ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        # CPU second: ONNX Runtime runs any node the CUDA provider has no kernel for on the next one listed.
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise UsageError(
        f"--device {device} with the ONNX backend: this onnxruntime offers "
        f"{onnxruntime.get_available_providers()} (CUDA needs the onnxruntime-gpu package)"
    )


class OnnxMultitaskModel:
    """An exported multitask model on an ONNX Runtime session, with the inference interface of `MultitaskModel`
    that `predict_scores` uses: `config`, `device`, `eval()`/`train()`, `__call__` returning a `MultitaskOutput`
    of torch tensors, and `in_scope_scores`.

    The session runs with `num_threads` intra-op threads (default `torch.get_num_threads()`, i.e. what the PyTorch
    path would use; `OMP_NUM_THREADS` sets both).
    """

    # The very function the PyTorch model uses: it reads `config.gate_statistics` and the three buffers, which
    # this class holds under the same names.
    in_scope_scores = MultitaskModel.in_scope_scores

    def __init__(
        self,
        path: str | Path,
        device: str = "auto",
        num_threads: int | None = None,
    ) -> None:
        import onnxruntime

        self.path = Path(path)
        self.config = MultitaskConfig.from_pretrained(self.path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(
            str(self.path / ONNX_FILE), options, providers=onnx_providers(device)
        )
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.output_names = [node.name for node in self.session.get_outputs()]
        # Inputs and outputs cross as host (numpy) arrays whatever the execution provider.
        self.device = torch.device("cpu")
        self.training = False
        self.gate_class_means = self.gate_precision = self.gate_bank = None
        statistics = self.path / GATE_STATISTICS_FILE
        if self.config.gate_statistics and statistics.is_file():
            from safetensors.torch import load_file

            for name, tensor in load_file(statistics).items():
                setattr(self, name, tensor)
        elif self.config.gate_statistics:
            raise FileNotFoundError(
                f"{statistics}: missing; the config has gate statistics ({self.config.gate_score})"
            )
        info = self.path / EXPORT_INFO_FILE
        self.precision = "float32"
        if info.is_file():
            self.precision = json.loads(info.read_text(encoding="utf-8")).get("precision", "float32")

    def eval(self) -> OnnxMultitaskModel:
        """A no-op, as `predict_scores` calls it: the exported graph has no dropout to switch off."""
        return self

    def train(self, mode: bool = True) -> OnnxMultitaskModel:
        """Refuse training mode (a `ValueError`); `train(False)` is accepted like `eval()`."""
        if mode:
            raise ValueError("an ONNX model is for inference only")
        return self

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, output_features: bool = False, **kwargs
    ) -> MultitaskOutput:
        """Run the session on one batch; `token_type_ids` and other extra inputs in `kwargs` are ignored.

        Returns CPU float32 tensors (also from an int8 export, whose outputs stay float); a head the model
        lacks is None, and so are `features` unless `output_features`.
        """
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        # int64: the graph was traced with torch.long inputs, and ONNX Runtime does not cast feeds itself.
        arrays = self.session.run(
            None,
            {
                name: np.ascontiguousarray(feeds[name].cpu().numpy(), dtype=np.int64)
                for name in self.input_names
            },
        )
        outputs = {name: torch.from_numpy(array) for name, array in zip(self.output_names, arrays)}
        return MultitaskOutput(
            gate_logits=outputs.get("gate_logits"),
            category_logits=outputs.get("category_logits"),
            features=outputs.get("features") if output_features else None,
        )


def onnx_export_for(model: str, backend: str = "auto", dtype: str = "auto") -> Path | None:
    """The ONNX export `run_predict.py --model/--backend/--dtype` asks for, or None for the PyTorch model.

    `auto`: ONNX when `model` is an export directory (it holds `model.onnx`). `onnx`: an export directory, or a
    run directory whose default export `<run dir>/onnx` exists. An export runs in the precision it was exported
    in, so `dtype` must then be `auto` or `float32`. Impossible combinations raise `ValueError`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    exported = is_onnx_export(model)
    if backend == "torch" and exported:
        raise ValueError(
            f"--model {model}: an ONNX export, not a PyTorch model; use --backend onnx (or auto)"
        )
    if backend == "torch" or (backend == "auto" and not exported):
        return None
    if dtype not in ("auto", "float32"):
        raise ValueError(
            f"--dtype {dtype} with the ONNX backend: an exported model runs in the precision it was "
            "exported in (python -m multitask.export --quantize int8 exports a faster one)"
        )
    return find_onnx_export(model)


def load_predictor(
    model: str, backend: str = "auto", device: str = "auto", dtype: str = "auto", config=None, tokenizer=None,
    **hub_kwargs
) -> tuple[MultitaskModel | OnnxMultitaskModel, object]:
    """Model and tokenizer on the backend `onnx_export_for` chooses, both usable by `predict_scores`:
    `multitask.serve.predict.load_model` (`hub_kwargs` go there), or an `OnnxMultitaskModel` of a local export.
    A `config` (PyTorch only) or `tokenizer` already loaded from the same place is reused."""
    from transformers import AutoTokenizer

    from multitask.serve.predict import load_model

    path = onnx_export_for(model, backend, dtype)
    if path is None:
        return load_model(model, device, config, tokenizer, **hub_kwargs)
    return OnnxMultitaskModel(path, device), tokenizer or AutoTokenizer.from_pretrained(path)
