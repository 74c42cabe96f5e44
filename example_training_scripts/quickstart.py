"""Quick start: FSPO personalizes to users it never saw, in a few minutes on a CPU, with the project's own commands.

    python example_training_scripts/quickstart.py [--out quickstart_out] [--seed 0]
    bash example_training_scripts/quickstart.sh [OUT_DIR]          (the same, setting up .venv first)

It runs the synthetic-users study's plan DEMO (fspo_recipe/study/plan.py):

  1. ``fspo-synthetic-users``: 24 training users and 8 held-out users, each preferring one pole of one visible
     property of answers (upper or lower case; one or two sentences); both poles of every property are preferred by
     equally many users, so without a user's examples no model can beat chance;
  2. ``fspo-prepare elix``: episodes of one labelled example of the user (a shot) and a new question;
     ``fspo-tiny-assets``: a random 2-layer, dim-64 byte-level llama;
  3. ``fairseq2 lm preference_finetune --preset fspo_sft`` (50 steps), then ``--preset fspo_ipo`` from the SFT
     checkpoint (250 steps, the SFT model as reference), the metrics printed as they are published;
  4. ``fairseq2 lm preference_eval`` on the held-out users, with their shot (1) and without it (0).

and ends with the held-out implicit-reward accuracy at 0 and 1 shots, with 95% intervals. Everything goes to
OUT/{assets,sft,ipo,eval,logs}; OUT/eval holds metrics.json, shots.csv, per_user.csv and accuracy_vs_shots.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

from fspo_recipe.study.plan import DEMO, MODEL, START
from fspo_recipe.study.run import Stages, bin_path, clock, evaluate, make_sources, sh, train

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "quickstart_out", help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the users, the episodes and the model")
    parser.add_argument("--check", action="store_true",
                        help="a few steps on a few pairs: checks that the script runs (CI), not that the model learns")
    args = parser.parse_args(argv)
    plan, out = DEMO, args.out.resolve()
    if args.check:
        plan = dataclasses.replace(DEMO, users_per_pole=1, rows_per_user=12, test_rows_per_user=8, sft_steps=3,
                                   ipo_steps=3, curve_every=3, bootstrap=100)
    assets, sources, logs = out / "assets", out / "sources", out / "logs"
    for d in (assets, sources, out / "sft", out / "ipo", out / "eval"):
        if d.exists():
            shutil.rmtree(d)  # a fresh run every time (fairseq2 would resume old runs)
    logs.mkdir(parents=True, exist_ok=True)

    stages = Stages({
        "data": 6.0,
        "fspo_sft": START + plan.sft_steps * plan.sft_seconds_per_step,
        "fspo_ipo": START + plan.ipo_steps * plan.ipo_seconds_per_step,
        "eval": 2 * START,
    })
    stages.begin("data", "synthetic users, fspo-prepare, the tiny model")
    make_sources(sources, plan, args.seed, log=logs / "users.log")
    sh(bin_path("fspo-prepare"), "elix", "--input", sources / "heldout", "--out", assets, "--name", "syn",
       "--shots", plan.shots, "--split-mode", "source", "--seed", args.seed, "--no-progress",
       log=logs / "prepare.log", echo=False)
    sh(bin_path("fspo-tiny-assets"), assets, "--name", MODEL, "--seed", args.seed, log=logs / "tiny.log", echo=False)
    summary = json.loads((assets / "syn" / "summary.json").read_text())["splits"]
    print(f"      {summary['train']['episodes']} training episodes of {summary['train']['users']} users, "
          f"{summary['test']['episodes']} held-out episodes of {summary['test']['users']} other users")
    stages.end()

    sft, ipo = train(out, assets, "fspo", "syn_train", plan, logs, runs=(out / "sft", out / "ipo"), stages=stages)

    stages.begin("eval", "preference_eval on the held-out users, with and without their shot")
    result = evaluate(out, assets, "eval", "syn_test", plan, logs, policy=ipo, reference=sft, beta=plan.ipo_beta,
                      ablation=True, target=out / "eval", echo=False)
    stages.end()

    print()
    print(f"Held-out users (never seen in training), implicit-reward accuracy [95% CI] on {result['overall']['pairs']}"
          " pairs:")
    print()
    print("| shots in the prompt | accuracy | 95% interval |")
    print("|---|---|---|")
    for k, row in result["shots"].items():
        lo, hi = row["reward_accuracy_ci95"]
        print(f"| {k} | {row['reward_accuracy']:.3f} | [{lo:.3f}, {hi:.3f}] |")
    print()
    print("Without the user's example the model can only guess (about 0.5); with one example it answers as that user"
          " prefers.")
    print(f"plot: {out / 'eval' / 'accuracy_vs_shots.png'}   figures: {out / 'eval' / 'shots.csv'}, metrics.json")
    print(f"quick start done in {clock(time.time() - stages.start)} "
          f"({', '.join(f'{k} {clock(v)}' for k, v in stages.done.items())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
