"""Write small synthetic source files in the exact Elix, Review and Roleplay schemas (datasets/samples/).

They stand in for the hub data sets offline (tests, quick start). The texts are synthetic and short; each user
prefers responses of one visible style, so the few-shot episodes built from them carry a real signal.

    python datasets/make_source_samples.py [--out datasets/samples] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fspo_recipe.data.writers import atomic_file  # noqa: E402

SUBJECTS = [
    "rain", "wind", "a seed", "the moon", "a river", "bread", "a magnet", "snow", "a volcano", "an echo",
    "a rainbow", "sleep", "a battery", "a bridge", "a cloud", "ice", "a tide", "thunder", "a shadow", "sand",
    "a bee", "salt", "a lens", "fog", "a comet", "a fossil", "rust", "a map", "glass", "a clock",
    "a compass", "soap", "a kite", "coral", "a desert", "a glacier", "steam", "a spider web", "a candle", "a wave",
]

ELIX_LEVELS = ["a child", "a preteen", "a teenager", "a young adult", "an expert"]
ELIX_STYLE = {
    "a child": "Think of {s} like a friendly little helper. It is simple and fun!",
    "a preteen": "{S} is something you can see in nature or at home, and it works in a neat way.",
    "a teenager": "Basically, {s} comes down to a bit of physics and chemistry you meet in school.",
    "a young adult": "{S} can be explained by well-known physical processes and some everyday engineering.",
    "an expert": "{S} is governed by thermodynamic and electromagnetic interactions; see the standard models.",
}

REVIEW_USERS = ["positive", "negative", "concise", "verbose",
                "positive concise", "positive verbose", "negative concise", "negative verbose"]
PRODUCTS = ["this blender", "the new phone", "this novel", "the hotel", "this headset", "the cafe", "this movie",
            "the running shoes", "this board game", "the laptop", "this backpack", "the museum tour",
            "this album", "the bike lock", "this desk lamp", "the pizza place", "this tent", "the podcast",
            "this kettle", "the theme park", "this keyboard", "the train ride", "this jacket", "the gym",
            "this camera", "the bakery", "this video game", "the sofa", "this umbrella", "the concert"]

PERSONAS = [
    "a retired sailor who loves nautical metaphors", "a busy nurse who wants short practical answers",
    "a poet who enjoys vivid imagery", "a software engineer who likes precise numbered steps",
    "a kindergarten teacher who speaks gently and simply", "a sports coach who is energetic and direct",
    "a historian who likes context from the past", "a comedian who appreciates a joke",
    "a gardener who relates everything to plants", "a chef who thinks in recipes",
    "a skeptic who wants evidence for every claim", "a traveler who compares things to places abroad",
]
PERSONA_STYLE = [
    "Ahoy! Like a ship at sea, {s} moves with the currents of nature.",
    "In short: {s} is common and easy to handle. Done.",
    "{S} is a silver whisper painted across the canvas of the world.",
    "1. Observe {s}. 2. Note its cause. 3. Note its effect.",
    "Let's learn together: {s} is a gentle part of our world.",
    "Listen up! {S} is all about energy, so go for it!",
    "Long ago people wondered about {s}, and their records tell the story.",
    "Why did {s} cross the road? To get explained, of course!",
    "Like a sprouting seed, {s} grows from simple roots.",
    "Take one part {s}, add a pinch of science, and simmer.",
    "Claim: {s} is well understood. Evidence: repeated measurements.",
    "Just like in Kyoto, {s} looks different depending on where you stand.",
]


def _fmt(template: str, subject: str) -> str:
    return template.format(s=subject, S=subject[0].upper() + subject[1:])


def review_text(user: str, product: str, rng: random.Random) -> str:
    positive = "positive" in user
    verbose = "verbose" in user
    core = f"I {'loved' if positive else 'disliked'} {product}."
    if not verbose:
        return core
    extra = (" It exceeded my expectations in every way, the details were well thought out and I would "
             "happily recommend it to friends and family." if positive else
             " It fell short in many ways, the details felt careless and I would not recommend it to anyone "
             "I know, sadly.")
    return core + extra


def elix_rows(rng: random.Random, subjects: list[str]) -> list[dict[str, object]]:
    rows = []
    for scorer in ELIX_LEVELS:
        for subject in subjects:
            other = rng.choice([lvl for lvl in ELIX_LEVELS if lvl != scorer])
            own, alt = _fmt(ELIX_STYLE[scorer], subject), _fmt(ELIX_STYLE[other], subject)
            label = rng.randrange(2)
            rx, lx, ry, ly = (own, scorer, alt, other) if label == 0 else (alt, other, own, scorer)
            rows.append({"prompt": f"Explain {subject}.", "response_x": rx, "response_y": ry, "level_x": lx,
                         "level_y": ly, "scorer_level": scorer, "label": label})
    return rows


def review_rows(rng: random.Random, products: list[str]) -> list[dict[str, object]]:
    rows = []
    for scorer in REVIEW_USERS:
        for product in products:
            other = rng.choice([u for u in REVIEW_USERS if u != scorer])
            own, alt = review_text(scorer, product, rng), review_text(other, product, rng)
            label = rng.randrange(2)
            rx, lx, ry, ly = (own, scorer, alt, other) if label == 0 else (alt, other, own, scorer)
            rows.append({"prompt": f"Write a review of {product}.", "response_x": rx, "response_y": ry,
                         "level_x": lx, "level_y": ly, "scorer_level": scorer, "label": label})
    return rows


def roleplay_rows(rng: random.Random, subjects: list[str]) -> list[dict[str, object]]:
    rows = []
    for pid, (persona, style) in enumerate(zip(PERSONAS, PERSONA_STYLE)):
        for subject in subjects:
            other = rng.choice([s for i, s in enumerate(PERSONA_STYLE) if i != pid])
            rows.append({"x": f"Tell me about {subject}.", "yw": _fmt(style, subject), "yl": _fmt(other, subject),
                         "level": pid, "score_persona": {"persona_description": f"The user is {persona}.",
                                                         "score": rng.randrange(6, 11)}})
    return rows


def hh_rows(rng: random.Random, subjects: list[str]) -> list[dict[str, object]]:
    """Anthropic HH schema: ``chosen`` and ``rejected`` dialogues ("\n\nHuman: ...\n\nAssistant: ...") that share
    everything up to the last assistant turn; some are two-turn, and the last two rows differ before it (the DPO
    code's split would pair them wrongly; fspo-prepare skips and counts them)."""
    rows = []
    for i, subject in enumerate(subjects * 4):
        first = f"\n\nHuman: What is {subject}?"
        dialogue = first
        if i % 3 == 0:
            dialogue += f"\n\nAssistant: {_fmt(ELIX_STYLE['a preteen'], subject)}\n\nHuman: Can you say more?"
        good = f" Sure. {_fmt(ELIX_STYLE[rng.choice(ELIX_LEVELS)], subject)} I hope that helps."
        bad = rng.choice([" I don't know.", " Why do you ask?", f" {subject.capitalize()} is boring."])
        rows.append({"chosen": f"{dialogue}\n\nAssistant:{good}", "rejected": f"{dialogue}\n\nAssistant:{bad}"})
    rows[-1]["rejected"] = rows[-1]["rejected"].replace("Human: What is", "Human: Tell me about", 1)
    rows[-2]["rejected"] = rows[-2]["rejected"].replace("\n\nHuman:", "\n\nHuman: Hi.", 1)
    return rows


def ultrafeedback_rows(rng: random.Random, subjects: list[str]) -> list[dict[str, object]]:
    """UltraFeedback binarized schema: prompt, prompt_id, chosen/rejected message lists, their scores."""
    rows = []
    for i, subject in enumerate(subjects * 4):
        prompt = f"Explain {subject} to me."
        good = f"{_fmt(ELIX_STYLE[rng.choice(ELIX_LEVELS)], subject)} In short: it is worth knowing."
        bad = rng.choice(["No.", f"{subject.capitalize()}.", "I cannot help with that."])
        rows.append({"prompt": prompt, "prompt_id": f"{i:04d}",
                     "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": good}],
                     "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": bad}],
                     "score_chosen": 8.0, "score_rejected": 2.0})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as fp:
        for i, row in enumerate(rows):
            fp.write(json.dumps({**row, "id": i}, ensure_ascii=False) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "samples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    # Train and test ask about different subjects, as in the sources.
    for name, make, items, cut in (("elix", elix_rows, SUBJECTS, 32), ("review", review_rows, PRODUCTS, 20),
                                   ("roleplay", roleplay_rows, SUBJECTS, 30)):
        write_jsonl(args.out / name / "train.jsonl", make(rng, items[:cut]))
        write_jsonl(args.out / name / "test.jsonl", make(rng, items[cut:]))
        print(f"wrote {args.out / name}/{{train,test}}.jsonl")
    # Plain preference pairs (their own generators, so the samples above do not change).
    for name, make, splits in (("hh", hh_rows, ("train", "test")),
                               ("ultrafeedback", ultrafeedback_rows, ("train_prefs", "test_prefs"))):
        plain = random.Random(f"{args.seed}:{name}")
        write_jsonl(args.out / name / f"{splits[0]}.jsonl", make(plain, SUBJECTS[:32]))
        write_jsonl(args.out / name / f"{splits[1]}.jsonl", make(plain, SUBJECTS[32:]))
        print(f"wrote {args.out / name}/{{{','.join(splits)}}}.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
