"""Write small synthetic source files in the exact schemas of the data sources (datasets/samples/): Elix, Review and
Roleplay; PRISM and PersonalLLM; Anthropic HH, UltraFeedback, SHP, StackExchange and OpenAssistant2.

They stand in for the hub data sets offline (tests, quick start). The texts are synthetic and short; each user
prefers responses of one visible style, so the few-shot episodes built from them carry a real signal.

    python datasets/make_source_samples.py [--out datasets/samples] [--seed 0] [--personalllm-prompts 60]

``--personalllm-prompts N`` makes the PersonalLLM sample larger (its test split gets N/3 prompts): the schema's
generator for measurements on more prompts than the bundled sample has.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fspo_recipe.files import atomic_file  # noqa: E402

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


def shp_rows(rng: random.Random, subjects: list[str]) -> list[dict[str, object]]:
    """Stanford SHP schema: one row per pair of top-level comments of a post (several rows per post), their scores
    and ``labels`` (1: comment A preferred); some pairs have a score ratio below 2 (the DPO code's filter)."""
    rows = []
    for p, subject in enumerate(subjects):
        post = f"p{rng.randrange(16**6):06x}"
        history = f"Why does {subject} behave the way it does? I have always wondered about it."
        comments = [(f"{_fmt(ELIX_STYLE[rng.choice(ELIX_LEVELS)], subject)} Source: my physics class.",
                     rng.randint(20, 200)),
                    (f"Good question, {subject} is complicated.", rng.randint(8, 60)),
                    (rng.choice(["lol", "Google it.", f"Who cares about {subject}?"]), rng.randint(1, 8))]
        for i, j in ((0, 1), (0, 2), (1, 2))[: 2 + p % 2]:
            (text_a, score_a), (text_b, score_b) = (comments[i], comments[j]) if rng.random() < 0.5 else \
                (comments[j], comments[i])
            ratio = max(score_a / score_b, score_b / score_a)
            rows.append({"post_id": post, "domain": "askscience_train", "upvote_ratio": 0.97, "history": history,
                         "c_root_id_A": f"c{rng.randrange(16**6):06x}", "c_root_id_B": f"c{rng.randrange(16**6):06x}",
                         "created_at_utc_A": 1600000000 + p, "created_at_utc_B": 1600000100 + p,
                         "score_A": score_a, "score_B": score_b, "human_ref_A": text_a, "human_ref_B": text_b,
                         "labels": int(score_a > score_b), "seconds_difference": 100.0, "score_ratio": ratio})
    return rows


def stackexchange_rows(rng: random.Random, subjects: list[str]) -> list[dict[str, object]]:
    """StackExchange preferences schema (HuggingFaceH4/stack-exchange-preferences): an HTML question and its answers,
    each with a ``pm_score``; paragraphs, code blocks, links, lists and entities as on the site, and some answers
    with equal scores."""
    rows = []
    for q, subject in enumerate(subjects):
        name = subject.split()[-1]
        question = (f"<p>How do I model {subject} in Python &amp; keep it fast (case {q})?</p>\n\n"
                    f"<pre><code>class {name.capitalize()}:\n    pass\n</code></pre>\n\n<p>Thanks!</p>\n")
        texts = [f"<p>Use a <code>dataclass</code> for {subject}; see <a href=\"https://docs.python.org\">the docs</a>."
                 f"</p>\n\n<pre><code>@dataclass\nclass {name.capitalize()}:\n    size: float\n</code></pre>\n",
                 f"<p>A dict is enough for {subject} &lt;3</p>\n<ul><li>simple</li><li>fast</li></ul>\n",
                 "<p>Why would you do that?</p>\n"]
        scores = [rng.randint(4, 9), rng.randint(1, 3), rng.choice([0, 1, -1])]
        answers = [{"answer_id": q * 10 + k, "author": f"user{k}", "author_id": k, "author_profile": "",
                    "pm_score": score, "selected": k == 0, "text": text}
                   for k, (text, score) in enumerate(zip(texts[: 2 + q % 2], scores))]
        rows.append({"qid": 1000 + q, "question": question, "answers": answers, "date": "2020/01/01",
                     "metadata": ["https://stackoverflow.com/questions/" + str(1000 + q)]})
    return rows


def oasst2_rows(rng: random.Random, subjects: list[str]) -> list[dict[str, object]]:
    """OpenAssistant2 schema: message rows of trees (a prompter root, ranked assistant replies, a prompter follow-up
    under the best one, ranked replies to it); some trees have a deleted reply or an unranked one."""
    rows: list[dict[str, object]] = []

    def message(tree: str, parent: str | None, role: str, text: str, rank: int | None, deleted: bool = False) -> str:
        mid = f"{rng.randrange(16**12):012x}"
        rows.append({"message_id": mid, "parent_id": parent, "user_id": f"u{rng.randrange(99)}",
                     "created_date": "2023-02-05T00:00:00+00:00", "text": text, "role": role, "lang": "en",
                     "review_count": 3, "review_result": True, "deleted": deleted, "rank": rank, "synthetic": False,
                     "model_name": None, "detoxify": None, "message_tree_id": tree, "tree_state": "ready_for_export",
                     "emojis": None, "labels": None})
        return mid

    for t, subject in enumerate(subjects):
        root = message("", None, "prompter", f"Can you explain {subject}?", None)
        for row in rows:
            if row["message_id"] == root:
                row["message_tree_id"] = root
        replies = [f"{_fmt(ELIX_STYLE[rng.choice(ELIX_LEVELS)], subject)} Want to know more?",
                   f"{subject.capitalize()} is a thing.", "I'd rather not."]
        ids = [message(root, root, "assistant", text, rank) for rank, text in enumerate(replies[: 2 + t % 2])]
        if t % 4 == 1:
            message(root, root, "assistant", "Spam spam spam.", None, deleted=True)
        if t % 5 == 2:
            message(root, root, "assistant", f"Unranked words about {subject}.", None)
        follow = message(root, ids[0], "prompter", "Yes, how is it measured?", 0)
        for rank, text in enumerate([f"People measure {subject} with simple tools and careful notes.",
                                     "With a ruler, probably."]):
            message(root, follow, "assistant", text, rank)
    return rows


STYLES = {
    # A participant's taste -> what their preferred response looks like, and the self-description they wrote.
    "brief": ("{S} is {d}.", "I value my time. Short, direct answers without padding matter to me."),
    "thorough": ("{S} is {d}. To explain further: it has causes, effects and exceptions worth knowing, and the "
                 "details matter for a full picture.", "I believe in understanding things deeply and completely."),
    "warm": ("What a lovely question! {S} is {d}, and I hope that helps you.", "Kindness and warmth guide my life."),
    "skeptical": ("The evidence suggests {s} is {d}, though sources differ and you should check them.",
                  "I question everything and trust evidence over authority."),
}
PRISM_MODELS = ["model-a", "model-b", "model-c", "model-d", "model-e", "model-f"]


def prism_response(style: str, subject: str, defn: str) -> str:
    template = STYLES[style][0]
    return template.replace("{S}", subject.capitalize()).replace("{s}", subject).replace("{d}", defn)


def prism_files(rng: random.Random, participants: int = 12) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """PRISM's survey and conversations schemas: each participant prefers one style of answer; in the opening turn
    four model responses in four styles are rated 1-100 (their style high, others low, with noise), the highest is
    chosen and the conversation goes on for a second turn of two responses. A few ratings are ties or missing, and
    one participant has no survey entry (counted, not guessed)."""
    styles = list(STYLES)
    survey, conversations = [], []
    for p in range(participants):
        uid = f"user{p}"
        style = styles[p % len(styles)]
        if p != participants - 1:  # the last participant did the conversations but is missing from the survey
            survey.append({"user_id": uid, "survey_only": False, "num_completed_conversations": 3,
                           "consent": "Yes", "consent_age": "Yes", "lm_familiarity": "Somewhat familiar",
                           "lm_frequency_use": "Every week", "self_description": STYLES[style][1],
                           "system_string": f"Answer in a {style} way.",
                           "stated_prefs": {"values": 60 + p, "creativity": 50, "fluency": 70, "factuality": 90,
                                            "diversity": 40, "safety": 80, "personalisation": 55,
                                            "helpfulness": 85},
                           "age": "25-34 years old", "gender": "Prefer not to say", "location": {"birth_country":
                                                                                                   "Nowhere"}})
        for c in range(3):
            subject = SUBJECTS[(p * 3 + c) % len(SUBJECTS)]
            defn = f"a thing people meet in daily life, number {c}"
            history: list[dict[str, object]] = []
            order = styles[:]
            rng.shuffle(order)
            ratings = []
            for w, resp_style in enumerate(order):
                score = (85 if resp_style == style else 30) + rng.randrange(-8, 9)
                ratings.append(score)
            if c == 1:
                ratings[1] = ratings[2]  # a tie
            if c == 2 and p % 3 == 0:
                ratings[3] = None  # a missing rating
            best = max(range(4), key=lambda w: -1 if ratings[w] is None else ratings[w])
            history.append({"turn": 0, "role": "user", "content": f"Can you tell me about {subject}?",
                            "within_turn_id": None, "model_provider": None, "model_name": None, "score": None,
                            "if_chosen": None})
            for w, resp_style in enumerate(order):
                history.append({"turn": 0, "role": "model", "content": prism_response(resp_style, subject, defn),
                                "within_turn_id": w, "model_provider": "provider", "model_name": PRISM_MODELS[w],
                                "score": ratings[w], "if_chosen": w == best})
            history.append({"turn": 1, "role": "user", "content": "And why does it matter?", "within_turn_id": None,
                            "model_provider": None, "model_name": None, "score": None, "if_chosen": None})
            second = [style, rng.choice([s for s in styles if s != style])]
            rng.shuffle(second)
            for w, resp_style in enumerate(second):
                score = (80 if resp_style == style else 35) + rng.randrange(-5, 6)
                history.append({"turn": 1, "role": "model",
                                "content": prism_response(resp_style, f"why {subject} matters", "its use to people"),
                                "within_turn_id": w, "model_provider": "provider",
                                "model_name": PRISM_MODELS[best], "score": score, "if_chosen": resp_style == style})
            conversations.append({"conversation_id": f"c{p}_{c}", "user_id": uid, "generated_datetime":
                                  "2023-11-22 15:00:00", "included_in_balanced_subset": True,
                                  "conversation_type": ["unguided", "values guided", "controversy guided"][c],
                                  "opening_prompt": f"Can you tell me about {subject}?", "conversation_turns": 2,
                                  "conversation_history": history, "performance_attributes": {"fluency": 80},
                                  "choice_attributes": {"values": 70}, "open_feedback": "It was fine."})
    return survey, conversations


FEATURES = ["short", "long", "excited", "formal", "numbers", "question", "hedged", "plain"]


def personalllm_response(subject: str, feature: str) -> str:
    return {"short": f"{subject.capitalize()}.",
            "long": f"{subject.capitalize()} has a long history, many uses and several parts worth describing at "
                    "length, one after another, with care.",
            "excited": f"Wow, {subject} is amazing! So cool!",
            "formal": f"{subject.capitalize()} may be defined as a phenomenon of considerable interest.",
            "numbers": f"{subject.capitalize()}: 3 facts. 1) it exists. 2) it varies. 3) it is studied.",
            "question": f"Have you ever wondered about {subject}? Let us find out.",
            "hedged": f"I think {subject} might be roughly what people say, but I am not sure.",
            "plain": f"{subject.capitalize()} is a common thing."}[feature]


def personalllm_rows(rng: random.Random, prompts: int, start: int) -> list[dict[str, object]]:
    """PersonalLLM's schema: a prompt, eight responses and each response's score by the ten reward models; each
    synthetic reward model likes some response features (length, excitement, formality, ...) on its own scale."""
    from fspo_recipe.data.sources.personalllm import REWARD_MODELS

    likes = {m: {f: rng.uniform(-1, 1) for f in FEATURES} for m in REWARD_MODELS}
    scale = {m: 10 ** rng.uniform(-1, 1) for m in REWARD_MODELS}
    rows = []
    for q in range(prompts):
        subject = SUBJECTS[(start + q) % len(SUBJECTS)] + (f" #{(start + q) // len(SUBJECTS)}"
                                                            if start + q >= len(SUBJECTS) else "")
        row: dict[str, object] = {"prompt": f"Tell me about {subject}.", "subset": "synthetic",
                                  "prompt_id": start + q}
        features = rng.sample(FEATURES, 8)
        for i, feature in enumerate(features, 1):
            row[f"response_{i}"] = personalllm_response(subject, feature)
        for i, feature in enumerate(features, 1):
            for m in REWARD_MODELS:
                row[f"response_{i}_{m}"] = round(scale[m] * (likes[m][feature] + rng.gauss(0, 0.2)), 4)
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict[str, object]], *, with_id: bool = True) -> None:
    """Rows as JSONL; ``with_id`` adds a row number (the FSPO samples have one; the plain sources' exact schemas
    written since do not)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as fp:
        for i, row in enumerate(rows):
            fp.write(json.dumps({**row, "id": i} if with_id else row, ensure_ascii=False) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--personalllm-prompts", type=int, default=60, help="PersonalLLM train prompts (default 60)")
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
    # SHP's files are JSONL named .json; StackExchange has only a train split; OpenAssistant2 train and validation.
    for name, make, files in (("shp", shp_rows, ("train.json", "test.json")),
                              ("stackexchange", stackexchange_rows, ("train.jsonl",)),
                              ("oasst2", oasst2_rows, ("train.jsonl", "validation.jsonl"))):
        plain = random.Random(f"{args.seed}:{name}")
        parts = (SUBJECTS * 3,) if len(files) == 1 else (SUBJECTS[:32], SUBJECTS[32:])
        for file, subjects in zip(files, parts):
            write_jsonl(args.out / name / file, make(plain, subjects), with_id=False)
        print(f"wrote {args.out / name}/{{{','.join(files)}}}")
    # Real people and simulated populations (their own generators too).
    people = random.Random(f"{args.seed}:prism")
    survey, conversations = prism_files(people)
    write_jsonl(args.out / "prism" / "survey.jsonl", survey, with_id=False)
    write_jsonl(args.out / "prism" / "conversations.jsonl", conversations, with_id=False)
    print(f"wrote {args.out / 'prism'}/{{survey,conversations}}.jsonl")
    population = random.Random(f"{args.seed}:personalllm")
    n = args.personalllm_prompts
    write_jsonl(args.out / "personalllm" / "train.jsonl", personalllm_rows(population, n, 0), with_id=False)
    population = random.Random(f"{args.seed}:personalllm")  # the same reward models for the test prompts
    write_jsonl(args.out / "personalllm" / "test.jsonl", personalllm_rows(population, max(1, n // 3), n)[:],
                with_id=False)
    print(f"wrote {args.out / 'personalllm'}/{{train,test}}.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
