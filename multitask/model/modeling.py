"""`MultitaskModel`: one shared encoder, a 2-way gate head and an N-way category head.

The encoder is any `AutoModel` (DeBERTa-v2/v3 is the reference); both heads read the same pooled vector.
Either head may be absent: a gate-only model is a Stage1 model, a category-only model is a plain classifier.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from multitask.model.configuration import GATE_ID2LABEL, MultitaskConfig
from multitask.model.losses import masked_cross_entropy
from multitask.model.ood import in_scope_scores

logger = logging.getLogger(__name__)


@dataclass
class MultitaskOutput(ModelOutput):
    """Forward output. `loss` is the plain unweighted sum of the two cross-entropies (the trainer builds its own).

    Attributes:
        loss (`torch.Tensor`, *optional*):
            0-dim, only when labels were passed to `forward`.
        gate_logits (`torch.Tensor` of shape `(batch, 2)`, *optional*):
            Column 0 Decline, column 1 Pick; None for a model without a gate head.
        category_logits (`torch.Tensor` of shape `(batch, N)`, *optional*):
            In the order of `config.category_id2label`; None for a gate-only model.
        features (`torch.Tensor` of shape `(batch, hidden)`, *optional*):
            The pooled vector before dropout, only with `output_features=True`.
    """

    loss: torch.Tensor | None = None
    gate_logits: torch.Tensor | None = None
    category_logits: torch.Tensor | None = None
    # Only with `output_features=True` (the Trainer would otherwise collect it as one more prediction array).
    features: torch.Tensor | None = None

    def split_stacked(self) -> tuple[MultitaskOutput, MultitaskOutput]:
        """The two halves of a forward on a batch stacked twice (R-Drop's two passes), as two outputs.

        Returns:
            `tuple[MultitaskOutput, MultitaskOutput]`: The first and second half of every tensor (the batch
            split in two equal parts, as `MultitaskTrainer` stacks it), without `loss`.
        """

        def half(values: torch.Tensor | None, index: int) -> torch.Tensor | None:
            return None if values is None else values.chunk(2)[index]

        return tuple(
            MultitaskOutput(gate_logits=half(self.gate_logits, i), category_logits=half(self.category_logits, i),
                            features=half(self.features, i))
            for i in (0, 1)
        )


def pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """Mean over real tokens (padding excluded) or the first ([CLS]) token.

    Args:
        hidden_states (`torch.Tensor` of shape `(batch, seq, hidden)`):
            The encoder's last hidden states.
        attention_mask (`torch.Tensor` of shape `(batch, seq)`, *optional*):
            1 for real tokens, 0 for padding; None averages every position.
        pooling (`str`):
            `"mean"`, or `"cls"` for the first token (any value other than `"cls"` means mean).

    Returns:
        `torch.Tensor` of shape `(batch, hidden)`, in the dtype of `hidden_states`.
    """
    if pooling == "cls":
        return hidden_states[:, 0]
    if attention_mask is None:
        return hidden_states.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
    # clamp: a row that is all padding pools to 0 rather than 0/0 = NaN.
    return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class MultitaskModel(PreTrainedModel):
    """Encoder → pooling (`config.pooling`) → dropout → gate head (2 logits) and category head (N logits).

    `encoder` passes an already loaded encoder (its weights are kept); without it one is built from
    `config.encoder_config` with random weights, as `from_pretrained` does before loading a checkpoint.
    Optional parts follow the config: `task_log_variances` (uncertainty weighting) and the three gate-statistics
    buffers (feature gate scores, only with a category head). Logits are never temperature-scaled here; the
    calibration temperatures apply where probabilities are made (`in_scope_scores`).

    Args:
        config (`MultitaskConfig`):
            Heads, label maps, pooling, dropout and the encoder's config.
        encoder (`PreTrainedModel`, *optional*):
            An `AutoModel` whose config matches `config.encoder_config`; its pooler, if any, is dropped.
    """

    config_class = MultitaskConfig
    # Must equal the encoder attribute name, or encoder weights are silently re-initialised on load.
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    main_input_name = "input_ids"

    def __init__(self, config: MultitaskConfig, encoder: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        self.encoder = encoder if encoder is not None else AutoModel.from_config(config.encoder_config)
        # BERT-style encoders carry a pooler we never use; unused parameters break DDP and waste optimizer state.
        if isinstance(getattr(self.encoder, "pooler", None), nn.Module):
            self.encoder.pooler = None
        hidden_size = config.encoder_config.hidden_size
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.gate_head = nn.Linear(hidden_size, 2) if config.has_gate else None
        self.category_head = nn.Linear(hidden_size, config.num_categories) if config.has_category else None
        # Kendall et al. uncertainty weighting: log σ² per task (gate, category), learned with the model.
        self.task_log_variances = nn.Parameter(torch.zeros(2)) if config.uncertainty_weighting else None
        if config.gate_statistics and config.has_category:
            # Shapes from the config, values from the checkpoint: from_pretrained fills these buffers.
            stats = config.gate_statistics
            self.register_buffer("gate_class_means", torch.zeros(config.num_categories, hidden_size))
            self.register_buffer("gate_precision", torch.zeros(hidden_size, hidden_size))
            self.register_buffer("gate_bank", torch.zeros(int(stats["bank_size"]), hidden_size))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Linear layers (how the new heads start): weights N(0, std = encoder's initializer_range), zero biases."""
        std = getattr(self.config.encoder_config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Module:
        """The encoder's word-embedding module (used by `resize_token_embeddings` and `freeze_word_embeddings`)."""
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Replace the encoder's word-embedding module."""
        self.encoder.set_input_embeddings(value)

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **encoder_kwargs
    ) -> torch.Tensor:
        """The pooled sentence vector both heads read (before dropout).

        Args:
            input_ids (`torch.Tensor` of shape `(batch, seq)`):
                Token ids.
            attention_mask (`torch.Tensor` of shape `(batch, seq)`, *optional*):
                1 for real tokens; also excludes padding from the mean pooling.
            **encoder_kwargs:
                Passed to the encoder (e.g. `token_type_ids`).

        Returns:
            `torch.Tensor` of shape `(batch, hidden)`: the `pool` of the last hidden states.
        """
        outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **encoder_kwargs)
        return pool(outputs.last_hidden_state, attention_mask, self.config.pooling)

    @staticmethod
    def _head_logits(head: nn.Linear | None, dropped: list[torch.Tensor]) -> torch.Tensor | None:
        """The head's logits averaged over the dropout samples in `dropped`; None when the model lacks the head."""
        if head is None:
            return None
        if len(dropped) == 1:
            return head(dropped[0])
        return torch.stack([head(sample) for sample in dropped]).mean(dim=0)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        gate_labels: torch.Tensor | None = None,
        category_labels: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_features: bool = False,
        **kwargs,
    ) -> MultitaskOutput:
        """Logits of both heads for a batch: `gate_logits` (batch, 2), `category_logits` (batch, N), or None for a
        head the model lacks; `features` (batch, hidden) only with `output_features`.

        With labels (`IGNORE_INDEX` = no label for that row), `loss` is the unweighted sum of the two masked
        cross-entropies, 0 for a batch with no usable label. Other keyword inputs are ignored.

        Args:
            input_ids (`torch.Tensor` of shape `(batch, seq)`):
                Token ids.
            attention_mask (`torch.Tensor` of shape `(batch, seq)`, *optional*):
                1 for real tokens, 0 for padding.
            gate_labels (`torch.Tensor` of shape `(batch,)`, *optional*):
                1 Pick, 0 Decline, -100 none; only used for `loss`.
            category_labels (`torch.Tensor` of shape `(batch,)`, *optional*):
                Category index or -100; only used for `loss`.
            token_type_ids (`torch.Tensor` of shape `(batch, seq)`, *optional*):
                Passed to the encoder when given.
            output_features (`bool`, *optional*, defaults to `False`):
                Also return the pooled vector (feature gate scores, contrastive loss, export).

        Returns:
            `MultitaskOutput`: In training mode the logits average `config.msd_samples` dropout masks.
        """
        encoder_kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        pooled = self.encode(input_ids, attention_mask, **encoder_kwargs)
        # Multi-sample dropout: in training, average the heads over several dropout masks.
        samples = self.config.msd_samples if self.training else 1
        dropped = [self.dropout(pooled) for _ in range(max(samples, 1))]
        gate_logits = self._head_logits(self.gate_head, dropped)
        category_logits = self._head_logits(self.category_head, dropped)

        loss = None
        if gate_labels is not None or category_labels is not None:
            # new_zeros: `loss` is a tensor on the forward's device even when no label is usable.
            loss = pooled.new_zeros(())
            if gate_logits is not None and gate_labels is not None:
                loss = loss + masked_cross_entropy(gate_logits, gate_labels)
            if category_logits is not None and category_labels is not None:
                loss = loss + masked_cross_entropy(category_logits, category_labels)
        return MultitaskOutput(loss=loss, gate_logits=gate_logits, category_logits=category_logits,
                               features=pooled if output_features else None)

    def attach_gate_statistics(self, fitted: dict) -> None:
        """Store feature-score statistics fitted after training (`multitask.model.ood.fit_gate_statistics`).

        The tensors become buffers (saved with the weights), the rest goes to `config.gate_statistics`.

        Args:
            fitted (`dict`):
                `fit_gate_statistics` output: `class_means` (N, hidden), `precision` (hidden, hidden), `bank`
                (bank rows, hidden), `knn_k` and `squash` ({score: (center, scale)}). Earlier statistics are
                replaced; the buffers land on the model's device in float32.
        """
        # Fitted on the CPU (numpy): the buffers must sit with the weights, or scoring mixes devices.
        device = next(self.parameters()).device
        for name, key in (("gate_class_means", "class_means"), ("gate_precision", "precision"), ("gate_bank", "bank")):
            if name in self._buffers:
                del self._buffers[name]
            self.register_buffer(name, fitted[key].to(device=device, dtype=torch.float32))
        self.config.gate_statistics = {
            "bank_size": int(fitted["bank"].shape[0]),
            "knn_k": int(fitted["knn_k"]),
            "hidden_size": int(fitted["bank"].shape[1]),
            "squash": {name: [float(c), float(s)] for name, (c, s) in fitted["squash"].items()},
        }

    def check_gate_statistics(self, source: str = "model") -> None:
        """Raise if the config names fitted gate statistics but the buffers are missing or were never loaded.

        transformers fills a buffer missing from a checkpoint with uninitialised memory (or zeros) and only logs
        it; a squashed feature score would then be constant or NaN and every item get the same decision.

        Args:
            source (`str`, *optional*, defaults to `"model"`):
                What was loaded (a path or Hub id), named in the message.

        Raises:
            `ValueError`: A buffer that is missing or non-finite, an all-zero precision matrix, or kNN bank
            rows that are not unit length. A model without gate statistics or without a category head always
            passes.
        """
        if not self.config.gate_statistics or not self.config.has_category:
            return
        buffers = [getattr(self, name, None) for name in ("gate_class_means", "gate_precision", "gate_bank")]
        broken = any(buffer is None or not bool(torch.isfinite(buffer).all()) for buffer in buffers)
        if not broken:
            # The bank is stored L2-normalised: rows of another length were never filled from the checkpoint.
            norms = torch.linalg.vector_norm(buffers[2].float(), dim=1)
            # 1e-3 absorbs rounding; rows never loaded (zeros or stale memory) are far from unit length.
            broken = not bool(buffers[1].abs().sum() > 0) or not bool(((norms - 1).abs() < 1e-3).all())
        if broken:
            raise ValueError(f"{source}: config.json names fitted gate statistics ({self.config.gate_score!r} gate "
                             "score) but the weights hold none, or damaged ones; re-save the model from its run, or "
                             "re-download it")

    def in_scope_scores(self, outputs: MultitaskOutput) -> dict[str, torch.Tensor]:
        """Every gate score this model can give for a forward output (`multitask.model.ood.in_scope_scores`).

        Args:
            outputs (`MultitaskOutput`):
                A forward output; the feature scores need it to carry `features` (`output_features=True`).

        Returns:
            `dict[str, torch.Tensor]`: Score name -> (batch,) float32 values in [0, 1], computed with the
            stored calibration temperatures; scores whose inputs or fitted statistics are missing are absent.
        """
        fitted = None
        stats = self.config.gate_statistics
        if stats and getattr(self, "gate_bank", None) is not None:
            fitted = {"class_means": self.gate_class_means, "precision": self.gate_precision,
                      "bank": self.gate_bank, "knn_k": stats["knn_k"], "squash": stats["squash"]}
        return in_scope_scores(outputs.gate_logits, outputs.category_logits, outputs.features, fitted,
                               self.config.head_temperature("gate"), self.config.head_temperature("category"))


def build_config(
    encoder_config,
    category_labels: list[str] | None,
    with_gate: bool = True,
    pooling: str = "mean",
    classifier_dropout: float = 0.1,
    text_columns: list[str] | None = None,
    **extra,
) -> MultitaskConfig:
    """A fresh config for the given encoder and label set (labels in the order of the category logits).

    `extra` takes the other `MultitaskConfig` fields (msd_samples, uncertainty_weighting).

    Args:
        encoder_config (`PretrainedConfig`):
            The encoder's config; its `pad_token_id` is copied to the new config.
        category_labels (`list[str]`, *optional*):
            Category names; position i is logit i. None or empty: no category head.
        with_gate (`bool`, *optional*, defaults to `True`):
            Whether the model has the Pick/Decline gate head.
        pooling (`str`, *optional*, defaults to `"mean"`):
            `"mean"` or `"cls"`.
        classifier_dropout (`float`, *optional*, defaults to 0.1):
            Dropout before both heads.
        text_columns (`list[str]`, *optional*):
            Data columns joined into the input; None: `["title", "body"]`.

    Returns:
        `MultitaskConfig`: With the default gate threshold 0.5 only; calibration and tuned thresholds come
        after training.

    Raises:
        `ValueError`: From `MultitaskConfig` for an invalid field value (pooling, gate score, truncation, …).
    """
    return MultitaskConfig(
        encoder_config=encoder_config,
        category_id2label=dict(enumerate(category_labels or [])),
        gate_id2label=GATE_ID2LABEL if with_gate else None,
        pooling=pooling,
        classifier_dropout=classifier_dropout,
        text_columns=text_columns,
        # Same pad id as the encoder, so the Trainer does not "align" the config with the tokenizer.
        pad_token_id=getattr(encoder_config, "pad_token_id", None),
        **extra,
    )


def load_for_training(
    model_name_or_path: str,
    category_labels: list[str] | None,
    with_gate: bool = True,
    pooling: str = "mean",
    classifier_dropout: float = 0.1,
    text_columns: list[str] | None = None,
    config_overrides: dict | None = None,
    encoder_kwargs: dict | None = None,
    **hub_kwargs,
) -> MultitaskModel:
    """Start a training run from a plain encoder checkpoint or from a saved multitask model.

    A plain encoder (e.g. `microsoft/deberta-v3-base`) gets its weights loaded through `AutoModel`, which knows
    each architecture's key prefixes; the heads are new. A saved multitask model (e.g. a Stage1 gate-only run)
    contributes its encoder, and each head whose label map is unchanged; other heads start fresh.
    `encoder_kwargs` go to a plain encoder's `from_pretrained` only (e.g. a bitsandbytes `quantization_config`).

    Args:
        model_name_or_path (`str`):
            A local directory or Hub id: a plain encoder checkpoint or a saved `MultitaskModel`.
        category_labels (`list[str]`, *optional*):
            The run's category names in logit order; None or empty for a gate-only model.
        with_gate (`bool`, *optional*, defaults to `True`):
            Whether the new model has a gate head.
        pooling (`str`, *optional*, defaults to `"mean"`):
            `"mean"` or `"cls"`; the run's value wins over a saved model's.
        classifier_dropout (`float`, *optional*, defaults to 0.1):
            Dropout before both heads.
        text_columns (`list[str]`, *optional*):
            Data columns joined into the input.
        config_overrides (`dict`, *optional*):
            Further `MultitaskConfig` fields (e.g. `msd_samples`, `max_seq_length`).
        encoder_kwargs (`dict`, *optional*):
            Extra `from_pretrained` arguments for a plain encoder.
        **hub_kwargs:
            For every `from_pretrained` call (e.g. `token`, `revision`, `cache_dir`).

    Returns:
        `MultitaskModel`: A fresh config (no tuned thresholds, calibration or gate statistics carried over).

    Raises:
        `ValueError`: `encoder_kwargs` with a saved multitask model (4/8-bit loading needs a plain encoder).
    """
    saved_config = AutoConfig.from_pretrained(model_name_or_path, **hub_kwargs)
    if isinstance(saved_config, MultitaskConfig):
        if encoder_kwargs:
            raise ValueError(f"{model_name_or_path}: 4/8-bit loading starts from a plain encoder checkpoint, "
                             "not a saved multitask model")
        config = build_config(
            saved_config.encoder_config, category_labels, with_gate, pooling, classifier_dropout, text_columns,
            **(config_overrides or {}),
        )
        source = MultitaskModel.from_pretrained(model_name_or_path, **hub_kwargs)
        model = MultitaskModel(config, encoder=source.encoder)
        # The gate's two labels never change, so a saved gate head always fits.
        if model.gate_head is not None and source.gate_head is not None:
            model.gate_head.load_state_dict(source.gate_head.state_dict())
        reused = ["encoder"]
        if model.gate_head is not None and source.gate_head is not None:
            reused.append("gate head")
        # Another label set gives each logit another meaning: only an identical map keeps the trained head.
        if model.category_head is not None and source.config.category_id2label == config.category_id2label:
            model.category_head.load_state_dict(source.category_head.state_dict())
            reused.append("category head")
        new = [head for head, present in (("gate head", model.gate_head is not None),
                                          ("category head", model.category_head is not None))
               if present and head not in reused]
        logger.info("loaded the saved multitask model %s (e.g. a Stage1 run): reused %s; new: %s",
                    model_name_or_path, ", ".join(reused), ", ".join(new) or "none")
        return model

    encoder = AutoModel.from_pretrained(model_name_or_path, **hub_kwargs, **(encoder_kwargs or {}))
    config = build_config(
        encoder.config, category_labels, with_gate, pooling, classifier_dropout, text_columns, **(config_overrides or {})
    )
    return MultitaskModel(config, encoder=encoder)


def freeze_word_embeddings(model: nn.Module) -> int:
    """Stop training the encoder's word-embedding matrix (position/token-type embeddings and LayerNorm still train).

    Works on a `MultitaskModel` or a peft wrapper of one. Returns the number of parameter elements frozen. The
    optimizer then leaves the matrix out (LLRD groups and the Trainer's own skip parameters without gradients).

    Args:
        model (`nn.Module`):
            Any model with `get_input_embeddings()`; changed in place, before the optimizer is built.

    Returns:
        `int`: Elements newly frozen; 0 when the embeddings were already frozen.
    """
    embeddings = model.get_input_embeddings()
    frozen = 0
    for parameter in embeddings.parameters():
        if parameter.requires_grad:
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    return frozen


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter elements; a tensor shared under two names counts once.

    Args:
        model (`nn.Module`):
            Any module (a peft wrapper counts its adapters and the frozen base).

    Returns:
        `tuple[int, int]`: Elements with `requires_grad`, and all elements. Buffers (e.g. the gate statistics)
        are not parameters and are not counted.
    """
    seen: dict[int, torch.nn.Parameter] = {id(p): p for p in model.parameters()}
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, sum(p.numel() for p in seen.values())


def register_auto_classes() -> None:
    """Make `AutoConfig`/`AutoModel` resolve `model_type="multitask"` (idempotent)."""
    try:
        AutoConfig.register(MultitaskConfig.model_type, MultitaskConfig)
    except ValueError:
        pass  # already registered
    try:
        AutoModel.register(MultitaskConfig, MultitaskModel)
    except ValueError:
        pass


register_auto_classes()
