"""Win rates of each system against the baseline, overall and per user, with 95% bootstrap intervals.

A matchup's score is 1 (win), 0.5 (tie: equal, or the two orders disagreed) or 0 (loss); a failure (an order
without a verdict) is counted and left out of the rate. The win rate is the mean score of the judged matchups.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fspo_recipe.files import atomic_file
from fspo_recipe.stats import bootstrap_interval
from fspo_recipe.judge.matchups import Matchup
from fspo_recipe.judge.verdicts import LOSS, TIE, WIN

CSV_COLUMNS = ("system", "baseline", "user", "win_rate", "ci95_low", "ci95_high", "wins", "ties", "losses",
               "failures", "judged")


def tally(scores: Sequence[float | None], *, samples: int, seed: int) -> dict[str, Any]:
    """Counts, win rate and its 95% bootstrap interval (resampling matchups) of some matchups' scores."""
    judged = np.array([s for s in scores if s is not None], dtype=np.float64)
    rate = float(judged.mean()) if len(judged) else float("nan")
    lo, hi = bootstrap_interval(judged, samples=samples, seed=seed)
    return {
        "win_rate": rate,
        "ci95": [lo, hi],
        "wins": int((judged == WIN).sum()),
        "ties": int((judged == TIE).sum()),
        "losses": int((judged == LOSS).sum()),
        "failures": sum(s is None for s in scores),
        "judged": len(judged),
    }


def win_rates(matchups: Sequence[Matchup], scores: Sequence[float | None], *, samples: int = 1000, seed: int = 0
              ) -> dict[str, dict[str, Any]]:
    """system -> {baseline, overall, per_user} (see :func:`tally`)."""
    out: dict[str, dict[str, Any]] = {}
    for system in dict.fromkeys(m.system for m in matchups):
        rows = [(m, s) for m, s in zip(matchups, scores) if m.system == system]
        users = sorted({m.user for m, _ in rows})
        out[system] = {
            "baseline": rows[0][0].baseline,
            "overall": {**tally([s for _, s in rows], samples=samples, seed=seed), "users": len(users)},
            "per_user": {u: tally([s for m, s in rows if m.user == u], samples=samples, seed=seed) for u in users},
        }
    return out


def write_outputs(out: Path, result: Mapping[str, Any]) -> list[Path]:
    """``win_rates.json``, ``win_rates.csv`` (one row per system overall, ``user`` = ``(all)``, then per user) and
    ``win_rates.png`` (bars with intervals)."""
    with atomic_file(out / "win_rates.json") as fp:
        fp.write(json.dumps(result, indent=2) + "\n")
    with atomic_file(out / "win_rates.csv") as fp:
        writer = csv.writer(fp)
        writer.writerow(CSV_COLUMNS)
        for system, r in result["systems"].items():
            for user, t in [("(all)", r["overall"]), *r["per_user"].items()]:
                writer.writerow([system, r["baseline"], user, _num(t["win_rate"]), _num(t["ci95"][0]),
                                 _num(t["ci95"][1]), t["wins"], t["ties"], t["losses"], t["failures"], t["judged"]])
    plot = out / "win_rates.png"
    _plot(result, plot)
    return [out / "win_rates.json", out / "win_rates.csv", plot]


def _num(x: float) -> str:
    return "" if x != x else f"{x:.4f}"  # NaN (nothing judged) as an empty cell


def _plot(result: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(result["systems"])
    rates = [result["systems"][s]["overall"]["win_rate"] for s in systems]
    cis = [result["systems"][s]["overall"]["ci95"] for s in systems]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(systems) + 2), 4))
    xs = range(len(systems))
    err = [[max(0.0, r - c[0]) if r == r else 0.0 for r, c in zip(rates, cis)],
           [max(0.0, c[1] - r) if r == r else 0.0 for r, c in zip(rates, cis)]]
    ax.bar(list(xs), [r if r == r else 0.0 for r in rates], yerr=err, capsize=4, color="tab:blue")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(list(xs), systems, rotation=20 if len(systems) > 3 else 0)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("win rate (ties count half)")
    baselines = sorted({result["systems"][s]["baseline"] for s in systems})
    ax.set_title(f"Win rate against {', '.join(baselines)} ({result['judge']} judge)")
    fig.tight_layout()
    with atomic_file(path, "wb") as fp:
        fig.savefig(fp, format="png", dpi=100)
    plt.close(fig)
