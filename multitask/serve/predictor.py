"""A trained run ready to decide: `load_model`, `prepare_prediction` and `Predictor` (the engine of run_predict.py
and of `multitask.Predictor`).

Loading happens in two steps so run_predict.py can check its input files before the weights are read:
`prepare_prediction` reads the config and tokenizer and checks every setting (threshold, review band, length,
precision, backend); `Predictor.load` then loads the weights. `Predictor.from_pretrained` does both. A mistake is
a `multitask.errors.UserError` whose message names the setting as run_predict.py spells it (`--threshold` is the
`threshold` argument).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoConfig, AutoTokenizer

from multitask.checks import (
    check_device,
    check_sequence_length,
    model_load_errors,
    resolve_model_source,
)
from multitask.data.text_encoding import check_chunking, check_truncation, special_template
from multitask.errors import ModelFileError, UsageError, usage_errors
from multitask.io.hub import resolve_token
from multitask.model.configuration import MultitaskConfig
from multitask.model.precision import cpu_has_native_bf16, precision_warnings, resolve_inference_dtype
from multitask.scoring.thresholds import resolve_threshold
from multitask.serve.onnx_backend import load_predictor, onnx_export_for
from multitask.serve.predict import (
    Scores,
    decide,
    predict_scores,
    prediction_table,
    select_device,
    significant,
    stored_max_length,
    top_categories,
)

logger = logging.getLogger(__name__)


def review_band(config: MultitaskConfig, threshold: str) -> tuple[float, float]:
    """The review band the model stores for a named threshold (trained with `--review_share`).

    Args:
        config (`MultitaskConfig`):
            The trained model's config.
        threshold (`str`):
            The threshold as given (`--threshold`): a stored name such as `"acc"`.

    Returns:
        `tuple[float, float]`: (low, high); a gate score in [low, high) is sent for review.

    Raises:
        `UsageError`: When the model stores no band for `threshold` (the message lists those it has).
    """
    bands = getattr(config, "review_bands", None) or {}
    band = bands.get(threshold)
    if band is None:
        raise UsageError(f"--review: the model stores no review band for --threshold {threshold}; bands "
                         f"exist for: {sorted(bands) or 'none'} (train with --review_share 0.05)")
    return tuple(band)


@dataclass
class PredictionSetup:
    """A trained model's config, tokenizer and checked prediction settings; the weights are not loaded yet."""

    model: str  # as the user named it: a run directory, its model/ directory, an ONNX export or a Hub id
    source: str  # what `from_pretrained` loads (a run directory's model/, an export directory, or the Hub id)
    onnx_dir: Path | None  # the ONNX export to run, or None for the PyTorch model
    config: MultitaskConfig
    tokenizer: object
    token: str | None
    max_seq_length: int
    threshold: float
    review_band: tuple[float, float] | None
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "auto"


def prepare_prediction(
    model: str,
    threshold: str | float = "default",
    review: bool = False,
    max_seq_length: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    backend: str = "auto",
) -> PredictionSetup:
    """Read a trained model's config and tokenizer and check every prediction setting against them.

    Args:
        model (`str`):
            A run directory of run_finetune.py, its `model/` directory, an ONNX export, or a Hub model id.
        threshold (`str` or `float`, *optional*, defaults to `"default"`):
            A threshold name the model stores (`default`, `f1`, `acc`, `leak`, `cost`) or a number in [0, 1].
        review (`bool`, *optional*, defaults to `False`):
            Flag items in the review band the model stores for `threshold` (see `review_band`).
        max_seq_length (`int`, *optional*):
            Input length in tokens; None: the length the model was trained with.
        device (`str`, *optional*, defaults to `"auto"`):
            `auto`, `cpu`, `cuda` or `mps`.
        dtype (`str`, *optional*, defaults to `"auto"`):
            Forward-pass precision: `auto`, `float32`, `bfloat16` or `float16`.
        backend (`str`, *optional*, defaults to `"auto"`):
            `torch`, `onnx`, or `auto` (ONNX for an export directory).

    Returns:
        `PredictionSetup`: Everything `Predictor.load` needs.

    Raises:
        `UserError`: A model that is missing, not a trained multitask model or corrupt; a setting that does not
        fit it (threshold name, review band, length, precision, backend).
    """
    check_device(device)
    with usage_errors():
        onnx_dir = onnx_export_for(model, backend, dtype)  # None: the PyTorch model
    source = str(onnx_dir) if onnx_dir else resolve_model_source(model, "--model", multitask_only=True)
    token = resolve_token()  # only for private Hub repos
    # Config and tokenizer first (small files): the caller may check its inputs before the weights are loaded.
    with model_load_errors(model, "--model"):
        config = AutoConfig.from_pretrained(source, token=token)
        tokenizer = AutoTokenizer.from_pretrained(source, token=token)
    if not isinstance(config, MultitaskConfig):
        raise ModelFileError(f"--model {model}: a plain {config.model_type!r} encoder, not a trained multitask "
                             "model; give a run directory of run_finetune.py or its model/ folder")
    max_seq_length = max_seq_length or stored_max_length(config)
    check_sequence_length(config.encoder_config, max_seq_length)
    # Long texts are cut as in training; an overriding --max_seq_length must still leave room for the tail.
    special_tokens = special_template(tokenizer).size
    check_truncation(config.truncation, config.head_tokens, max_seq_length, special_tokens)
    if config.long_text == "chunk":  # and neighbouring windows must still share fewer tokens than a window holds
        check_chunking("chunk", config.chunk_stride, config.max_chunks, max_seq_length, special_tokens)
    if not onnx_dir:
        with usage_errors():
            resolve_inference_dtype(dtype, select_device(device))
    with usage_errors("--threshold: "):
        threshold_value = resolve_threshold(threshold, config.gate_thresholds)
    band = review_band(config, str(threshold)) if review else None
    return PredictionSetup(model, source, onnx_dir, config, tokenizer, token, max_seq_length, threshold_value, band,
                           device, dtype, backend)


@dataclass
class Decision:
    """What the model decided for one text.

    `label` is ``Decline`` or the category name (``Pick`` for a gate-only model), as run_predict.py's `decision`
    column; `review` is True when the gate score lies in the review band of the threshold (run_predict.py
    --review then writes ``review`` instead). `pick_prob` is the gate score the threshold applies to (P(Pick)
    unless the model was trained with another --gate_score) and `category_prob` the probability of `category`.
    """

    label: str
    pick_prob: float | None  # the gate score the threshold applies to (P(Pick) by default); None without a gate
    category: str | None  # the most probable category, also for a declined text; None without a category head
    category_prob: float | None
    review: bool = False
    top_categories: list[tuple[str, float]] = field(default_factory=list)  # (name, probability), best first


class Predictor:
    """A trained model and its decision settings: texts in, `Decision`s out (the engine run_predict.py uses).

    Example:

    ```python
    predictor = Predictor.from_pretrained("output/my_run", threshold="acc")
    predictor.predict(["Central bank keeps rates on hold", "BUY NOW!!! 50% off"])
    ```
    """

    def __init__(self, model, tokenizer, setup: PredictionSetup, top_k: int = 3, batch_size: int = 64) -> None:
        """Use `Predictor.from_pretrained` or `Predictor.load`; this wires already loaded pieces together.

        Args:
            model (`MultitaskModel` or `OnnxMultitaskModel`):
                The loaded model, in eval mode on its device.
            tokenizer (`PreTrainedTokenizerBase`):
                Its tokenizer.
            setup (`PredictionSetup`):
                The checked settings (`prepare_prediction`).
            top_k (`int`, *optional*, defaults to 3):
                How many categories `Decision.top_categories` lists.
            batch_size (`int`, *optional*, defaults to 64):
                Texts per forward pass.
        """
        if not (isinstance(top_k, int) and top_k >= 1) or not (isinstance(batch_size, int) and batch_size >= 1):
            raise UsageError(f"top_k {top_k} / batch_size {batch_size}: each must be a whole number >= 1")
        self.model, self.tokenizer, self.setup = model, tokenizer, setup
        self.top_k, self.batch_size = top_k, batch_size
        with usage_errors():
            self.torch_dtype = resolve_inference_dtype(setup.dtype, model.device)
        # An ONNX export runs in the precision it was exported in (float32 or int8).
        self.dtype_name = model.precision if setup.onnx_dir else str(self.torch_dtype).removeprefix("torch.")

    @classmethod
    def load(cls, setup: PredictionSetup, top_k: int = 3, batch_size: int = 64) -> Predictor:
        """Load the weights `setup` points at and log what prediction will run on.

        Args:
            setup (`PredictionSetup`):
                From `prepare_prediction`.
            top_k (`int`, *optional*, defaults to 3):
                How many categories each decision lists.
            batch_size (`int`, *optional*, defaults to 64):
                Texts per forward pass.

        Returns:
            `Predictor`: Ready to `predict`.

        Raises:
            `ModelFileError`: When the weights do not load.
        """
        with model_load_errors(setup.model, "--model"):
            model, tokenizer = load_predictor(setup.source, setup.backend, setup.device,
                                              config=None if setup.onnx_dir else setup.config,
                                              tokenizer=setup.tokenizer, token=setup.token)
        predictor = cls(model, tokenizer, setup, top_k, batch_size)
        device, dtype = model.device, predictor.torch_dtype
        logger.info("predicting on %s in %s%s", device, predictor.dtype_name,
                    " with ONNX Runtime" if setup.onnx_dir else "")
        for message in precision_warnings(model.config.encoder_config.model_type, dtype == torch.float16,
                                          dtype == torch.bfloat16, device.type,
                                          flags=("--dtype float16", "--dtype bfloat16")):
            logger.warning(message)
        if not setup.onnx_dir and device.type == "cpu" and dtype == torch.float32 and cpu_has_native_bf16():
            logger.info("this CPU has native bf16: --dtype bfloat16 predicts about 2.5x faster (bench/README)")
        return predictor

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        threshold: str | float = "default",
        review: bool = False,
        top_k: int = 3,
        batch_size: int = 64,
        max_seq_length: int | None = None,
        device: str = "auto",
        dtype: str = "auto",
        backend: str = "auto",
    ) -> Predictor:
        """A trained run ready to decide, with run_predict.py's settings (see `prepare_prediction`).

        Args:
            model (`str` or `Path`):
                A run directory of run_finetune.py, its `model/` directory, an ONNX export, or a Hub model id.
            threshold (`str` or `float`, *optional*, defaults to `"default"`):
                A threshold name the model stores (`default`, `f1`, `acc`, `leak`, `cost`) or a number in [0, 1].
            review (`bool`, *optional*, defaults to `False`):
                Flag items in the review band the model stores for `threshold`.
            top_k (`int`, *optional*, defaults to 3):
                How many categories each decision lists.
            batch_size (`int`, *optional*, defaults to 64):
                Texts per forward pass.
            max_seq_length (`int`, *optional*):
                Input length in tokens; None: the length the model was trained with.
            device (`str`, *optional*, defaults to `"auto"`):
                `auto`, `cpu`, `cuda` or `mps`.
            dtype (`str`, *optional*, defaults to `"auto"`):
                `auto`, `float32`, `bfloat16` or `float16`.
            backend (`str`, *optional*, defaults to `"auto"`):
                `torch`, `onnx`, or `auto`.

        Returns:
            `Predictor`: Ready to `predict`.

        Raises:
            `UserError`: As `prepare_prediction` and `Predictor.load`.
        """
        setup = prepare_prediction(str(model), threshold, review, max_seq_length, device, dtype, backend)
        return cls.load(setup, top_k=top_k, batch_size=batch_size)

    @property
    def config(self) -> MultitaskConfig:
        """The model's config (label maps, stored thresholds, text columns)."""
        return self.model.config

    @property
    def threshold(self) -> float:
        """The gate threshold in use (a stored name resolved to its value)."""
        return self.setup.threshold

    def scores(self, texts: list[str], progress: bool = False) -> Scores:
        """The model's scores for `texts` (`multitask.serve.predict.predict_scores` with these settings).

        Args:
            texts (`list[str]`):
                The inputs, each already joined from its text columns.
            progress (`bool`, *optional*, defaults to `False`):
                Show a progress bar.

        Returns:
            `Scores`: One row per text, in input order.
        """
        return predict_scores(self.model, self.tokenizer, list(texts), self.batch_size, self.setup.max_seq_length,
                              progress=progress, dtype=self.torch_dtype)

    def table(self, frame: pd.DataFrame, scores: Scores, source: str = "the input") -> pd.DataFrame:
        """run_predict.py's prediction table for `frame`'s rows (`multitask.serve.predict.prediction_table`).

        Args:
            frame (`pd.DataFrame`):
                The input rows, in the order of `scores`.
            scores (`Scores`):
                From `scores`.

        Returns:
            `pd.DataFrame`: `frame` with pick_prob, pick_pred, category_pred, category_prob, category_top<k> and
            decision added.
        """
        return prediction_table(frame, scores, self.config, self.threshold, self.top_k, self.setup.review_band,
                                source)

    def predict(self, texts: list[str]) -> list[Decision]:
        """Decide every text, as run_predict.py does for a row whose text columns join into that text.

        Args:
            texts (`list[str]`):
                The texts (for a model trained on several text columns, join them with
                `multitask.data.text_encoding.text_separator(predictor.tokenizer)`).

        Returns:
            `list[Decision]`: One per text, in input order.
        """
        if isinstance(texts, str):
            raise UsageError("predict: give a list of texts, not one string")
        scores = self.scores(list(texts))
        labels, review = decide(scores, self.config, self.threshold, self.setup.review_band)
        top = [[] for _ in texts]
        if scores.category_probs is not None:
            ids, probs = top_categories(scores.category_probs, self.top_k)
            id2label = self.config.category_id2label
            top = [[(id2label[int(i)], round(float(p), 6)) for i, p in zip(row_ids, row_probs)]
                   for row_ids, row_probs in zip(ids, probs)]
        pick = None if scores.pick_prob is None else significant(scores.pick_prob)
        return [
            Decision(
                label=str(labels[row]),
                pick_prob=None if pick is None else float(pick[row]),
                category=top[row][0][0] if top[row] else None,
                category_prob=top[row][0][1] if top[row] else None,
                review=bool(review[row]),
                top_categories=top[row],
            )
            for row in range(len(top))
        ]


def load_model(model: str | Path, device: str = "auto") -> tuple:
    """A trained multitask model and its tokenizer, checked as run_predict.py checks them.

    Args:
        model (`str` or `Path`):
            A run directory of run_finetune.py, its `model/` directory, or a Hub model id.
        device (`str`, *optional*, defaults to `"auto"`):
            `auto` (CUDA, then Apple MPS, then CPU), `cpu`, `cuda` or `mps`.

    Returns:
        `tuple[MultitaskModel, PreTrainedTokenizerBase]`: The model in eval mode on `device`, and its tokenizer.

    Raises:
        `ModelFileError`: A missing, incomplete or corrupt model, or a plain encoder rather than a trained
        multitask model.
    """
    from multitask.serve.predict import load_model as load

    check_device(device)
    source = resolve_model_source(str(model), "--model", multitask_only=True)
    with model_load_errors(str(model), "--model"):
        return load(source, device, token=resolve_token())

