"""Write the bundled few-shot sample: synthetic users whose preferences can only be told from their shots.

Four users judge the same kind of answers: `concise` prefers the short answer, `verbose` the long one,
`enthusiastic` the answer with exclamation and praise, `reserved` the plain one. Pooled over users each style
wins half of the time, so a model has to read the shots to know what the asked user wants.

    python datasets/make_fewshot_sample.py [--out datasets/samples/fspo_sample] [--shots 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fspo_recipe.data.episodes import Shot, render_episode  # noqa: E402
from fspo_recipe.files import atomic_file  # noqa: E402

TOPICS = [
    ("rain", "water falling from clouds", "drops of water that condense in clouds and fall once they grow heavy"),
    ("wind", "moving air", "air that moves from high to low pressure, pushed by uneven heating of the ground"),
    ("a seed", "a baby plant in a shell", "a small embryo plant packed with food inside a protective coat"),
    ("the moon", "the rock that circles earth", "a large rocky body that orbits earth and reflects light from the sun"),
    ("a river", "water that flows to the sea", "fresh water that gathers from rain and springs and flows downhill"),
    ("bread", "baked flour and water", "a dough of flour, water and yeast that rises and is baked in an oven"),
    ("a magnet", "metal that pulls iron", "a material whose aligned atoms make a field that pulls on iron"),
    ("snow", "frozen rain", "ice crystals that form in cold clouds and fall as soft white flakes"),
    ("a volcano", "a mountain that spits lava", "an opening in the crust where melted rock and gas escape"),
    ("an echo", "sound that bounces back", "a sound wave that reflects off a wall and returns a moment later"),
    ("a rainbow", "colors in the sky", "sunlight split into its colors by drops of water in the air"),
    ("sleep", "rest for the body", "a daily state of rest in which the body repairs and the brain sorts memories"),
]

USERS = {
    "concise": lambda short, long, loud, calm: (short, long),
    "verbose": lambda short, long, loud, calm: (long, short),
    "enthusiastic": lambda short, long, loud, calm: (loud, calm),
    "reserved": lambda short, long, loud, calm: (calm, loud),
}


def user_rows(user: str) -> list[tuple[str, str, str]]:
    """(question, preferred, dispreferred) of every topic, as judged by ``user``."""
    rows = []
    for topic, short, long in TOPICS:
        loud = f"Great question! It is {short}, how wonderful!"
        calm = f"It is {short}."
        preferred, dispreferred = USERS[user](f"It is {short}.", f"It is {long}, as you can see in nature.", loud, calm)
        rows.append((f"What is {topic}?", preferred, dispreferred))
    return rows


def episodes(shots: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    out = []
    for user in USERS:
        rows = user_rows(user)
        for query_idx, (question, chosen, rejected) in enumerate(rows):
            others = [i for i in range(len(rows)) if i != query_idx]
            shot_idx = rng.sample(others, shots)
            ep = render_episode([Shot(*rows[i]) for i in shot_idx], question, chosen, rejected)
            out.append(
                {
                    "id": f"{user}-{query_idx}",
                    "src": ep.prompt,
                    "tgt_chosen": ep.chosen,
                    "tgt_rejected": ep.rejected,
                    "user": user,
                    "num_shots": shots,
                }
            )
    rng.shuffle(out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "samples" / "fspo_sample")
    parser.add_argument("--shots", type=int, default=2, help="shots per episode (default: 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "train.jsonl"
    with atomic_file(target) as fp:
        for example in episodes(args.shots, args.seed):
            fp.write(json.dumps(example, ensure_ascii=False) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
