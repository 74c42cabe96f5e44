"""A first look at a user source before training on it: users, pairs per user, how much users agree, and the token
lengths of its episodes with 4 and 8 shots (what ``dataset.max_seq_len`` has to hold).

    python benchmarks/source_look.py prism --input datasets/samples/prism
    python benchmarks/source_look.py personalllm --input datasets/samples/personalllm [--users 100 ...]
        [--tokenizer-dir DIR]  (a Hugging Face tokenizer; default: SmolLM2's from the fspo-fetch-smollm2 cache,
                                else 4 characters per token)

Agreement: pairs that several users judged (the same question and the same two responses) are grouped; a pooled
model, one that ignores who asks, is right at most on the majority side of each group: its ceiling is the share of
judgments on the majority side. A source where no pair is shared (PRISM: each participant rates their own
conversations) gives no such ceiling; the share of pairs whose preferred response is the longer one is printed for
every source as a second, cruder look at a shared taste.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def token_counter(tokenizer_dir: Path | None):
    """(count function, what it counts)."""
    if tokenizer_dir is None:
        from fspo_recipe.models.smollm2 import SMOLLM2_NAME, default_cache

        candidate = default_cache() / "cards" / SMOLLM2_NAME
        tokenizer_dir = candidate if (candidate / "tokenizer.json").is_file() else None
    if tokenizer_dir is None:
        return (lambda text: (len(text) + 3) // 4), "tokens estimated as characters / 4"
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    return (lambda text: len(tokenizer.encode(text).ids)), f"tokens of {tokenizer_dir.name}'s tokenizer"


def quantiles(values: list[int]) -> str:
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return f"p50 {pick(0.5)}, p90 {pick(0.9)}, max {values[-1]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", choices=("prism", "personalllm"))
    parser.add_argument("--input", required=True)
    parser.add_argument("--tokenizer-dir", type=Path)
    parser.add_argument("--users", type=int, help="personalllm: simulated users")
    parser.add_argument("--prompts-per-user", type=int)
    parser.add_argument("--prompt-pool", type=int)
    parser.add_argument("--alpha", type=float)
    args = parser.parse_args()

    from fspo_recipe.data.prepare import main as prepare_main
    from fspo_recipe.data.sources import ReadReport, get_source, read_source

    options = {k: v for k, v in (("users", args.users), ("prompts_per_user", args.prompts_per_user),
                                  ("prompt_pool", args.prompt_pool), ("alpha", args.alpha)) if v is not None}
    report = ReadReport()
    rows = [r for split in read_source(get_source(args.source), [args.input], report, options=options).values()
            for r in split]
    per_user = Counter(r.user for r in rows)
    print(f"{args.source} ({args.input}): {report.rows_read} source rows, {len(rows)} pairs of {len(per_user)} users; "
          f"pairs per user: {quantiles(list(per_user.values()))} (min {min(per_user.values())})")
    for line in report.lines():
        print(f"  {line}")
    groups: dict[tuple[str, frozenset[str]], list[str]] = defaultdict(list)
    for r in rows:
        groups[(r.question, frozenset((r.preferred, r.dispreferred)))].append(r.preferred)
    shared = [g for g in groups.values() if len(g) > 1]
    judged = sum(len(g) for g in shared)
    if shared:
        majority = sum(Counter(g).most_common(1)[0][1] for g in shared)
        print(f"pairs judged by several users: {len(shared)} ({judged} judgments); a pooled model's ceiling on them: "
              f"{majority / judged:.3f} (1.0: every user agrees; 0.5: users split evenly)")
    else:
        print("no pair is judged by two users: a pooled model's ceiling cannot be read from the data")
    longer = sum(len(r.preferred) > len(r.dispreferred) for r in rows) / len(rows)
    print(f"preferred response is the longer one: {longer:.3f} of pairs")

    count, what = token_counter(args.tokenizer_dir)
    for shots in (4, 8):
        with tempfile.TemporaryDirectory() as tmp:
            cli = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
            with contextlib.redirect_stdout(io.StringIO()):  # its summary: the figures below say what matters here
                code = prepare_main([args.source, "--input", args.input, "--out", tmp, "--shots", str(shots),
                                     "--quiet", "--no-progress", "--split-mode", "heldout_users", "--test-users", "0.2",
                                     *cli])
            if code != 0:
                print(f"{shots} shots: fspo-prepare could not build episodes (exit {code})")
                continue
            lines = [json.loads(line) for split in ("train", "test")
                     for line in (Path(tmp) / args.source / f"{split}.jsonl").read_text().splitlines()]
            prompts = [count(e["src"]) for e in lines]
            total = [p + max(count(e["tgt_chosen"]), count(e["tgt_rejected"])) for p, e in zip(prompts, lines)]
            print(f"{shots} shots: {len(lines)} episodes; prompt {what}: {quantiles(prompts)}; prompt + longer "
                  f"response: {quantiles(total)}; mean {statistics.mean(total):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
