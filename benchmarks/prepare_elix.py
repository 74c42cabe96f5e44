"""Benchmark of data preparation: N Elix-schema rows -> 4-shot FSPO episodes, rows/s and peak memory.

    python benchmarks/prepare_elix.py [--rows 200000] [--users 5] [--response-chars 400] [--keep DIR]

Writes synthetic rows (the real Elix columns; 5 users, or --users N, the rows dealt out in turn) to a parquet file,
then runs `fspo-prepare elix` on it in a child process and prints wall time, rows/s, episodes/s, output size and the
child's peak resident memory. Target on the 2-core development machine (issue 3): 200,000 rows in under 60 s and
under 3 GB. With many users (`--users 100000 --rationale`) it shows that episode building is linear in the number of
users (each user's rationale draws from all other users' descriptions).
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _prepare_bench import run_prepare, work_dir  # noqa: E402

LEVELS = ["a child", "a preteen", "a teenager", "a young adult", "an expert"]
WORDS = "the of light water energy cell star plant heat sound wave force atom cloud river stone time space".split()


def synthetic_rows(n: int, response_chars: int, seed: int, users: int = len(LEVELS)) -> dict[str, list]:
    rng = random.Random(seed)

    def text(chars: int) -> str:
        out, size = [], 0
        while size < chars:
            w = rng.choice(WORDS)
            out.append(w)
            size += len(w) + 1
        return " ".join(out)

    cols: dict[str, list] = {k: [] for k in
                             ("prompt", "response_x", "response_y", "level_x", "level_y", "scorer_level", "label")}
    for i in range(n):
        scorer = LEVELS[i % len(LEVELS)] if users == len(LEVELS) else f"user {i % users}"
        cols["prompt"].append(f"Question {i}: explain {text(60)}?")
        cols["response_x"].append(text(response_chars))
        cols["response_y"].append(text(response_chars))
        cols["level_x"].append(scorer)
        cols["level_y"].append(rng.choice(LEVELS) if users == len(LEVELS) else f"user {rng.randrange(users)}")
        cols["scorer_level"].append(scorer)
        cols["label"].append(rng.randrange(2))
    return cols


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--response-chars", type=int, default=400, help="characters per response (default: 400)")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--users", type=int, default=len(LEVELS), help="users the rows are dealt to (default: 5)")
    parser.add_argument("--rationale", action="store_true", help="prepare with --rationale generated")
    parser.add_argument("--keep", type=Path, default=None, help="keep input and output in this directory")
    args = parser.parse_args()

    with work_dir(args.keep) as work:
        proc, wall = run_prepare(work, "elix", lambda: synthetic_rows(args.rows, args.response_chars, 0, args.users),
                                 ["--shots", str(args.shots), *(["--rationale", "generated"] if args.rationale else [])],
                                 f"{args.rows} rows of {args.users} users")
        if proc.returncode != 0:
            return 1
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # KiB on Linux
        out = work / "out" / "elix" / "train.jsonl"
        episodes = sum(1 for _ in out.open("rb"))
        print(proc.stdout.strip())
        print(f"prepare: {wall:.1f} s wall, {args.rows / wall:,.0f} rows/s, {episodes / wall:,.0f} episodes/s, "
              f"{episodes:,} episodes, {out.stat().st_size / 1e9:.2f} GB JSONL, peak RSS {peak_gb:.2f} GB")
        print(f"target: < 60 s and < 3 GB -> {'met' if wall < 60 and peak_gb < 3 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
