"""The paper's comparison on a real pretrained chat model: SmolLM2-135M-Instruct on the synthetic users, over seeds.

    python -m fspo_recipe.study --model smollm2 [--out smollm2_study_out] [--seeds 0,1,2] [--quick]

Per seed (OUT/seed_N), with the quick start's users (upper or lower case, one or two sentences; 24 training users,
8 held-out users, and interpolated users who combine a case and a length preference no training user has) and
its episodes of two shots in the model's chat template:

  - **base model, no shots** and **base model, few-shot prompting**: the pretrained model, untrained, given the
    question alone or the user's two labelled examples before it;
  - **base model, oracle persona**: the pretrained model given the user's true description instead of examples
    (the prompt of ``fspo-prepare --rationale teacher_forced --shots 0``);
  - **IPO without shots**: the paper's two stages (SFT, then IPO from it) on the same pairs without the user's
    examples (non-personalized);
  - **FSPO, SFT only**: stage 1 on the episodes' preferred answers;
  - **FSPO (SFT, then IPO)**: the paper's recipe, the SFT model the reference (also scored with the shots taken
    away);
  - **FSPO (SFT, then IPO + NLL)**: stage 2 with the ``rpo`` criterion (IPO plus the chosen answer's NLL);
  - **FSPO + rationale**: both stages with targets that first describe the user, then answer
    (``--rationale generated``), its answer judged after its description;
  - **GPO on SmolLM2 embeddings**: ``fspo-gpo`` on the mean hidden state of the frozen pretrained model.

Every row without shots or with the persona is scored on the FSPO test episodes' own queries, re-rendered
(:func:`derive_test`), so all rows answer the same questions of the same users. Accuracies on held-out and
interpolated users: policy accuracy (the summed log-probability of the chosen answer above the rejected's; every row
has it) and, for the trained rows, implicit-reward accuracy (against the run's SFT model; for the SFT row against the
pretrained model). Answers: every system answers the same questions of the held-out and of the interpolated users
(greedy), judged against the base model's few-shot answers by each user's hidden preference (``fspo-judge --judge
exact``), with the shares of answers that follow the user (both poles for an interpolated user), end by themselves,
are clean of template text and loop (:mod:`fspo_recipe.judge.answers`). OUT gets table.md and study.json: mean,
min-max and a 95% interval over seeds and pairs.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

from fspo_recipe.data.episodes import PromptParts
from fspo_recipe.files import atomic_file
from fspo_recipe.models.smollm2 import SMOLLM2_NAME, fetch_smollm2
from fspo_recipe.study.plan import Plan
from fspo_recipe.study.report import by_property, seeds_and_pairs_interval, spread
from fspo_recipe.study.run import (bin_path, clock, evaluate, generate, gpo_row, make_sources, preference_stage, sh,
                                   sft_stage)

SPLITS = (("heldout", ""), ("interpolated", "int"))

# Data sets of a seed prepared by fspo-prepare: name -> (shots, --rationale). The test episodes without shots and
# with the oracle persona are made from `syn`'s (derive_test), so that every judged system answers the same ids.
DATASETS = {"syn": (None, "none"), "syn0": (0, "none"), "synrat": (None, "generated")}

# Training runs of a seed: key -> (training data set, the SFT run it starts from or None for an SFT run itself, the
# NLL weight of stage 2: 0.0 plain IPO, None the plan's ``nll_alpha`` (the rpo criterion)). The other trained rows
# take the plan's stage 2, so that they differ from FSPO only in their data.
RUNS: dict[str, tuple[str, str | None, float | None]] = {
    "sft": ("syn", None, None),
    "fspo": ("syn", "sft", 0.0),
    "fspo_nll": ("syn", "sft", None),
    "sft0": ("syn0", None, None),
    "ipo0": ("syn0", "sft0", None),
    "sftrat": ("synrat", None, None),
    "fspo_rationale": ("synrat", "sftrat", None),
}

# Rows of the table: (label, evaluation directory of the seed, shots entry of its metrics or None for overall,
# whether it has a reference (implicit reward)).
ROWS = (
    ("base model, no shots", "base", "0", False),
    ("base model, few-shot prompting", "base", None, False),
    ("base model, oracle persona", "persona", None, False),
    ("IPO without shots (SFT, then IPO)", "ipo0", None, True),
    ("FSPO, SFT only", "sft", None, True),
    ("FSPO (SFT, then IPO), shots removed at test", "fspo", "0", True),
    ("FSPO (SFT, then IPO)", "fspo", None, True),
    ("FSPO (SFT, then IPO + NLL)", "fspo_nll", None, True),
    ("FSPO + rationale", "fspo_rationale", None, True),
)

# Systems whose answers are judged, and the one they are judged against.
JUDGED = {"sft": "FSPO, SFT only", "fspo": "FSPO (SFT, then IPO)", "fspo_nll": "FSPO (SFT, then IPO + NLL)",
          "ipo0": "IPO without shots", "persona": "base model, oracle persona", "fspo_rationale": "FSPO + rationale"}
BASELINE = "base"


def run_real_seed(out: Path, plan: Plan, seed: int, model: str) -> dict:
    """Every row for one seed into OUT (sources, assets, runs, eval, judge, gpo); returns and writes OUT/seed.json."""
    assets, sources, logs = out / "assets", out / "sources", out / "logs"
    for d in (assets, sources, out / "runs", out / "eval", out / "judge", out / "gpo"):
        if d.exists():
            shutil.rmtree(d)
    logs.mkdir(parents=True, exist_ok=True)
    start, times = time.time(), {}

    def stage(what: str) -> None:
        print(f"  {what}  (elapsed {clock(time.time() - start)})", flush=True)

    stage("users and episodes")
    make_sources(sources, plan, seed, log=logs / "users.log")
    for name, (shots, rationale) in DATASETS.items():
        for split, suffix in SPLITS:
            sh(bin_path("fspo-prepare"), "elix", "--input", sources / split, "--out", assets, "--name",
               f"{name}{suffix}", "--shots", plan.shots if shots is None else shots, "--rationale", rationale,
               "--split-mode", "source", "--seed", seed, "--no-progress", log=logs / f"prepare_{name}{suffix}.log",
               echo=False)
    times["data"] = time.time() - start

    derived = assets / "derived"
    for suffix in ("", "int"):
        for variant in ("syn0", "synper"):
            derive_test(assets / f"syn{suffix}" / "test.jsonl", derived / f"{variant}{suffix}_test.jsonl",
                        persona=variant == "synper")

    runs = {key: out / "runs" / key for key in RUNS}
    for key, (data, sft, alpha) in RUNS.items():
        t0 = time.time()
        if sft is None:
            stage(f"fspo_sft of {model} on {data}_train: {plan.sft_steps} steps of {plan.batch_size} pairs")
            sft_stage(runs[key], assets, f"{data}_train", plan, logs, model=model, chat_template=True)
        else:
            weight = plan.nll_alpha if alpha is None else alpha
            loss = f"rpo, IPO + {weight:g} x NLL" if weight else "IPO"
            stage(f"fspo_ipo ({loss}) from {sft} on {data}_train: {plan.ipo_steps} steps of {plan.batch_size} pairs")
            preference_stage(runs[key], runs[sft], assets, f"{data}_train", plan, logs, chat_template=True,
                             nll_alpha=alpha)
        times[f"train {key}"] = time.time() - t0

    # Evaluations: (key, test set of each split, trained run or None for the base model, its reference run or None
    # for the base model, shots ablation).
    def cards(name: str) -> dict[str, str]:
        return {split: f"{name}{suffix}_test" for split, suffix in SPLITS}

    def files(name: str) -> dict[str, str]:
        return {split: str(derived / f"{name}{suffix}_test.jsonl") for split, suffix in SPLITS}

    evaluations = [("base", cards("syn"), None, None, True), ("persona", files("synper"), None, None, False),
                   ("ipo0", files("syn0"), runs["ipo0"], runs["sft0"], False),
                   ("sft", cards("syn"), runs["sft"], None, False),
                   ("fspo", cards("syn"), runs["fspo"], runs["sft"], True),
                   ("fspo_nll", cards("syn"), runs["fspo_nll"], runs["sft"], False),
                   ("fspo_rationale", cards("synrat"), runs["fspo_rationale"], runs["sftrat"], False)]
    results: dict[str, dict[str, dict]] = {}
    t0 = time.time()
    for key, data, run, reference, ablation in evaluations:
        for split, _ in SPLITS:
            stage(f"preference_eval: {key} on the {split} users, and its answers")
            extra = ["chat_template=true", *(["shots=[0]"] if ablation else []), *generate(plan),
                     "generation.greedy=true", f"generation.system={key}"]
            results.setdefault(key, {})[split] = evaluate(
                out, assets, f"{key}_{split}", data[split], plan, logs, policy=run, reference=reference,
                beta=plan.ipo_beta, ablation=ablation, echo=False, extra=tuple(extra), model=model,
                policy_only=run is None)
    times["eval"] = time.time() - t0

    stage("fspo-judge --judge exact: each system's answers against the base model's few-shot answers")
    t0 = time.time()
    wins: dict[str, dict[str, dict]] = {}
    answers: dict[str, dict[str, dict]] = {}
    for split, _ in SPLITS:
        judged = out / "judge" / split
        generations = [f"{key}={out / 'eval' / f'{key}_{split}' / 'generations.jsonl'}" for key in (BASELINE, *JUDGED)]
        sh(bin_path("fspo-judge"), judged, "--generations", *generations, "--baseline", BASELINE, "--judge", "exact",
           "--bootstrap", plan.bootstrap, "--no-progress", log=logs / f"judge_{split}.log", echo=False)
        verdicts = json.loads((judged / "win_rates.json").read_text())
        wins[split] = {key: verdicts["systems"][key]["overall"] for key in JUDGED}
        answers[split] = verdicts["answers"]
    times["judge"] = time.time() - t0

    stage("GPO on the frozen model's embeddings")
    t0 = time.time()
    gpo = gpo_row(out, assets, plan, logs, "untrained", ["--model", model], echo=False)
    times["gpo"] = time.time() - t0
    times["total"] = time.time() - start
    summary = {"seed": seed, "model": model, "results": results, "win_rates": wins, "answers": answers, "gpo": gpo,
               "seconds": times}
    (out / "seed.json").write_text(json.dumps(summary, indent=1) + "\n")
    stage(f"seed {seed} done in {clock(times['total'])}")
    return summary


def derive_test(source: Path, target: Path, *, persona: bool) -> None:
    """``source``'s test episodes with the same ids, users, questions and answers, their prompts rendered without
    shots: the plain question, or with ``persona`` the question and the user's description (the teacher-forced
    template of ``fspo-prepare --rationale teacher_forced``)."""
    lines = []
    for lineno, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        record = json.loads(line)
        description = record.get("user_description")
        if persona and not isinstance(description, str):
            raise SystemExit(f"study: {source}, line {lineno}: field 'user_description' is missing (the persona).")
        parts = PromptParts.from_record(record["episode"])
        parts = PromptParts((), parts.question, parts.include_dispreferred, False, description if persona else None)
        record.update(src=parts.render(), episode=parts.to_record(), num_shots=0, shot_row_ids=[])
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(target) as fp:
        fp.write("".join(lines))


def pair_outcomes(seed_dir: Path, key: str, split: str, column: str) -> list[float]:
    """Per-pair outcomes (1 right, 0 wrong) of one evaluation of a seed (its ``pairs.csv``: the data's prompts)."""
    with (seed_dir / "eval" / f"{key}_{split}" / "pairs.csv").open(newline="") as fp:
        return [float(row[column]) for row in csv.DictReader(fp)]


def summarize(out: Path, plan: Plan, seeds: list[int], seconds: float) -> dict:
    """OUT/study.json and OUT/table.md over the seeds' OUT/seed_N/seed.json; prints the table."""
    per_seed = {s: json.loads((out / f"seed_{s}" / "seed.json").read_text()) for s in seeds}

    def stat(values: list[float], outcomes: list[list[float]]) -> dict:
        interval = seeds_and_pairs_interval(outcomes, plan.bootstrap) if outcomes else None
        return {**spread(values), "ci95": interval}

    table: dict[str, dict[str, dict]] = {}
    for label, key, shots, has_reference in ROWS:
        for split, _ in SPLITS:
            cells = {}
            for metric in ("policy_accuracy", "reward_accuracy"):
                if metric == "reward_accuracy" and not has_reference:
                    continue
                values = []
                for s in seeds:
                    m = per_seed[s]["results"][key][split]
                    values.append((m["overall"] if shots is None else m["shots"][shots])[metric])
                # The shots ablation keeps aggregates only: its rows get the spread over seeds, no interval.
                outcomes = [] if shots is not None else [pair_outcomes(out / f"seed_{s}", key, split, metric)
                                                         for s in seeds]
                cells[metric] = stat(values, outcomes)
            if key in JUDGED and shots is None:
                cells["win_rate"] = spread([per_seed[s]["win_rates"][split][key]["win_rate"] for s in seeds])
            table.setdefault(label, {})[split] = cells
    for split, _ in SPLITS:
        values = [per_seed[s]["gpo"][split]["overall"]["accuracy"] for s in seeds]
        table.setdefault("GPO on SmolLM2 embeddings", {})[split] = {"accuracy": spread(values)}

    def cell(x: dict | None) -> str:
        if x is None:
            return "n/a"
        text = f"{x['mean']:.3f} ({x['min']:.2f}-{x['max']:.2f})"
        return text + (f" [{x['ci95'][0]:.2f}, {x['ci95'][1]:.2f}]" if x.get("ci95") else "")

    lines = [f"SmolLM2-135M-Instruct, seeds {', '.join(map(str, seeds))}: mean (min-max over seeds) [95% interval "
             "over seeds and pairs]", "",
             "| system | held-out: policy accuracy | held-out: implicit reward | interpolated: policy accuracy "
             "| interpolated: implicit reward |",
             "|---|---|---|---|---|"]
    for label, splits in table.items():
        h, i = splits["heldout"], splits["interpolated"]
        if "accuracy" in h:  # GPO scores a pair with its own head: one accuracy
            lines.append(f"| {label} | {cell(h['accuracy'])} | n/a | {cell(i['accuracy'])} | n/a |")
            continue
        lines.append(f"| {label} | {cell(h['policy_accuracy'])} | {cell(h.get('reward_accuracy'))} "
                     f"| {cell(i['policy_accuracy'])} | {cell(i.get('reward_accuracy'))} |")
    # What the real model reads: FSPO's held-out accuracy by the pole each user prefers (a pole read from the shots
    # is right for its users; a bias toward one pole is right for one pole's users and wrong for the other's).
    poles: dict[str, dict[str, list[float]]] = {}
    for key in ("fspo", "ipo0"):
        for s in seeds:
            for pole, value in by_property(per_seed[s]["results"][key]["heldout"]["per_user"], poles=True).items():
                poles.setdefault(key, {}).setdefault(pole, []).append(value)
    lines_poles = ["", "Held-out implicit-reward accuracy by the pole the user prefers (mean over seeds, min-max):", "",
                   "| pole | FSPO | IPO without shots |", "|---|---|---|"]
    for pole in sorted(poles.get("fspo", {})):
        cells = [poles[k].get(pole) for k in ("fspo", "ipo0")]
        lines_poles.append(f"| {pole} | " + " | ".join(
            "n/a" if not v else f"{sum(v) / len(v):.3f} ({min(v):.2f}-{max(v):.2f})" for v in cells) + " |")
    pairs = {split: [per_seed[s]["results"]["fspo"][split]["overall"]["pairs"] for s in seeds] for split, _ in SPLITS}
    times = [per_seed[s]["seconds"]["total"] for s in seeds]
    lines += ["", "GPO's figure is its own preference head's accuracy on the pair (it has no policy); the base "
              "model's rows have no reference, hence no implicit reward (the trained rows' reference is their SFT "
              "model; the SFT row's the base model).",
              f"Pairs per seed: held-out {pairs['heldout']}, interpolated {pairs['interpolated']}; "
              f"{plan.sft_steps} SFT steps (lr {plan.sft_lr}), then {plan.ipo_steps} IPO steps (lr {plan.ipo_lr}, "
              f"beta {plan.ipo_beta}; + NLL row: alpha {plan.nll_alpha}) of {plan.batch_size} pairs; "
              f"wall time {clock(seconds)} ({', '.join(clock(t) for t in times)} per seed)."]
    lines += lines_poles
    answers = answer_summary(per_seed, seeds)
    lines += answer_lines(answers, plan)
    text = "\n".join(lines)
    print("\n" + text)
    (out / "table.md").write_text(text + "\n")
    summary = {"seeds": seeds, "plan": {k: v for k, v in vars(plan).items()}, "table": table, "seconds": seconds,
               "by_pole": {k: {pole: spread(v) for pole, v in d.items()} for k, d in poles.items()},
               "answers": answers, "per_seed": per_seed}
    (out / "study.json").write_text(json.dumps(summary, indent=1, default=list) + "\n")
    return summary


ANSWER_FIGURES = ("follows", "clean", "ended", "loops")


def answer_summary(per_seed: dict[int, dict], seeds: list[int]) -> dict[str, dict[str, dict[str, dict]]]:
    """{split: {system: {figure: spread over seeds}}} of the answers' shares (:data:`ANSWER_FIGURES`, and every
    ``follows_<pole>``) and of the win rates against the base model's few-shot answers."""
    out: dict[str, dict[str, dict[str, dict]]] = {}
    for split, _ in SPLITS:
        for system in (BASELINE, *JUDGED):
            figures = [per_seed[s]["answers"][split][system] for s in seeds]
            names = [f for f in figures[0] if all(f in x for x in figures)]
            row = {f: spread([x[f]["share"] for x in figures]) for f in names}
            if system in JUDGED:
                row["win_rate"] = spread([per_seed[s]["win_rates"][split][system]["win_rate"] for s in seeds])
            out.setdefault(split, {})[system] = row
    return out


def answer_lines(answers: dict[str, dict[str, dict[str, dict]]], plan: Plan) -> list[str]:
    """The answers' table: per system and split, the shares of answers that follow the user, are clean, end and
    loop, and the win rate against the base model's few-shot answers (mean over seeds, min-max)."""
    labels = {BASELINE: "base model, few-shot prompting", **JUDGED}

    def cell(x: dict | None) -> str:
        return "n/a" if x is None else f"{x['mean']:.2f} ({x['min']:.2f}-{x['max']:.2f})"

    lines = ["", f"Answers (greedy, at most {plan.generate_tokens} tokens; mean over seeds, min-max): the share that "
             "follows the user (has every pole it prefers: both for an interpolated user), is clean of template text, "
             "ends by itself, loops; the exact judge's win rate against the base model's few-shot answers.", "",
             "| system | held-out: follows | clean | ends | loops | win rate | interpolated: follows | clean "
             "| win rate |", "|---|---|---|---|---|---|---|---|---|"]
    for system, label in labels.items():
        h, i = answers["heldout"][system], answers["interpolated"][system]
        lines.append(f"| {label} | " + " | ".join(cell(h.get(f)) for f in (*ANSWER_FIGURES, "win_rate")) + " | "
                     + " | ".join(cell(i.get(f)) for f in ("follows", "clean", "win_rate")) + " |")
    return lines


def main_real(out: Path, plan: Plan, seeds: list[int], cache: Path | None = None) -> int:
    """``--model smollm2``: fetch the model, run every seed, summarize."""
    cards = fetch_smollm2(cache, say=lambda line: print(f"  {line}"))
    os.environ["FAIRSEQ2_USER_ASSET_DIR"] = str(cards)  # the model's card; the data's go in extra_path
    start = time.time()
    for i, seed in enumerate(seeds):
        print(f"\n=== seed {seed} ({i + 1} of {len(seeds)}) ===", flush=True)
        run_real_seed(out / f"seed_{seed}", plan, seed, SMOLLM2_NAME)
    summarize(out, plan, seeds, time.time() - start)
    return 0


