"""`MultitaskTrainer`: a `transformers.Trainer` whose loss is λ1·gate + λ2·category (+ optional terms).

Every term is a pure function in `losses.py` and their weighting is `losses.combine_terms`; this class runs the
forward pass(es), names the terms, logs them, and builds the LLRD optimizer groups. How a finished run was
distributed (and a whole copy of a sharded model) is `distributed.py`'s business, not this class's.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from multitask.model import losses
from multitask.model.modeling import MultitaskOutput
from multitask.train.awp import AdversarialWeightPerturbation
from multitask.train.callbacks import TrainingRecord
from multitask.train.distributed import shards_parameters
from multitask.train.optim import llrd_parameter_groups

logger = logging.getLogger(__name__)

# Batch columns the loss and the logs read but the model's forward does not take.
NOT_MODEL_INPUTS = ("gate_labels", "category_labels", "row_id", "document")


class MultitaskTrainer(Trainer):
    """A Trainer for `MultitaskModel`: per-head masked losses with class weights, per-term logs, LLRD, AWP.

    `gate_class_weights` / `category_class_weights`: one weight per class (None: unweighted). `training_record`
    collects each training step's terms and predictions for the epoch log and cartography callbacks.
    """

    def __init__(
        self,
        *args,
        gate_class_weights: torch.Tensor | None = None,
        category_class_weights: torch.Tensor | None = None,
        training_record: TrainingRecord | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.gate_class_weights = gate_class_weights
        self.category_class_weights = category_class_weights
        # Filled at every training step; per-epoch logs and cartography read it (no second data pass).
        self.training_record = training_record if training_record is not None else TrainingRecord()
        self._adversarial_pass = False
        # We average over labelled rows ourselves; the Trainer must not rescale by num_items_in_batch,
        # and must divide our per-batch mean by the gradient-accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self._logged_terms: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        if shards_parameters(self) and hasattr(self.model, "get_base_model"):  # see distributed.full_model()
            raise NotImplementedError("LoRA with FSDP or ZeRO-3 is not supported here; use DDP (torchrun) with --lora_r")

    def _task_losses(self, outputs, gate_labels, category_labels) -> dict[str, torch.Tensor]:
        """The per-head cross-entropies and the two hierarchy terms of one forward pass (`losses.task_terms`)."""
        args = self.args
        return losses.task_terms(
            outputs.gate_logits, outputs.category_logits, gate_labels, category_labels,
            class_weights=(self.gate_class_weights, self.category_class_weights),
            smoothing=(args.gate_label_smoothing, args.category_label_smoothing),
            with_hierarchy=args.hierarchy_weight > 0, with_pick_consistency=args.pick_consistency_weight > 0,
            # Training only: in evaluation the term would reward confident models in eval_loss.
            pseudo_label_threshold=args.pseudo_label_threshold
            if args.pseudo_label_weight > 0 and self.model.training else None)

    def _get_train_sampler(self, train_dataset=None):
        """The Trainer's sampler; a length-grouped one gets a generator seeded with --data_seed (else --seed).

        The Trainer's own draws its shuffle from the global RNG, which differs between DDP processes: their shards
        of an epoch would then overlap and miss rows. Seeded alike, every process draws the same permutation, and
        the generator advances, so each epoch still shuffles anew.
        """
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler) and sampler.generator is None:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            sampler.generator = torch.Generator().manual_seed(seed)
        return sampler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """λ1·gate CE + λ2·category CE + the optional terms, on the rows that carry each label.

        Overridden because the model has two heads and a label may be missing per row (-100); every term is a pure
        function in `losses.py`. `num_items_in_batch` is ignored: each term is already a mean over its labelled
        rows, and the Trainer divides by the gradient-accumulation steps (see `__init__`).
        """
        gate_labels, category_labels = inputs.get("gate_labels"), inputs.get("category_labels")
        model_inputs = {k: v for k, v in inputs.items() if k not in NOT_MODEL_INPUTS}
        outputs, second = self._forward(model, model_inputs, with_features=self._wants_contrastive(model, inputs))
        terms = self._loss_terms(outputs, second, gate_labels, category_labels)
        log_variances = getattr(self.accelerator.unwrap_model(model), "task_log_variances", None)
        loss = losses.combine_terms(terms, self.args.loss_term_weights(), log_variances)
        if loss is None:  # a batch with no label for any head present: exact zero, still on the graph
            loss = losses.graph_zero(outputs.gate_logits, outputs.category_logits)
        self._record(model, loss, terms, outputs, gate_labels, category_labels, inputs.get("row_id"))
        return (loss, outputs) if return_outputs else loss

    def _wants_contrastive(self, model, inputs) -> bool:
        return self.args.contrastive_weight > 0 and model.training and inputs.get("category_labels") is not None

    def _forward(self, model, model_inputs: dict, with_features: bool) -> tuple[MultitaskOutput, MultitaskOutput | None]:
        """One forward, or for R-Drop (in training) one forward on the batch stacked twice, split into two passes
        (dropout masks are drawn per element, so the halves differ; cheaper than two forwards)."""
        if with_features:
            model_inputs = {**model_inputs, "output_features": True}
        if not (self.args.rdrop and model.training):
            return model(**model_inputs), None
        stacked = {key: torch.cat([value, value]) if torch.is_tensor(value) else value
                   for key, value in model_inputs.items()}
        return model(**stacked).split_stacked()

    def _loss_terms(self, outputs, second, gate_labels, category_labels) -> dict[str, torch.Tensor]:
        """Every unweighted term of this batch, by the name its weight and its log line use."""
        args = self.args
        terms = self._task_losses(outputs, gate_labels, category_labels)
        if second is not None:
            # R-Drop: CE averaged over both passes, plus the symmetric KL between them.
            second_terms = self._task_losses(second, gate_labels, category_labels)
            terms = {name: 0.5 * (value + second_terms[name]) for name, value in terms.items()}
            if outputs.category_logits is not None and args.rdrop_alpha_category > 0:
                mask = category_labels != losses.IGNORE_INDEX if category_labels is not None else None
                terms["rdrop_category_kl"] = losses.symmetric_kl(outputs.category_logits, second.category_logits, mask)
            if outputs.gate_logits is not None and args.rdrop_alpha_gate > 0:
                terms["rdrop_gate_kl"] = losses.symmetric_kl(outputs.gate_logits, second.gate_logits)
        if outputs.features is not None and category_labels is not None:
            terms["contrastive_loss"] = losses.supervised_contrastive(
                outputs.features, category_labels, args.contrastive_temperature)
        return terms

    def _record(self, model, loss, terms, outputs, gate_labels, category_labels, row_ids) -> None:
        """Per-term values for the logs; in training also the step's predictions for the epoch log and cartography
        (not for the adversarial AWP pass, which sees perturbed weights)."""
        detached = {name: value.detach().float().item() for name, value in terms.items()}
        for name, value in detached.items():
            self._logged_terms["train" if model.training else "eval"][name].append(value)
        if model.training and not self._adversarial_pass:
            self.training_record.add_terms({"loss": loss.detach().float().item(), **detached})
            self.training_record.add_predictions("gate", outputs.gate_logits, gate_labels, row_ids)
            self.training_record.add_predictions("category", outputs.category_logits, category_labels, row_ids)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The Trainer's step, plus (with `--awp_lr`) a second backward at adversarially perturbed weights
        (AWP), whose gradient adds to the first before the optimizer step."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        args = self.args
        if args.awp_lr > 0 and (self.state.epoch or 0) >= args.awp_start_epoch:
            awp = AdversarialWeightPerturbation(model, args.awp_lr, args.awp_eps)
            awp.perturb()
            self._adversarial_pass = True
            try:
                with self.compute_loss_context_manager():
                    # `inputs` is the batch as received: the parent step's prepared copy is not returned.
                    adversarial_loss = self.compute_loss(model, self._prepare_inputs(inputs))
                # Divided as the parent divided the first loss: both gradients weigh alike under accumulation.
                self.accelerator.backward(adversarial_loss / self.current_gradient_accumulation_steps)
            finally:
                self._adversarial_pass = False
                # In `finally`: an error in the second pass must not leave the perturbed weights in the model.
                awp.restore()
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        # The Trainer computes the pre-clip norm at every optimizer step but logs only the last one;
        # keep each for the epoch's mean and max.
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if grad_norm is not None:
            self.training_record.grad_norms.append(float(grad_norm))
        return grad_norm

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's log line plus each loss term's mean since the last log (training terms next to the
        training loss, `eval_`-prefixed terms next to eval_loss)."""
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for name, values in self._logged_terms[mode].items():
            if values:
                logs[prefix + name] = round(sum(values) / len(values), 6)
        self._logged_terms[mode].clear()
        super().log(logs, start_time)

    def create_optimizer(self, model=None):
        """The `--optim` optimizer over layer-wise decayed learning-rate groups (`optim.llrd_parameter_groups`);
        the Trainer's own when `--layerwise_lr_decay 1.0`."""
        if self.optimizer is not None or self.args.layerwise_lr_decay == 1.0:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        unwrapped = self.accelerator.unwrap_model(opt_model)
        # Under LoRA (peft) parameter names gain a prefix; LLRD reads them relative to the MultitaskModel.
        base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
        num_layers = base.config.encoder_config.num_hidden_layers
        groups = llrd_parameter_groups(base, self.args.learning_rate, self.args.layerwise_lr_decay,
                                       self.args.weight_decay, self.get_decay_parameter_names(base), num_layers)
        for group in groups:
            group.pop("param_names")
        # The decay compounds with depth: 0.8 leaves a 12-layer encoder's embeddings at 7 % of the top's rate, which
        # cost 1-2 pp on livedoor titles (bench/README §5); say so where a user sees it.
        lowest = min(group["lr"] for group in groups)
        logger.info("layer-wise LR decay %g over %d layers: the lowest trained group runs at %.1f%% of --learning_rate "
                    "(--layerwise_lr_decay 1.0 turns it off)", self.args.layerwise_lr_decay, num_layers,
                    100.0 * lowest / self.args.learning_rate)
        # The optimizer class still comes from --optim, so any Trainer optimizer works with LLRD.
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer
