"""Scaling benchmark of near-duplicate removal (`multitask.prepare.near_dedup`).

    python bench/bench_prepare.py                     # 10k, 50k, 150k synthetic rows
    python bench/bench_prepare.py --sizes 10000 20000 --csv ../shared/data/clinc150/task2_train.csv

Each size runs in its own subprocess, so the peak resident memory (`ru_maxrss`) is that size's alone. The
synthetic rows are short English-like queries (Zipf-distributed words) and Japanese-like sentences (no spaces),
10% of them edited copies of other rows (case, punctuation, a typo, an added or dropped word) as near duplicates.
Prints wall time, peak RSS, and the growth exponents (least-squares slope of log time / log rows).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FUNCTION_WORDS = "i my the a to is how do can you what for of in on it me and with please".split()


def synthetic_texts(n: int, seed: int = 0, near_duplicate_share: float = 0.1) -> list[str]:
    """`n` short texts, a share of them near-duplicate edits of others, in shuffled order."""
    rng = np.random.default_rng(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwyz" for v in "aeiou"] + ["th", "ch", "sh", "st", "qu"]
    made = {"".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(30_000)}
    vocabulary = np.array(FUNCTION_WORDS + sorted(made - set(FUNCTION_WORDS)), dtype=object)
    word_p = 1.0 / np.arange(1, len(vocabulary) + 1) ** 1.05  # Zipf: realistic document frequencies
    word_p /= word_p.sum()
    kana = [chr(c) for c in range(0x3041, 0x3094)]
    kanji = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    ja_words = np.array(
        [
            "".join(rng.choice(kanji if rng.random() < 0.6 else kana, size=rng.integers(1, 4)))
            for _ in range(8000)
        ],
        dtype=object,
    )
    ja_p = 1.0 / np.arange(1, len(ja_words) + 1)
    ja_p /= ja_p.sum()

    originals = n - int(n * near_duplicate_share)
    japanese = rng.random(originals) < 0.2
    lengths = rng.integers(4, 20, size=originals)
    english_words = iter(rng.choice(vocabulary, size=int(lengths[~japanese].sum()), p=word_p))
    japanese_words = iter(rng.choice(ja_words, size=int(lengths[japanese].sum()), p=ja_p))
    texts = []
    for is_japanese, length in zip(japanese, lengths):
        if is_japanese:
            texts.append("".join(next(japanese_words) for _ in range(length)) + "。")
        else:
            texts.append(" ".join(next(english_words) for _ in range(length)) + "?")
    for source in rng.integers(0, originals, size=n - originals):
        text, edit = texts[source], rng.random()
        if edit < 0.25:
            text = text.upper() if text.isascii() else text + "！"
        elif edit < 0.5:
            position = rng.integers(0, len(text))
            text = text[:position] + text[position + 1 :]
        elif edit < 0.75:
            text = (
                text.replace(" ", " " + str(rng.choice(vocabulary[:50])) + " ", 1)
                if " " in text
                else text + "ね"
            )
        else:
            text = text[: len(text) - max(1, len(text) // 12)]
        texts.append(text)
    return [texts[i] for i in rng.permutation(n)]


def worker(n: int, csv: str | None, column: str) -> dict:
    """Generate (or read) the rows, then time `near_dedup` alone; reports this process's peak RSS."""
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the package is the repo root's
    from multitask.prepare import exact_dedup, near_dedup

    if csv:
        import pandas as pd

        frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
        texts = frame[column].tolist()
        texts = (texts * math.ceil(n / len(texts)))[:n] if n > len(texts) else texts[:n]
    else:
        texts = synthetic_texts(n)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    keep_exact, _ = exact_dedup(texts)
    exact_seconds = time.perf_counter() - start
    unique = [text for text, keep in zip(texts, keep_exact) if keep]
    start = time.perf_counter()
    keep, removed = near_dedup(unique, threshold=0.9)
    near_seconds = time.perf_counter() - start
    return {
        "rows": n,
        "exact_duplicates": int((~keep_exact).sum()),
        "near_duplicates": len(removed),
        "exact_seconds": round(exact_seconds, 2),
        "near_seconds": round(near_seconds, 2),
        "total_seconds": round(exact_seconds + near_seconds, 2),
        "rss_before_mib": round(rss_before),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x: the growth exponent."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 150_000])
    parser.add_argument("--csv", help="Time real rows from this CSV instead (repeated to reach a size).")
    parser.add_argument("--column", default="title", help="Text column of --csv.")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.csv, args.column)))
        return []
    results = []
    for n in args.sizes:
        command = [sys.executable, __file__, "--worker", str(n), "--column", args.column]
        command += ["--csv", args.csv] if args.csv else []
        output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        r = results[-1]
        print(
            f"{r['rows']:>8,} rows: exact {r['exact_seconds']:6.2f}s  near {r['near_seconds']:6.2f}s  "
            f"total {r['total_seconds']:6.2f}s  peak RSS {r['peak_rss_mib']:>5} MiB "
            f"(before {r['rss_before_mib']} MiB)  removed {r['exact_duplicates']} exact + {r['near_duplicates']} near",
            flush=True,
        )
    if len(results) > 1:
        rows = [r["rows"] for r in results]
        print(
            f"growth exponent (time ~ rows^k): total k = {slope(rows, [r['total_seconds'] for r in results]):.2f}, "
            f"near-dedup k = {slope(rows, [r['near_seconds'] for r in results]):.2f}; "
            f"peak RSS k = {slope(rows, [r['peak_rss_mib'] for r in results]):.2f}"
        )
    return results


if __name__ == "__main__":
    main()
