"""The study's plots: accuracy versus shots and versus IPO step, one seed or every seed."""

from __future__ import annotations

from pathlib import Path

from fspo_recipe.study.plan import Plan

def plot(results: dict[str, dict[str, dict]], plan: Plan, path: Path) -> None:
    """Left: accuracy versus shots (FSPO, FSPO+rationale; baselines dashed). Right: FSPO versus IPO step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_steps) = plt.subplots(1, 2, figsize=(11, 4))
    ks = list(range(plan.shots + 1))
    for variant, style in (("fspo", "-o"), ("fspo+rationale", "-s")):
        for split, color in (("heldout", "tab:blue"), ("interpolated", "tab:orange")):
            m = results.get(variant, {}).get(split)
            if m and len(m["shots"]) == len(ks):
                ax.plot(ks, [m["shots"][str(k)]["reward_accuracy"] for k in ks], style, color=color,
                        alpha=1.0 if variant == "fspo" else 0.5, label=f"{variant}, {split} users")
    for split, color in (("heldout", "tab:blue"), ("interpolated", "tab:orange")):
        ax.axhline(results["baseline"][split]["overall"]["reward_accuracy"], ls="--", color=color,
                   label=f"no-shots baseline, {split}")
    ax.set_xticks(ks)
    ax.set_xlabel("shots in the prompt")
    ax.set_title("Held-out accuracy versus shots")

    curve = results["fspo"]["heldout"].get("steps", {})
    steps = [int(k) for k in curve]
    for key, style, label in (("reward_accuracy", "-o", "implicit reward"), ("policy_accuracy", "-^", "policy only")):
        ax_steps.plot(steps, [m[key] for m in curve.values()], style, color="tab:blue", label=f"FSPO, {label}")
    ax_steps.axhline(results["baseline"]["heldout"]["overall"]["reward_accuracy"], ls="--", color="tab:blue",
                     label="no-shots baseline (implicit reward)")
    ax_steps.set_xlabel("IPO step")
    ax_steps.set_title("FSPO, held-out users, versus IPO step")
    for a in (ax, ax_steps):
        a.axhline(0.5, color="grey", lw=0.8)
        a.set_ylabel("accuracy" if a is ax_steps else "implicit-reward accuracy")
        a.set_ylim(0, 1)
        a.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_seeds(summary: dict[str, dict[str, dict]], plan: Plan, path: Path) -> None:
    """Accuracy versus shots (left) and FSPO's held-out accuracy versus IPO step (right): every seed faint, the
    mean over seeds bold; the no-shots baseline's mean dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_steps) = plt.subplots(1, 2, figsize=(11, 4))
    ks = [str(k) for k in range(plan.shots + 1)]
    for variant, style in (("fspo", "-o"), ("fspo+rationale", "-s")):
        for split, color in (("heldout", "tab:blue"), ("interpolated", "tab:orange")):
            row = summary.get(variant, {}).get(split)
            if not row or not all(k in row["shots"] for k in ks):
                continue
            x = [int(k) for k in ks]
            for i in range(len(row["shots"][ks[0]]["seeds"])):
                ax.plot(x, [row["shots"][k]["seeds"][i] for k in ks], style, color=color, alpha=0.25, lw=1)
            ax.plot(x, [row["shots"][k]["mean"] for k in ks], style, color=color, lw=2.5,
                    label=f"{variant}, {split} users (mean)")
    for split, color in (("heldout", "tab:blue"), ("interpolated", "tab:orange")):
        if "baseline" in summary:
            ax.axhline(summary["baseline"][split]["reward_accuracy"]["mean"], ls="--", color=color,
                       label=f"no-shots baseline, {split} (mean)")
    ax.set_xticks([int(k) for k in ks])
    ax.set_xlabel("shots in the prompt")
    ax.set_title("Held-out accuracy versus shots, every seed")
    curves = summary.get("fspo", {}).get("heldout", {}).get("steps", {})
    series = [sorted((int(k), v) for k, v in c.items()) for c in curves.values() if c]
    for points in series:
        ax_steps.plot([p for p, _ in points], [v for _, v in points], "-o", color="tab:blue", alpha=0.25, lw=1)
    if series and all(len(p) == len(series[0]) for p in series):
        ax_steps.plot([p for p, _ in series[0]], [sum(s[i][1] for s in series) / len(series)
                                                  for i in range(len(series[0]))],
                      "-o", color="tab:blue", lw=2.5, label="FSPO, implicit reward (mean)")
    ax_steps.set_xlabel("IPO step")
    ax_steps.set_title("FSPO, held-out users, versus IPO step")
    for a in (ax, ax_steps):
        a.axhline(0.5, color="grey", lw=0.8)
        a.set_ylabel("implicit-reward accuracy")
        a.set_ylim(0, 1)
        a.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
