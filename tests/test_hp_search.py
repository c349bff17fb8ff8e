"""Hyper-parameter search: space files, the built-in space, Optuna/Ray spaces, the objective, the trials table,
argument checks, and one small real Optuna search through `MultitaskTrainer` with `model_init`."""

import csv
import datetime
import json
import math
import sys
import types

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FixedTrial, TrialState, create_trial

from multitask.data.loading import MultitaskCollator, label_counts, load_training_data, tokenize
from multitask.errors import UsageError
from multitask.model.losses import inverse_frequency_weights
from multitask.model.modeling import load_for_training
from multitask.scoring.metrics import build_compute_metrics
from multitask.train.arguments import MultitaskTrainingArguments
from multitask.train.callbacks import EpochLogCallback, TrainingRecord
from multitask.train.checks import check_hp_search_arguments
from multitask.train.hp_search import (
    SearchParameter,
    TrialObjective,
    apply_params,
    compute_objective,
    default_search_space,
    load_search_space,
    objective_metric,
    optuna_hp_space,
    parse_search_space,
    ray_hp_space,
    search_hyperparameters,
    space_record,
    trials_table,
    write_trials,
)
from multitask.train.trainer import MultitaskTrainer


def training_args(tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True, seed=0)
    settings.update(overrides)
    return MultitaskTrainingArguments(**settings)


# ------------------------------------------------------------------------------------------------ space files
def test_yaml_space_is_read_with_types_bounds_and_choices(tmp_path):
    path = tmp_path / "space.yaml"
    # 1e-5 without a dot is a string to YAML 1.1: it must still be read as a number.
    path.write_text(
        "learning_rate: {type: float, low: 1e-5, high: 1.0e-4, log: true}\n"
        "num_train_epochs: {type: int, low: 2, high: 6, step: 2}\n"
        "per_device_train_batch_size: {type: categorical, choices: [8, 16]}\n"
        "rdrop: {type: categorical, choices: [true, false]}\n"
        "lr_scheduler_type: {type: categorical, choices: [linear, cosine]}\n", encoding="utf-8")
    assert load_search_space(path) == [
        SearchParameter("learning_rate", "float", 1e-5, 1e-4, log=True),
        SearchParameter("num_train_epochs", "int", 2, 6, step=2),
        SearchParameter("per_device_train_batch_size", "categorical", choices=(8, 16)),
        SearchParameter("rdrop", "categorical", choices=(True, False)),
        SearchParameter("lr_scheduler_type", "categorical", choices=("linear", "cosine")),
    ]


def test_json_space_round_trips_through_the_record(tmp_path):
    space = [SearchParameter("gate_loss_weight", "float", 0.1, 1.0),
             SearchParameter("warmup_steps", "categorical", choices=(0.0, 0.1))]
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space_record(space)), encoding="utf-8")
    assert load_search_space(path) == space


@pytest.mark.parametrize("entries, message", [
    ({"learnig_rate": {"type": "float", "low": 1, "high": 2}}, "key 'learnig_rate': not a training argument (did you mean learning_rate?)"),
    ({"max_seq_length": {"type": "int", "low": 64, "high": 128}}, "key 'max_seq_length': not a training argument"),
    ({"output_dir": {"type": "categorical", "choices": ["a"]}}, "key 'output_dir': cannot be searched"),
    ({"label_names": {"type": "categorical", "choices": ["a"]}}, "key 'label_names': takes a list or mapping"),
    ({"learning_rate": 1e-5}, "key 'learning_rate': expected a mapping"),
    ({"learning_rate": {"low": 1e-5, "high": 1e-4}}, "key 'learning_rate': 'type' must be one of float, int, categorical"),
    ({"learning_rate": {"type": "uniform", "low": 1e-5, "high": 1e-4}}, "'type' must be one of"),
    ({"learning_rate": {"type": "float", "low": 1e-5}}, "key 'learning_rate': a float entry needs 'low' and 'high'"),
    ({"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-5}}, "'low' 0.0001 is above 'high' 1e-05"),
    ({"learning_rate": {"type": "float", "low": 0, "high": 1e-4, "log": True}}, "a log-scaled range needs 'low' > 0"),
    ({"learning_rate": {"type": "float", "low": "tiny", "high": 1e-4}}, "'low' must be a number, got 'tiny'"),
    ({"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-4, "lg": True}}, "unknown field 'lg' (did you mean log?)"),
    ({"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-4, "log": "yes"}}, "'log' must be true or false"),
    ({"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-4, "log": True, "step": 1e-5}}, "'step' and 'log'"),
    ({"per_device_train_batch_size": {"type": "float", "low": 8, "high": 32}}, "is a whole number; use type: int"),
    ({"num_train_epochs": {"type": "int", "low": 1.5, "high": 3}}, "an int entry needs whole numbers, 'low' is 1.5"),
    ({"per_device_train_batch_size": {"type": "categorical", "choices": [8, 12.5]}}, "is a whole number, got the choice 12.5"),
    ({"rdrop": {"type": "float", "low": 0, "high": 1}}, "'rdrop' is true/false; search it with type: categorical"),
    ({"rdrop": {"type": "categorical", "choices": [True, "no"]}}, "every choice must be true or false, got 'no'"),
    ({"lr_scheduler_type": {"type": "categorical", "choices": ["cosine", "cosin"]}}, "'cosin' is not a value of 'lr_scheduler_type'"),
    ({"gate_score": {"type": "categorical", "choices": [False]}}, "must be a quoted string"),
    ({"gate_loss_weight": {"type": "categorical", "choices": []}}, "'choices' must be a non-empty list"),
    ({"gate_loss_weight": {"type": "categorical", "choices": [0.1, 0.1]}}, "lists a value twice"),
    ({"gate_loss_weight": {"type": "categorical", "choices": [0.1], "low": 0}}, "takes 'choices' only, not 'low'"),
    ({"gate_loss_weight": {"type": "float", "low": 0, "high": 1, "choices": [0.1]}}, "'choices' belongs to a categorical"),
    (["learning_rate"], "expected a mapping of training-argument names to search ranges, found a list"),
    ({}, "the search space is empty"),
])
def test_malformed_space_names_file_and_key(entries, message):
    with pytest.raises(UsageError) as caught:
        parse_search_space(entries, "space.yaml")
    assert str(caught.value).startswith("space.yaml")
    assert message in str(caught.value)


def test_space_file_errors_name_the_file(tmp_path):
    with pytest.raises(UsageError, match=r"--hp_search_space .*missing.yaml: search-space file not found"):
        load_search_space(tmp_path / "missing.yaml")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("learning_rate: {type: float\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"bad.yaml, line \d+, column \d+: not valid YAML"):
        load_search_space(bad_yaml)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"learning_rate": }', encoding="utf-8")
    with pytest.raises(UsageError, match=r"bad.json, line 1, column 19: not valid JSON"):
        load_search_space(bad_json)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(UsageError, match="empty.yaml: the search space is empty"):
        load_search_space(empty)


# ------------------------------------------------------------------------------------------- built-in space
def test_default_space_is_centred_on_the_run(tmp_path):
    space = {p.name: p for p in default_search_space(training_args(tmp_path))}  # lr 2e-5, 5 epochs
    assert list(space) == ["learning_rate", "layerwise_lr_decay", "gate_loss_weight", "class_weight_max",
                           "category_label_smoothing", "num_train_epochs"]
    assert space["learning_rate"] == SearchParameter("learning_rate", "float", 5e-6, 8e-5, log=True)
    assert space["num_train_epochs"] == SearchParameter("num_train_epochs", "int", 3, 8)  # ceil(2.5), ceil(7.5)
    assert space["class_weight_max"].low == 1.5 and space["class_weight_max"].high == 5.0
    # The built-in space passes the same checks as a user's file.
    assert parse_search_space(space_record(space.values()), "built-in") == list(space.values())


def test_default_space_keeps_only_what_matters(tmp_path):
    args = training_args(tmp_path, max_steps=10, num_train_epochs=1, gate_class_weighting=False,
                         category_class_weighting=False)
    names = [p.name for p in default_search_space(args, heads=("gate",))]
    # gate only: no λ1 (one loss), no category smoothing; no class weights; --max_steps overrides epochs
    assert names == ["learning_rate", "layerwise_lr_decay"]
    one_epoch = {p.name: p for p in default_search_space(training_args(tmp_path, num_train_epochs=1))}
    assert (one_epoch["num_train_epochs"].low, one_epoch["num_train_epochs"].high) == (1, 2)


# -------------------------------------------------------------------------------------------- backend spaces
SPACE = [SearchParameter("learning_rate", "float", 1e-5, 1e-3, log=True),
         SearchParameter("num_train_epochs", "int", 1, 4),
         SearchParameter("warmup_steps", "float", 0.0, 0.2, step=0.1),
         SearchParameter("lr_scheduler_type", "categorical", choices=("linear", "cosine"))]


def test_optuna_space_samples_within_bounds():
    hp_space = optuna_hp_space(SPACE)
    fixed = {"learning_rate": 3e-4, "num_train_epochs": 2, "warmup_steps": 0.1, "lr_scheduler_type": "cosine"}
    assert hp_space(FixedTrial(fixed)) == fixed
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = hp_space(study.ask())
        assert 1e-5 <= values["learning_rate"] <= 1e-3
        assert values["num_train_epochs"] in (1, 2, 3, 4)
        assert min(abs(values["warmup_steps"] - grid) for grid in (0.0, 0.1, 0.2)) < 1e-9
        assert values["lr_scheduler_type"] in ("linear", "cosine")
    trial = study.ask()
    assert hp_space(trial) == hp_space(trial)  # asked twice (model_init, then the Trainer): the same values


def test_ray_space_maps_each_kind(monkeypatch):
    # Ray is not installed here: a stand-in `ray.tune` records which sampler each parameter gets.
    tune = types.SimpleNamespace(**{name: (lambda *a, _n=name: (_n, *a)) for name in
                                    ("choice", "randint", "lograndint", "qrandint", "uniform", "loguniform", "quniform")})
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(tune=tune))
    monkeypatch.setitem(sys.modules, "ray.tune", tune)
    space = ray_hp_space(SPACE + [SearchParameter("save_total_limit", "int", 1, 8, log=True),
                                  SearchParameter("logging_steps", "int", 10, 50, step=10),
                                  SearchParameter("weight_decay", "float", 0.0, 0.1)])(None)
    assert space == {
        "learning_rate": ("loguniform", 1e-5, 1e-3),
        "num_train_epochs": ("randint", 1, 5),  # Ray's upper bound is exclusive
        "warmup_steps": ("quniform", 0.0, 0.2, 0.1),
        "lr_scheduler_type": ("choice", ["linear", "cosine"]),
        "save_total_limit": ("lograndint", 1, 9),
        "logging_steps": ("qrandint", 10, 50, 10),
        "weight_decay": ("uniform", 0.0, 0.1),
    }


def test_apply_params_casts_like_the_trainer(tmp_path):
    args = training_args(tmp_path)
    apply_params(args, {"num_train_epochs": 3, "lr_scheduler_type": "cosine", "gate_loss_weight": 1})
    assert args.num_train_epochs == 3.0 and isinstance(args.num_train_epochs, float)
    assert args.lr_scheduler_type.value == "cosine"
    assert args.gate_loss_weight == 1.0 and isinstance(args.gate_loss_weight, float)


# ------------------------------------------------------------------------------------------------ objective
def test_objective_metric_and_direction(tmp_path):
    assert objective_metric(training_args(tmp_path)) == ("category_macro_f1", "maximize")
    args = training_args(tmp_path, metric_for_best_model="eval_loss", greater_is_better=False)
    assert objective_metric(args) == ("loss", "minimize")
    assert objective_metric(training_args(tmp_path, hp_search_metric="eval_joint_macro_f1")) == ("joint_macro_f1", "maximize")
    for lower_better in ("gate_decline_leak", "category_ece", "gate_loss"):
        assert objective_metric(training_args(tmp_path, hp_search_metric=lower_better)) == (lower_better, "minimize")
    # the best-model metric named again keeps its own direction
    args = training_args(tmp_path, metric_for_best_model="gate_decline_leak", greater_is_better=False,
                         hp_search_metric="eval_gate_decline_leak")
    assert objective_metric(args) == ("gate_decline_leak", "minimize")


def test_compute_objective_reads_eval_keys_and_names_a_missing_metric():
    metrics = {"eval_loss": 0.7, "eval_joint_macro_f1": 0.25, "epoch": 1.0}
    assert compute_objective(metrics, "joint_macro_f1") == 0.25
    assert compute_objective(metrics, "loss") == 0.7
    with pytest.raises(UsageError, match=r"--hp_search_metric 'joint_macro_f' is not a validation metric "
                                         r"\(did you mean joint_macro_f1\?\); choose one of: joint_macro_f1, loss"):
        compute_objective(metrics, "joint_macro_f")


def test_trial_objective_follows_the_kept_checkpoint():
    evaluations = [{"eval_f1": 0.5, "eval_loss": 0.9}, {"eval_f1": 0.7, "eval_loss": 0.8},
                   {"eval_f1": 0.7, "eval_loss": 0.6}, {"eval_f1": 0.6, "eval_loss": 0.5}]
    last = TrialObjective("loss")
    assert [last(m) for m in evaluations] == [0.9, 0.8, 0.6, 0.5]
    # checkpoint kept by f1 (first of ties, as the Trainer): the loss reported is that evaluation's
    kept = TrialObjective("loss", select_by=("f1", True))
    assert [kept(m) for m in evaluations] == [0.9, 0.8, 0.8, 0.8]
    kept.reset()
    assert kept({"eval_f1": 0.1, "eval_loss": 2.0}) == 2.0
    by_loss = TrialObjective("f1", select_by=("loss", False))
    assert [by_loss(m) for m in evaluations] == [0.5, 0.7, 0.7, 0.6]
    nan_first = TrialObjective("f1", select_by=("f1", True))
    assert math.isnan(nan_first({"eval_f1": float("nan")})) and nan_first({"eval_f1": 0.3}) == 0.3


# -------------------------------------------------------------------------------------------- trials table
def _trial(number, state, value, params, seconds, intermediate=None):
    trial = create_trial(state=state, value=value, params=params,
                         distributions={name: FloatDistribution(0.0, 1.0) for name in params},
                         intermediate_values=intermediate or {})
    trial.number = number
    trial.datetime_start = datetime.datetime(2026, 1, 1, 12, 0, 0)
    trial.datetime_complete = trial.datetime_start + datetime.timedelta(seconds=seconds)
    return trial


TRIALS = [
    _trial(0, TrialState.COMPLETE, 0.6, {"gate_loss_weight": 0.2}, 2.0),
    _trial(1, TrialState.COMPLETE, 0.8, {"gate_loss_weight": 0.5}, 3.5),
    _trial(2, TrialState.PRUNED, None, {"gate_loss_weight": 0.9}, 1.0, intermediate={1: 0.3, 2: 0.4}),
    _trial(3, TrialState.COMPLETE, 0.8, {"gate_loss_weight": 0.7}, 2.5),
]


def test_trials_table_rows_and_best():
    rows = trials_table(TRIALS, ["gate_loss_weight"], "maximize")
    assert rows == [
        {"trial": 0, "state": "COMPLETE", "objective": 0.6, "gate_loss_weight": 0.2, "duration_s": 2.0, "best": False},
        {"trial": 1, "state": "COMPLETE", "objective": 0.8, "gate_loss_weight": 0.5, "duration_s": 3.5, "best": True},
        {"trial": 2, "state": "PRUNED", "objective": 0.4, "gate_loss_weight": 0.9, "duration_s": 1.0, "best": False},
        {"trial": 3, "state": "COMPLETE", "objective": 0.8, "gate_loss_weight": 0.7, "duration_s": 2.5, "best": False},
    ]  # the tie 0.8 goes to the first (as Optuna's best_trial); a pruned trial shows its last report, never best
    minimise = trials_table(TRIALS, ["gate_loss_weight"], "minimize")
    assert [row["best"] for row in minimise] == [True, False, False, False]


def test_write_trials_files(tmp_path):
    rows = trials_table(TRIALS, ["gate_loss_weight"], "maximize")
    paths = write_trials(rows, tmp_path / "run", "category_macro_f1", "maximize")
    assert [p.name for p in paths] == ["hp_trials.csv", "hp_trials.md", "hp_trials.png"]
    with paths[0].open(encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert [row["trial"] for row in table] == ["0", "1", "2", "3"]
    assert table[1]["best"] == "True" and table[2]["state"] == "PRUNED"
    markdown = paths[1].read_text(encoding="utf-8").splitlines()
    assert "validation `category_macro_f1` (maximize)" in markdown[2]
    assert markdown[4] == "| trial | state | objective | gate_loss_weight | duration_s | best |"
    assert markdown[7] == "| 1 | COMPLETE | 0.8 | 0.5 | 3.5 | yes |"
    assert len([line for line in markdown if line.startswith("| ")]) == 1 + 4
    assert paths[2].stat().st_size > 1000 and paths[2].read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------------ argument checks
def test_check_hp_search_arguments(tmp_path):
    check_hp_search_arguments(training_args(tmp_path))  # off: nothing to check
    with pytest.raises(UsageError, match="--hp_search_trials -1: must be a whole number >= 0"):
        check_hp_search_arguments(training_args(tmp_path, hp_search_trials=-1))
    with pytest.raises(UsageError, match="--hp_search_space applies to a hyper-parameter search: give --hp_search_trials"):
        check_hp_search_arguments(training_args(tmp_path, hp_search_space="space.yaml"))
    with pytest.raises(UsageError, match="--hp_search_space .*nope.yaml: search-space file not found"):
        check_hp_search_arguments(training_args(tmp_path, hp_search_trials=2, hp_search_space=str(tmp_path / "nope.yaml")))
    with pytest.raises(UsageError, match="cannot be combined with --hp_search_trials"):
        check_hp_search_arguments(training_args(tmp_path, hp_search_trials=2, resume_from_checkpoint="true"))
    check_hp_search_arguments(training_args(tmp_path, hp_search_trials=2))


def test_ray_backend_missing_is_one_clear_error(tmp_path, monkeypatch):
    import transformers.integrations

    monkeypatch.setattr(transformers.integrations, "is_ray_tune_available", lambda: False)
    with pytest.raises(UsageError, match=r"--hp_search_backend ray: Ray Tune is not installed; pip install 'ray\[tune\]'"):
        check_hp_search_arguments(training_args(tmp_path, hp_search_trials=2, hp_search_backend="ray"))


# --------------------------------------------------------------------------------------- a real small search
def test_real_optuna_search_through_the_trainer(encoder_dir, tokenizer, csv_files, tmp_path):
    data = load_training_data(csv_files["task1"], csv_files["task2"], csv_files["val"], separator=" [SEP] ")
    space_file = tmp_path / "space.yaml"
    space_file.write_text("learning_rate: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}\n"
                          "num_train_epochs: {type: int, low: 1, high: 2}\n"
                          "class_weight_max: {type: float, low: 1.5, high: 4.0}\n", encoding="utf-8")
    run_dir = tmp_path / "run"
    args = training_args(tmp_path, per_device_train_batch_size=8, eval_strategy="epoch", save_strategy="epoch",
                         logging_strategy="epoch", load_best_model_at_end=True, save_total_limit=1,
                         metric_for_best_model="loss", greater_is_better=False, cartography=False, disable_tqdm=True,
                         threshold_cv=0, hp_search_trials=3, hp_search_space=str(space_file))
    check_hp_search_arguments(args)
    category_counts = label_counts(list(data.train["category_labels"]), len(data.category_labels))
    built = []

    def model_init():
        built.append(args.learning_rate)
        return load_for_training(str(encoder_dir), data.category_labels, text_columns=["title", "body"])

    record = TrainingRecord()
    trainer = MultitaskTrainer(
        model_init=model_init, args=args,
        train_dataset=tokenize(data.train, tokenizer, 64), eval_dataset=tokenize(data.validation, tokenizer, 64),
        processing_class=tokenizer, data_collator=MultitaskCollator(tokenizer, keep_keys=("row_id",)),
        compute_metrics=build_compute_metrics(), training_record=record,
        callbacks=[EpochLogCallback(record, run_dir, {"gate": 0.4, "category": 1.0})],
    )
    seen = []

    def on_trial_start(trainer):  # what run_finetune derives from the arguments at build time
        seen.append(trainer.args.class_weight_max)
        trainer.category_class_weights = inverse_frequency_weights(
            category_counts, trainer.args.class_weight_min, trainer.args.class_weight_max)

    result = search_hyperparameters(trainer, run_dir, on_trial_start=on_trial_start)

    assert (result.metric, result.direction, result.backend) == ("loss", "minimize", "optuna")
    for name in ("hp_trials.csv", "hp_trials.md", "hp_trials.png"):
        assert (run_dir / name).is_file(), name
    with (run_dir / "hp_trials.csv").open(encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert [row["trial"] for row in table] == ["0", "1", "2"] and {row["state"] for row in table} == {"COMPLETE"}
    assert len([line for line in (run_dir / "hp_trials.md").read_text(encoding="utf-8").splitlines()
                if line.startswith("| ")]) == 1 + 3
    best_row = min(table, key=lambda row: float(row["objective"]))
    assert best_row["best"] == "True" and result.best_trial == best_row["trial"]
    assert result.best_value == pytest.approx(float(best_row["objective"]))
    assert result.best_params == pytest.approx({"learning_rate": float(best_row["learning_rate"]),
                                                "num_train_epochs": int(best_row["num_train_epochs"]),
                                                "class_weight_max": float(best_row["class_weight_max"])})
    # each trial's model and class weights were built with that trial's values; then once more with the best
    assert built[1:] == pytest.approx([float(row["learning_rate"]) for row in table])
    assert seen == pytest.approx([float(row["class_weight_max"]) for row in table] + [result.best_params["class_weight_max"]])
    assert trainer.args.learning_rate == result.best_params["learning_rate"]
    assert trainer.args.num_train_epochs == float(result.best_params["num_train_epochs"])
    assert float(trainer.category_class_weights.max()) <= result.best_params["class_weight_max"] + 1e-6
    # trial checkpoints are gone; the run's own epoch log saw no trial
    assert not list(run_dir.glob("trial-*")) and not (run_dir / "epoch_log.jsonl").exists()
    assert result.record()["space"]["num_train_epochs"] == {"type": "int", "low": 1, "high": 2}

    # The caller's next train() retrains the best trial: same seed, same model_init, same values.
    trainer.train()
    assert trainer.evaluate()["eval_loss"] == pytest.approx(result.best_value, rel=1e-5)
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "epoch_log.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, result.best_params["num_train_epochs"] + 1))


class _FakeTrainer:
    """Just what `search_hyperparameters` touches, with a search in which every trial is pruned."""

    def __init__(self, args):
        self.args, self.model_init, self.hp_name = args, lambda: None, None
        self.callback_handler = types.SimpleNamespace(callbacks=[])
        self.training_record = TrainingRecord()

    def pop_callback(self, callback):
        self.callback_handler.callbacks.remove(callback)

    def add_callback(self, callback):
        self.callback_handler.callbacks.append(callback)

    def is_world_process_zero(self):
        return True

    def hyperparameter_search(self, hp_space, compute_objective, n_trials, direction, backend, hp_name, **kwargs):
        study = optuna.create_study(direction=direction, **kwargs)
        for _ in range(n_trials):
            trial = study.ask()
            self.model_init(trial)
            trial.report(0.5, step=1)
            study.tell(trial, state=TrialState.PRUNED)
        return study.best_trial  # raises as Optuna does: no trial completed


def test_search_without_a_completed_trial_still_writes_the_table(tmp_path):
    args = training_args(tmp_path, hp_search_trials=2)
    trainer = _FakeTrainer(args)
    with pytest.raises(UsageError, match=r"none of the 2 trial\(s\) completed .*hp_trials.md"):
        search_hyperparameters(trainer, tmp_path / "run", space=[SearchParameter("gate_loss_weight", "float", 0.1, 1.0)])
    with (tmp_path / "run" / "hp_trials.csv").open(encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert [(row["state"], row["objective"], row["best"]) for row in table] == [("PRUNED", "0.5", "False")] * 2
    assert args.gate_loss_weight == pytest.approx(float(table[1]["gate_loss_weight"]))  # the last trial's, not a "best"
    assert trainer.hp_name is None and trainer.callback_handler.callbacks == []  # the trainer is left as it was


def test_ray_trials_become_table_rows():
    from multitask.train.hp_search import _ray_rows

    def ray_trial(trial_id, status, objective, rate):
        return types.SimpleNamespace(trial_id=trial_id, status=status, config={"learning_rate": rate, "wandb": {}},
                                     last_result={"objective": objective, "time_total_s": 12.5})

    best_run = types.SimpleNamespace(run_id="b", run_summary=types.SimpleNamespace(trials=[
        ray_trial("a", "TERMINATED", 0.5, 1e-4), ray_trial("b", "TERMINATED", 0.7, 2e-4), ray_trial("c", "ERROR", None, 3e-4)]))
    assert _ray_rows(best_run, ["learning_rate"]) == [
        {"trial": 0, "state": "COMPLETE", "objective": 0.5, "learning_rate": 1e-4, "duration_s": 12.5, "best": False},
        {"trial": 1, "state": "COMPLETE", "objective": 0.7, "learning_rate": 2e-4, "duration_s": 12.5, "best": True},
        {"trial": 2, "state": "FAIL", "objective": None, "learning_rate": 3e-4, "duration_s": 12.5, "best": False},
    ]
