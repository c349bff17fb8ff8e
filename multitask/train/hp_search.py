"""Hyper-parameter search the Trainer way: `Trainer.hyperparameter_search` over a space given as YAML/JSON.

Each trial is a real `trainer.train(trial=…)` of the run's own `MultitaskTrainer` (same data, loss, metrics and
checkpointing); the Trainer rebuilds the model with `model_init` and sets the trial's values on `trainer.args`.
What this module adds around that call:

- the search space: a YAML/JSON file (`load_search_space`) or the built-in one (`default_search_space`), each
  parameter checked against `MultitaskTrainingArguments` (name, type, bounds) before any training;
- its conversion to an Optuna `hp_space(trial)` (`optuna_hp_space`) or a Ray Tune space (`ray_hp_space`);
- the objective (`objective_metric`, `TrialObjective`): the run's `--metric_for_best_model` unless
  `--hp_search_metric` names another, taken with `--load_best_model_at_end` at the evaluation whose checkpoint
  the trial keeps (its best by `--metric_for_best_model`), not at its last;
- trial isolation: what the run derives from the arguments when it builds the model and the trainer (class
  weights, say) is recomputed per trial through `on_trial_start`; early-stopping counters and the training record
  are reset; the run's epoch log and cartography callbacks are detached during the search, so they describe the
  final run only; each trial's checkpoints (`<output_dir>/trial-N/`) are deleted when the trial ends;
- `hp_trials.csv`, `hp_trials.md` and `hp_trials.png` (objective per trial) in the run directory;
- the best values set on `trainer.args`, so the caller's next `trainer.train()` retrains the best trial (same seed,
  same `model_init`: the same model when training is deterministic).

Optuna (the default) runs the trials one after another in this process (under torchrun, rank 0 samples and
every rank trains), with a TPE sampler seeded by `--seed` and Optuna's median pruner fed by each evaluation (no
pruning under DDP: only rank 0 would stop).
Ray Tune (`--hp_search_backend ray`) is for searches that outgrow one machine: `pip install 'ray[tune]'` (not in
requirements.txt), start or join a cluster (`ray start`, `RAY_ADDRESS`), and the Trainer sends itself to one Ray
actor per trial (`tune.run`; its options, e.g. `resources_per_trial={"cpu": 8, "gpu": 1}`, through
`search_hyperparameters(**backend_kwargs)`). Trial checkpoints then stay in Ray's storage, and the trials table is
read from Ray's `ExperimentAnalysis`. Only the Optuna path is tested here (Ray is not installed in CI).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import shutil
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import number_of_arguments

from multitask.errors import UsageError, closest, read_json_or_yaml
from multitask.labels import markdown_cell

logger = logging.getLogger(__name__)

KINDS = ("float", "int", "categorical")
ENTRY_KEYS = ("type", "low", "high", "log", "step", "choices")
BACKENDS = ("optuna", "ray")
STUDY_NAME = "multitask-hp-search"
TRIALS_FILES = ("hp_trials.csv", "hp_trials.md", "hp_trials.png")
# Searching these would change where the run writes or what a trial is judged by, not how it trains.
NOT_SEARCHABLE = ("output_dir", "resume_from_checkpoint", "metric_for_best_model", "greater_is_better",
                  "load_best_model_at_end", "push_to_hub", "hub_model_id", "hub_token", "hp_search_trials",
                  "hp_search_space", "hp_search_backend", "hp_search_metric")
# Validation metrics for which smaller is better (everything else we compute is an accuracy, F1, recall, …).
LOWER_IS_BETTER_SUFFIXES = ("loss", "leak", "ece")


@dataclasses.dataclass(frozen=True)
class SearchParameter:
    """One searched training argument: `float`/`int` in [low, high] (optionally log-scaled or stepped), or one of
    `choices`."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def as_entry(self) -> dict[str, Any]:
        """The parameter as a search-space file entry (what `parse_search_space` reads back)."""
        if self.kind == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        entry: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high}
        if self.log:
            entry["log"] = True
        if self.step is not None:
            entry["step"] = self.step
        return entry


# ------------------------------------------------------------------------------------------------ search space
def _training_arguments_class() -> type:
    from multitask.train.arguments import MultitaskTrainingArguments

    return MultitaskTrainingArguments


def _argument_kinds(args_cls: type) -> dict[str, tuple[str | None, tuple]]:
    """Per dataclass field: its scalar kind (bool, int, float, str; None = not a single value) and, for a string,
    its allowed values (an Enum's values or the field's `choices`; empty = any string)."""
    hints = typing.get_type_hints(args_cls)
    kinds = {}
    for field in dataclasses.fields(args_cls):
        members = [t for t in typing.get_args(hints[field.name]) or (hints[field.name],) if t is not type(None)]
        allowed: tuple = tuple(field.metadata.get("choices") or ())
        kind = None
        if any(typing.get_origin(t) in (list, dict, tuple) or t in (list, dict, tuple) for t in members):
            kind = None
        elif bool in members:
            kind = "bool"
        elif int in members:
            kind = "int"
        elif float in members:
            kind = "float"
        elif str in members or any(isinstance(t, type) and issubclass(t, enum.Enum) for t in members):
            kind = "str"
            for member in members:
                if isinstance(member, type) and issubclass(member, enum.Enum):
                    allowed += tuple(str(item.value) for item in member)
        kinds[field.name] = (kind, allowed)
    return kinds


def _number(value: Any, where: str, what: str) -> float:
    # YAML 1.1 reads `1e-5` (no dot) as a string: accept any text Python reads as a number.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UsageError(f"{where}: '{what}' must be a number, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        # Digits alone stay an int, so an int entry's "8" is not turned into 8.0.
        number = int(value) if isinstance(value, str) and value.strip().lstrip("+-").isdigit() else float(value)
    except ValueError:
        raise UsageError(f"{where}: '{what}' must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise UsageError(f"{where}: '{what}' must be a finite number, got {value!r}")
    return number


def _parse_entry(name: str, entry: Any, where: str, kind: str | None, allowed: tuple) -> SearchParameter:
    if not isinstance(entry, Mapping):
        raise UsageError(f"{where}: expected a mapping such as {{type: float, low: 1.0e-5, high: 1.0e-4, log: true}} "
                         f"or {{type: categorical, choices: [...]}}, got {entry!r}")
    unknown = [key for key in entry if key not in ENTRY_KEYS]
    if unknown:
        raise UsageError(f"{where}: unknown field '{unknown[0]}'{closest(str(unknown[0]), ENTRY_KEYS)}; "
                         f"an entry has {', '.join(ENTRY_KEYS)}")
    search_type = entry.get("type")
    if search_type not in KINDS:
        raise UsageError(f"{where}: 'type' must be one of {', '.join(KINDS)}, got {search_type!r}")
    if search_type == "categorical":
        extra = [key for key in ("low", "high", "log", "step") if key in entry]
        if extra:
            raise UsageError(f"{where}: a categorical entry takes 'choices' only, not '{extra[0]}'")
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UsageError(f"{where}: 'choices' must be a non-empty list, got {choices!r}")
        checked = []
        for choice in choices:
            if kind == "bool":
                if not isinstance(choice, bool):
                    raise UsageError(f"{where}: '{name}' is true/false, so every choice must be true or false, got {choice!r}")
            elif kind in ("int", "float"):
                number = _number(choice, where, "choices")
                if kind == "int" and not float(number).is_integer():
                    raise UsageError(f"{where}: '{name}' is a whole number, got the choice {choice!r}")
                choice = int(number) if kind == "int" else number
            elif kind == "str":
                if not isinstance(choice, str):
                    raise UsageError(f"{where}: '{name}' is text, so every choice must be a quoted string, got "
                                     f"{choice!r} (YAML reads a bare no/yes/off/on as false/true)")
                if allowed and choice not in allowed:
                    raise UsageError(f"{where}: {choice!r} is not a value of '{name}'{closest(choice, allowed)}; "
                                     f"one of: {', '.join(map(str, allowed))}")
            checked.append(choice)
        # repr: True, 1 and 1.0 are equal (and hash alike), so a plain set would merge distinct choices.
        if len(set(map(repr, checked))) != len(checked):
            raise UsageError(f"{where}: 'choices' lists a value twice")
        return SearchParameter(name, "categorical", choices=tuple(checked))

    if "choices" in entry:
        raise UsageError(f"{where}: 'choices' belongs to a categorical entry (type: categorical)")
    if kind in ("bool", "str"):
        what = "true/false" if kind == "bool" else "text"
        raise UsageError(f"{where}: '{name}' is {what}; search it with type: categorical and a list of choices")
    if kind == "int" and search_type == "float":
        raise UsageError(f"{where}: '{name}' is a whole number; use type: int (or categorical)")
    for key in ("low", "high"):
        if key not in entry:
            raise UsageError(f"{where}: a {search_type} entry needs 'low' and 'high'")
    low, high = _number(entry["low"], where, "low"), _number(entry["high"], where, "high")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise UsageError(f"{where}: 'log' must be true or false, got {log!r}")
    step = None if entry.get("step") is None else _number(entry["step"], where, "step")
    if search_type == "int":
        for key, value in (("low", low), ("high", high), ("step", step)):
            if value is not None and not float(value).is_integer():
                raise UsageError(f"{where}: an int entry needs whole numbers, '{key}' is {value!r}")
        low, high = int(low), int(high)
        step = None if step is None else int(step)
    if low > high:
        raise UsageError(f"{where}: 'low' {low} is above 'high' {high}")
    if log and low <= 0:
        raise UsageError(f"{where}: a log-scaled range needs 'low' > 0, got {low}")
    if step is not None:
        if step <= 0:
            raise UsageError(f"{where}: 'step' must be > 0, got {step}")
        if log and (search_type == "float" or step != 1):
            raise UsageError(f"{where}: 'step' and 'log' cannot be combined (Optuna samples one or the other)")
    return SearchParameter(name, search_type, low=low, high=high, log=log, step=step)


def parse_search_space(entries: Any, source: str | Path, args_cls: type | None = None) -> list[SearchParameter]:
    """Check a search space read from `source` (a file name, for messages) and return its parameters.

    `entries` maps training-argument names to `{type: float|int, low, high[, log][, step]}` or
    `{type: categorical, choices: [...]}`. Each name must be a single-value field of `args_cls`
    (`MultitaskTrainingArguments`); model and data arguments are not re-read per trial, so they cannot be searched.
    A mistake is a `UsageError` naming the file and the key.
    """
    args_cls = args_cls or _training_arguments_class()
    if entries is None:
        raise UsageError(f"{source}: the search space is empty")
    if not isinstance(entries, Mapping):
        raise UsageError(f"{source}: expected a mapping of training-argument names to search ranges, found a "
                         f"{type(entries).__name__}")
    if not entries:
        raise UsageError(f"{source}: the search space is empty")
    kinds = _argument_kinds(args_cls)
    parameters = []
    for name, entry in entries.items():
        where = f"{source}, key '{name}'"
        if name not in kinds:
            raise UsageError(f"{where}: not a training argument{closest(str(name), kinds)} (only the training "
                             "arguments of --help can be searched; model and data arguments are fixed per run)")
        kind, allowed = kinds[name]
        if name in NOT_SEARCHABLE:
            raise UsageError(f"{where}: cannot be searched (it sets where the run writes or how trials are judged)")
        if kind is None:
            raise UsageError(f"{where}: takes a list or mapping, not one value; only single-value arguments can be "
                             "searched")
        parameters.append(_parse_entry(str(name), entry, where, kind, allowed))
    return parameters


def load_search_space(path: str | Path, args_cls: type | None = None) -> list[SearchParameter]:
    """The search space in a YAML (.yaml/.yml) or JSON (.json) file; any mistake is a `UsageError` that names the
    file (and the key, line or column)."""
    path = Path(path)
    entries = read_json_or_yaml(path, "--hp_search_space", "search-space file")
    return parse_search_space(entries, path, args_cls)


def default_search_space(args: Any, heads: Sequence[str] = ("gate", "category")) -> list[SearchParameter]:
    """The built-in space around the run's own arguments, keeping only what can matter for this run.

    learning rate: log-uniform in [lr/4, 4·lr]; LLRD factor `layerwise_lr_decay` in [0.6, 1.0]; λ1
    `gate_loss_weight` in [0.1, 1.0] (both heads only); the class-weight clip `class_weight_max` in [1.5, 5.0]
    (with class weighting on); `category_label_smoothing` in [0.0, 0.2] (category head only); `num_train_epochs`
    a whole number in [ceil(epochs/2), ceil(1.5·epochs)] (not with --max_steps, which overrides epochs).
    """
    space = [SearchParameter("learning_rate", "float", args.learning_rate / 4, args.learning_rate * 4, log=True),
             SearchParameter("layerwise_lr_decay", "float", 0.6, 1.0)]
    if "gate" in heads and "category" in heads:
        space.append(SearchParameter("gate_loss_weight", "float", 0.1, 1.0))
    if (args.gate_class_weighting and "gate" in heads) or (args.category_class_weighting and "category" in heads):
        # Never below --class_weight_min: a trial value under it would fail the min <= max check.
        space.append(SearchParameter("class_weight_max", "float", max(1.5, args.class_weight_min), 5.0))
    if "category" in heads:
        space.append(SearchParameter("category_label_smoothing", "float", 0.0, 0.2))
    if args.max_steps is None or args.max_steps <= 0:
        epochs = float(args.num_train_epochs)
        low = max(1, math.ceil(epochs / 2))
        # low + 1: at least two values, also when epochs < 1 makes both ends 1.
        space.append(SearchParameter("num_train_epochs", "int", low, max(low + 1, math.ceil(1.5 * epochs))))
    return space


def space_record(space: Iterable[SearchParameter]) -> dict[str, dict[str, Any]]:
    """The space as a JSON-able mapping (for run_config.json), in the search-space file format."""
    return {parameter.name: parameter.as_entry() for parameter in space}


def optuna_hp_space(space: Sequence[SearchParameter]) -> Callable[[Any], dict[str, Any]]:
    """An `hp_space(trial)` for the Optuna backend: one `trial.suggest_*` per parameter.

    Optuna returns the same value when a trial asks twice for one name, so calling it again on the same trial
    (as `model_init` and the Trainer both do) is safe.
    """
    def hp_space(trial: Any) -> dict[str, Any]:
        values = {}
        for p in space:
            if p.kind == "categorical":
                values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
            elif p.kind == "int":
                values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                values[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
        return values

    return hp_space


def ray_hp_space(space: Sequence[SearchParameter]) -> Callable[[Any], dict[str, Any]]:
    """An `hp_space(trial)` for the Ray Tune backend: a `ray.tune` sampling space (the trial argument is unused).

    Ray's `randint`/`lograndint` exclude the upper bound, so `high` + 1 keeps our ranges inclusive;
    `qrandint`/`quniform` include it.
    """
    def hp_space(trial: Any = None) -> dict[str, Any]:
        from ray import tune

        values = {}
        for p in space:
            if p.kind == "categorical":
                values[p.name] = tune.choice(list(p.choices))
            elif p.kind == "int":
                if p.step not in (None, 1):
                    values[p.name] = tune.qrandint(int(p.low), int(p.high), int(p.step))
                elif p.log:
                    values[p.name] = tune.lograndint(int(p.low), int(p.high) + 1)
                else:
                    values[p.name] = tune.randint(int(p.low), int(p.high) + 1)
            elif p.step is not None:
                values[p.name] = tune.quniform(float(p.low), float(p.high), float(p.step))
            else:
                values[p.name] = (tune.loguniform if p.log else tune.uniform)(float(p.low), float(p.high))
        return values

    return hp_space


def apply_params(args: Any, params: Mapping[str, Any]) -> None:
    """Set trial values on training arguments, cast to each argument's current type as the Trainer does
    (`num_train_epochs: 3` → 3.0; a scheduler name → its `SchedulerType`)."""
    for name, value in params.items():
        current = getattr(args, name)
        setattr(args, name, type(current)(value) if current is not None else value)


# --------------------------------------------------------------------------------------------------- objective
def _bare(metric: str) -> str:
    return metric[len("eval_"):] if metric.startswith("eval_") else metric


def objective_metric(args: Any) -> tuple[str, str]:
    """The validation metric the search optimises (without the `eval_` prefix) and its direction.

    Default: `--metric_for_best_model` with `--greater_is_better`; no best-model metric means `loss`. Another
    metric named by `--hp_search_metric` is minimised when it is a loss, a leak or an ECE, else maximised.
    """
    best_model_metric = _bare(args.metric_for_best_model or "loss")
    metric = _bare(args.hp_search_metric or best_model_metric)
    if metric == best_model_metric and args.greater_is_better is not None:
        greater = bool(args.greater_is_better)
    else:
        greater = not metric.endswith(LOWER_IS_BETTER_SUFFIXES)
    return metric, "maximize" if greater else "minimize"


def compute_objective(metrics: Mapping[str, float], metric: str) -> float:
    """The value of `metric` in an evaluation's metrics (keys with or without the `eval_` prefix)."""
    for key in (f"eval_{metric}", metric):
        if key in metrics:
            return float(metrics[key])
    names = sorted(key[len("eval_"):] for key in metrics if key.startswith("eval_"))
    raise UsageError(f"--hp_search_metric {metric!r} is not a validation metric{closest(metric, names)}; "
                     f"choose one of: {', '.join(names)}")


class TrialObjective:
    """`compute_objective` for `Trainer.hyperparameter_search`: `metric` at each evaluation, or with `select_by`
    (the best-model metric and whether greater is better) `metric` at the best evaluation of the trial so far, the
    one whose checkpoint `--load_best_model_at_end` keeps (first of ties, as the Trainer picks it).
    `reset()` starts a new trial."""

    def __init__(self, metric: str, select_by: tuple[str, bool] | None = None) -> None:
        self.metric, self.select_by = metric, select_by
        self.best_key: float | None = None
        self.best_value: float | None = None

    def reset(self) -> None:
        self.best_key = self.best_value = None

    def __call__(self, metrics: Mapping[str, float]) -> float:
        value = compute_objective(metrics, self.metric)
        if self.select_by is None:
            return value
        name, greater = self.select_by
        key = compute_objective(metrics, name)
        # Nothing compares greater than NaN: without isnan, one NaN evaluation would stay the trial's best.
        if self.best_key is None or math.isnan(self.best_key) or (key > self.best_key if greater else key < self.best_key):
            self.best_key, self.best_value = key, value
        return self.best_value


# ------------------------------------------------------------------------------------------------ trials table
def trials_table(trials: Sequence[Any], names: Sequence[str], direction: str) -> list[dict[str, Any]]:
    """One row per Optuna trial: trial number, state, objective, each parameter, duration (s) and whether it is the
    best. A pruned trial's objective is the last value it reported; the best is chosen among completed trials."""
    rows = []
    for trial in trials:
        value = trial.value
        if value is None and trial.intermediate_values:
            value = trial.intermediate_values[max(trial.intermediate_values)]
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        rows.append({"trial": trial.number, "state": trial.state.name, "objective": value,
                     **{name: trial.params.get(name) for name in names},
                     "duration_s": None if duration is None else round(duration, 2), "best": False})
    complete = [row for row in rows if row["state"] == "COMPLETE" and row["objective"] is not None
                and not math.isnan(row["objective"])]
    if complete:
        pick = max if direction == "maximize" else min
        pick(complete, key=lambda row: row["objective"])["best"] = True
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return markdown_cell(value)


def write_trials(rows: Sequence[Mapping[str, Any]], out_dir: str | Path, metric: str, direction: str) -> list[Path]:
    """Write `hp_trials.csv`, `hp_trials.md` and `hp_trials.png` (objective per trial) into `out_dir`."""
    import pandas as pd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(list(rows))
    csv_path = out_dir / TRIALS_FILES[0]
    frame.to_csv(csv_path, index=False, encoding="utf-8")
    columns = list(frame.columns)
    lines = [f"# Hyper-parameter search: {len(frame)} trial(s)", "",
             f"Objective: validation `{metric}` ({direction}); the best completed trial is marked.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(column)) for column in columns) + " |" for row in rows]
    md_path = out_dir / TRIALS_FILES[1]
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [csv_path, md_path, plot_trials(rows, out_dir / TRIALS_FILES[2], metric, direction)]


def plot_trials(rows: Sequence[Mapping[str, Any]], path: str | Path, metric: str, direction: str) -> Path:
    """Objective per trial: completed trials as dots, pruned ones as crosses, the best so far as a step line and the
    best trial as a star."""
    from multitask.scoring import plots  # its import selects the headless backend and knows the fonts

    plt = plots.plt

    def finite(row: Mapping[str, Any]) -> bool:
        return row["objective"] is not None and math.isfinite(row["objective"])

    with plt.rc_context(plots.font_rc()):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        complete = [row for row in rows if row["state"] == "COMPLETE" and finite(row)]
        pruned = [row for row in rows if row["state"] == "PRUNED" and finite(row)]
        if complete:
            ax.plot([r["trial"] for r in complete], [r["objective"] for r in complete], "o", color="tab:blue",
                    label="completed trial")
            pick = max if direction == "maximize" else min
            xs, best_so_far = [], []
            for row in complete:
                xs.append(row["trial"])
                best_so_far.append(row["objective"] if not best_so_far else pick(best_so_far[-1], row["objective"]))
            ax.step(xs, best_so_far, where="post", color="tab:blue", alpha=0.5, label="best so far")
        if pruned:
            ax.plot([r["trial"] for r in pruned], [r["objective"] for r in pruned], "x", color="grey",
                    label="pruned (last reported value)")
        best = [row for row in rows if row["best"]]
        if best:
            ax.plot(best[0]["trial"], best[0]["objective"], "*", color="tab:orange", markersize=14,
                    label=f"best: trial {best[0]['trial']} ({best[0]['objective']:.4g})")
        ax.set(title=f"Hyper-parameter search — validation {metric} per trial ({direction})", xlabel="trial",
               ylabel=metric)
        ax.title.set_fontsize(10)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        if complete or pruned:
            ax.legend(fontsize=8)
        return plots.save_figure(fig, path)


# --------------------------------------------------------------------------------------------------- the search
@dataclasses.dataclass
class SearchResult:
    """What a search found: the best trial's values (already set on `trainer.args`), its objective, every trial."""

    best_params: dict[str, Any]
    best_value: float | None
    best_trial: str | None
    metric: str
    direction: str
    backend: str
    space: list[SearchParameter]
    trials: list[dict[str, Any]]
    files: list[Path]

    def record(self) -> dict[str, Any]:
        """JSON-able summary: what `build.search_and_keep_best` writes to hp_search.json."""
        return {"backend": self.backend, "metric": self.metric, "direction": self.direction,
                "trials": len(self.trials), "best_trial": self.best_trial, "best_value": self.best_value,
                "best_params": self.best_params, "space": space_record(self.space),
                "files": [path.name for path in self.files]}


def check_backend(backend: str) -> None:
    """Refuse an unknown backend or one whose package is not installed (a `UsageError` saying what to install)."""
    from transformers.integrations import is_optuna_available, is_ray_tune_available

    if backend not in BACKENDS:
        raise UsageError(f"--hp_search_backend {backend}: not one of {', '.join(BACKENDS)}")
    if backend == "optuna" and not is_optuna_available():
        raise UsageError("--hp_search_backend optuna: Optuna is not installed; pip install optuna "
                         "(requirements.txt pins it)")
    if backend == "ray" and not is_ray_tune_available():
        raise UsageError("--hp_search_backend ray: Ray Tune is not installed; pip install 'ray[tune]' (not part of "
                         "requirements.txt), or search on this machine with --hp_search_backend optuna")


class _TrialCleanup(TrainerCallback):
    """Deletes a trial's checkpoint folder (`<output_dir>/trial-N`) when the trial ends: by then the Trainer has
    reloaded its best checkpoint, and only the values of the best trial are kept (it is retrained at the end)."""

    def on_train_end(self, args, state, control, **kwargs):
        if state.trial_name and state.is_world_process_zero:
            shutil.rmtree(Path(args.output_dir) / state.trial_name, ignore_errors=True)


def _detachable_callbacks() -> tuple[type, ...]:
    from multitask.train.callbacks import CartographyCallback, EpochLogCallback

    return (EpochLogCallback, CartographyCallback)


def _reset_trial_state(trainer: Any) -> None:
    """What would otherwise carry over from one trial to the next."""
    from transformers import EarlyStoppingCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, EarlyStoppingCallback):
            callback.early_stopping_patience_counter = 0
    record = getattr(trainer, "training_record", None)
    if record is not None:
        record.reset()


def search_hyperparameters(
    trainer: Any,
    out_dir: str | Path,
    n_trials: int | None = None,
    space: Sequence[SearchParameter] | None = None,
    backend: str | None = None,
    model_init: Callable[..., Any] | None = None,
    heads: Sequence[str] = ("gate", "category"),
    on_trial_start: Callable[[Any], None] | None = None,
    keep_trial_checkpoints: bool = False,
    **backend_kwargs: Any,
) -> SearchResult:
    """Run `trainer.hyperparameter_search` and write the trials table; the best values end up on `trainer.args`.

    Arguments left out come from `trainer.args`: `n_trials` (--hp_search_trials), `space` (--hp_search_space, else
    `default_search_space(args, heads)`), `backend` (--hp_search_backend), the metric (`objective_metric`).
    `model_init` builds a fresh model (no argument, or the trial); it is needed unless the trainer was built with
    one, and it stays on the trainer, so the caller's next `trainer.train()` builds a fresh model and retrains the
    best trial (until then `trainer.model` is None: the search releases each trial's model).
    `on_trial_start(trainer)` runs before each trial's model is built and once more after the search, with that
    trial's (then the best) values already on `trainer.args`: recompute there whatever the caller derived from the
    arguments when it built the trainer (e.g. `trainer.category_class_weights` from `class_weight_max`).
    `backend_kwargs` go to `hyperparameter_search` (Optuna: `create_study`/`optimize` arguments such as `timeout`,
    `pruner`, `storage`; Ray: `tune.run` arguments). The trials table is written to `out_dir` by the main process,
    also when the search is interrupted; a search in which no trial completed raises a `UsageError` after it.
    """
    args = trainer.args
    backend = backend or args.hp_search_backend
    check_backend(backend)
    n_trials = args.hp_search_trials if n_trials is None else n_trials
    if not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"search_hyperparameters: n_trials must be a whole number >= 1, got {n_trials!r}")
    if space is None:
        space = load_search_space(args.hp_search_space) if args.hp_search_space else default_search_space(args, heads)
    space = list(space)
    names = [p.name for p in space]
    metric, direction = objective_metric(args)
    build_model = model_init or trainer.model_init
    if build_model is None:
        raise ValueError("search_hyperparameters needs a model_init (pass it, or build the Trainer with one)")
    select_by = None
    if args.load_best_model_at_end and args.metric_for_best_model:
        select_by = (_bare(args.metric_for_best_model), bool(args.greater_is_better))
    objective = TrialObjective(metric, select_by)
    hp_space = optuna_hp_space(space) if backend == "optuna" else ray_hp_space(space)

    def model_init_for_trial(trial: Any = None) -> Any:
        # The Trainer builds the model *before* it sets the trial's values on its arguments
        # (`Trainer.train`: `call_model_init(trial)`, then `_hp_search_setup(trial)`), so set them here first:
        # a model or class weights built from the arguments then see this trial's values, not the last trial's.
        if trial is not None:
            values = hp_space(trial) if backend == "optuna" else {n: v for n, v in trial.items() if n in names}
            apply_params(trainer.args, values)
            objective.reset()
            _reset_trial_state(trainer)
            if on_trial_start is not None:
                on_trial_start(trainer)
        return build_model(trial) if number_of_arguments(build_model) == 1 else build_model()

    kwargs = dict(backend_kwargs)
    if backend == "optuna":
        import optuna

        # `run_hp_search_optuna` creates the study itself and returns only the best run. Handing it a storage and a
        # study name of ours (both `create_study` arguments it passes through) lets us read every trial back
        # afterwards, while each trial still runs through the Trainer's own objective (DDP broadcast of the trial,
        # intermediate reports and pruning, memory release between trials).
        kwargs["storage"] = kwargs.get("storage") or optuna.storages.InMemoryStorage()
        kwargs.setdefault("study_name", STUDY_NAME)
        kwargs.setdefault("sampler", optuna.samplers.TPESampler(seed=args.seed))  # same seed, same trials
        # Under DDP only rank 0 knows a trial was pruned; the other ranks would train on, alone, and hang.
        kwargs.setdefault("pruner", optuna.pruners.MedianPruner() if args.world_size <= 1 else optuna.pruners.NopPruner())
        optuna.logging.enable_propagation()  # trial lines go to the run's log (train.log), not straight to stderr
        optuna.logging.disable_default_handler()
        kwargs["hp_name"] = lambda trial: f"trial-{trial.number}"  # checkpoints in <output_dir>/trial-N
    detached = [c for c in trainer.callback_handler.callbacks if isinstance(c, _detachable_callbacks())]
    for callback in detached:
        trainer.pop_callback(callback)
    cleanup = _TrialCleanup() if backend == "optuna" and not keep_trial_checkpoints else None
    if cleanup is not None:
        trainer.add_callback(cleanup)
    trainer.model_init = model_init_for_trial
    logger.info("hyper-parameter search: %d trial(s) with %s, objective validation %s (%s), space %s",
                n_trials, backend, metric, direction, space_record(space))
    best_run, rows, files = None, [], []
    try:
        best_run = trainer.hyperparameter_search(hp_space=hp_space, compute_objective=objective, n_trials=n_trials,
                                                 direction=direction, backend=backend, **kwargs)
    except ValueError as error:  # Optuna's study.best_trial when every trial was pruned or failed: said below
        if "No trials are completed yet" not in str(error):
            raise
    finally:
        trainer.model_init, trainer.hp_name = build_model, None
        if cleanup is not None:
            trainer.pop_callback(cleanup)
        for callback in detached:
            trainer.add_callback(callback)
        if trainer.is_world_process_zero():
            rows, files = _write_table(backend, kwargs, best_run, names, out_dir, metric, direction)

    best_params = None
    if best_run is not None:
        best_params = {name: value for name, value in best_run.hyperparameters.items() if name in names}
    best_params = _broadcast(trainer, best_params)  # under DDP only rank 0 has the best run
    if best_params is None:
        raise UsageError(f"hyper-parameter search: none of the {n_trials} trial(s) completed (all pruned or failed; "
                         f"see {TRIALS_FILES[1]} in {out_dir}), nothing to retrain")
    apply_params(trainer.args, best_params)
    _reset_trial_state(trainer)
    if on_trial_start is not None:
        on_trial_start(trainer)
    result = SearchResult(best_params=best_params, best_value=getattr(best_run, "objective", None),
                          best_trial=getattr(best_run, "run_id", None), metric=metric, direction=direction,
                          backend=backend, space=space, trials=rows, files=files)
    logger.info("hyper-parameter search: best trial %s, validation %s = %s with %s; the final training uses them",
                result.best_trial, metric, result.best_value, best_params)
    return result


def _write_table(backend: str, kwargs: Mapping[str, Any], best_run: Any, names: Sequence[str], out_dir: str | Path,
                 metric: str, direction: str) -> tuple[list[dict[str, Any]], list[Path]]:
    """Every trial so far, read back from the study (Optuna) or the analysis (Ray), and its files. A report: a
    failure to write it is logged, not raised (the search's result stands)."""
    try:
        if backend == "optuna":
            import optuna

            study = optuna.load_study(study_name=kwargs["study_name"], storage=kwargs["storage"])
            rows = trials_table(study.trials, names, direction)
        else:
            rows = _ray_rows(best_run, names) if best_run is not None else []
        return rows, (write_trials(rows, out_dir, metric, direction) if rows else [])
    except Exception as error:  # a report must not cost the search (see docstring)
        logger.warning("hyper-parameter search: trials table not written: %s", error)
        return [], []


def _broadcast(trainer: Any, params: dict[str, Any] | None) -> dict[str, Any] | None:
    """Rank 0's value on every process (a no-op outside distributed training)."""
    import torch.distributed as dist

    if trainer.args.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return params
    holder = [params]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _ray_rows(best_run: Any, names: Sequence[str]) -> list[dict[str, Any]]:
    """Trials table rows from Ray Tune's `ExperimentAnalysis` (`best_run.run_summary`); untested here (no Ray)."""
    analysis = getattr(best_run, "run_summary", None)
    rows = []
    for number, trial in enumerate(getattr(analysis, "trials", None) or []):
        result = trial.last_result or {}
        state = {"TERMINATED": "COMPLETE", "ERROR": "FAIL"}.get(str(trial.status), str(trial.status))  # Optuna's words
        rows.append({"trial": number, "state": state, "objective": result.get("objective"),
                     **{name: trial.config.get(name) for name in names},
                     "duration_s": result.get("time_total_s"), "best": trial.trial_id == best_run.run_id})
    return rows
