"""Write the bundled OpinionQA-schema sample: survey questions with ordinal options, and per group the distribution
of its answers (the schema is in fspo_recipe/gpo/tasks.py).

    python datasets/make_opinionqa_sample.py [--out datasets/samples/opinionqa/opinions.jsonl]

24 groups (g0..g23) answer 48 questions on four topics. A group leans one way on each topic; a question asks
for or against the topic's position, so a group's answers to the questions of one topic are related, and a few of
its answers tell a model how it answers the rest. The distributions are discretized normals over the ordinal
options around the group's position (seeded, deterministic). Hold out g20..g23 to test few-shot adaptation.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

TOPICS = {
    "taxes": ("Taxes on large incomes should be raised.", "Taxes on large incomes should be cut."),
    "cities": ("Cities should build more public transport.", "Cities should build more roads for cars."),
    "science": ("Public money should fund basic science.", "Public money for basic science should be cut."),
    "borders": ("The country should admit more immigrants.", "The country should admit fewer immigrants."),
}
PHRASES = ("How much do you agree: ", "Tell us your view. ", "Survey item: ", "In your opinion, ",
           "Some people say: ", "A statement: ")
OPTIONS = ("Strongly agree", "Agree", "Disagree", "Strongly disagree")
GROUPS = 24
PER_TOPIC = 12


def distribution(position: float, width: float = 0.8) -> list[float]:
    """A discretized normal over the four ordinal options centred at ``position`` (0 = strongly agree)."""
    weights = [math.exp(-((k - position) ** 2) / (2 * width**2)) for k in range(len(OPTIONS))]
    total = sum(weights)
    probs = [round(w / total, 4) for w in weights]
    probs[-1] = max(0.0, round(1.0 - sum(probs[:-1]), 4))  # the rounded values still sum to 1
    return probs


def rows(seed: int = 0) -> list[dict[str, object]]:
    rng = random.Random(f"opinionqa-sample:{seed}")
    leans = {f"g{g}": {t: rng.uniform(-1.0, 1.0) for t in TOPICS} for g in range(GROUPS)}
    out = []
    for topic, (pro, con) in TOPICS.items():
        for i in range(PER_TOPIC):
            sign = 1 if i % 2 == 0 else -1
            question = PHRASES[i // 2] + (pro if sign > 0 else con)  # 12 distinct questions per topic
            dists = {}
            for group, lean in leans.items():
                agree = sign * lean[topic]  # +1: strongly agrees with the question's statement
                dists[group] = distribution(1.5 - 1.5 * agree + rng.gauss(0.0, 0.15))
            out.append({"qkey": f"{topic.upper()}_{i}", "question": question, "options": list(OPTIONS),
                        "distributions": dists})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "samples" / "opinionqa" / "opinions.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    data = rows(args.seed)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    tmp.replace(args.out)
    print(f"wrote {len(data)} questions of {GROUPS} groups to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
