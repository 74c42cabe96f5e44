"""Benchmark of plain-pair preparation: N rows in the Anthropic HH schema -> fairseq2 preference JSONL, rows/s.

    python benchmarks/prepare_hh.py [--rows 160000] [--turns 3] [--keep DIR]

Writes synthetic HH dialogues (``chosen``/``rejected`` sharing all turns but the last assistant one; about the size
of the real data's) to a parquet file, runs `fspo-prepare hh` on it in a child process and prints its summary line
(rows read, seconds, rows/s) and the wall time of the whole command. Target on the 2-core development machine
(issue 19): at least 20,000 rows/s.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _prepare_bench import run_prepare, work_dir  # noqa: E402

WORDS = "the of light water energy cell star plant heat sound wave force atom cloud river stone time space".split()


def synthetic_rows(n: int, turns: int, seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    chosen, rejected = [], []
    for _ in range(n):
        dialogue = "".join(f"\n\nHuman: {text(15)}?\n\nAssistant: {text(40)}." for _ in range(turns - 1))
        dialogue += f"\n\nHuman: {text(15)}?\n\nAssistant:"
        chosen.append(f"{dialogue} {text(50)}.")
        rejected.append(f"{dialogue} {text(30)}.")
    return {"chosen": chosen, "rejected": rejected}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=160_000)
    parser.add_argument("--turns", type=int, default=3, help="human turns per dialogue (default: 3)")
    parser.add_argument("--keep", type=Path, default=None, help="keep input and output in this directory")
    args = parser.parse_args()

    with work_dir(args.keep) as work:
        proc, wall = run_prepare(work, "hh", lambda: synthetic_rows(args.rows, args.turns, 0), [],
                                 f"{args.rows} HH rows")
        if proc.returncode != 0:
            return 1
        print(proc.stdout.strip())
        print(f"command: {wall:.1f} s wall including start-up, {args.rows / wall:,.0f} rows/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
