"""`MultitaskConfig`: the encoder's config plus everything the two heads and the predictor need.

The label maps and the tuned gate thresholds live here (and nowhere else), so a saved model is
self-describing: `run_predict.py` needs nothing but the model directory or Hub id.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from transformers import AutoConfig, PretrainedConfig

GATE_ID2LABEL = {0: "Decline", 1: "Pick"}
DEFAULT_TEXT_COLUMNS = ["title", "body"]


def _int_keys(mapping: dict | None) -> dict[int, str]:
    # JSON turns int keys into strings; every reader of the config expects ints.
    return {int(k): str(v) for k, v in (mapping or {}).items()}


class MultitaskConfig(PretrainedConfig):
    r"""Configuration of a [`MultitaskModel`].

    Args:
        encoder_config (`dict` or `PretrainedConfig`): config of the shared encoder (any `AutoModel` type;
            DeBERTa-v2/v3 is the reference).
        category_id2label (`dict[int, str]`): the N categories of the category head, in logit order.
            Empty when the model has no category head (a gate-only Stage1 model).
        gate_id2label (`dict[int, str]`): the gate's labels, `{0: "Decline", 1: "Pick"}`; `None` when the
            model has no gate head (a category-only model).
        pooling (`str`): `"mean"` (attention-masked mean of the last hidden states) or `"cls"` (first token).
        classifier_dropout (`float`): dropout before both heads.
        gate_thresholds (`dict[str, float]`): named P(Pick) thresholds; `"default"` is 0.5 and the
            validation threshold search adds `"f1"`, `"acc"`, `"leak"`.
        text_columns (`list[str]`): the data columns joined into the model input, in order.
        pick_column (`str`): the column holding gold gate labels in the training data (`"pick"` by default);
            prediction and analysis read gold labels from the same column unless told otherwise.
        category_column (`str`): the column holding gold categories in the training data (`"category"` by
            default; e.g. `"label"` for a Hub dataset with `text`/`label` columns).
        msd_samples (`int`): multi-sample dropout: in training, head logits are averaged over this many
            dropout masks (1 = plain dropout).
        uncertainty_weighting (`bool`): the model carries learned per-task log-variances (Kendall et al.)
            that weight the two losses.
        gate_score (`str`): the in-scope score the gate thresholds apply to (`multitask.model.ood.ALL_SCORES`):
            `"pick"` = P(Pick); `"joint"` = P(Pick)·max_c P(c|Pick), the probability of the best Pick-and-category
            decision; `"msp"` = max_c P(c|Pick); `"energy"`, `"maha"` (Mahalanobis to the nearest category mean),
            `"knn"` (cosine to the k-th nearest training row), each squashed into (0, 1); `"pick_maha"` and
            `"pick_knn"` = P(Pick) times that feature score. See `multitask/model/ood.py`.
        calibration (`dict`): `{"gate_temperature": T1, "category_temperature": T2}` fitted on validation after
            training (`multitask.scoring.calibration`): every probability the model reports divides that head's logits by
            its temperature first. Absent: temperature 1.
        review_bands (`dict`): per gate threshold name, the score band [low, high) whose items
            `run_predict.py --review` sends to a person (decision "review"); set with `--review_share`.
        max_seq_length (`int`): the input length in tokens (special tokens included) the model was trained with;
            prediction uses it unless told otherwise. `None` in models saved before it was stored (prediction
            then uses 256).
        truncation (`str`): how a longer text is cut, in training and prediction alike
            (`multitask.data.text_encoding`): `"head"` keeps the beginning (the tokenizer's default), `"tail"` the end,
            `"head_tail"` the first `head_tokens` and the last tokens that fit.
        head_tokens (`int`): the head kept by `"head_tail"`; `None`: a quarter of the length.
        long_text (`str`): `"truncate"` (one input per text, cut as `truncation` says) or `"chunk"`: a longer text
            becomes overlapping windows of `max_seq_length` tokens sharing `chunk_stride` tokens (at most
            `max_chunks`, the first ones), and the window logits are recombined per text by `chunk_aggregation`
            (`"mean"` or `"max"`, chosen on validation after training); features are averaged.
        gate_statistics (`dict`): set once feature scores were fitted after training: `bank_size`, `knn_k`,
            `hidden_size`, and `squash` = {score: [center, scale]}. The class means, shared precision matrix and
            kNN bank themselves are model buffers (`gate_class_means`, `gate_precision`, `gate_bank`).
    """

    model_type = "multitask"
    sub_configs = {"encoder_config": AutoConfig}

    def __init__(
        self,
        encoder_config: dict | PretrainedConfig | None = None,
        category_id2label: dict | None = None,
        gate_id2label: dict | None = GATE_ID2LABEL,
        pooling: str = "mean",
        classifier_dropout: float = 0.1,
        gate_thresholds: dict[str, float] | None = None,
        text_columns: list[str] | None = None,
        msd_samples: int = 1,
        uncertainty_weighting: bool = False,
        gate_score: str = "pick",
        gate_statistics: dict | None = None,
        calibration: dict | None = None,
        review_bands: dict | None = None,
        max_seq_length: int | None = None,
        truncation: str = "head",
        head_tokens: int | None = None,
        long_text: str = "truncate",
        chunk_stride: int | None = None,
        max_chunks: int | None = None,
        chunk_aggregation: str = "mean",
        pick_column: str = "pick",
        category_column: str = "category",
        **kwargs: Any,
    ) -> None:
        if isinstance(encoder_config, dict):
            encoder_config = dict(encoder_config)
            # config.json stores the sub-config as a dict; its model_type picks the config class to rebuild.
            model_type = encoder_config.pop("model_type", "deberta-v2")
            encoder_config = AutoConfig.for_model(model_type, **encoder_config)
        elif encoder_config is None:
            encoder_config = AutoConfig.for_model("deberta-v2")
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        from multitask.model.ood import ALL_SCORES, FEATURE_SCORES

        if gate_score not in ALL_SCORES:
            raise ValueError(f"gate_score must be one of {', '.join(ALL_SCORES)}; got {gate_score!r}")
        # A squashed score without its fitted constants cannot be computed; refuse it here, not at prediction.
        if gate_statistics is None and any(part in FEATURE_SCORES or part == "energy" for part in gate_score.split("_")):
            raise ValueError(f"gate_score {gate_score!r} needs fitted gate statistics (fitted after training)")
        self.encoder_config = encoder_config
        self.category_id2label = _int_keys(category_id2label)
        self.gate_id2label = _int_keys(gate_id2label) if gate_id2label else None
        self.pooling = pooling
        self.classifier_dropout = classifier_dropout
        self.gate_thresholds = {str(k): float(v) for k, v in (gate_thresholds or {"default": 0.5}).items()}
        self.text_columns = list(text_columns or DEFAULT_TEXT_COLUMNS)
        self.pick_column = str(pick_column or "pick")
        self.category_column = str(category_column or "category")
        self.msd_samples = int(msd_samples)
        self.uncertainty_weighting = bool(uncertainty_weighting)
        self.gate_score = gate_score
        self.gate_statistics = dict(gate_statistics) if gate_statistics else None
        self.calibration = {str(k): float(v) for k, v in calibration.items()} if calibration else None
        self.review_bands = {str(k): [float(v[0]), float(v[1])] for k, v in (review_bands or {}).items()} or None
        if truncation not in ("head", "tail", "head_tail"):
            raise ValueError(f"truncation must be 'head', 'tail' or 'head_tail'; got {truncation!r}")
        self.max_seq_length = int(max_seq_length) if max_seq_length else None
        self.truncation = truncation
        self.head_tokens = int(head_tokens) if head_tokens is not None else None
        if long_text not in ("truncate", "chunk") or chunk_aggregation not in ("mean", "max"):
            raise ValueError(f"long_text must be 'truncate' or 'chunk' and chunk_aggregation 'mean' or 'max'; got "
                             f"{long_text!r}, {chunk_aggregation!r}")
        self.long_text = long_text
        self.chunk_stride = int(chunk_stride) if chunk_stride is not None else None
        self.max_chunks = int(max_chunks) if max_chunks else None
        self.chunk_aggregation = chunk_aggregation
        # Mirror the category map into the standard fields so Hub widgets and pipelines show names.
        if self.category_id2label and "id2label" not in kwargs:
            kwargs["id2label"] = dict(self.category_id2label)
        # PretrainedConfig.__init__ resets the attention implementation of every sub-config; keep the one the
        # encoder was loaded with (e.g. sdpa for BERT-style encoders), or they silently fall back to eager.
        encoder_attention = getattr(encoder_config, "_attn_implementation_internal", None)
        super().__init__(**kwargs)
        if encoder_attention is not None and self.encoder_config._attn_implementation is None:
            self.encoder_config._attn_implementation_internal = encoder_attention

    def head_temperature(self, head: str) -> float:
        """The calibration temperature of ``head`` (`"gate"` or `"category"`); 1.0 when not calibrated.

        Args:
            head (`str`):
                `"gate"` or `"category"`; any other name finds no stored temperature and gives 1.0.

        Returns:
            `float`: T > 0; every probability of that head is softmax(logits / T).
        """
        return float((self.calibration or {}).get(f"{head}_temperature", 1.0))

    @property
    def num_categories(self) -> int:
        """N, the width of the category head (0 for a gate-only model)."""
        return len(self.category_id2label)

    @property
    def has_gate(self) -> bool:
        """Whether the model has a Pick/Decline gate head (False for a category-only model)."""
        return bool(self.gate_id2label)

    @property
    def has_category(self) -> bool:
        """Whether the model has a category head (False for a gate-only Stage1 model)."""
        return self.num_categories > 0

    @property
    def category_label2id(self) -> dict[str, int]:
        """Category name -> logit index, derived from `category_id2label` (not stored separately)."""
        return {label: idx for idx, label in self.category_id2label.items()}

    @property
    def hidden_size(self) -> int:
        """The encoder's hidden size: the width of the pooled features both heads read."""
        return self.encoder_config.hidden_size

    def label_maps_hash(self) -> str:
        """A short hash of both label maps: predictions record it so outputs can be matched to a model.

        Returns:
            `str`: The first 16 hex digits of the SHA-256 of both maps as sorted-key JSON; equal for two
            models whose category names, their order and the gate map agree, whatever else differs.
        """
        payload = json.dumps(
            {"category": self.category_id2label, "gate": self.gate_id2label}, sort_keys=True, ensure_ascii=False
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
