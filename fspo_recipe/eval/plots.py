"""PNG plots of an evaluation: accuracy per user, versus the number of shots, versus the training step."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _curve(plt, xs: list[Any], rows: list[Mapping[str, Any]], xlabel: str, title: str, path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("reward_accuracy", "implicit reward"), ("policy_accuracy", "policy only"),
                       ("policy_accuracy_normalized", "policy only, per token")):
        ys = [r[key] for r in rows]
        ax.plot(xs, ys, marker="o", label=label)
        ci = [r.get(f"{key}_ci95") for r in rows]
        if all(c is not None for c in ci):
            ax.fill_between(xs, [c[0] for c in ci], [c[1] for c in ci], alpha=0.15)
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy on held-out pairs")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_all(result: Mapping[str, Any], out: Path) -> list[Path]:
    """Write ``accuracy_per_user.png``, ``accuracy_vs_shots.png`` and ``accuracy_vs_step.png`` (when there is data)."""
    plt = _figure()
    written = []

    users = sorted(result["per_user"])
    if users:
        fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(users) + 2), 4))
        xs = range(len(users))
        width = 0.4
        ax.bar([x - width / 2 for x in xs], [result["per_user"][u]["reward_accuracy"] for u in users], width,
               label="implicit reward")
        ax.bar([x + width / 2 for x in xs], [result["per_user"][u]["policy_accuracy"] for u in users], width,
               label="policy only")
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_xticks(list(xs), users, rotation=45 if len(users) > 4 else 0, ha="right" if len(users) > 4 else "center")
        ax.set_ylim(0.0, 1.0)
        ax.set_ylabel("accuracy")
        ax.set_title(f"Accuracy per held-out user ({result['model']})")
        ax.legend(loc="lower right")
        fig.tight_layout()
        path = out / "accuracy_per_user.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    for key, xlabel, title, name in (
        ("shots", "shots in the prompt", "Accuracy versus number of shots", "accuracy_vs_shots.png"),
        ("steps", "training step", "Accuracy versus training step", "accuracy_vs_step.png"),
    ):
        if result[key]:
            xs = sorted(result[key], key=int)
            _curve(plt, [int(x) for x in xs], [result[key][x] for x in xs], xlabel, title, out / name)
            written.append(out / name)
    return written
