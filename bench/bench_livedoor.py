#!/usr/bin/env python
"""Japanese news (livedoor) at the seed's shape: gate (news sources Pick, lifestyle magazines Decline) + 6 categories,
a 7-way joint decision, trained on livedoor train and measured on livedoor validation (the test split is held back).

Sections (`--sections`, any of):

  svm     TF-IDF character 1–3-grams + LinearSVC over the 7 joint classes, title only, title only without the
          【source】 markers, and title + body (no length limit) — the baseline of the data README;
  steps   seconds per optimizer step of our model on the multilingual encoder (batch × length of `--step_shapes`):
          full fine-tuning, `--freeze_embeddings` (the 96M-parameter word matrix frozen), and LoRA r 16;
  runs    real `run_finetune.py` runs (each a subprocess, the command a user types) for the configurations of
          `--configs` (name=flags;…), plus a plain `Trainer` (AutoModelForSequenceClassification, 7 labels) on the
          same encoder, rows and budget for each text mode; the wall time of each.

Every system sees the same training rows (`multitask.data.loading.load_training_data`, `--max_train_samples` a stratified
seeded sample when given, so the reduced-size runs fit 2 CPU cores) and is scored on all 737 validation rows.
Figures: joint (7-way) accuracy and macro-F1 at the untuned rule (ours: P(Pick) ≥ 0.5 then the argmax category;
baselines: the argmax class) — nothing tuned on validation, so these need no held-out protocol — and, for ours, the
held-out-fold gate estimate run_finetune writes (`gate_cv`: threshold chosen on 4/5 of validation, applied to the
held-out fifth; joint accuracy = pooled in-scope accuracy · Pick share + OOS recall · Decline share).

    python bench/bench_livedoor.py --encoder /path/to/multilingual-e5-small --sections svm,steps,runs \\
        --max_train_samples 1500 --output_dir bench/results/livedoor

The multilingual encoder is built offline by `../shared/tools/make_multilingual_e5.py` (see its docstring). Data:
livedoor news corpus, CC BY-ND 2.1 JP (credit in ../shared/data/livedoor/README.md); no article text is written.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository root on sys.path)
import numpy as np
from _common import ROOT, machine, machine_line, markdown_table, write_json

DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data" / "livedoor"
FILES = {"task1": "task1_train.csv.gz", "task2": "task2_train.csv.gz", "val": "val.csv.gz"}
MARKER = re.compile(r"【[^】]*】")
DECLINE = "Decline"
TEXT_MODES = {"title": ["title"], "title_body": ["title", "body"]}
DEFAULT_CONFIGS = (
    "title_64=--text_columns title --max_seq_length 64;"
    "body_128_head=--max_seq_length 128;"
    "body_128_head_tail=--max_seq_length 128 --truncation head_tail;"
    "body_128_chunk=--max_seq_length 128 --long_text chunk --max_chunks 4"
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--encoder", required=True, help="multilingual encoder dir (make_multilingual_e5.py)")
    parser.add_argument("--sections", default="svm,steps,runs")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS,
                        help="name=run_finetune flags, separated by ';' (title_* names train title-only baselines)")
    parser.add_argument("--baselines", default="title,title_body", help="text modes of the plain Trainer baseline")
    parser.add_argument("--common_flags", default="--freeze_embeddings true --learning_rate 1e-4 "
                        "--per_device_train_batch_size 16 --num_train_epochs 2 --threshold_cv 5",
                        help="flags every run of ours gets")
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--step_shapes", default="16x128", help="batch x length pairs for the step-time section")
    parser.add_argument("--output_dir", default=str(ROOT / "bench" / "results" / "livedoor"))
    return parser.parse_args(argv)


def unpack(data_dir: Path, workdir: Path) -> dict[str, Path]:
    """The gzip files as plain CSV in a work folder outside the project (the data README's instruction)."""
    paths = {}
    for key, name in FILES.items():
        target = workdir / name[: -len(".gz")]
        with gzip.open(data_dir / name, "rb") as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out)
        paths[key] = target
    return paths


def rows(paths: dict[str, Path], text_columns: list[str], args, separator: str = " "):
    """Training and validation rows exactly as run_finetune reads them: texts and joint labels (Decline or the
    category name)."""
    from multitask.data.loading import load_training_data

    data = load_training_data(paths["task1"], paths["task2"], paths["val"], text_columns=text_columns,
                              separator=separator, seed=args.seed, max_train_samples=args.max_train_samples)

    def joint(dataset) -> list[str]:
        return [DECLINE if gate == 0 else data.category_labels[category]
                for gate, category in zip(dataset["gate_labels"], dataset["category_labels"], strict=True)]

    return (list(data.train["text"]), joint(data.train)), (list(data.validation["text"]), joint(data.validation))


def joint_figures(gold: list[str], predicted: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"joint_accuracy": float(accuracy_score(gold, predicted)),
            "joint_macro_f1": float(f1_score(gold, predicted, average="macro"))}


# ------------------------------------------------------------------------------------------------------- svm
def run_svm(paths, args) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    results = {}
    for name, columns, strip in (("title", ["title"], False), ("title_no_marker", ["title"], True),
                                 ("title_body", ["title", "body"], False)):
        start = time.perf_counter()
        (train_texts, train_labels), (val_texts, val_labels) = rows(paths, columns, args)
        if strip:
            train_texts, val_texts = ([MARKER.sub(" ", t) for t in texts] for texts in (train_texts, val_texts))
        vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)
        classifier = LinearSVC(C=1.0, random_state=args.seed).fit(vectorizer.fit_transform(train_texts), train_labels)
        predicted = classifier.predict(vectorizer.transform(val_texts))
        results[name] = {**joint_figures(val_labels, list(predicted)), "wall_s": time.perf_counter() - start,
                         "train_rows": len(train_texts)}
        print(f"[svm] {name}: {results[name]}", flush=True)
    return results


# ----------------------------------------------------------------------------------------------------- steps
def measure_steps(args) -> dict:
    """Seconds per optimizer step (forward, backward, AdamW) of our model, median of 4 after 1 warm-up step."""
    import torch
    from transformers import AutoTokenizer

    from multitask.model import lora
    from multitask.model.modeling import freeze_word_embeddings, load_for_training, parameter_counts

    tokenizer = AutoTokenizer.from_pretrained(args.encoder)
    results = {}
    for shape in args.step_shapes.split(","):
        batch, length = (int(part) for part in shape.split("x"))
        for variant in ("full", "freeze_embeddings", "lora_r16"):
            torch.manual_seed(args.seed)
            model = load_for_training(args.encoder, [f"c{i}" for i in range(6)], with_gate=True)
            if variant == "freeze_embeddings":
                freeze_word_embeddings(model)
            if variant == "lora_r16":
                model = lora.apply_lora(model, 16, 32, 0.05, None, args.encoder)
            trainable, total = parameter_counts(model)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
            ids = torch.randint(5, tokenizer.vocab_size, (batch, length))
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            gate, category = torch.randint(0, 2, (batch,)), torch.randint(0, 6, (batch,))
            model.train()
            times = []
            for _ in range(5):
                start = time.perf_counter()
                out = model(**inputs)
                loss = (torch.nn.functional.cross_entropy(out.gate_logits, gate)
                        + torch.nn.functional.cross_entropy(out.category_logits, category))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - start)
            key = f"{variant} {batch}x{length}"
            results[key] = {"s_per_step": float(np.median(times[1:])), "trainable": trainable, "total": total}
            print(f"[steps] {key}: {results[key]}", flush=True)
            del model, optimizer
    return results


# ------------------------------------------------------------------------------------------------------ runs
def run_ours(name: str, flags: str, paths, args, out: Path) -> dict:
    run_dir = out / "runs" / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    command = [sys.executable, str(ROOT / "run_finetune.py"), "--model_name_or_path", args.encoder,
               "--task1_file", str(paths["task1"]), "--task2_file", str(paths["task2"]),
               "--validation_file", str(paths["val"]), "--output_dir", str(run_dir), "--seed", str(args.seed),
               "--use_cpu", "true", "--report_to", "none", "--save_total_limit", "1",
               *args.common_flags.split(), *flags.split()]
    if args.max_train_samples:
        command += ["--max_train_samples", str(args.max_train_samples)]
    print(f"[ours] {name}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    metrics = json.loads((run_dir / "metrics.json").read_text())
    validation = metrics["validation"]
    result = {"flags": flags, "wall_s": wall, "train_runtime_s": metrics["train"].get("train_runtime"),
              "joint_accuracy": validation.get("eval_joint_accuracy"),
              "joint_macro_f1": validation.get("eval_joint_macro_f1"),
              "category_accuracy": validation.get("eval_category_accuracy"),
              "gate_accuracy": validation.get("eval_gate_accuracy"),
              "chunk_aggregation": metrics.get("chunk_aggregation")}
    cv = metrics.get("gate_cv") or {}
    if "acc" in cv:
        gold = np.asarray(_val_gate(paths))
        pick_share = float((gold == 1).mean())
        held = {key: cv["acc"][key]["held_out"] for key in ("in_scope_accuracy", "oos_recall")}
        result["held_out_acc_point"] = {**held, "joint_accuracy": held["in_scope_accuracy"] * pick_share
                                        + held["oos_recall"] * (1 - pick_share)}
    print(f"[ours] {name}: {result}", flush=True)
    return result


def _val_gate(paths) -> list[int]:
    import pandas as pd

    return pd.read_csv(paths["val"])["pick"].astype(int).tolist()


def run_plain_trainer(mode: str, paths, args, out: Path, max_length: int) -> dict:
    """Plain Trainer + AutoModelForSequenceClassification (7 labels, Decline one of them), same encoder, rows,
    epochs, batch, learning rate (those of `--common_flags`), frozen word embeddings and seed as ours; the last
    epoch's model is scored."""
    import torch
    from datasets import Dataset
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
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.encoder)
    (train_texts, train_labels), (val_texts, val_labels) = rows(paths, TEXT_MODES[mode], args,
                                                                text_separator(tokenizer))
    classes = sorted(set(train_labels))
    label2id = {name: i for i, name in enumerate(classes)}
    model = AutoModelForSequenceClassification.from_pretrained(
        args.encoder, num_labels=len(classes), id2label=dict(enumerate(classes)), label2id=label2id)
    model.base_model.embeddings.word_embeddings.weight.requires_grad_(False)  # as --freeze_embeddings

    def encode(batch):
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    train = Dataset.from_dict({"text": train_texts, "label": [label2id[n] for n in train_labels]})
    val = Dataset.from_dict({"text": val_texts, "label": [label2id[n] for n in val_labels]})
    train, val = (d.map(encode, batched=True, remove_columns=["text"]) for d in (train, val))
    training_args = TrainingArguments(
        output_dir=str(out / "runs" / f"plain_{mode}"),
        num_train_epochs=_flag(args.common_flags, "--num_train_epochs", 2.0),
        per_device_train_batch_size=_flag(args.common_flags, "--per_device_train_batch_size", 16),
        learning_rate=_flag(args.common_flags, "--learning_rate", 1e-4),
        per_device_eval_batch_size=64, warmup_steps=0.06, weight_decay=0.01,
        eval_strategy="no", save_strategy="no", logging_strategy="epoch", seed=args.seed, report_to="none",
        use_cpu=True, dataloader_pin_memory=False)
    trainer = Trainer(model=model, args=training_args, train_dataset=train, processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    with torch.inference_mode():
        logits = trainer.predict(val).predictions
    predicted = [classes[i] for i in np.asarray(logits).argmax(axis=1)]
    result = {**joint_figures(val_labels, predicted), "wall_s": time.perf_counter() - start,
              "max_seq_length": max_length, "train_rows": len(train_texts)}
    print(f"[plain Trainer] {mode}: {result}", flush=True)
    return result


def _flag(flags: str, name: str, default):
    parts = flags.split()
    return type(default)(parts[parts.index(name) + 1]) if name in parts else default


# ---------------------------------------------------------------------------------------------------- report
def report(results: dict, args) -> str:
    lines = [f"# livedoor benchmark ({machine_line(results['machine'])})", "",
             f"Training rows: {args.max_train_samples or 'all'} (seed {args.seed}); scored on all 737 validation "
             "rows. Joint = the 7-way decision (Decline or one of 6 categories).", ""]
    table = []
    for name, entry in results.get("svm", {}).items():
        table.append([f"TF-IDF char 1–3 + LinearSVC, {name}", f"{100 * entry['joint_accuracy']:.2f}",
                      f"{100 * entry['joint_macro_f1']:.2f}", "–", f"{entry['wall_s']:.0f}"])
    for name, entry in results.get("plain", {}).items():
        table.append([f"plain Trainer, {name} ({entry['max_seq_length']} tokens)",
                      f"{100 * entry['joint_accuracy']:.2f}", f"{100 * entry['joint_macro_f1']:.2f}", "–",
                      f"{entry['wall_s']:.0f}"])
    for name, entry in results.get("ours", {}).items():
        held = entry.get("held_out_acc_point")
        table.append([f"ours, {name}" + (f" (chunks: {entry['chunk_aggregation']})" if entry.get("chunk_aggregation")
                                         else ""),
                      f"{100 * entry['joint_accuracy']:.2f}", f"{100 * entry['joint_macro_f1']:.2f}",
                      f"{100 * held['joint_accuracy']:.2f}" if held else "–", f"{entry['wall_s']:.0f}"])
    lines.append(markdown_table(["system", "joint acc. %", "joint macro-F1 %",
                                 "joint acc. %, held-out `acc` threshold", "wall s"], table))
    if results.get("steps"):
        lines += ["", markdown_table(["variant", "s / step", "trainable / total parameters"], [
            [key, f"{entry['s_per_step']:.2f}", f"{entry['trainable']:,} / {entry['total']:,}"]
            for key, entry in results["steps"].items()])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = set(args.sections.split(","))
    results: dict = {"machine": machine(), "arguments": vars(args)}
    with tempfile.TemporaryDirectory(prefix="livedoor_") as workdir:
        paths = unpack(Path(args.data_dir), Path(workdir))
        if "svm" in sections:
            results["svm"] = run_svm(paths, args)
        if "steps" in sections:
            results["steps"] = measure_steps(args)
        if "runs" in sections:
            results["ours"], results["plain"] = {}, {}
            for entry in filter(None, (part.strip() for part in args.configs.split(";"))):
                name, flags = entry.split("=", 1)
                results["ours"][name] = run_ours(name, flags, paths, args, out)
                write_json(out / "results.json", results)
            for mode in filter(None, args.baselines.split(",")):
                length = 64 if mode == "title" else 128
                results["plain"][mode] = run_plain_trainer(mode, paths, args, out, length)
                write_json(out / "results.json", results)
    write_json(out / "results.json", results)
    text = report(results, args)
    (out / "README.md").write_text(text, encoding="utf-8")
    print(text)
    return results


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
