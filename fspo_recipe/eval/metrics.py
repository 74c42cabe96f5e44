"""Per-pair preference metrics, their means overall and per user, and bootstrap confidence intervals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fspo_recipe.criteria import PairLogps, PreferenceCriterion
from fspo_recipe.stats import bootstrap_interval
from fspo_recipe.scoring.pairs import PairScores

HEADLINE = ("reward_accuracy", "policy_accuracy", "policy_accuracy_normalized", "reward_margin", "loss")
"""The metrics reported with a 95% bootstrap interval."""

METRICS = HEADLINE + ("chosen_rewards", "rejected_rewards", "chosen_logps", "rejected_logps")


def pair_metrics(policy: PairScores, reference: PairScores | None, criterion: PreferenceCriterion) -> dict[str, np.ndarray]:
    """Per-pair metrics, each [num_pairs]:

    - ``reward_accuracy``: 1 where the implicit reward of chosen is above rejected (the criterion's rewards: the
      beta-scaled policy/reference log-ratio for dpo/ipo), else 0; ``reward_margin`` their difference.
    - ``policy_accuracy``: 1 where log pi(chosen) > log pi(rejected) (summed; no reference involved);
      ``policy_accuracy_normalized`` the same on per-token log-probs.
    - ``loss``: the criterion's per-pair loss. ``chosen_logps``/``rejected_logps``: summed policy log-probs, nats.
    """
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64))  # noqa: E731
    logps = PairLogps(
        policy_chosen=t(policy.chosen),
        policy_rejected=t(policy.rejected),
        ref_chosen=None if reference is None else t(reference.chosen),
        ref_rejected=None if reference is None else t(reference.rejected),
        chosen_lengths=t(policy.chosen_lengths),
        rejected_lengths=t(policy.rejected_lengths),
    )
    chosen_r, rejected_r = (x.numpy() for x in criterion.rewards(logps))
    per_token_c = policy.chosen / np.maximum(policy.chosen_lengths, 1.0)
    per_token_r = policy.rejected / np.maximum(policy.rejected_lengths, 1.0)
    return {
        "reward_accuracy": (chosen_r > rejected_r).astype(np.float64),
        "policy_accuracy": (policy.chosen > policy.rejected).astype(np.float64),
        "policy_accuracy_normalized": (per_token_c > per_token_r).astype(np.float64),
        "reward_margin": chosen_r - rejected_r,
        "loss": criterion.loss(logps).numpy(),
        "chosen_rewards": chosen_r,
        "rejected_rewards": rejected_r,
        "chosen_logps": np.asarray(policy.chosen, dtype=np.float64),
        "rejected_logps": np.asarray(policy.rejected, dtype=np.float64),
    }


def summarize(
    per_pair: Mapping[str, np.ndarray],
    users: Sequence[str],
    *,
    bootstrap_samples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Means overall and per user (each with its pair count), and 95% intervals of the headline means overall.

    The overall mean is the pair-weighted mean of the per-user means: every pair counts once.
    """
    users_arr = np.asarray(users)
    overall: dict[str, Any] = {"pairs": len(users_arr), "users": len(set(users))}
    for name in METRICS:
        overall[name] = float(np.mean(per_pair[name])) if len(users_arr) else float("nan")
    for i, name in enumerate(HEADLINE):
        overall[f"{name}_ci95"] = list(bootstrap_interval(per_pair[name], samples=bootstrap_samples, seed=seed + i))
    per_user: dict[str, dict[str, float]] = {}
    for user in sorted(set(users)):
        mask = users_arr == user
        per_user[user] = {"pairs": int(mask.sum()), **{n: float(np.mean(per_pair[n][mask])) for n in METRICS}}
    return {"overall": overall, "per_user": per_user}
