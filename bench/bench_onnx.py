#!/usr/bin/env python
"""Serving speed on ONNX Runtime: the exported model (fp32 and int8) vs transformers.pipeline("text-classification")
in fp32, same encoder, same rows, same batch size; agreement with the PyTorch model; peak memory.

Models are those of bench_predict.py (its build_models): without --model, an untrained multitask model on the
MiniLM-L6 encoder (speed does not depend on the weights; agreement does, so pass a trained run for the agreement
figures), and an AutoModelForSequenceClassification (151 labels) on the same encoder for the pipeline. The
multitask model is exported with multitask.export.onnx_export.export_model (what `python -m multitask.export` runs) to fp32 and
to int8 (ONNX Runtime quantize_dynamic). Rows are the CLINC150 validation queries, repeated up to --rows.

Systems (--systems):
- onnx_float32, onnx_int8: multitask.serve.predict.predict_scores on the exported model (what run_predict.py
  --backend onnx runs: tokenization, length-sorted batches, ONNX Runtime, gate scores, input order);
- onnx_int8_smooth: int8 after SmoothQuant smoothing (`--smooth_alpha`, scales from one seeded half of the rows);
- onnx_int8_mixed, onnx_int8_smooth_mixed: int8 (without, with smoothing) with the linear layers that move the
  outputs most kept in float32, as many as the agreement targets need on one seeded half of the rows
  (`multitask.export.onnx_export --min_top1_agreement --max_gate_changed`); the calibrated systems' agreement counts on the
  other half;
- torch_float32: predict_scores on the PyTorch model (run_predict.py's default backend), for reference;
- pipeline_float32: pipe(texts, batch_size=B, truncation=True, max_length=L), as users call it.
ONNX Runtime gets as many intra-op threads as torch uses (torch.get_num_threads(); OMP_NUM_THREADS sets both).

Speed: one process, every system loaded once, ABBA rounds of a full pass each (odd rounds in reverse order, so
drift hits all alike); rows/s = rows / wall time of the call, median over rounds (and best round). Ratios are
against pipeline_float32. Agreement: the ONNX models' scores against torch_float32's on the same rows
(multitask.export.agreement.agreement: max |Δ pick_prob|, top-1 category agreement, gate decisions changed at each stored
threshold), on all rows and on the held-out half (`multitask.export.agreement.split_halves`). Targets (issue 15): onnx
fp32 ≥ 2.0 × and int8 ≥ 3.5 × the pipeline's rows/s; int8 ≤ 0.5 % of gate decisions changed and ≥ 99.5 % top-1
agreement.

Memory: each system once in a fresh subprocess (load, one pass): peak RSS (VmHWM) and RSS after loading, as in
bench_predict.py.

    python bench/bench_onnx.py                                   # 3,100 CLINC val rows, untrained model
    python bench/bench_onnx.py --model output/output_<run>       # a trained run: agreement figures mean something
    python bench/bench_onnx.py --rows 200 --rounds 1 --skip_memory   # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository root on sys.path)
from _common import (
    ROOT,
    machine_line,
    markdown_table,
    publish,
    time_abba,
    write_json,
)
from bench_predict import (
    add_serving_arguments,
    load_rows,
    load_system,
    peak_rss_mib,
    rss_mib,
    run_child,
    start_run,
    texts_of,
)

# Export name → (quantize, SmoothQuant smoothing, float-layer search): what `python -m multitask.export` is given.
EXPORTS = {
    "onnx_float32": (None, False, False),
    "onnx_int8": ("int8", False, False),
    "onnx_int8_smooth": ("int8", True, False),
    "onnx_int8_mixed": ("int8", False, True),
    "onnx_int8_smooth_mixed": ("int8", True, True),
}
SYSTEMS = (*EXPORTS, "torch_float32", "pipeline_float32")
TARGETS = {name: 2.0 if name == "onnx_float32" else 3.5 for name in EXPORTS}  # rows/s ratio to pipeline_float32
INT8_MAX_GATE_CHANGED, INT8_MIN_TOP1 = 0.005, 0.995


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_serving_arguments(parser, rounds=4)
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma-separated, from {', '.join(SYSTEMS)}"
    )
    parser.add_argument("--per_channel", action="store_true", help="int8 with per-channel weight scales")
    parser.add_argument("--smooth_alpha", type=float, default=0.85,
                        help="*_smooth systems: SmoothQuant migration strength (scales measured on half of the rows)")
    parser.add_argument("--min_top1_agreement", type=float, default=INT8_MIN_TOP1,
                        help="onnx_int8_mixed: the float-layer search's top-1 target (on half of the rows)")
    parser.add_argument("--max_gate_changed", type=float, default=INT8_MAX_GATE_CHANGED,
                        help="onnx_int8_mixed: the float-layer search's gate-change target (share of rows)")
    parser.add_argument("--skip_memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--output_dir", default=None, help="default: bench/results/onnx_<timestamp>")
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=SYSTEMS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.systems = args.systems.split(",")
    if unknown := set(args.systems) - set(SYSTEMS):
        parser.error(f"unknown --systems {sorted(unknown)}")
    if args.output_dir is None:
        args.output_dir = str(ROOT / "bench" / "results" / time.strftime("onnx_%Y%m%d_%H%M%S"))
    return args


def export_dirs(workdir: Path) -> dict[str, Path]:
    return {name: workdir / name for name in EXPORTS}


def export_models(args, ours_dir: str, workdir: Path, texts: list[str]) -> dict:
    """The exports of the multitask model (those in --systems), with export wall time and file size.

    The calibrated ones are what `python -m multitask.export --quantize int8 [--smooth_alpha A]
    [--min_top1_agreement … --max_gate_changed …]` writes: smoothing scales and float layers fitted on the first of
    `split_halves(texts)`."""
    from multitask.export.agreement import split_halves
    from multitask.export.onnx_export import Int8Calibration, export_model
    from multitask.serve.predict import load_model

    model, tokenizer = load_model(ours_dir, "cpu")
    fit, _ = split_halves(len(texts))
    result = {}
    for name, target in export_dirs(workdir).items():
        if name not in args.systems:
            continue
        quantize, smooth, search = EXPORTS[name]
        calibration = None
        if smooth or search:
            calibration = Int8Calibration(
                [texts[i] for i in fit],
                args.smooth_alpha if smooth else None,
                args.min_top1_agreement if search else None,
                args.max_gate_changed if search else None,
                args.batch_size,
                args.max_seq_length,
            )
        start = time.perf_counter()
        export_model(model, tokenizer, target, quantize, args.per_channel, ours_dir, calibration=calibration)
        info = json.loads((target / "export_info.json").read_text(encoding="utf-8"))
        result[name] = {
            "seconds": time.perf_counter() - start,
            "onnx_mib": (target / "model.onnx").stat().st_size / 2**20,
            "kept_float": (info["quantization"] or {}).get("kept_float", []),
        }
        print(f"[export] {name}: {result[name]}", flush=True)
    return result


def load(name: str, args, ours_dir: str, pipeline_dir: str, workdir: Path):
    """A callable texts -> results for one system, loaded as its users load it (CPU)."""
    if name == "pipeline_float32":
        return load_system("pipeline", pipeline_dir, "float32")
    if name == "torch_float32":
        return load_system("ours", ours_dir, "float32")
    from multitask.serve.onnx_backend import load_predictor
    from multitask.serve.predict import predict_scores

    model, tokenizer = load_predictor(str(export_dirs(workdir)[name]), "onnx", "cpu")
    return lambda texts, args: predict_scores(model, tokenizer, texts, args.batch_size, args.max_seq_length)


def child(args) -> None:
    """One system in a fresh process: RSS after load, peak RSS after one pass. Prints one JSON line."""
    texts = texts_of(load_rows(args.data_dir, args.rows))
    start_rss = rss_mib()
    workdir = Path(args.workdir)
    run = load(args.child, args, args.model, str(workdir / "pipeline_model"), workdir)
    loaded_rss = rss_mib()
    start = time.perf_counter()
    run(texts, args)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "system": args.child,
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
    for name in args.systems:
        result[name] = run_child(Path(__file__), args, ours_dir, workdir, ["--child", name])
        print(f"[memory] {name}: {result[name]}", flush=True)
    return result


def measure_speed(args, ours_dir: str, pipeline_dir: str, workdir: Path, texts: list[str]) -> dict:
    systems = {name: load(name, args, ours_dir, pipeline_dir, workdir) for name in args.systems}
    result, outputs = time_abba(systems, texts, args)
    seconds = {name: entry["seconds"] for name, entry in result.items()}
    ratios = {}
    if "pipeline_float32" in seconds:
        pipe = seconds["pipeline_float32"]
        for name in seconds:
            if name != "pipeline_float32":
                per_round = [p / o for o, p in zip(seconds[name], pipe)]
                ratios[name] = {
                    "ratio": statistics.median(pipe) / statistics.median(seconds[name]),
                    "ratio_best": min(pipe) / min(seconds[name]),
                    "ratio_per_round": per_round,
                    "ratio_per_round_median": statistics.median(per_round),
                }
    result["ratios_to_pipeline_float32"] = ratios
    result["agreement_with_torch_float32"] = {}
    if "torch_float32" in outputs:
        from multitask.export.agreement import agreement, split_halves
        from multitask.io.rundir import saved_model_dir

        config = json.loads((Path(saved_model_dir(ours_dir)) / "config.json").read_text(encoding="utf-8"))
        thresholds = config.get("gate_thresholds", {"default": 0.5})
        _, held_out = split_halves(len(texts))
        for name in EXPORTS:
            if name in outputs:
                reference, other = outputs["torch_float32"], outputs[name]
                result["agreement_with_torch_float32"][name] = {
                    **agreement(reference, other, thresholds),
                    # The rows the mixed export's float-layer search did not see (the same halves for all).
                    "held_out": agreement(reference.rows(held_out), other.rows(held_out), thresholds),
                }
    return result


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return None
    out, workdir, ours_dir, pipeline_dir, _, texts, report = start_run(args, "bench_onnx_")
    report["export"] = export_models(args, ours_dir, workdir, texts)
    report["speed"] = measure_speed(args, ours_dir, pipeline_dir, workdir, texts)
    if not args.skip_memory:
        report["memory"] = measure_memory(args, ours_dir, workdir)
    write_json(out / "onnx.json", report)

    speed, ratios = report["speed"], report["speed"]["ratios_to_pipeline_float32"]
    header = ["system", "rows/s (median)", "rows/s (best round)", "× pipeline fp32 (median)", "target"]
    if "memory" in report:
        header += ["peak RSS MiB", "RSS after load MiB"]
    rows = []
    for name in args.systems:
        ratio = ratios.get(name, {}).get("ratio")
        target = TARGETS.get(name)
        row = [
            name,
            f"{speed[name]['rows_per_s']:.0f}",
            f"{speed[name]['rows_per_s_best']:.0f}",
            "—" if ratio is None else f"{ratio:.2f}",
            "—"
            if target is None or ratio is None
            else f"≥ {target} ({'met' if ratio >= target else 'NOT met'})",
        ]
        if "memory" in report:
            row += [
                f"{report['memory'][name]['peak_rss_mib']:.0f}",
                f"{report['memory'][name]['rss_after_load_mib']:.0f}",
            ]
        rows.append(row)
    lines = [
        f"## ONNX Runtime serving ({len(texts)} CLINC150 val rows, batch {args.batch_size}, max length "
        f"{args.max_seq_length})",
        f"\nMachine: {machine_line(report['machine'])}; {args.rounds} ABBA rounds; model {ours_dir}\n",
        markdown_table(header, rows),
        "\nExport: "
        + ", ".join(
            f"{name} {e['seconds']:.1f} s, {e['onnx_mib']:.1f} MiB" for name, e in report["export"].items()
        ),
    ]
    from multitask.export.agreement import meets_targets

    for name, agreed in speed["agreement_with_torch_float32"].items():
        for rows_name, figures in (("all rows", agreed), ("held-out half", agreed["held_out"])):
            changed = figures.get("gate_decisions_changed", {})
            line = (
                f"\n{name} vs torch_float32, {rows_name}: max |Δ pick_prob| "
                f"{figures.get('max_abs_pick_prob_diff', float('nan')):.2e}, top-1 category agreement "
                f"{figures.get('category_top1_agreement', float('nan')):.4%}, gate decisions changed at the stored "
                f"thresholds: {changed} of {figures['rows']}"
            )
            if name != "onnx_float32" and changed:
                met = meets_targets(figures, INT8_MIN_TOP1, INT8_MAX_GATE_CHANGED)
                line += (
                    f" (target ≤ {INT8_MAX_GATE_CHANGED:.1%} changed and ≥ {INT8_MIN_TOP1:.1%} top-1: "
                    f"{'met' if met else 'NOT met'})"
                )
            lines.append(line)
        kept = report["export"][name]["kept_float"]
        if kept:
            lines.append(f"\n{name} keeps {len(kept)} linear layers in float32 (chosen on the calibration half): "
                         + ", ".join(kept))
    publish(out, "onnx.md", lines)
    return report


if __name__ == "__main__":
    main()
