#!/usr/bin/env python
"""The operating point on new data: the promise, the guarantee, and a proxy shift (CLINC150, MiniLM-L6).

Per seed, one run of ours with bench/README §1's recipe (`bench_clinc150.ours_argv`: 5 epochs, checkpoint chosen
on validation, `--max_decline_leak 0.3 --threshold_cv 5`) plus `--report_split 0.3`: 30 % of validation (930
rows, 30 out-of-scope) is kept out of every choice. Then, from the run's own files:

  promise      the run log's held-out-fold figures at the `leak` threshold, with their 95 % bootstrap interval,
               made on the 70 % of validation the choices read (checkpoint, gate score, thresholds)
  report       the stored `leak` threshold on the report rows: what the promise is worth on rows no choice read
  guaranteed   the `--oos_recall_confidence 0.95` threshold, fitted on the same 70 % (Clopper-Pearson bound on
               its Decline rows, split over the run's candidate gate scores as the flag splits it), applied to
               the report rows
  unseen OOS   a proxy shift: validation's 100 out-of-scope rows are clustered into topics (TF-IDF + k-means,
               seeded); each topic in turn is left out of the fitting rows, both thresholds are fitted on the
               rest, and recall is measured on the left-out topic. Pooled over topics.

The gate score is the one the run chose (post hoc, the guaranteed threshold keeps it; the flag would re-run the
choice under the bound). CLINC150's own test split is held back: nothing here reads it.

    python bench/bench_guarantee.py --seeds 42,43,44

Finished runs in --output_dir/runs are reused; results.json and guarantee.md are rewritten after every seed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import _common  # noqa: F401  (puts the repository root on sys.path)
import numpy as np
import pandas as pd
from _common import (
    CLINC_FILES,
    ROOT,
    add_data_arguments,
    machine,
    machine_line,
    markdown_table,
    require_encoder,
    write_json,
)

REPORT_SPLIT = 0.3


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--target_oos_recall", type=float, default=0.7)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--topics", type=int, default=5, help="clusters of out-of-scope rows (proxy shift)")
    parser.add_argument("--epochs", type=float, default=5.0)
    parser.add_argument("--output_dir", default=str(ROOT / "bench" / "results" / "guarantee_clinc150"))
    args = parser.parse_args(argv)
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    args.encoder = require_encoder(args.encoder)
    return args


def train(args, seed: int, run_dir: Path) -> None:
    """run_finetune.py with §1's recipe plus --report_split, unless a complete run is there."""
    from bench_clinc150 import ours_argv

    status = run_dir / "run_status.json"
    if status.is_file() and json.loads(status.read_text())["status"] == "complete":
        print(f"[guarantee] reusing {run_dir}", flush=True)
        return
    if run_dir.exists():  # an interrupted run: run_finetune refuses to start over it
        shutil.rmtree(run_dir)
    recipe = argparse.Namespace(encoder=args.encoder, max_seq_length=64, epochs=args.epochs, batch_size=32,
                                learning_rate=5e-5, seed=seed, target_oos_recall=args.target_oos_recall,
                                freeze_embeddings=True, ours_args="")
    paths = {name: Path(args.data_dir) / filename for name, filename in CLINC_FILES.items()}
    argv = ours_argv(recipe, paths, run_dir, ["--report_split", str(REPORT_SPLIT), "--threshold_cv", "5"])
    print("[guarantee] python run_finetune.py " + " ".join(argv), flush=True)
    subprocess.run([sys.executable, str(ROOT / "run_finetune.py"), *argv], check=True)


def rows(path: Path, model, tokenizer) -> dict[str, np.ndarray]:
    """Gate score, gold gate, category correctness and text of one predictions file. The gate score is computed
    again from the saved model: the file's `pick_prob` is rounded for reading, and thresholds are refitted here."""
    from multitask.serve.predict import predict_scores

    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    gold = frame["pick"].astype(int).to_numpy()
    correct = (frame["category_pred"] == frame["category"]).to_numpy() | (gold == 0)
    texts = frame["title"].tolist()  # --text_columns title: the title is the model's whole input
    scores = predict_scores(model, tokenizer, texts, 64, 64)
    predicted = frame["pick_pred"].astype(int).to_numpy()
    stored = model.config.gate_thresholds["default"]
    if not np.array_equal(scores.pick_prob >= stored, predicted == 1):
        raise RuntimeError(f"{path}: the re-scored gate decisions differ from the run's own")
    return {"score": scores.pick_prob, "gold": gold, "correct": correct, "text": np.asarray(texts)}


def threshold(part: dict, leak: float, confidence: float | None) -> float:
    from multitask.scoring.thresholds import search_gate_thresholds

    return search_gate_thresholds(part["score"], part["gold"], part["correct"], leak,
                                  confidence=confidence)["leak"]["threshold"]


def figures(part: dict, at: float) -> dict:
    from multitask.scoring.gate_selection import fixed_threshold_figures

    point = fixed_threshold_figures(part["score"], part["gold"], part["correct"], {"t": at})["operating_points"]["t"]
    return {"in_scope_accuracy": point["figures"]["in_scope_accuracy"], "oos_recall": point["figures"]["oos_recall"],
            "oos_recall_interval": point["exact_interval"]["oos_recall"]}


def topics(texts: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A topic id per out-of-scope text: k-means on TF-IDF word 1-2-grams (L2-normalised, so cosine-like)."""
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectors = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform(texts)
    return KMeans(n_clusters=count, n_init=10, random_state=seed).fit_predict(vectors)


def take(part: dict, mask: np.ndarray) -> dict:
    return {key: values[mask] for key, values in part.items()}


def analyse(args, seed: int, run_dir: Path) -> dict:
    from multitask.scoring.gate_selection import per_score_confidence

    metrics = json.loads((run_dir / "metrics.json").read_text())
    candidates = len(json.loads((run_dir / "gate_cv.json").read_text())["candidates"])
    from multitask.serve.predict import load_model

    model, tokenizer = load_model(str(run_dir), "cpu")
    chosen = rows(run_dir / "predictions_validation.csv", model, tokenizer)  # the 70 % every choice read
    report = rows(run_dir / "predictions_validation_report.csv", model, tokenizer)
    leak = 1.0 - args.target_oos_recall
    sure = per_score_confidence(args.confidence, candidates)
    point_threshold = json.loads((run_dir / "thresholds.json").read_text())["leak"]["threshold"]
    sure_threshold = threshold(chosen, leak, sure)
    promise = metrics["gate_cv"]["leak"]

    # Proxy shift: every out-of-scope row of validation gets a topic; each topic is left out in turn.
    oos = np.concatenate([chosen["gold"] == 0, report["gold"] == 0])
    every = {key: np.concatenate([chosen[key], report[key]]) for key in chosen}
    topic = np.full(oos.size, -1)
    topic[oos] = topics(every["text"][oos], args.topics, seed)
    in_chosen = np.arange(oos.size) < chosen["gold"].size
    caught = {"point": 0, "guaranteed": 0}
    for left_out in range(args.topics):
        fit = take(every, in_chosen & (topic != left_out))
        unseen = take(every, topic == left_out)
        for name, confidence in (("point", None), ("guaranteed", sure)):
            at = threshold(fit, leak, confidence)
            caught[name] += int((unseen["score"] < at).sum())
    return {
        "seed": seed,
        "gate_score": json.loads((run_dir / "model" / "config.json").read_text())["gate_score"],
        "candidates": candidates,
        "per_score_confidence": sure,
        "decline_rows_fitted": int((chosen["gold"] == 0).sum()),
        "report_rows": int(report["gold"].size),
        "report_decline_rows": int((report["gold"] == 0).sum()),
        "promise": {key: promise[key]["held_out"] for key in ("in_scope_accuracy", "oos_recall")},
        "promise_interval": {key: promise[key]["interval_95"] for key in ("in_scope_accuracy", "oos_recall")},
        "point": {"threshold": point_threshold, **figures(report, point_threshold)},
        "guaranteed": {"threshold": sure_threshold, **figures(report, sure_threshold)},
        "unseen_topics_recall": {name: count / int(oos.sum()) for name, count in caught.items()},
        "topic_sizes": np.bincount(topic[oos], minlength=args.topics).tolist(),
    }


def pct(value: float) -> str:
    return f"{100 * value:.2f}"


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return pct(values[0])
    return f"{pct(statistics.mean(values))} ± {pct(statistics.stdev(values))}"


def table(results: list[dict]) -> str:
    header = ["seed", "gate score", "promise: in-scope % [95 %]", "promise: OOS recall % [95 %]",
              "report rows, `leak`: in-scope / OOS recall %", "report rows, guaranteed: in-scope / OOS recall %",
              "unseen OOS topics, recall %: `leak` / guaranteed"]
    body = []
    for r in results:
        interval = r["promise_interval"]
        body.append([
            r["seed"], r["gate_score"],
            f"{pct(r['promise']['in_scope_accuracy'])} [{pct(interval['in_scope_accuracy'][0])}, "
            f"{pct(interval['in_scope_accuracy'][1])}]",
            f"{pct(r['promise']['oos_recall'])} [{pct(interval['oos_recall'][0])}, {pct(interval['oos_recall'][1])}]",
            f"{pct(r['point']['in_scope_accuracy'])} / {pct(r['point']['oos_recall'])}",
            f"{pct(r['guaranteed']['in_scope_accuracy'])} / {pct(r['guaranteed']['oos_recall'])}",
            f"{pct(r['unseen_topics_recall']['point'])} / {pct(r['unseen_topics_recall']['guaranteed'])}",
        ])
    if len(results) > 1:
        def col(*path):
            values = []
            for r in results:
                value = r
                for key in path:
                    value = value[key]
                values.append(value)
            return mean_sd(values)

        body.append(["mean ± sd", "", col("promise", "in_scope_accuracy"), col("promise", "oos_recall"),
                     f"{col('point', 'in_scope_accuracy')} / {col('point', 'oos_recall')}",
                     f"{col('guaranteed', 'in_scope_accuracy')} / {col('guaranteed', 'oos_recall')}",
                     f"{col('unseen_topics_recall', 'point')} / {col('unseen_topics_recall', 'guaranteed')}"])
    return markdown_table(header, body)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    out = Path(args.output_dir)
    info = machine()
    results = []
    for seed in args.seeds:
        run_dir = out / "runs" / f"s{seed}"
        train(args, seed, run_dir)
        results.append(analyse(args, seed, run_dir))
        write_json(out / "results.json", {"arguments": vars(args), "machine": info, "results": results})
        text = (f"## Operating point on new data (CLINC150, MiniLM-L6)\n\nMachine: {machine_line(info)}\n\n"
                f"Target OOS recall {args.target_oos_recall:.0%}; guarantee at {args.confidence:.0%} confidence; "
                f"report rows: {REPORT_SPLIT:.0%} of validation kept out of every choice; {args.topics} OOS "
                f"topics.\n\n{table(results)}\n")
        (out / "guarantee.md").write_text(text, encoding="utf-8")
        print(text, flush=True)
    return results


if __name__ == "__main__":
    main()
