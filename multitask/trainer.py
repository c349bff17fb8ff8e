"""`MultitaskTrainer`: a `transformers.Trainer` whose loss is λ1·gate + λ2·category (+ hierarchy, R-Drop).

Every term is a function in `losses.py`; this class only composes them, logs them, and builds LLRD groups.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers import Trainer

from . import losses
from .awp import AdversarialWeightPerturbation
from .callbacks import TrainingRecord
from .modeling import MultitaskOutput
from .optim import llrd_parameter_groups


def _split_halves(outputs: MultitaskOutput) -> tuple[MultitaskOutput, MultitaskOutput]:
    def half(logits: torch.Tensor | None, index: int) -> torch.Tensor | None:
        return None if logits is None else logits.chunk(2)[index]

    return tuple(
        MultitaskOutput(gate_logits=half(outputs.gate_logits, i), category_logits=half(outputs.category_logits, i),
                        features=half(outputs.features, i))
        for i in (0, 1)
    )


class MultitaskTrainer(Trainer):
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
        if self._shards_parameters() and hasattr(self.model, "get_base_model"):  # see full_model()
            raise NotImplementedError("LoRA with FSDP or ZeRO-3 is not supported here; use DDP (torchrun) with --lora_r")

    def _task_losses(self, outputs, gate_labels, category_labels) -> dict[str, torch.Tensor]:
        args = self.args
        terms = {}
        per_task = (
            ("gate", outputs.gate_logits, gate_labels, self.gate_class_weights, args.gate_label_smoothing),
            ("category", outputs.category_logits, category_labels, self.category_class_weights,
             args.category_label_smoothing),
        )
        for task, logits, labels, class_weights, smoothing in per_task:
            if logits is not None and labels is not None:
                weights = class_weights.to(logits.device) if class_weights is not None else None
                terms[f"{task}_loss"] = losses.masked_cross_entropy(logits, labels, weights, smoothing)
        both_heads = outputs.gate_logits is not None and outputs.category_logits is not None
        if both_heads and gate_labels is not None and args.hierarchy_weight > 0:
            terms["hierarchy_loss"] = losses.hierarchy_kl_to_uniform(outputs.category_logits, gate_labels)
        if both_heads and category_labels is not None and gate_labels is not None and args.pick_consistency_weight > 0:
            terms["pick_consistency_loss"] = losses.pick_consistency(
                outputs.gate_logits, outputs.category_logits, gate_labels, category_labels
            )
        return terms

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        gate_labels = inputs.get("gate_labels")
        category_labels = inputs.get("category_labels")
        row_ids = inputs.get("row_id")
        model_inputs = {k: v for k, v in inputs.items() if k not in ("gate_labels", "category_labels", "row_id")}
        args = self.args

        rdrop = args.rdrop and model.training
        contrastive = args.contrastive_weight > 0 and model.training and category_labels is not None
        if contrastive:
            model_inputs["output_features"] = True
        if rdrop:
            # R-Drop: two dropout passes, run as one forward on the batch stacked twice (dropout masks are drawn
            # per element, so the halves differ); cheaper than two forwards.
            both = model(**{key: torch.cat([value, value]) if torch.is_tensor(value) else value
                            for key, value in model_inputs.items()})
            outputs, second = _split_halves(both)
        else:
            outputs = model(**model_inputs)
        terms = self._task_losses(outputs, gate_labels, category_labels)
        if contrastive:
            terms["contrastive_loss"] = losses.supervised_contrastive(
                outputs.features, category_labels, args.contrastive_temperature)
        if rdrop:
            # CE averaged over both passes, plus the symmetric KL between them.
            second_terms = self._task_losses(second, gate_labels, category_labels)
            terms = {name: 0.5 * (value + second_terms[name]) if name in second_terms else value
                     for name, value in terms.items()}
            if outputs.category_logits is not None and args.rdrop_alpha_category > 0:
                mask = category_labels != losses.IGNORE_INDEX if category_labels is not None else None
                terms["rdrop_category_kl"] = losses.symmetric_kl(
                    outputs.category_logits, second.category_logits, mask
                )
            if outputs.gate_logits is not None and args.rdrop_alpha_gate > 0:
                terms["rdrop_gate_kl"] = losses.symmetric_kl(outputs.gate_logits, second.gate_logits)

        weights = {
            "gate_loss": args.gate_loss_weight,
            "category_loss": args.category_loss_weight,
            "hierarchy_loss": args.hierarchy_weight,
            "pick_consistency_loss": args.pick_consistency_weight,
            "rdrop_category_kl": args.rdrop_alpha_category,
            "rdrop_gate_kl": args.rdrop_alpha_gate,
            "contrastive_loss": args.contrastive_weight,
        }
        log_variances = getattr(self.accelerator.unwrap_model(model), "task_log_variances", None)
        if log_variances is not None:
            # Learned per-task weights replace λ1/λ2 for the two cross-entropies.
            task_names = [name for name in ("gate_loss", "category_loss") if name in terms]
            indices = [0 if name == "gate_loss" else 1 for name in task_names]
            loss = losses.uncertainty_weighted([terms[n] for n in task_names], log_variances[indices])
            loss = loss + sum(weights[n] * v for n, v in terms.items() if n not in task_names)
        else:
            loss = sum(weights[name] * value for name, value in terms.items())
        if not terms:  # a batch with no label for any head present: exact zero, still on the graph
            loss = sum(logits.sum() * 0.0 for logits in (outputs.gate_logits, outputs.category_logits) if logits is not None)

        mode = "train" if model.training else "eval"
        detached = {name: value.detach().float().item() for name, value in terms.items()}
        for name, value in detached.items():
            self._logged_terms[mode][name].append(value)
        if model.training and not self._adversarial_pass:
            record = self.training_record
            record.add_terms({"loss": loss.detach().float().item(), **detached})
            record.add_predictions("gate", outputs.gate_logits, gate_labels, row_ids)
            record.add_predictions("category", outputs.category_logits, category_labels, row_ids)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        args = self.args
        if args.awp_lr > 0 and (self.state.epoch or 0) >= args.awp_start_epoch:
            awp = AdversarialWeightPerturbation(model, args.awp_lr, args.awp_eps)
            awp.perturb()
            self._adversarial_pass = True
            try:
                with self.compute_loss_context_manager():
                    adversarial_loss = self.compute_loss(model, self._prepare_inputs(inputs))
                self.accelerator.backward(adversarial_loss / self.current_gradient_accumulation_steps)
            finally:
                self._adversarial_pass = False
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
        # Per-term means since the last log: training terms with the training loss, eval terms with eval_loss.
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for name, values in self._logged_terms[mode].items():
            if values:
                logs[prefix + name] = round(sum(values) / len(values), 6)
        self._logged_terms[mode].clear()
        super().log(logs, start_time)

    def _shards_parameters(self) -> bool:
        zero3 = self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        return self.is_fsdp_enabled or zero3

    def parallelism(self) -> str:
        """How training ran, for the run log: engine, process count, and this rank's share of the parameters."""
        world = self.args.world_size
        if self.is_fsdp_enabled:
            engine = f"FSDP{getattr(self.accelerator.state.fsdp_plugin, 'fsdp_version', '')}"
        elif self.is_deepspeed_enabled:
            engine = f"DeepSpeed ZeRO-{self.accelerator.state.deepspeed_plugin.zero_stage}"
        else:
            engine = "DDP" if world > 1 else "single process"
        # FSDP2 parameters are DTensors (to_local() is this rank's shard, numel() the whole); ZeRO-3 keeps the
        # shard in ds_tensor and the whole size in ds_numel.
        local = total = 0
        for param in self.model_wrapped.parameters():
            total += getattr(param, "ds_numel", param.numel())
            if hasattr(param, "to_local"):
                local += param.to_local().numel()
            else:
                local += param.ds_tensor.numel() if hasattr(param, "ds_tensor") else param.numel()
        share = f"; this rank holds {local / total:.1%} of the parameter elements" if total else ""
        return f"{engine} over {world} process(es){share}"

    def full_model(self):
        """The trained model with whole parameters, for scoring on the main process after training.

        DDP and ZeRO-1/2 keep whole parameters on every rank. FSDP and ZeRO-3 shard them, so a forward pass on
        one rank would wait forever for the others: gather a full state dict (a collective, so every rank calls
        this) into an unsharded copy on the main process that shares the config (thresholds set on it are saved).
        """
        model = self.accelerator.unwrap_model(self.model)
        if not self._shards_parameters():
            return model
        state_dict = self.accelerator.get_state_dict(self.deepspeed if self.is_deepspeed_enabled else self.model_wrapped)
        if not self.is_world_process_zero():
            return model
        whole = type(model)(model.config)
        whole.load_state_dict(state_dict)
        return whole.to(self.args.device).eval()

    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.args.layerwise_lr_decay == 1.0:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        unwrapped = self.accelerator.unwrap_model(opt_model)
        # Under LoRA (peft) parameter names gain a prefix; LLRD reads them relative to the MultitaskModel.
        base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
        num_layers = base.config.encoder_config.num_hidden_layers
        groups = llrd_parameter_groups(
            base,
            self.args.learning_rate,
            self.args.layerwise_lr_decay,
            self.args.weight_decay,
            self.get_decay_parameter_names(base),
            num_layers,
        )
        for group in groups:
            group.pop("param_names")
        # The optimizer class still comes from --optim, so any Trainer optimizer works with LLRD.
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer
