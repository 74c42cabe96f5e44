"""PersonalLLM (Zollo et al., ICLR 2025; ``namkoong-lab/PersonalLLM``): open-ended prompts, eight responses each, every
response scored by ten reward models; users simulated as weightings of the reward models.

A simulated user is a weight vector ``w ~ Dirichlet(alpha * 1)`` over the ten reward models (the data set's
construction: a user's reward is ``sum_m w_m r_m(x, y)``; smaller ``--alpha`` gives users dominated by one or two
reward models, larger ones users close to the average). ``--users N`` users are drawn from ``--population-seed``
(user ``u07`` has the same weights whichever split or file is read, so a split's users are the same people in train
and test). Each reward model's scores are standardized over the responses read (mean 0, deviation 1; the models'
scales differ by orders of magnitude, and the weights would otherwise mean little).

Prompts are shared across users on purpose: each user answers ``--prompts-per-user`` prompts drawn from a pool of the
split's first ``--prompt-pool`` prompts (in a seeded order), so the same question appears for many users, with
opposite preferences when their weights disagree. A prompt gives a user one pair: two of its responses drawn at
random, the one with the higher weighted score preferred (``--pair best-worst``: the user's best and worst
response). Held-out users come from the split options (``--split-mode heldout_users``, the default for this source);
held-out prompts from the data set's own splits (``--split-mode source``: the train split's prompts train, the test
split's test, the same users).
The user description (rationale) names the user's three largest weights.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, Final

from fspo_recipe.data.sources.base import (PreferenceRow, RowContext, SourceOption, SourceSchemaError, SourceSpec,
                                           accept_pair, at_least, finite, one_of, positive, register_source, text)

HUB_NAME: Final = "namkoong-lab/PersonalLLM"

REWARD_MODELS: Final = ("gemma_2b", "gemma_7b", "mistral_raft", "llama3_sfairx", "oasst_deberta_v3", "beaver_7b",
                        "oasst_pythia_7b", "oasst_pythia_1b", "mistral_ray", "mistral_weqweasdas")
"""The ten reward models, as the score columns name them (``response_3_gemma_7b``)."""

RESPONSES: Final = 8


def user_weights(count: int, alpha: float, seed: int) -> list[list[float]]:
    """The weights of users 0..count-1: Dirichlet(alpha) draws (normalized gamma variates) from ``seed``."""
    rng = random.Random(f"personalllm:{seed}")
    users = []
    for _ in range(count):
        draws = [rng.gammavariate(alpha, 1.0) for _ in REWARD_MODELS]
        total = sum(draws)
        users.append([d / total for d in draws] if total > 0 else [1.0 / len(REWARD_MODELS)] * len(REWARD_MODELS))
    return users


def describe_weights(weights: Sequence[float]) -> str:
    top = sorted(zip(weights, REWARD_MODELS), reverse=True)[:3]
    return "This user's taste weighs the reward models " + ", ".join(f"{m} {w:.2f}" for w, m in top) + "."


def user_name(index: int, count: int) -> str:
    return f"u{index:0{len(str(count - 1))}d}"


def _standardize(scores: list[list[list[float]]]) -> list[list[list[float]]]:
    """scores[prompt][response][model], each model's scores to mean 0 and deviation 1 over everything read."""
    out = [[list(r) for r in p] for p in scores]
    for m in range(len(REWARD_MODELS)):
        values = [r[m] for p in scores for r in p]
        mean = sum(values) / len(values)
        spread = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5 or 1.0
        for p in out:
            for r in p:
                r[m] = (r[m] - mean) / spread
    return out


def personalllm_rows(spec: SourceSpec, data: Mapping[str, Sequence[Any]], ctx: RowContext) -> list[PreferenceRow]:
    """Simulated users' pairs over the split's prompts (see the module docstring)."""
    score_columns = [f"response_{i}_{m}" for i in range(1, RESPONSES + 1) for m in REWARD_MODELS]
    missing = [c for c in score_columns if c not in data]
    if missing:
        raise SourceSchemaError(f"{ctx.where}: missing score column(s) {', '.join(missing[:4])}"
                                f"{' ...' if len(missing) > 4 else ''} (PersonalLLM scores every response_i by each of "
                                f"{', '.join(REWARD_MODELS)} as response_i_<model>).")
    prompts: list[tuple[str, str, list[str], list[list[float]]]] = []
    for i, prompt in enumerate(data["prompt"]):
        pid = data["prompt_id"][i] if "prompt_id" in data else i
        responses = [text(data[f"response_{k}"][i]) for k in range(1, RESPONSES + 1)]
        scores: list[list[float]] = []
        for k in range(1, RESPONSES + 1):
            # A NaN or infinite score is an error naming the line (finite); a missing one leaves the response out.
            row = [finite(ctx, i, f"response_{k}_{m}", data[f"response_{k}_{m}"][i]) for m in REWARD_MODELS]
            scores.append([] if any(v is None for v in row) else [float(v) for v in row])
        usable = [k for k in range(RESPONSES) if responses[k] and scores[k]]
        if not text(prompt) or len(usable) < 2:
            ctx.report.skip("prompt with fewer than two responses scored by every reward model", ctx.locate(i))
            continue
        prompts.append((f"{ctx.split}/{pid}", text(prompt), [responses[k] for k in usable],
                        [scores[k] for k in usable]))
    if not prompts:
        return []
    standardized = _standardize([p[3] for p in prompts])
    prompts = [(a, b, c, s) for (a, b, c, _), s in zip(prompts, standardized)]
    count, seed = ctx.options.get("users", 100), ctx.options.get("population_seed", 0)
    weights = user_weights(count, ctx.options.get("alpha", 0.05), seed)
    rng = random.Random(f"personalllm:{seed}:{ctx.split}")
    pool = list(range(len(prompts)))
    rng.shuffle(pool)
    size = ctx.options.get("prompt_pool", 200)
    pool = pool[:size] if size else pool
    per_user = min(ctx.options.get("prompts_per_user", 40), len(pool))
    best_worst = ctx.options.get("pair", "random") == "best-worst"
    out: list[PreferenceRow] = []
    for u, w in enumerate(weights):
        user = user_name(u, count)
        description = describe_weights(w)
        for p in rng.sample(pool, per_user):
            pid, question, responses, scores = prompts[p]
            value = [sum(wm * sm for wm, sm in zip(w, s)) for s in scores]
            if best_worst:
                a, b = max(range(len(value)), key=value.__getitem__), min(range(len(value)), key=value.__getitem__)
            else:
                a, b = rng.sample(range(len(value)), 2)
            pair_id = f"{pid}/{user}"
            if value[a] == value[b]:
                ctx.report.skip("equal weighted scores (a tie)", pair_id)
                continue
            preferred, rejected = (responses[a], responses[b]) if value[a] > value[b] else (responses[b], responses[a])
            if accept_pair(ctx, pair_id, question, preferred, rejected):
                out.append(PreferenceRow(pair_id, user, question, preferred, rejected, description, "", description))
    return out


register_source(SourceSpec(
    "personalllm",
    HUB_NAME,
    {"prompt": "the prompt", **{f"response_{i}": f"response {i} of 8" for i in range(1, RESPONSES + 1)}},
    4,
    personalllm_rows,
    default_split_mode="heldout_users",  # its own splits hold the same simulated users: test on unseen ones
    options=(
        SourceOption("--users", at_least(2), 100, "simulated users (default: 100)"),
        SourceOption("--alpha", positive, 0.05, "Dirichlet concentration of the users' weights over the ten reward "
                     "models (default: 0.05; small: each user dominated by few reward models)"),
        SourceOption("--population-seed", int, 0, "seed of the users' weights and of their prompts (default: 0)"),
        SourceOption("--prompts-per-user", at_least(1), 40, "prompts (one pair each) per user (default: 40)"),
        SourceOption("--prompt-pool", at_least(0), 200, "the users' prompts are drawn from this many of the split's "
                     "prompts, so that users share questions (default: 200; 0: all)"),
        SourceOption("--pair", one_of("random", "best-worst"), "random", "the two responses of a pair: two at random "
                     "(default) or the user's best and worst"),
    ),
))
