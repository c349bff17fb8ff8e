"""Per-epoch training logs and dataset cartography, from what training already computes.

Not here: the learning-curve figures (`plots`, drawn from epoch_log.jsonl / trainer_state.json afterwards) and
the losses themselves (`losses`, composed in `trainer`).

`TrainingRecord` is filled by `MultitaskTrainer.compute_loss` at every training step (detached loss terms,
the gold-label probabilities of each row, gradient norms); the callbacks read it at epoch end, after merging
what every process recorded (under DDP each sees only its shard). Nothing here runs a second pass over the
data. Only the main process writes files.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from multitask.labels import IGNORE_INDEX

logger = logging.getLogger(__name__)

# The validation figures copied into each row; trainer_state.json keeps every logged metric.
_EVAL_KEYS = (
    "eval_loss", "eval_gate_loss", "eval_category_loss", "eval_hierarchy_loss",
    "eval_gate_accuracy", "eval_gate_precision", "eval_gate_recall", "eval_gate_f1", "eval_gate_decline_leak",
    "eval_category_accuracy", "eval_category_macro_f1", "eval_category_weighted_f1", "eval_category_top3_accuracy",
    "eval_joint_accuracy", "eval_joint_macro_f1", "eval_gate_ece", "eval_category_ece",
    "eval_category_recall_high", "eval_category_recall_mid", "eval_category_recall_low",
)  # fmt: skip


class TrainingRecord:
    """What the training steps of the current epoch produced; reset at each epoch start.

    Attributes:
        loss_terms (`dict[str, list[float]]`):
            Per loss name (`loss` = the total, `gate_loss`, …), one value per micro-batch.
        grad_norms (`list[float]`):
            Pre-clipping gradient norm of each optimizer step (appended by `MultitaskTrainer._get_grad_norm`).
        rows (`dict[str, list[np.ndarray]]`):
            Per `<task>_<field>` (`row_id`, `gold_prob`, `pred`, `gold`), one array per recorded batch.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded (called at each epoch start by `EpochLogCallback`)."""
        self.loss_terms: dict[str, list[float]] = defaultdict(list)
        self.grad_norms: list[float] = []
        # per task: row ids, probability of the gold label, whether argmax was right, the argmax
        self.rows: dict[str, list[np.ndarray]] = defaultdict(list)
        self._merged = False

    def merge_processes(self) -> None:
        """Under DDP, give every process all processes' rows (each row once) and loss terms for this epoch.

        A collective: every process calls it at each epoch end (callbacks run on all ranks); a second call in
        the same epoch is a no-op. Gradient norms are already global (taken after the all-reduce).
        """
        if self._merged or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        local = {
            "rows": {key: np.concatenate(parts) for key, parts in self.rows.items() if parts},
            "loss_terms": dict(self.loss_terms),
        }
        parts: list[Any] = [None] * dist.get_world_size()
        # all_gather_object: ranks hold different numbers of rows, which a tensor all_gather cannot take.
        dist.all_gather_object(parts, local)
        merged: dict[str, list[np.ndarray]] = defaultdict(list)
        self.loss_terms = defaultdict(list)
        for part in parts:
            for key, values in part["rows"].items():
                merged[key].append(values)
            for name, values in part["loss_terms"].items():
                self.loss_terms[name].extend(values)
        # DDP's sampler repeats a few rows so that the shards come out even: keep each row's first record.
        self.rows = defaultdict(list)
        for task in {key.split("_", 1)[0] for key in merged}:
            ids = np.concatenate(merged[f"{task}_row_id"])
            _, first = np.unique(ids, return_index=True)
            keep = np.sort(np.concatenate([first[ids[first] >= 0], np.flatnonzero(ids < 0)]))  # -1: no row id
            for field in ("row_id", "gold_prob", "pred", "gold"):
                self.rows[f"{task}_{field}"] = [np.concatenate(merged[f"{task}_{field}"])[keep]]
        self._merged = True

    def add_terms(self, terms: dict[str, float]) -> None:
        """Append one micro-batch's loss values (plain floats, `loss` = the total) to their per-name lists.

        Args:
            terms (`dict[str, float]`):
                Detached loss values by name; a name not seen before starts a new list.
        """
        for name, value in terms.items():
            self.loss_terms[name].append(value)

    def add_predictions(self, task: str, logits: torch.Tensor | None, labels: torch.Tensor | None, row_ids) -> None:
        """Record, for the rows of a batch labelled for `task`, P(gold), the argmax, the gold id and the row id.

        Args:
            task (`str`):
                `"gate"` or `"category"`; the prefix of the `rows` keys.
            logits (`torch.Tensor` of shape `(batch, classes)`, *optional*):
                One head's logits at training-time dropout; None (the model lacks the head) records nothing.
            labels (`torch.Tensor` of shape `(batch,)`, *optional*):
                Gold ids, `IGNORE_INDEX` for rows without this task's label (skipped); None records nothing.
            row_ids (`torch.Tensor` of shape `(batch,)`, *optional*):
                Each row's id in the training set (the `row_id` column). Without it the rows are recorded with
                id -1: they count in the train accuracy but match no row of cartography.csv.
        """
        if logits is None or labels is None:
            return
        labelled = labels != IGNORE_INDEX
        if not bool(labelled.any()):
            return
        # float(): softmax in fp32, and numpy (below) has no bfloat16.
        probs = torch.softmax(logits[labelled].detach().float(), dim=-1)
        gold = labels[labelled]
        self.rows[f"{task}_gold_prob"].append(probs.gather(1, gold.unsqueeze(1)).squeeze(1).cpu().numpy())
        self.rows[f"{task}_pred"].append(probs.argmax(dim=-1).cpu().numpy())
        self.rows[f"{task}_gold"].append(gold.cpu().numpy())
        ids = row_ids[labelled].cpu().numpy() if row_ids is not None else np.full(int(labelled.sum()), -1)
        self.rows[f"{task}_row_id"].append(ids)

    def task_arrays(self, task: str) -> dict[str, np.ndarray] | None:
        """This epoch's records for `task` as aligned 1-D arrays.

        Args:
            task (`str`):
                `"gate"` or `"category"`.

        Returns:
            `dict[str, np.ndarray] | None`: `row_id`, `gold_prob`, `pred` and `gold`, one entry per recorded
            row (a row seen twice in the epoch appears twice); None when nothing was recorded for `task`.
        """
        if not self.rows.get(f"{task}_gold"):
            return None
        return {key: np.concatenate(self.rows[f"{task}_{key}"]) for key in ("row_id", "gold_prob", "pred", "gold")}

    def train_accuracy(self, task: str) -> float | None:
        """Share of this epoch's labelled training rows whose argmax was the gold label (at training-time dropout).

        Args:
            task (`str`):
                `"gate"` or `"category"`.

        Returns:
            `float | None`: The share in [0, 1], or None when nothing was recorded for `task`.
        """
        arrays = self.task_arrays(task)
        return float((arrays["pred"] == arrays["gold"]).mean()) if arrays else None


def _finite(value: Any) -> Any:
    """None for a NaN/inf float (JSON has no such numbers), the value itself otherwise."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class EpochLogCallback(TrainerCallback):
    """One row per epoch in `epoch_log.jsonl` and a readable line in the log (train.log).

    The training half of a row is taken at epoch end; the evaluation that follows completes it. Train losses are
    means over the epoch's micro-batches (not the last logged value); `grad_norm_*` over its optimizer steps
    (pre-clipping). `lambda_*` are the configured loss weights (`loss_weights` keys "gate" and "category"), and
    `sigma_*` appear with uncertainty weighting. NaN/inf are written as null.

    Args:
        record (`TrainingRecord`):
            The record the trainer fills; this callback resets it at each epoch start.
        output_dir (`str` or `Path`):
            The run directory; rows are appended to `<output_dir>/epoch_log.jsonl` (a resumed run keeps its
            rows).
        loss_weights (`dict[str, float]`):
            At least `"gate"` and `"category"`: the λ written with each row.
    """

    def __init__(self, record: TrainingRecord, output_dir: str | Path, loss_weights: dict[str, float]) -> None:
        self.record = record
        self.path = Path(output_dir) / "epoch_log.jsonl"
        self.loss_weights = loss_weights
        self.rows: list[dict[str, Any]] = []
        self._pending: dict[str, Any] | None = None
        self._learning_rate: float | None = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        """Write a row still waiting for an evaluation that did not come, and start the epoch's record afresh."""
        self._flush(state)
        self.record.reset()

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Remember the last logged learning rate (used when the callback is not handed the scheduler)."""
        if logs and "learning_rate" in logs:
            self._learning_rate = logs["learning_rate"]

    def on_epoch_end(self, args, state, control, model=None, lr_scheduler=None, **kwargs):
        """Build the training half of the epoch's row; it is written now only when no evaluation will follow."""
        record = self.record
        record.merge_processes()
        row: dict[str, Any] = {"epoch": round(state.epoch or 0), "step": state.global_step}
        if lr_scheduler is not None:
            row["learning_rate"] = max(lr_scheduler.get_last_lr())  # max over groups: the heads' rate under LLRD
        elif self._learning_rate is not None:
            row["learning_rate"] = self._learning_rate
        total = [sum(v) / len(v) for k, v in record.loss_terms.items() if k == "loss" and v]
        if total:
            row["train_loss"] = total[0]
        for name, values in record.loss_terms.items():
            if name != "loss" and values:
                row[f"train_{name}"] = sum(values) / len(values)
        for task in ("gate", "category"):
            accuracy = record.train_accuracy(task)
            if accuracy is not None:
                row[f"train_{task}_accuracy"] = accuracy
        row["lambda_gate"], row["lambda_category"] = self.loss_weights["gate"], self.loss_weights["category"]
        log_variances = getattr(model, "task_log_variances", None) if model is not None else None
        if log_variances is not None:
            # The parameters are log σ² (Kendall et al.): σ = exp(½ · log σ²).
            sigma = torch.exp(0.5 * log_variances.detach().float()).tolist()
            row["sigma_gate"], row["sigma_category"] = sigma
        if record.grad_norms:
            row["grad_norm_mean"] = float(np.mean(record.grad_norms))
            row["grad_norm_max"] = float(np.max(record.grad_norms))
        self._pending = row
        # Without evaluations no on_evaluate will complete the row: write it now.
        if args.eval_strategy == "no":
            self._flush(state)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        """Add the `_EVAL_KEYS` present in `metrics` to the pending row and write it; other evaluations are ignored."""
        if self._pending is None or not metrics:
            return
        self._pending.update({key: metrics[key] for key in _EVAL_KEYS if key in metrics})
        self._flush(state)

    def on_train_end(self, args, state, control, **kwargs):
        """Write the last row if no evaluation completed it (e.g. training stopped by max_steps mid-epoch)."""
        self._flush(state)

    def _flush(self, state) -> None:
        """Append the pending row to `rows` on every process; only the main process writes it and logs it."""
        if self._pending is None:
            return
        row = {key: _finite(value) for key, value in self._pending.items()}
        self._pending = None
        self.rows.append(row)
        # Every rank keeps the row in `rows`; only one may append to the shared file.
        if state.is_world_process_zero:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            logger.info("epoch %s | %s", row["epoch"], "  ".join(
                f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                for key, value in row.items() if key != "epoch"
            ))


class CartographyCallback(TrainerCallback):
    """Dataset cartography (Swayamdipta et al., 2020) per task from the training-step probabilities.

    Per training row: confidence = mean probability of the gold label over epochs, variability = its
    standard deviation, correctness = share of epochs the argmax was right. Under DDP the record merges
    every process's shard first, so all training rows are covered. The history is saved into each checkpoint
    and restored on `--resume_from_checkpoint` (an epoch cut by the interruption counts only its resumed part).

    Args:
        record (`TrainingRecord`):
            The record the trainer fills (shared with `EpochLogCallback`, which resets it).
        train_frame (`pd.DataFrame`):
            The training rows, with columns `row_id`, `text`, `gate_labels` and `category_labels` (-100 =
            none).
        category_names (`list[str]`):
            Category names by id, for the written tables.
    """

    HISTORY_FILE = "cartography_history.json"

    def __init__(self, record: TrainingRecord, train_frame: pd.DataFrame, category_names: list[str]) -> None:
        self.record = record
        self.train_frame = train_frame  # columns: row_id, text, gate_labels, category_labels
        self.category_names = category_names
        # task -> row_id -> list of (gold prob, correct, predicted id) per epoch
        self.history: dict[str, dict[int, list[tuple[float, bool, int]]]] = {
            "gate": defaultdict(list), "category": defaultdict(list)
        }

    def on_epoch_end(self, args, state, control, **kwargs):
        """Add this epoch's observation of every recorded training row to the history, per task."""
        self.record.merge_processes()
        for task, history in self.history.items():
            arrays = self.record.task_arrays(task)
            if arrays is None:
                continue
            this_epoch: dict[int, list[tuple[float, bool, int]]] = defaultdict(list)
            for row_id, prob, pred, gold in zip(arrays["row_id"], arrays["gold_prob"], arrays["pred"], arrays["gold"]):
                this_epoch[int(row_id)].append((float(prob), bool(pred == gold), int(pred)))
            for row_id, seen in this_epoch.items():
                # --long_text chunk trains on several windows of one row: one observation per row and epoch
                # (mean gold probability, majority correctness, most frequent prediction), as for a whole text.
                # Ties: half the windows right counts as correct; most_common keeps the earliest prediction.
                history[row_id].append(seen[0] if len(seen) == 1 else (
                    float(np.mean([p for p, _, _ in seen])), sum(c for _, c, _ in seen) * 2 >= len(seen),
                    Counter(pred for _, _, pred in seen).most_common(1)[0][0]))

    def on_save(self, args, state, control, **kwargs):
        """Write the history into the checkpoint the Trainer just saved (main process only), for `restore`."""
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            history = {task: {str(row_id): entries for row_id, entries in rows.items()}
                       for task, rows in self.history.items()}
            (checkpoint / self.HISTORY_FILE).write_text(json.dumps(history), encoding="utf-8")

    def restore(self, checkpoint: str | Path) -> None:
        """Take up the history saved in a checkpoint (resuming a run).

        A checkpoint without the history file only logs a warning: cartography then covers the resumed epochs
        alone.

        Args:
            checkpoint (`str` or `Path`):
                The checkpoint directory being resumed from.
        """
        path = Path(checkpoint) / self.HISTORY_FILE
        if not path.is_file():
            logger.warning("%s has no %s: cartography covers only the resumed epochs", checkpoint, self.HISTORY_FILE)
            return
        for task, rows in json.loads(path.read_text(encoding="utf-8")).items():
            self.history[task] = defaultdict(
                list, {int(row_id): [tuple(entry) for entry in entries] for row_id, entries in rows.items()}
            )

    def table(self) -> pd.DataFrame:
        """One row per training row, with the cartography figures of each task.

        Returns:
            `pd.DataFrame`: `row_id` and `text`, then per task with a history `<task>_confidence`,
            `_variability` (population std), `_correctness`, `_last_pred` and `_epochs`; NaN for rows never
            seen with that task's label.
        """
        frame = self.train_frame[["row_id", "text"]].copy()
        for task, history in self.history.items():
            if not history:
                continue
            stats = {
                row_id: (np.mean([p for p, _, _ in v]), np.std([p for p, _, _ in v]), np.mean([c for _, c, _ in v]),
                         v[-1][2], len(v))
                for row_id, v in history.items()
            }
            columns = ("confidence", "variability", "correctness", "last_pred", "epochs")
            per_row = pd.DataFrame.from_dict(stats, orient="index", columns=[f"{task}_{c}" for c in columns])
            frame = frame.merge(per_row, left_on="row_id", right_index=True, how="left")
        return frame

    def write(self, output_dir: str | Path, worst_k: int = 50) -> pd.DataFrame:
        """Write `cartography.csv` and `worst_k.csv` (lowest-confidence rows, with text, gold and predicted).

        A row's difficulty for `worst_k.csv` is its lower confidence over the two tasks. The main process
        alone should call it (it writes unconditionally).

        Args:
            output_dir (`str` or `Path`):
                Existing folder for both CSVs (UTF-8).
            worst_k (`int`, *optional*, defaults to 50):
                Rows in `worst_k.csv` (`--worst_k`).

        Returns:
            `pd.DataFrame`: The cartography table as written, plus `min_confidence` when a confidence column
            exists.
        """
        output_dir = Path(output_dir)
        frame = self.table()
        labels = self.train_frame.set_index("row_id")
        # -100 becomes an empty cell, as an unlabelled row reads in the input CSV.
        frame["gold_pick"] = frame["row_id"].map(labels["gate_labels"]).replace(IGNORE_INDEX, np.nan)
        names = dict(enumerate(self.category_names))
        frame["gold_category"] = frame["row_id"].map(labels["category_labels"]).map(names)
        if "category_last_pred" in frame:
            frame["predicted_category"] = frame["category_last_pred"].map(
                lambda v: names.get(int(v)) if pd.notna(v) else None
            )
        if "gate_last_pred" in frame:
            frame["predicted_pick"] = frame["gate_last_pred"]
        frame = frame.drop(columns=[c for c in frame.columns if c.endswith("_last_pred")])
        frame.to_csv(output_dir / "cartography.csv", index=False, encoding="utf-8")
        confidence_columns = [c for c in ("gate_confidence", "category_confidence") if c in frame]
        if confidence_columns:
            # A row is as hard as its hardest task.
            frame["min_confidence"] = frame[confidence_columns].min(axis=1)
            worst = frame.dropna(subset=["min_confidence"]).nsmallest(worst_k, "min_confidence")
            worst.to_csv(output_dir / "worst_k.csv", index=False, encoding="utf-8")
        return frame


def find_callback(trainer: Any, callback_type: type[TrainerCallback]) -> TrainerCallback | None:
    """The first of the trainer's callbacks that is a `callback_type`, or None.

    Used e.g. to find the run's cartography, to restore it before a resumed training and write it after.

    Args:
        trainer (`Trainer`):
            Any `transformers.Trainer`.
        callback_type (`type[TrainerCallback]`):
            The class to look for (subclasses match too).

    Returns:
        `TrainerCallback | None`: The callback instance.
    """
    return next((callback for callback in trainer.callback_handler.callbacks if isinstance(callback, callback_type)),
                None)
