#!/usr/bin/env python
"""Gate quality under the honest protocol: every gate score of trained CLINC150 runs, over seeds.

Reads the runs `bench_clinc150.py --systems ours,baseline --seed S --output_dir DIR_S` wrote (one DIR per seed),
and for each seed:

  ours      the saved multitask model; the feature scores (energy, Mahalanobis, kNN) are fitted on the training
            rows exactly as run_finetune does after training (`multitask.serve.predict.fit_gate_statistics`, same data
            reader, same seed), then every gate score is computed on val.csv;
  baseline  the plain Trainer's 151-way val logits (oos is class 151): in-scope scores 1 - P(oos), max in-scope
            softmax probability (msp) and in-scope energy; category = argmax over the 150 intents.

Every score is judged by `multitask.scoring.gate_selection.cross_validate_gate` (K folds over val rows stratified by
in/out of scope; threshold, and for `auto` the score, chosen on K-1 folds, applied to the held-out fold):
held-out in-scope accuracy and OOS recall at the `leak` point (OOS recall >= --target_oos_recall on the fitting
folds), OOS AUROC / AUPR-out / FPR at 95 % TPR on all of val (threshold-free), and, for contrast, the figure the
old protocol reported (threshold chosen and reported on the same rows). Mean ± sd over seeds.

Nothing is written back into the runs: a model to deploy comes from `run_finetune.py --gate_score auto`, which does
the same fitting and choice and stores them.

    python bench/bench_gate.py bench/results/gate_seed42 bench/results/gate_seed43 bench/results/gate_seed44
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository root on sys.path)
import numpy as np
from _common import CLINC_FILES, ROOT, add_data_arguments, machine, machine_line, markdown_table, write_json

from multitask.data.text_encoding import text_separator
from multitask.model.ood import ALL_SCORES
from multitask.scoring.gate_selection import choose_gate, cross_validate_gate
from multitask.scoring.metrics import IGNORE_INDEX, softmax


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("runs", nargs="+", help="bench_clinc150 output dirs, one per seed (ours/, baseline/)")
    parser.add_argument("--target_oos_recall", type=float, default=0.70)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--output_dir", default=None)
    return parser.parse_args(argv)


def ours_scores(run: Path, paths: dict, args) -> tuple:
    """All in-scope scores of the saved model on val, after fitting the feature statistics as run_finetune does."""
    from multitask.data.loading import load_training_data
    from multitask.serve.predict import fit_gate_statistics, load_model, predict_scores

    model, tokenizer = load_model(str(run / "ours"), "cpu")
    arguments = json.loads((run / "ours" / "run_config.json").read_text())["arguments"]
    seed = arguments["MultitaskTrainingArguments"]["seed"]
    separator = text_separator(tokenizer)
    data = load_training_data(str(paths["task1"]), str(paths["task2"]), str(paths["val"]), [], ["title"], separator,
                              0.1, seed, None)
    started = time.perf_counter()
    fit_gate_statistics(model, tokenizer, list(data.train["text"]), list(data.train["category_labels"]),
                        list(data.train["gate_labels"]), 64, args.max_seq_length, 10000, 10, seed)
    fit_seconds = time.perf_counter() - started
    scores = predict_scores(model, tokenizer, list(data.validation["text"]), 64, args.max_seq_length)
    gate = np.asarray(data.validation["gate_labels"])
    category = np.asarray(data.validation["category_labels"])
    correct = (scores.category_probs.argmax(axis=1) == category) & (category != IGNORE_INDEX)
    return scores.gate_scores, gate, category, correct, fit_seconds


def baseline_scores(run: Path, gate: np.ndarray, category: np.ndarray) -> tuple[dict, np.ndarray]:
    logits = np.load(run / "baseline" / "val_logits.npy").astype(np.float64)
    probs = softmax(logits)
    intents = logits[:, :-1]
    energy = np.log(np.exp(intents - intents.max(axis=1, keepdims=True)).sum(axis=1)) + intents.max(axis=1)
    scores = {"oos_prob": 1.0 - probs[:, -1], "msp": probs[:, :-1].max(axis=1),
              # a monotone map into (0, 1) is enough: thresholds are searched on the score's own values
              "energy": 1.0 / (1.0 + np.exp(-(energy - np.median(energy)) / (energy.std() + 1e-9)))}
    correct = (intents.argmax(axis=1) == category) & (category != IGNORE_INDEX)
    return scores, correct


def evaluate(scores: dict, gate, correct, names: list[str], args, seed: int) -> dict:
    leak = 1.0 - args.target_oos_recall
    rows = {}
    for name in [*names, "auto"]:
        candidates = names if name == "auto" else [name]
        cv = cross_validate_gate(scores, gate, correct, candidates, leak, args.folds, seed, bootstrap_rounds=1000)
        point = cv["operating_points"]["leak"]
        same = choose_gate(scores, gate, correct, candidates, leak)[1]["leak"]
        rows[name] = {
            "held_out": point["pooled"], "interval": point["interval"],
            "fold_mean": point["fold_mean"], "fold_sd": point["fold_sd"],
            "chosen_per_fold": cv["chosen_per_fold"],
            "reweighted_18": next(r for r in cv["reweighted"]["leak"] if abs(r["oos_share"] - 0.18) < 1e-9),
            "same_rows": {"in_scope_accuracy": same.get("category_accuracy_end_to_end"),
                          "oos_recall": 1.0 - same["gate_decline_leak"]},
            **({k: cv["per_score"][name][k] for k in ("auroc", "aupr_out", "fpr_at_95tpr")} if name != "auto" else {}),
        }
    return rows


def mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    paths = {name: Path(args.data_dir) / filename for name, filename in CLINC_FILES.items()}  # full size only
    out = Path(args.output_dir or ROOT / "bench" / "results" / time.strftime("gate_%Y%m%d_%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    per_seed = {}
    for run in map(Path, args.runs):
        seed = json.loads((run / "ours" / "run_config.json").read_text())["arguments"]["MultitaskTrainingArguments"]["seed"]
        scores, gate, category, correct, fit_seconds = ours_scores(run, paths, args)
        result = {"ours": evaluate(scores, gate, correct, [n for n in ALL_SCORES if n in scores], args, seed),
                  "fit_seconds": fit_seconds}
        if (run / "baseline" / "val_logits.npy").is_file():
            base_scores, base_correct = baseline_scores(run, gate, category)
            result["baseline"] = evaluate(base_scores, gate, base_correct, list(base_scores), args, seed)
        per_seed[seed] = result
        print(f"[seed {seed}] done ({fit_seconds:.1f} s to fit the gate statistics)", flush=True)

    table = []
    for system in ("ours", "baseline"):
        names = sorted({name for r in per_seed.values() for name in r.get(system, {})},
                       key=lambda n: ([*ALL_SCORES, "oos_prob", "auto"].index(n)))
        for name in names:
            rows = [r[system][name] for r in per_seed.values() if name in r.get(system, {})]
            table.append([
                system, name,
                mean_sd([r.get("auroc") for r in rows]) if name != "auto" else "–",
                mean_sd([r.get("fpr_at_95tpr") for r in rows]) if name != "auto" else "–",
                mean_sd([r["held_out"]["in_scope_accuracy"] for r in rows]),
                mean_sd([r["held_out"]["oos_recall"] for r in rows]),
                mean_sd([r["reweighted_18"]["joint_accuracy"] for r in rows]),
                mean_sd([r["same_rows"]["in_scope_accuracy"] for r in rows]),
                mean_sd([r["same_rows"]["oos_recall"] for r in rows]),
            ])
    header = ["system", "gate score", "OOS AUROC %", "FPR@95TPR %", "held-out in-scope acc %",
              "held-out OOS recall %", "joint acc at 18 % OOS %", "same-rows in-scope acc %", "same-rows OOS recall %"]
    info = machine()
    text = "\n".join([
        f"# Gate scores under the held-out-fold protocol ({len(per_seed)} seed(s): {sorted(per_seed)})",
        "", machine_line(info), "",
        f"{args.folds}-fold over val rows (stratified by in/out of scope), `leak` point: OOS recall >= "
        f"{args.target_oos_recall:.0%} on the fitting folds. Mean ± sd over seeds.", "",
        markdown_table(header, table),
    ])
    print(text)
    (out / "gate.md").write_text(text + "\n", encoding="utf-8")
    write_json(out / "gate.json", {"machine": info, "args": vars(args), "per_seed": per_seed})
    return per_seed


if __name__ == "__main__":
    main()
