#!/usr/bin/env python
"""Prediction speed: multitask.serve.predict.predict_scores (what run_predict.py runs) vs
transformers.pipeline("text-classification"), same encoder, same rows, same batch size; and peak memory.

Nothing is trained: speed does not depend on the weights. Without --model, a multitask model (gate + 150
CLINC intents) is built on the MiniLM-L6 encoder and saved; the pipeline gets an
AutoModelForSequenceClassification (151 labels) on the same encoder, saved the same way. Rows are the
CLINC150 validation queries (their real length mix), repeated in order up to --rows.

Speed: one process, both models loaded once, ABBA rounds of a full pass over the rows each; rows/s is
rows / wall time of the call (tokenization, batching, forward, softmax, results), median over rounds.
The pipeline is called as users call it: pipe(texts, batch_size=B, truncation=True, max_length=L), top-1.

Precision (--dtypes): each dtype is measured for both systems. Ours runs the forward under torch.autocast
(run_predict --dtype); the pipeline is built as its users ask for bf16, pipeline(..., dtype=torch.bfloat16).
Ratios are ours/pipeline at the same dtype, plus ours in each dtype against the pipeline's default fp32.

Memory: each system runs once in its own fresh subprocess (load model, one pass); we report the peak
resident set size of that process (VmHWM from /proc/self/status on Linux, else ru_maxrss; imports and model
included) and the RSS right after loading, so peak - loaded is the working memory of prediction.

End to end (secondary): run_predict.main([...]) on a CSV of the rows (loading, validation, prediction,
writing predictions_<stem>.csv and metrics) vs pipeline construction + call + writing a CSV.

    python bench/bench_predict.py                       # all 3,100 CLINC val rows
    python bench/bench_predict.py --rows 20000          # val rows repeated to 20,000
    python bench/bench_predict.py --dtypes float32      # fp32 only (a CPU without native bf16)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import _common  # noqa: F401  (puts the repository root on sys.path)
import pandas as pd
from _common import (
    ROOT,
    add_data_arguments,
    machine,
    machine_line,
    markdown_table,
    publish,
    time_abba,
    write_json,
)


def add_serving_arguments(parser: argparse.ArgumentParser, rounds: int) -> None:
    """The flags every prediction bench takes: data and encoder, model, rows, batch, length, ABBA rounds."""
    add_data_arguments(parser)
    parser.add_argument(
        "--model", default=None, help="a trained multitask model/run dir (default: build one untrained)"
    )
    parser.add_argument("--rows", type=int, default=None, help="rows per pass (default: the 3,100 val rows)")
    parser.add_argument(
        "--batch_size", type=int, default=64, help="rows per forward pass (run_predict default)"
    )
    parser.add_argument("--max_seq_length", type=int, default=256, help="token limit (run_predict default)")
    parser.add_argument("--rounds", type=int, default=rounds, help="ABBA rounds of the speed measurement")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_serving_arguments(parser, rounds=3)
    parser.add_argument(
        "--dtypes", default="float32,bfloat16", help="precisions to measure, comma-separated (float32, bfloat16)"
    )
    parser.add_argument("--skip_memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--skip_e2e", action="store_true", help="skip the end-to-end run_predict.main timing")
    parser.add_argument("--output_dir", default=None, help="default: bench/results/predict_<timestamp>")
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["ours", "pipeline"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.dtypes = args.dtypes.split(",")
    if unknown := set(args.dtypes) - {"float32", "bfloat16"}:
        parser.error(f"unknown --dtypes {sorted(unknown)}")
    if args.output_dir is None:
        args.output_dir = str(ROOT / "bench" / "results" / time.strftime("predict_%Y%m%d_%H%M%S"))
    return args


def rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB.

    Linux: VmHWM from /proc/self/status. Not ru_maxrss: Linux carries a parent's ru_maxrss into a child
    across fork+exec, so a child started by a parent holding both models would report the parent's peak.
    Elsewhere: ru_maxrss (KiB on Linux-likes, bytes on macOS).
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def load_rows(data_dir: str, rows: int | None) -> pd.DataFrame:
    frame = pd.read_csv(Path(data_dir) / "val.csv", dtype=str, keep_default_na=False)
    if rows:
        repeats = -(-rows // len(frame))
        frame = pd.concat([frame] * repeats, ignore_index=True).iloc[:rows]
    return frame


def texts_of(frame: pd.DataFrame) -> list[str]:
    return [unicodedata.normalize("NFKC", text).strip() for text in frame["title"]]


def build_models(args, workdir: Path) -> tuple[str, str]:
    """(multitask model dir, sequence-classification model dir), both on --encoder, saved with tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from multitask.model.modeling import load_for_training

    encoder = _common.require_encoder(args.encoder)
    intents = sorted(
        pd.read_csv(Path(args.data_dir) / "task2_train.csv", dtype=str, keep_default_na=False)[
            "category"
        ].unique()
    )
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    ours_dir, pipeline_dir = workdir / "ours_model", workdir / "pipeline_model"
    if args.model is None and not (ours_dir / "config.json").is_file():
        model = load_for_training(encoder, intents, with_gate=True, text_columns=["title"])
        model.save_pretrained(ours_dir)
        tokenizer.save_pretrained(ours_dir)
    if not (pipeline_dir / "config.json").is_file():
        labels = [*intents, "oos"]
        model = AutoModelForSequenceClassification.from_pretrained(
            encoder,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
        model.save_pretrained(pipeline_dir)
        tokenizer.save_pretrained(pipeline_dir)
    return (args.model or str(ours_dir)), str(pipeline_dir)


def load_system(name: str, model_dir: str, dtype: str = "float32"):
    """A callable texts -> results for one system in one precision, loaded as its users load it (CPU)."""
    from multitask.model.precision import INFERENCE_DTYPES

    if name == "ours":
        from multitask.serve.predict import load_model, predict_scores

        model, tokenizer = load_model(model_dir, "cpu")
        return lambda texts, args: predict_scores(
            model, tokenizer, texts, args.batch_size, args.max_seq_length, dtype=INFERENCE_DTYPES[dtype]
        )
    from transformers import pipeline

    pipe = pipeline("text-classification", model=model_dir, device="cpu", dtype=INFERENCE_DTYPES[dtype])
    return lambda texts, args: pipe(
        texts, batch_size=args.batch_size, truncation=True, max_length=args.max_seq_length
    )


def child(args) -> None:
    """One system in a fresh process: RSS after load, peak RSS after one pass. Prints one JSON line."""
    texts = texts_of(load_rows(args.data_dir, args.rows))
    start_rss = rss_mib()
    model_dir = args.model if args.child == "ours" else str(Path(args.workdir) / "pipeline_model")
    run = load_system(args.child, model_dir, args.dtypes[0])
    loaded_rss = rss_mib()
    start = time.perf_counter()
    run(texts, args)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "system": args.child,
                "dtype": args.dtypes[0],
                "rss_at_start_mib": start_rss,
                "rss_after_load_mib": loaded_rss,
                "peak_rss_mib": peak_rss_mib(),
                "rows": len(texts),
                "seconds": seconds,
            }
        )
    )


def measure_memory(args, ours_dir: str, workdir: Path) -> dict:
    result = {}
    for dtype in args.dtypes:
        for name in ("ours", "pipeline"):
            key = f"{name}/{dtype}"
            result[key] = run_child(Path(__file__), args, ours_dir, workdir, ["--child", name, "--dtypes", dtype])
            print(f"[memory] {key}: {result[key]}", flush=True)
    return result


def measure_speed(args, ours_dir: str, pipeline_dir: str, texts: list[str]) -> dict:
    systems = {}
    for dtype in args.dtypes:
        systems[f"ours/{dtype}"] = load_system("ours", ours_dir, dtype)
        systems[f"pipeline/{dtype}"] = load_system("pipeline", pipeline_dir, dtype)
    result, outputs = time_abba(systems, texts, args)
    seconds = {name: entry["seconds"] for name, entry in result.items()}
    ratios = {}
    for dtype in args.dtypes:  # ours in each dtype against the pipeline in the same dtype and in fp32
        for baseline in dict.fromkeys([dtype, "float32"]):
            if f"pipeline/{baseline}" not in systems:
                continue
            ours, pipe = seconds[f"ours/{dtype}"], seconds[f"pipeline/{baseline}"]
            per_round = [p / o for o, p in zip(ours, pipe)]
            ratios[f"ours/{dtype} vs pipeline/{baseline}"] = {
                "ratio": statistics.median(pipe) / statistics.median(ours),
                "ratio_best": min(pipe) / min(ours),
                "ratio_per_round": per_round,
                "ratio_per_round_median": statistics.median(per_round),
            }
    result["ratios"] = ratios
    from multitask.io.rundir import saved_model_dir

    thresholds = json.loads((Path(saved_model_dir(ours_dir)) / "config.json").read_text())["gate_thresholds"]
    result["agreement_with_float32"] = {
        dtype: agreement(outputs["ours/float32"], outputs[f"ours/{dtype}"], thresholds)
        for dtype in args.dtypes
        if dtype != "float32" and "float32" in args.dtypes
    }
    return result


def agreement(reference, other, thresholds: dict[str, float]) -> dict:
    """How far ours in another dtype is from ours in fp32: score differences, gate decisions at the model's
    stored thresholds, top-1 category agreement."""
    import numpy as np

    result = {}
    if reference.pick_prob is not None:
        result["max_abs_pick_prob_diff"] = float(np.abs(reference.pick_prob - other.pick_prob).max())
        result["gate_decisions_changed"] = {
            kind: int(((reference.pick_prob >= t) != (other.pick_prob >= t)).sum()) for kind, t in thresholds.items()
        }
    if reference.category_probs is not None:
        result["category_top1_agreement"] = float(
            (reference.category_probs.argmax(1) == other.category_probs.argmax(1)).mean()
        )
    return result


def measure_e2e(args, ours_dir: str, pipeline_dir: str, frame: pd.DataFrame, workdir: Path, dtype: str) -> dict:
    import run_predict
    from multitask.model.precision import INFERENCE_DTYPES

    csv_path = workdir / "bench_rows.csv"
    frame.to_csv(csv_path, index=False, encoding="utf-8")
    start = time.perf_counter()
    run_predict.main(
        [
            "--model",
            ours_dir,
            "--input_files",
            str(csv_path),
            "--output_dir",
            str(workdir / f"preds_{dtype}"),
            "--batch_size",
            str(args.batch_size),
            "--max_seq_length",
            str(args.max_seq_length),
            "--device",
            "cpu",
            "--dtype",
            dtype,
        ]
    )
    ours_seconds = time.perf_counter() - start

    from transformers import pipeline

    start = time.perf_counter()
    pipe = pipeline("text-classification", model=pipeline_dir, device="cpu", dtype=INFERENCE_DTYPES[dtype])
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    results = pipe(
        texts_of(table), batch_size=args.batch_size, truncation=True, max_length=args.max_seq_length
    )
    table["label"] = [r["label"] for r in results]
    table["score"] = [r["score"] for r in results]
    table.to_csv(workdir / f"pipeline_predictions_{dtype}.csv", index=False, encoding="utf-8")
    pipeline_seconds = time.perf_counter() - start
    rows = len(frame)
    return {
        "ours_run_predict_rows_per_s": rows / ours_seconds,
        "pipeline_rows_per_s": rows / pipeline_seconds,
        "ours_seconds": ours_seconds,
        "pipeline_seconds": pipeline_seconds,
        "ratio": pipeline_seconds / ours_seconds,
    }


def run_child(script: Path, args, ours_dir: str, workdir: Path, extra: list[str]) -> dict:
    """Run ``script`` again as a fresh process (``extra`` picks the system) and return the JSON its last line prints:
    peak memory is measured per process, so each system gets its own."""
    command = [sys.executable, str(Path(script).resolve()), *extra, "--model", ours_dir, "--workdir", str(workdir),
               "--data_dir", args.data_dir, "--batch_size", str(args.batch_size),
               "--max_seq_length", str(args.max_seq_length)]
    if args.rows:
        command += ["--rows", str(args.rows)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_run(args, prefix: str) -> tuple:
    """What every prediction bench does first: output and work folders, the two models, the rows, the report head."""
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    ours_dir, pipeline_dir = build_models(args, workdir)
    frame = load_rows(args.data_dir, args.rows)
    texts = texts_of(frame)
    info = machine()
    print(
        f"[bench] {len(texts)} rows, batch {args.batch_size}, max length {args.max_seq_length}\n"
        f"[bench] {machine_line(info)}",
        flush=True,
    )
    report = {"arguments": vars(args), "machine": info, "rows": len(texts), "ours_model": ours_dir}
    return out, workdir, ours_dir, pipeline_dir, frame, texts, report


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return None
    out, workdir, ours_dir, pipeline_dir, frame, texts, report = start_run(args, "bench_predict_")
    report["speed"] = measure_speed(args, ours_dir, pipeline_dir, texts)
    if not args.skip_memory:
        report["memory"] = measure_memory(args, ours_dir, workdir)
    if not args.skip_e2e:
        report["e2e"] = {
            dtype: measure_e2e(args, ours_dir, pipeline_dir, frame, workdir, dtype) for dtype in args.dtypes
        }
    write_json(out / "predict.json", report)

    speed = report["speed"]
    header = ["system", "dtype", "rows/s (median)", "rows/s (best round)"]
    if "memory" in report:
        header += ["peak RSS MiB", "RSS after load MiB", "peak - loaded MiB"]
    rows = []
    for dtype in args.dtypes:
        for name, label in (("ours", "ours: predict_scores"), ("pipeline", 'pipeline("text-classification")')):
            key = f"{name}/{dtype}"
            row = [label, dtype, f"{speed[key]['rows_per_s']:.0f}", f"{speed[key]['rows_per_s_best']:.0f}"]
            if "memory" in report:
                memory = report["memory"][key]
                row += [
                    f"{memory['peak_rss_mib']:.0f}",
                    f"{memory['rss_after_load_mib']:.0f}",
                    f"{memory['peak_rss_mib'] - memory['rss_after_load_mib']:.0f}",
                ]
            rows.append(row)
    ratio_rows = [
        [
            comparison,
            f"{ratio['ratio']:.2f}",
            f"{ratio['ratio_best']:.2f}",
            f"{ratio['ratio_per_round_median']:.2f}",
        ]
        for comparison, ratio in speed["ratios"].items()
    ]
    lines = [
        f"## Prediction ({len(texts)} CLINC150 val rows, batch {args.batch_size}, max length "
        f"{args.max_seq_length})",
        f"\nMachine: {machine_line(report['machine'])}; {args.rounds} ABBA rounds\n",
        markdown_table(header, rows),
        "",
        markdown_table(["speed ratio", "median", "best round", "per-round median"], ratio_rows),
    ]
    for dtype, agreed in speed["agreement_with_float32"].items():
        lines.append(
            f"\nours/{dtype} vs ours/float32 on the same rows: max |Δ pick_prob| "
            f"{agreed.get('max_abs_pick_prob_diff', float('nan')):.4f}, top-1 category agreement "
            f"{agreed.get('category_top1_agreement', float('nan')):.4f}, gate decisions changed at the stored "
            f"thresholds: {agreed.get('gate_decisions_changed')} of {len(texts)}"
        )
    for dtype, e2e in report.get("e2e", {}).items():
        lines.append(
            f"\nEnd to end, {dtype} (load + read CSV + predict + write CSV): run_predict.main "
            f"{e2e['ours_run_predict_rows_per_s']:.0f} rows/s, pipeline {e2e['pipeline_rows_per_s']:.0f} "
            f"rows/s (ratio {e2e['ratio']:.2f})"
        )
    publish(out, "predict.md", lines)
    return report


if __name__ == "__main__":
    main()
