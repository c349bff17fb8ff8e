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

from .configuration import GATE_ID2LABEL, MultitaskConfig
from .losses import masked_cross_entropy
from .ood import in_scope_scores

logger = logging.getLogger(__name__)


@dataclass
class MultitaskOutput(ModelOutput):
    """Forward output. `loss` is the plain unweighted sum of the two cross-entropies (the trainer builds its own)."""

    loss: torch.Tensor | None = None
    gate_logits: torch.Tensor | None = None
    category_logits: torch.Tensor | None = None
    # Only with `output_features=True` (the Trainer would otherwise collect it as one more prediction array).
    features: torch.Tensor | None = None


def pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """Mean over real tokens (padding excluded) or the first ([CLS]) token."""
    if pooling == "cls":
        return hidden_states[:, 0]
    if attention_mask is None:
        return hidden_states.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
    return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class MultitaskModel(PreTrainedModel):
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
        std = getattr(self.config.encoder_config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.encoder.set_input_embeddings(value)

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **encoder_kwargs
    ) -> torch.Tensor:
        """The pooled sentence vector both heads read (before dropout)."""
        outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **encoder_kwargs)
        return pool(outputs.last_hidden_state, attention_mask, self.config.pooling)

    @staticmethod
    def _head_logits(head: nn.Linear | None, dropped: list[torch.Tensor]) -> torch.Tensor | None:
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
        encoder_kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        pooled = self.encode(input_ids, attention_mask, **encoder_kwargs)
        # Multi-sample dropout: in training, average the heads over several dropout masks.
        samples = self.config.msd_samples if self.training else 1
        dropped = [self.dropout(pooled) for _ in range(max(samples, 1))]
        gate_logits = self._head_logits(self.gate_head, dropped)
        category_logits = self._head_logits(self.category_head, dropped)

        loss = None
        if gate_labels is not None or category_labels is not None:
            loss = pooled.new_zeros(())
            if gate_logits is not None and gate_labels is not None:
                loss = loss + masked_cross_entropy(gate_logits, gate_labels)
            if category_logits is not None and category_labels is not None:
                loss = loss + masked_cross_entropy(category_logits, category_labels)
        return MultitaskOutput(loss=loss, gate_logits=gate_logits, category_logits=category_logits,
                               features=pooled if output_features else None)

    def attach_gate_statistics(self, fitted: dict) -> None:
        """Store feature-score statistics fitted after training (`multitask.ood.fit_gate_statistics`).

        The tensors become buffers (saved with the weights), the rest goes to `config.gate_statistics`.
        """
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
        """
        if not self.config.gate_statistics or not self.config.has_category:
            return
        buffers = [getattr(self, name, None) for name in ("gate_class_means", "gate_precision", "gate_bank")]
        broken = any(buffer is None or not bool(torch.isfinite(buffer).all()) for buffer in buffers)
        if not broken:
            norms = torch.linalg.vector_norm(buffers[2].float(), dim=1)
            broken = not bool(buffers[1].abs().sum() > 0) or not bool(((norms - 1).abs() < 1e-3).all())
        if broken:
            raise ValueError(f"{source}: config.json names fitted gate statistics ({self.config.gate_score!r} gate "
                             "score) but the weights hold none, or damaged ones; re-save the model from its run, or "
                             "re-download it")

    def in_scope_scores(self, outputs: MultitaskOutput) -> dict[str, torch.Tensor]:
        """Every gate score this model can give for a forward output (`multitask.ood.in_scope_scores`)."""
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
        if model.gate_head is not None and source.gate_head is not None:
            model.gate_head.load_state_dict(source.gate_head.state_dict())
        reused = ["encoder"]
        if model.gate_head is not None and source.gate_head is not None:
            reused.append("gate head")
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
    """
    embeddings = model.get_input_embeddings()
    frozen = 0
    for parameter in embeddings.parameters():
        if parameter.requires_grad:
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    return frozen


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter elements; a tensor shared under two names counts once."""
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
