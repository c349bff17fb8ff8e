#!/usr/bin/env python
"""Quality on real data: CLINC150 (validation split) with the offline MiniLM-L6-H384 encoder.

Trains, in one run and on the same encoder:
  ours      run_finetune.main([...]) in-process: gate + category heads, the recipe's settings (+ --ours_args)
  baseline  a plain transformers Trainer + AutoModelForSequenceClassification, 151-way (oos is a class)
  svm       TF-IDF (word 1-2 grams) + LinearSVC, 151-way

and reports on val.csv: in-scope accuracy (share of gold in-scope rows whose final decision is the right
intent; a gate Decline counts as wrong), out-of-scope recall (share of gold out-of-scope rows declined),
category macro-F1 (intent argmax on in-scope rows, gate ignored) and wall time.

    python bench/bench_clinc150.py                                        # full size (lead's run)
    python bench/bench_clinc150.py --subset_intents 20 --epochs 1         # quick check
    python bench/bench_clinc150.py --ablation --subset_intents 30 --epochs 2

Thresholds are tuned on val.csv and reported on val.csv (the CLINC test split is withheld), so the
figures are optimistic validation figures; see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository root on sys.path)
import numpy as np
from _common import (
    ROOT,
    add_data_arguments,
    add_freeze_embeddings_argument,
    clinc_files,
    freeze_embeddings,
    machine,
    machine_line,
    markdown_table,
    publish,
    require_encoder,
    size_label,
    write_json,
)

from multitask.model.modeling import freeze_word_embeddings
from multitask.scoring.metrics import (
    IGNORE_INDEX,
    category_metrics,
    compute_all,
    joint_labels,
    joint_predictions,
    softmax,
)
from multitask.scoring.thresholds import search_gate_thresholds

OOS = "oos"

# One change each against the base recipe (README: ablation table).
ABLATIONS = {
    "base": ([], "recipe defaults (+ --ours_args)"),
    "hierarchy": (["--hierarchy_weight", "0.1"], "hierarchy regularizer on (hierarchy_weight 0.1)"),
    "rdrop": (["--rdrop", "true"], "R-Drop on (alpha_category 0.5)"),
    "no_llrd": (["--layerwise_lr_decay", "1.0"], "LLRD off (layerwise_lr_decay 1.0)"),
    "no_class_weights": (
        ["--gate_class_weighting", "false", "--category_class_weighting", "false"],
        "class weighting off (gate and category)",
    ),
    "wide_clip": (
        ["--class_weight_min", "0.3", "--class_weight_max", "10"],
        "class-weight clip [0.3, 10] instead of [0.6, 3]",
    ),
    # For a base that already widens the clip in --ours_args: back to the recipe default.
    "default_clip": (
        ["--class_weight_min", "0.6", "--class_weight_max", "3"],
        "class-weight clip [0.6, 3] (the recipe default) instead of --ours_args' clip",
    ),
    "no_smoothing": (["--category_label_smoothing", "0"], "category label smoothing 0 (default 0.1)"),
    "joint_score": (["--gate_score", "joint"], "gate thresholds on P(Pick)·max P(category|Pick) (default P(Pick))"),
    # Not a recipe knob: the bench's --learning_rate (5e-5) differs from the recipe default (2e-5).
    "lr_2e-5": (
        ["--learning_rate", "2e-5"],
        "learning rate 2e-5 (the recipe default) instead of --learning_rate",
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_arguments(parser)
    parser.add_argument("--systems", default="ours,baseline,svm", help="comma list of: ours, baseline, svm")
    parser.add_argument("--epochs", type=float, default=5.0, help="training epochs of ours and baseline")
    parser.add_argument("--batch_size", type=int, default=32, help="training batch size of ours and baseline")
    parser.add_argument(
        "--learning_rate", type=float, default=5e-5, help="peak learning rate of ours and baseline"
    )
    parser.add_argument(
        "--max_seq_length", type=int, default=64, help="token limit (CLINC queries are short)"
    )
    parser.add_argument(
        "--subset_intents", type=int, default=None, help="quick check: this many intents only"
    )
    parser.add_argument(
        "--max_train_rows",
        type=int,
        default=None,
        help="quick check: at most this many in-scope training rows (same number per intent)",
    )
    parser.add_argument(
        "--target_oos_recall",
        type=float,
        default=0.70,
        help="ours' 'leak' threshold maximises in-scope accuracy subject to OOS recall >= this "
        "(passed to run_finetune as --max_decline_leak 1-target)",
    )
    parser.add_argument(
        "--ours_args", default="", help='extra run_finetune flags for ours, e.g. "--rdrop true"'
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="run ours once per ablation (one change each) instead of --systems",
    )
    parser.add_argument(
        "--ablations",
        default=",".join(name for name in ABLATIONS if name != "default_clip"),
        help=f"which ablations: {', '.join(ABLATIONS)}",
    )
    parser.add_argument("--output_dir", default=None, help="default: bench/results/clinc150_<timestamp>")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse a complete run of ours already in --output_dir (resume an interrupted ablation)",
    )
    add_freeze_embeddings_argument(parser, "run_finetune.py's default; --ours_args may still override it for ours")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    args.freeze_embeddings = freeze_embeddings(args.freeze_embeddings)
    args.encoder = require_encoder(args.encoder)
    if args.output_dir is None:
        tag = "clinc150_ablation" if args.ablation else "clinc150"
        args.output_dir = str(ROOT / "bench" / "results" / time.strftime(f"{tag}_%Y%m%d_%H%M%S"))
    unknown = set(args.systems.split(",")) - {"ours", "baseline", "svm"}
    if unknown:
        parser.error(f"unknown --systems {sorted(unknown)}")
    unknown = set(args.ablations.split(",")) - set(ABLATIONS)
    if unknown:
        parser.error(f"unknown --ablations {sorted(unknown)}")
    return args


# ----------------------------------------------------------------------------------------------------- metrics
def operating_point(pick_prob, category_probs, gate_labels, category_labels, threshold: float) -> dict:
    """The issue's numbers at one gate threshold (Pick iff pick_prob >= threshold), via multitask.scoring.metrics."""
    pick_prob, category_probs = np.asarray(pick_prob), np.asarray(category_probs)
    num_categories = category_probs.shape[1]
    gold = joint_labels(gate_labels, category_labels, num_categories)
    predicted = joint_predictions(pick_prob, category_probs, threshold)
    in_scope = (gold != IGNORE_INDEX) & (gold < num_categories)
    out_of_scope = gold == num_categories
    everything = compute_all(pick_prob, category_probs, gate_labels, category_labels, threshold)
    return {
        "threshold": float(threshold),
        "in_scope_accuracy": float((predicted[in_scope] == gold[in_scope]).mean()),
        "oos_recall": float((predicted[out_of_scope] == num_categories).mean())
        if out_of_scope.any()
        else None,
        "category_macro_f1": everything["category_macro_f1"],
        "category_accuracy": everything["category_accuracy"],
        "joint_accuracy": everything["joint_accuracy"],
        "joint_macro_f1": everything["joint_macro_f1"],
        "gate_f1": everything["gate_f1"],
        "in_scope_rows": int(in_scope.sum()),
        "oos_rows": int(out_of_scope.sum()),
    }


def argmax_point(scores: np.ndarray, gate_labels, category_labels) -> dict:
    """A (N+1)-way classifier whose last column is oos: its argmax as the joint decision."""
    num_categories = scores.shape[1] - 1
    pick = (scores.argmax(axis=1) != num_categories).astype(np.float64)
    # Category view: argmax over the in-scope columns only (what the category head of ours does).
    return operating_point(pick, softmax(scores[:, :num_categories]), gate_labels, category_labels, 0.5)


def val_labels(val_path: Path, label2id: dict[str, int]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Texts (built as training builds them), gate labels and category ids (-100 where none) of val.csv."""
    from multitask.io.tables import build_texts, read_table

    table = read_table(val_path)
    frame = table.frame
    texts = build_texts(table, ["title"], " ")
    gate = frame["pick"].astype(int).to_numpy()
    category = np.array([label2id[name] if name else IGNORE_INDEX for name in frame["category"]])
    return texts, gate, category


def training_rows(paths: dict[str, Path]) -> tuple[list[str], list[str]]:
    """The 151-way training set of baseline and svm: task2 rows (intent) + task1 Decline rows (oos), one row
    per distinct text (first label kept), as run_finetune merges its files."""
    from multitask.io.tables import build_text, read_table

    task1 = read_table(paths["task1"]).frame
    task2 = read_table(paths["task2"]).frame
    texts = [build_text([t], " ") for t in list(task2["title"]) + list(task1["title"][task1["pick"] == "0"])]
    labels = list(task2["category"]) + [OOS] * int((task1["pick"] == "0").sum())
    seen, kept_texts, kept_labels = set(), [], []
    for text, label in zip(texts, labels):
        if text not in seen:
            seen.add(text)
            kept_texts.append(text)
            kept_labels.append(label)
    return kept_texts, kept_labels


# ------------------------------------------------------------------------------------------------------ ours
def ours_argv(args, paths: dict[str, Path], run_dir: Path, extra: list[str]) -> list[str]:
    return [
        "--model_name_or_path", args.encoder,
        "--task1_file", str(paths["task1"]), "--task2_file", str(paths["task2"]),
        "--validation_file", str(paths["val"]),
        "--text_columns", "title",
        "--max_seq_length", str(args.max_seq_length),
        "--num_train_epochs", str(args.epochs),
        "--per_device_train_batch_size", str(args.batch_size),
        "--learning_rate", str(args.learning_rate),
        "--seed", str(args.seed),
        "--max_decline_leak", f"{1.0 - args.target_oos_recall:.6g}",
        "--save_total_limit", "1",
        "--report_to", "none",
        "--output_dir", str(run_dir),
        "--freeze_embeddings", str(args.freeze_embeddings).lower(),
        *shlex.split(args.ours_args),
        *extra,
    ]  # fmt: skip


def run_ours(args, paths: dict[str, Path], run_dir: Path, extra: list[str]) -> dict:
    """Train with run_finetune.main (or reuse a complete run), then score val with the saved model."""
    import run_finetune
    from multitask.serve.predict import load_model, predict_scores

    timing_file = run_dir / "bench_timing.json"
    status_file = run_dir / "run_status.json"
    complete = status_file.is_file() and json.loads(status_file.read_text())["status"] == "complete"
    argv = ours_argv(args, paths, run_dir, extra)
    if args.reuse and complete and timing_file.is_file():
        timing = json.loads(timing_file.read_text())
        print(f"[ours] reusing the complete run in {run_dir}")
    else:
        if complete:
            raise SystemExit(f"{run_dir} holds a complete run: pass --reuse, or another --output_dir")
        if (run_dir / "run_status.json").is_file():  # an interrupted run: start it again from scratch
            import shutil

            shutil.rmtree(run_dir)
        print("[ours] python run_finetune.py " + " ".join(shlex.quote(a) for a in argv), flush=True)
        start = time.perf_counter()
        metrics = run_finetune.main(argv)
        timing = {"wall_s": time.perf_counter() - start, "train": metrics["train"]}
        write_json(timing_file, timing)

    model, tokenizer = load_model(str(run_dir), "cpu")
    label2id = model.config.category_label2id
    texts, gate, category = val_labels(paths["val"], label2id)
    scores = predict_scores(model, tokenizer, texts, 64, args.max_seq_length)
    # The thresholds run_finetune tuned on val (project's own search), as stored in the saved config.
    points = {
        kind: operating_point(scores.pick_prob, scores.category_probs, gate, category, threshold)
        for kind, threshold in model.config.gate_thresholds.items()
    }
    search = json.loads((run_dir / "thresholds.json").read_text())
    _cross_check(run_dir, points, label2id)
    train = timing["train"]
    return {
        "run_dir": str(run_dir),
        "argv": argv,
        "wall_s": timing["wall_s"],
        "train_runtime_s": train.get("train_runtime"),
        "train_samples_per_second": train.get("train_samples_per_second"),
        "points": points,
        "threshold_search": search,
        "label2id": label2id,
    }


def _cross_check(run_dir: Path, points: dict, label2id: dict) -> None:
    """The run's own predictions_<kind>_validation.csv must give the same in-scope accuracy as our re-scoring."""
    import pandas as pd

    for kind, point in points.items():
        name = "predictions_validation.csv" if kind == "default" else f"predictions_{kind}_validation.csv"
        path = run_dir / name
        if not path.is_file():
            continue
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        in_scope = table["pick"] == "1"
        accuracy = float((table.loc[in_scope, "decision"] == table.loc[in_scope, "category"]).mean())
        if abs(accuracy - point["in_scope_accuracy"]) > 1e-9:
            print(
                f"WARNING: {run_dir.name}/{name}: in-scope accuracy {accuracy:.4f} at the end of training, "
                f"{point['in_scope_accuracy']:.4f} from the saved model (the in-memory and the reloaded model "
                "disagree; the table reports the reloaded one, as run_predict.py would use it)"
            )


# -------------------------------------------------------------------------------------------------- baseline
def run_baseline(args, paths: dict[str, Path], run_dir: Path, intents: list[str]) -> dict:
    """Plain Trainer + AutoModelForSequenceClassification, 151 labels (oos last), same encoder and budget.

    Same epochs, batch, learning rate, warm-up (6 %), weight decay (0.01), max length, seed and word embeddings
    (frozen or trained, `--freeze_embeddings`) as ours, and the same checkpoint choice (best val category macro-F1
    of an epoch). Other differences: the model head(s) and loss, and the batch order (the Trainer's random
    sampler; ours groups by length by default).
    """
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    start = time.perf_counter()
    set_seed(args.seed)
    classes = [*intents, OOS]
    label2id = {name: index for index, name in enumerate(classes)}
    num_categories = len(intents)
    tokenizer = AutoTokenizer.from_pretrained(args.encoder)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.encoder, num_labels=len(classes), id2label=dict(enumerate(classes)), label2id=label2id
    )
    if args.freeze_embeddings:
        freeze_word_embeddings(model)
    train_texts, train_names = training_rows(paths)
    val_texts, gate, category = val_labels(paths["val"], {name: i for i, name in enumerate(intents)})
    val_joint = np.where(gate == 0, num_categories, category)

    def encode(batch):
        return tokenizer(batch["text"], truncation=True, max_length=args.max_seq_length)

    train = Dataset.from_dict({"text": train_texts, "label": [label2id[n] for n in train_names]})
    val = Dataset.from_dict({"text": val_texts, "label": val_joint.tolist()})
    train, val = (d.map(encode, batched=True, remove_columns=["text"]) for d in (train, val))

    def compute_metrics(eval_pred):
        labels = np.asarray(eval_pred.label_ids)
        in_scope = labels < num_categories
        logits = np.asarray(eval_pred.predictions)[:, :num_categories]
        return {
            "category_macro_f1": category_metrics(logits[in_scope], labels[in_scope])["category_macro_f1"]
        }

    training_args = TrainingArguments(
        output_dir=str(run_dir),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=args.learning_rate,
        warmup_steps=0.06,
        weight_decay=0.01,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="category_macro_f1",
        save_total_limit=1,
        seed=args.seed,
        report_to="none",
        dataloader_pin_memory=False,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=val,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
    )
    print(f"[baseline] {len(train)} training rows, {len(classes)} classes", flush=True)
    train_result = trainer.train()
    logits = trainer.predict(val).predictions
    wall = time.perf_counter() - start
    # Kept for the gate bench (bench_gate.py): the chosen model and its val logits, scored again under other protocols.
    trainer.save_model(str(run_dir / "model"))
    np.save(run_dir / "val_logits.npy", logits)
    probs = softmax(logits)

    points = {"argmax": argmax_point(logits, gate, category)}
    # Extra, for a like-for-like comparison: the same threshold search on 1 - P(oos).
    pick_prob = 1.0 - probs[:, num_categories]
    in_scope_probs = probs[:, :num_categories] / probs[:, :num_categories].sum(axis=1, keepdims=True)
    correct = (in_scope_probs.argmax(axis=1) == category) & (category != IGNORE_INDEX)
    search = search_gate_thresholds(pick_prob, gate, correct, 1.0 - args.target_oos_recall)
    for kind in ("f1", "leak"):
        points[f"oos_prob_{kind}"] = operating_point(
            pick_prob, in_scope_probs, gate, category, search[kind]["threshold"]
        )
    return {
        "run_dir": str(run_dir),
        "wall_s": wall,
        "train_runtime_s": train_result.metrics.get("train_runtime"),
        "train_samples_per_second": train_result.metrics.get("train_samples_per_second"),
        "points": points,
        "threshold_search": search,
    }


# ------------------------------------------------------------------------------------------------------- svm
def run_svm(args, paths: dict[str, Path], intents: list[str]) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    start = time.perf_counter()
    classes = [*intents, OOS]
    label2id = {name: index for index, name in enumerate(classes)}
    train_texts, train_names = training_rows(paths)
    val_texts, gate, category = val_labels(paths["val"], {name: i for i, name in enumerate(intents)})
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    features = vectorizer.fit_transform(train_texts)
    classifier = LinearSVC(C=1.0, random_state=args.seed)
    classifier.fit(features, [label2id[name] for name in train_names])
    decision = classifier.decision_function(vectorizer.transform(val_texts))
    # LinearSVC orders its columns by label id; a class absent from training would shift them.
    scores = np.full((len(val_texts), len(classes)), -np.inf)
    scores[:, classifier.classes_] = decision
    wall = time.perf_counter() - start
    return {"wall_s": wall, "points": {"argmax": argmax_point(scores, gate, category)}}


# ---------------------------------------------------------------------------------------------------- report
def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _row(system: str, point_name: str, point: dict, result: dict) -> list:
    rate = result.get("train_samples_per_second")
    return [
        system,
        point_name,
        f"{point['threshold']:.4f}" if point_name not in ("argmax",) else "argmax",
        _pct(point["in_scope_accuracy"]),
        _pct(point["oos_recall"]),
        _pct(point["category_macro_f1"]),
        _pct(point["joint_macro_f1"]),
        f"{result['wall_s'] / 60:.1f}",
        f"{rate:.1f}" if rate else "–",
    ]


HEADER = [
    "system",
    "operating point",
    "threshold",
    "in-scope acc %",
    "OOS recall %",
    "category macro-F1 %",
    "joint (151) macro-F1 %",
    "wall min",
    "train rows/s",
]
POINT_NOTES = {
    "leak": "leak: max in-scope acc s.t. OOS recall >= target",
    "f1": "f1: max gate F1",
    "acc": "acc: max gate accuracy",
    "default": "default: P(Pick) >= 0.5",
}


def results_table(results: dict) -> str:
    rows = []
    if "ours" in results:
        for kind in ("leak", "f1", "acc", "default"):
            if kind in results["ours"]["points"]:
                rows.append(
                    _row(
                        "ours",
                        POINT_NOTES[kind].split(":")[0],
                        results["ours"]["points"][kind],
                        results["ours"],
                    )
                )
    if "baseline" in results:
        for name, point in results["baseline"]["points"].items():
            rows.append(_row("baseline (151-way)", name, point, results["baseline"]))
    if "svm" in results:
        rows.append(_row("TF-IDF + LinearSVC", "argmax", results["svm"]["points"]["argmax"], results["svm"]))
    return markdown_table(HEADER, rows)


def ablation_table(results: dict, kind: str = "leak") -> str:
    base = results.get("base", {}).get("points", {}).get(kind)
    rows = []
    for name, result in results.items():
        point = result["points"][kind]
        delta = ""
        if base is not None and name != "base":
            delta = (
                f"{100 * (point['in_scope_accuracy'] - base['in_scope_accuracy']):+.2f} / "
                f"{100 * ((point['oos_recall'] or 0) - (base['oos_recall'] or 0)):+.2f} / "
                f"{100 * (point['category_macro_f1'] - base['category_macro_f1']):+.2f}"
            )
        rows.append(
            [
                name,
                ABLATIONS[name][1],
                _pct(point["in_scope_accuracy"]),
                _pct(point["oos_recall"]),
                _pct(point["category_macro_f1"]),
                delta,
                f"{result['wall_s'] / 60:.1f}",
            ]
        )
    return markdown_table(
        [
            "variant",
            "change",
            "in-scope acc %",
            "OOS recall %",
            "category macro-F1 %",
            "Δ vs base (acc / recall / F1, pp)",
            "wall min",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, description = clinc_files(
        args.data_dir, out / "data", args.subset_intents, args.max_train_rows, args.seed
    )
    import pandas as pd

    intents = sorted(pd.read_csv(paths["task2"], dtype=str, keep_default_na=False)["category"].unique())
    info = machine()
    size = size_label(description, args.epochs)
    print(f"[bench] {size}\n[bench] {machine_line(info)}\n[bench] output: {out}", flush=True)
    report = {"arguments": vars(args), "data": description, "size": size, "machine": info, "results": {}}
    results = report["results"]

    if args.ablation:
        for name in args.ablations.split(","):
            extra, _ = ABLATIONS[name]
            results[name] = run_ours(args, paths, out / "ablation" / name, extra)
            write_json(out / "ablation.json", report)
            print(
                f"[ablation] {name}: "
                + json.dumps(
                    {
                        k: results[name]["points"]["leak"][k]
                        for k in ("in_scope_accuracy", "oos_recall", "category_macro_f1")
                    }
                ),
                flush=True,
            )
        table = ablation_table(results)
        text = (
            f"## CLINC150 ablation ({size})\n\nMachine: {machine_line(info)}\n\nOperating point: 'leak' "
            f"threshold (max in-scope accuracy s.t. OOS recall >= {args.target_oos_recall:.0%} on val)\n\n{table}\n"
        )
        publish(out, "ablation.md", [text])
        return report

    for system in args.systems.split(","):
        if system == "ours":
            results["ours"] = run_ours(args, paths, out / "ours", [])
            if results["ours"]["label2id"] != {name: i for i, name in enumerate(intents)}:
                raise RuntimeError(
                    "ours' category label map differs from the sorted intents used for baseline/svm"
                )
        elif system == "baseline":
            results["baseline"] = run_baseline(args, paths, out / "baseline", intents)
        elif system == "svm":
            results["svm"] = run_svm(args, paths, intents)
        write_json(out / "results.json", report)
    table = results_table(results)
    notes = "\n".join(f"- {note}" for note in POINT_NOTES.values())
    text = (
        f"## CLINC150 validation ({size})\n\nMachine: {machine_line(info)}\n\n{table}\n\n"
        f"Operating points of ours (thresholds tuned on val by multitask.scoring.thresholds):\n{notes}\n"
        f"- baseline oos_prob_*: the same search on 1 - P(oos) of the 151-way model\n"
    )
    publish(out, "results.md", [text])
    return report


if __name__ == "__main__":
    main()
