"""The study's figures: per seed (tables by split, property, pole and shots) and over seeds (means, spreads and
intervals over seeds and pairs), written as study.json and table.md."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fspo_recipe.data.synthetic import POLE_TEXT, POLES, PROPERTIES
from fspo_recipe.study.plan import POLE_NAMES, Plan
from fspo_recipe.study.plots import plot, plot_seeds

def jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def users_of(rows: list[dict]) -> set[str]:
    return {row["user"] for row in rows}


def by_property(per_user: dict[str, dict], *, poles: bool = False) -> dict[str, float]:
    """Pair-weighted implicit-reward accuracy of single-property users, by property (from their descriptions), or
    with ``poles`` by the pole they prefer. The poles tell reading from bias: a model that reads a property from
    the shots is right for both poles; one that prefers a pole whatever the shots say is right for one pole's users
    and wrong for the other's, and averages to chance on the property."""
    sums: dict[str, list[float]] = {}
    for user, m in per_user.items():
        found = [pole for pole in POLE_TEXT if POLE_TEXT[pole] in user]
        if len(found) == 1:
            acc = sums.setdefault(found[0] if poles else next(p for p, ps in POLES.items() if found[0] in ps),
                                  [0.0, 0.0])
            acc[0] += m["reward_accuracy"] * m["pairs"]
            acc[1] += m["pairs"]
    return {key: a / n for key, (a, n) in sums.items() if n}


def pole_curve_rows(title: str, curves: list[dict[str, dict[str, float]]]) -> list[str]:
    """A table under ``title`` of accuracy by IPO step (columns, the steps every curve has) and pole (rows); each cell
    holds the curves' values (one per seed) joined by " / ". No table when the curves share no step."""
    steps = [k for k in (curves[0] if curves else {}) if all(k in c for c in curves)]
    if not steps:
        return []
    return ["", title, "", "| pole | " + " | ".join(steps) + " |", "|---|" + "---|" * len(steps),
            *(f"| {pole} | " + " | ".join(" / ".join(f"{c[k][pole]:.2f}" if pole in c[k] else "n/a" for c in curves)
                                          for k in steps) + " |" for pole in POLE_NAMES)]


def win_cell(w: dict | None) -> str:
    return "" if w is None else f"{fmt(w['win_rate'], w['ci95'])} ({w['judged']} answers)"


def fmt(x: float | None, ci: list[float] | None = None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def report(out: Path, plan: Plan, variants: list[str], results: dict[str, dict[str, dict]], wins: dict[str, dict],
           gpo: dict[str, dict[str, dict]], times: dict[str, float], counts: dict[str, object]) -> None:
    """Print and write the tables (OUT/table.md), OUT/study.json and the plot."""

    # Table.
    rows = ["| model | users | implicit-reward accuracy [95% CI] | policy-only accuracy [95% CI] | pairs "
            "| win rate vs its SFT model, exact judge [95% CI] |",
            "|---|---|---|---|---|---|"]
    for variant, splits in results.items():
        for split, m in splits.items():
            o = m["overall"]
            reward = None if variant == "untrained" else o["reward_accuracy"]
            w = wins.get(variant) if split == "heldout" else None
            rows.append(f"| {variant} | {split} | {fmt(reward, None if reward is None else o['reward_accuracy_ci95'])} "
                        f"| {fmt(o['policy_accuracy'], o['policy_accuracy_ci95'])} | {o['pairs']} "
                        f"| {win_cell(w)} |")
    for label, splits in gpo.items():
        for split, m in splits.items():
            o = m["overall"]
            rows.append(f"| {label} | {split} | {fmt(o['accuracy'], o['accuracy_ci95'])} | n/a | {o['pairs']} | |")
    shots_head = ["| model | users | " + " | ".join(f"{k} shots" for k in range(plan.shots + 1)) + " |",
                  "|---|---|" + "---|" * (plan.shots + 1)]
    shots_rows = ["", "FSPO, accuracy by number of shots (the same held-out queries, the first k shots kept):", "",
                  *shots_head]
    # The direct sign that the model reads the shots: the preferred response costs it fewer nats with them.
    loss_rows = ["", "FSPO, loss of the preferred response (-log p, nats) by number of shots:", "", *shots_head]
    for variant in [v for v in variants if v != "baseline"]:
        for split, m in results[variant].items():
            if len(m["shots"]) < plan.shots + 1:
                continue
            by_k = [m["shots"][str(k)] for k in range(plan.shots + 1)]
            shots_rows.append(f"| {variant} | {split} | " + " | ".join(
                f"{r['reward_accuracy']:.3f} / {r['policy_accuracy']:.3f}" for r in by_k) + " |")
            loss_rows.append(f"| {variant} | {split} | " + " | ".join(f"{-r['chosen_logps']:.2f}" for r in by_k) + " |")
    for label, splits in gpo.items():
        for split, m in splits.items():
            if len(m["shots"]) == plan.shots + 1:
                shots_rows.append(f"| {label} | {split} | " + " | ".join(
                    f"{m['shots'][str(k)]['accuracy']:.3f}" for k in range(plan.shots + 1)) + " |")
    shots_rows += ["", "(cells: implicit-reward / policy-only accuracy; GPO: its predicted preference)"]
    # Which preferences each model reads: held-out accuracy per property of the users' preference.
    by_prop = {v: {s: by_property(m["per_user"]) for s, m in sp.items()} for v, sp in results.items()}
    props_rows = ["", "Held-out implicit-reward accuracy by the property the user cares about:", "",
                  "| model | " + " | ".join(PROPERTIES) + " |", "|---|" + "---|" * len(PROPERTIES)]
    for variant in [v for v in results if v != "untrained"]:
        props_rows.append(f"| {variant} | " + " | ".join(
            f"{by_prop[variant]['heldout'].get(p, float('nan')):.3f}" for p in PROPERTIES) + " |")
    by_pole = {v: {s: by_property(m["per_user"], poles=True) for s, m in sp.items()} for v, sp in results.items()}
    props_rows += ["", "The same by the pole the user prefers (reading the shots: both poles of a property right; a "
                   "bias: one right, the other wrong):", "", "| model | " + " | ".join(POLE_NAMES) + " |",
                   "|---|" + "---|" * len(POLE_NAMES)]
    for variant in [v for v in results if v != "untrained"]:
        props_rows.append(f"| {variant} | " + " | ".join(
            f"{by_pole[variant]['heldout'].get(p, float('nan')):.3f}" for p in POLE_NAMES) + " |")
    curve = results["fspo"]["heldout"].get("steps", {})
    curve_rows = ["", "FSPO, held-out implicit-reward / policy-only accuracy by IPO step:", "",
                  "| IPO step | " + " | ".join(curve) + " |", "|---|" + "---|" * len(curve),
                  "| accuracy | " + " | ".join(f"{m['reward_accuracy']:.3f} / {m['policy_accuracy']:.3f}"
                                            for m in curve.values()) + " |"]
    # The training curve of each pole: where a property is read it rises for both poles; a lean moves them apart.
    steps_by_pole = {v: {s: {step: by_property(users, poles=True) for step, users in m.get("steps_per_user", {}).items()}
                         for s, m in sp.items()} for v, sp in results.items()}
    curve_rows += pole_curve_rows("The same by the pole the held-out user prefers (implicit reward):",
                                  [steps_by_pole["fspo"]["heldout"]])
    ceiling = counts.get("reading_ceiling") or {}
    rows += ["", "(a perfect reader of the shots, who knows each property a shot's two responses differ on and guesses "
             "the rest, would reach " + ", ".join(f"{split} {c:.3f}" for split, c in ceiling.items()) + ")",
             "", "(GPO: pairwise accuracy of its predicted preference, chosen above rejected, with each episode's own "
             "shots as context; the GPO module meta-trained on the training users' pairs over frozen embeddings)",
             "", "(win rate: the IPO model's own answers to the held-out users' questions against its SFT model's, "
             "judged by each user's hidden preference; ties count half)"]
    table = "\n".join(rows + shots_rows + loss_rows + props_rows + curve_rows)
    summary = {"plan": plan.__dict__, "seconds": times, "machine": f"{os.cpu_count()} CPUs", **counts,
               "win_rates_vs_sft": wins,
               "gpo": {label: {split: {"overall": m["overall"], "shots": m["shots"]} for split, m in sp.items()}
                       for label, sp in gpo.items()},
               "results": {v: {s: {"overall": m["overall"], "shots": m["shots"], "by_property": by_prop[v][s],
                                   "by_pole": by_pole[v][s], "steps": m.get("steps", {}),
                                   "steps_by_pole": steps_by_pole[v][s]} for s, m in sp.items()}
                           for v, sp in results.items()}}
    (out / "study.json").write_text(json.dumps(summary, indent=1))
    (out / "table.md").write_text(table + "\n")
    plot(results, plan, out / "accuracy_vs_shots.png")
    print()
    print(table)
    print(f"\nstudy done in {times['total'] / 60:.1f} min ({', '.join(f'{k} {v / 60:.1f}' for k, v in times.items())}); "
          f"{out}/study.json, table.md, accuracy_vs_shots.png")


def pair_outcomes(seed_dir: Path, variant: str, split: str, key: str = "reward_accuracy") -> list[float]:
    """Per-pair outcomes (1 right, 0 wrong) of one evaluation of a seed's study (its ``pairs.csv``)."""
    import csv

    path = seed_dir / "eval" / f"{variant.replace('+', '_')}_{split}" / "pairs.csv"
    with path.open(newline="") as fp:
        return [float(row[key]) for row in csv.DictReader(fp)]


def seeds_and_pairs_interval(per_seed: list[list[float]], samples: int, rng_seed: int = 0) -> list[float]:
    """95% interval of the mean over seeds of each seed's accuracy, by a two-level bootstrap: seeds drawn with
    replacement, then each drawn seed's pairs with replacement (the spread between seeds and within them)."""
    import numpy as np

    rng = np.random.default_rng(rng_seed)
    arrays = [np.asarray(x, dtype=float) for x in per_seed]
    means = np.empty(samples)
    for b in range(samples):
        picked = rng.integers(0, len(arrays), len(arrays))
        means[b] = np.mean([arrays[i][rng.integers(0, len(arrays[i]), len(arrays[i]))].mean() for i in picked])
    low, high = np.quantile(means, [0.025, 0.975])
    return [float(low), float(high)]


def spread(values: list[float]) -> dict[str, object]:
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "seeds": values}


def aggregate(out: Path, plan: Plan, seeds: list[int], *, seconds: float, jobs: int = 1) -> dict:
    """The multi-seed summary of OUT/seed_N/study.json: per variant and split the mean, min-max and a 95% interval
    over seeds and pairs of the held-out/interpolated accuracy; per property and per number of shots the mean and
    min-max; FSPO's accuracy by IPO step per seed. Writes OUT/study.json (every seed's figures under
    ``per_seed``), OUT/table.md and OUT/accuracy_vs_shots.png (each seed faint, the mean bold); returns the summary."""
    per_seed = {seed: json.loads((out / f"seed_{seed}" / "study.json").read_text()) for seed in seeds}
    variants = [v for v in per_seed[seeds[0]]["results"] if all(v in s["results"] for s in per_seed.values())]
    summary: dict[str, dict] = {}
    for variant in variants:
        for split in ("heldout", "interpolated"):
            row: dict[str, object] = {}
            for key in ("reward_accuracy", "policy_accuracy"):
                if variant == "untrained" and key == "reward_accuracy":
                    continue  # policy = reference: no implicit reward
                values = [per_seed[s]["results"][variant][split]["overall"][key] for s in seeds]
                outcomes = [pair_outcomes(out / f"seed_{s}", variant, split, key) for s in seeds]
                row[key] = {**spread(values), "ci95": seeds_and_pairs_interval(outcomes, plan.bootstrap)}
            by_prop = [per_seed[s]["results"][variant][split]["by_property"] for s in seeds]
            row["by_property"] = {p: spread([b[p] for b in by_prop]) for p in PROPERTIES if all(p in b for b in by_prop)}
            by_pole = [per_seed[s]["results"][variant][split].get("by_pole", {}) for s in seeds]
            row["by_pole"] = {p: spread([b[p] for b in by_pole]) for p in POLE_TEXT if all(p in b for b in by_pole)}
            shots = [per_seed[s]["results"][variant][split]["shots"] for s in seeds]
            row["shots"] = {k: spread([sh[k]["reward_accuracy"] for sh in shots])
                            for k in shots[0] if all(k in sh for sh in shots)}
            row["steps"] = {str(s): {k: v["reward_accuracy"] for k, v in per_seed[s]["results"][variant][split]
                                     .get("steps", {}).items()} for s in seeds}
            row["steps_by_pole"] = {str(s): per_seed[s]["results"][variant][split].get("steps_by_pole", {})
                                    for s in seeds}
            summary.setdefault(variant, {})[split] = row

    def cell(stat: dict) -> str:
        return (f"{stat['mean']:.3f} [{stat['ci95'][0]:.2f}, {stat['ci95'][1]:.2f}] | {stat['min']:.3f}-{stat['max']:.3f} "
                f"| {' / '.join(f'{v:.3f}' for v in stat['seeds'])}")

    rows = [f"Seeds {', '.join(map(str, seeds))}: mean over seeds [95% interval over seeds and pairs] | min-max | "
            "each seed", "",
            "| model | users | implicit-reward accuracy | min-max | per seed | policy-only accuracy | min-max | per seed |",
            "|---|---|---|---|---|---|---|---|"]
    for variant, splits in summary.items():
        for split, row in splits.items():
            reward = cell(row["reward_accuracy"]) if "reward_accuracy" in row else "n/a | | "
            rows.append(f"| {variant} | {split} | {reward} | {cell(row['policy_accuracy'])} |")
    rows += ["", "Held-out implicit-reward accuracy by the property the user cares about (mean, min-max over seeds):",
             "", "| model | " + " | ".join(PROPERTIES) + " |", "|---|" + "---|" * len(PROPERTIES)]
    for variant in [v for v in summary if v != "untrained"]:
        props = summary[variant]["heldout"]["by_property"]
        rows.append(f"| {variant} | " + " | ".join(
            f"{props[p]['mean']:.3f} ({props[p]['min']:.2f}-{props[p]['max']:.2f})" if p in props else "n/a"
            for p in PROPERTIES) + " |")
    if any(summary[v]["heldout"]["by_pole"] for v in summary):
        rows += ["", "The same by the pole the user prefers (each seed; reading: both poles right, a bias: one of "
                 "them wrong):", "", "| model | " + " | ".join(POLE_NAMES) + " |", "|---|" + "---|" * len(POLE_NAMES)]
        for variant in [v for v in summary if v != "untrained"]:
            poles = summary[variant]["heldout"]["by_pole"]
            rows.append(f"| {variant} | " + " | ".join(
                " / ".join(f"{x:.2f}" for x in poles[p]["seeds"]) if p in poles else "n/a" for p in POLE_NAMES) + " |")
    rows += pole_curve_rows("FSPO, held-out implicit-reward accuracy by IPO step and the pole the user prefers (each "
                            "seed):", list(summary.get("fspo", {}).get("heldout", {}).get("steps_by_pole", {}).values()))
    ks = [str(k) for k in range(plan.shots + 1)]
    rows += ["", "Implicit-reward accuracy by number of shots (mean, min-max over seeds):", "",
             "| model | users | " + " | ".join(f"{k} shots" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    for variant in [v for v in summary if v not in ("untrained", "baseline")]:
        for split, row in summary[variant].items():
            if all(k in row["shots"] for k in ks):
                rows.append(f"| {variant} | {split} | " + " | ".join(
                    f"{row['shots'][k]['mean']:.3f} ({row['shots'][k]['min']:.2f}-{row['shots'][k]['max']:.2f})"
                    for k in ks) + " |")
    times = {str(s): per_seed[s]["seconds"].get("total", 0.0) for s in seeds}
    first = per_seed[seeds[0]]
    extras = [name for name, there in (("rationale variant", "fspo+rationale" in first["results"]),
                                       ("GPO", bool(first.get("gpo"))), ("win rates", bool(first.get("win_rates_vs_sft"))))
              if there]
    ceilings = [per_seed[s].get("reading_ceiling", {}) for s in seeds]
    summary_ceiling = {split: spread([c[split] for c in ceilings]) for split in ("heldout", "interpolated")
                       if all(split in c for c in ceilings)}
    if summary_ceiling:
        rows += ["", "A perfect reader of the shots (knows each property a shot's two responses differ on, guesses "
                 "the rest) would reach: " + ", ".join(f"{split} {c['mean']:.3f} ({c['min']:.3f}-{c['max']:.3f})"
                                                       for split, c in summary_ceiling.items()) + "."]
    rows += ["", f"Wall time: {seconds / 60:.1f} min in all"
             + (f", {jobs} seeds at a time" if jobs > 1 else "") + " ("
             + ", ".join(f"seed {s} {t / 60:.1f}" for s, t in times.items()) + "); "
             + (f"{', '.join(extras)} on seed {seeds[0]} only (OUT/seed_{seeds[0]}/table.md)." if extras
                else "no extras (rationale variant, GPO, win rates).")]
    table = "\n".join(rows)
    (out / "study.json").write_text(json.dumps({"plan": plan.__dict__, "seeds": seeds, "seconds": seconds,
                                                "machine": f"{os.cpu_count()} CPUs", "summary": summary,
                                                "reading_ceiling": summary_ceiling,
                                                "per_seed": {str(s): v for s, v in per_seed.items()}}, indent=1))
    (out / "table.md").write_text(table + "\n")
    plot_seeds(summary, plan, out / "accuracy_vs_shots.png")
    print()
    print(table)
    return summary
