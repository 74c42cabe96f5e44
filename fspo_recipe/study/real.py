"""The paper's comparison on a real pretrained chat model: SmolLM2-135M-Instruct on the synthetic users, over seeds.

    python -m fspo_recipe.study --model smollm2 [--out smollm2_study_out] [--seeds 0,1,2] [--quick]

Per seed (OUT/seed_N), with the quick start's users (upper or lower case, one or two sentences; 24 training users,
8 held-out users, and interpolated users who combine a case and a length preference no training user has) and
its episodes of two shots in the model's chat template:

  - **base model, no shots** and **base model, few-shot prompting**: the pretrained model, untrained, given the
    question alone or the user's two labelled examples before it;
  - **base model, oracle persona**: the pretrained model given the user's true description instead of examples
    (the prompt of ``fspo-prepare --rationale teacher_forced --shots 0``);
  - **IPO without shots**: IPO from the model on the same pairs without the user's examples (non-personalized);
  - **FSPO**: IPO from the model on episodes with two shots (also scored with the shots taken away);
  - **FSPO + rationale**: the targets first describe the user, then answer (``--rationale generated``);
  - **GPO on SmolLM2 embeddings**: ``fspo-gpo`` on the mean hidden state of the frozen pretrained model.

Every row without shots or with the persona is scored on the FSPO test episodes' own queries, re-rendered
(:func:`derive_test`), so all rows answer the same questions of the same users. Accuracies on held-out and
interpolated users: policy accuracy (the summed log-probability of the chosen answer
above the rejected's; every row has it) and, for the trained rows, implicit-reward accuracy (against the pretrained
model as reference). Win rates: three answers per held-out user from each system, judged against the base model's
few-shot answers by each user's hidden preference (``fspo-judge --judge exact``). OUT gets table.md and study.json:
mean, min-max and a 95% interval over seeds and pairs. The rationale variant is not judged (its answers begin with
a description, which the exact judge would read as the answer).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from fspo_recipe.study.plan import Plan
from fspo_recipe.study.report import by_property, seeds_and_pairs_interval, spread
from fspo_recipe.study.run import bin_path, clock, evaluate, generate, gpo_row, ipo_from_model, make_sources, sh

SPLITS = (("heldout", ""), ("interpolated", "int"))

# Data sets of a seed prepared by fspo-prepare: name -> (shots, --rationale). The test episodes without shots and
# with the oracle persona are made from `syn`'s (derive_test), so that every judged system answers the same ids.
DATASETS = {"syn": (None, "none"), "syn0": (0, "none"), "synrat": (None, "generated")}

# Rows of the table: (label, evaluation directory of the seed, shots entry of its metrics or None for overall,
# whether it has a reference (implicit reward)).
ROWS = (
    ("base model, no shots", "base", "0", False),
    ("base model, few-shot prompting", "base", None, False),
    ("base model, oracle persona", "persona", None, False),
    ("IPO without shots", "ipo0", None, True),
    ("FSPO, shots removed at test", "fspo", "0", True),
    ("FSPO", "fspo", None, True),
    ("FSPO + rationale", "fspo_rationale", None, True),
)

# Systems whose held-out answers are judged, and the one they are judged against.
JUDGED = {"fspo": "FSPO", "ipo0": "IPO without shots", "persona": "base model, oracle persona"}
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

    runs = {"ipo0": ("syn0", out / "runs" / "ipo0"), "fspo": ("syn", out / "runs" / "fspo"),
            "fspo_rationale": ("synrat", out / "runs" / "fspo_rationale")}
    for key, (data, run) in runs.items():
        stage(f"fspo_ipo from {model} on {data}_train: {plan.ipo_steps} steps of {plan.batch_size} pairs")
        t0 = time.time()
        ipo_from_model(run, assets, f"{data}_train", plan, logs, model, publish_every=10)
        times[f"train {key}"] = time.time() - t0

    # Evaluations: (directory key, test set of each split, trained run or None for the base model, shots ablation).
    def cards(name: str) -> dict[str, str]:
        return {split: f"{name}{suffix}_test" for split, suffix in SPLITS}

    def files(name: str) -> dict[str, str]:
        return {split: str(derived / f"{name}{suffix}_test.jsonl") for split, suffix in SPLITS}

    evaluations = [("base", cards("syn"), None, True), ("persona", files("synper"), None, False),
                   ("ipo0", files("syn0"), runs["ipo0"][1], False), ("fspo", cards("syn"), runs["fspo"][1], True),
                   ("fspo_rationale", cards("synrat"), runs["fspo_rationale"][1], False)]
    results: dict[str, dict[str, dict]] = {}
    t0 = time.time()
    for key, data, run, ablation in evaluations:
        for split, _ in SPLITS:
            stage(f"preference_eval: {key} on the {split} users")
            answers = split == "heldout" and (key in JUDGED or key == BASELINE)
            extra = ["chat_template=true", *(["shots=[0]"] if ablation else [])]
            if answers:
                extra += [*generate(plan), "generation.greedy=true", f"generation.system={key}"]
            results.setdefault(key, {})[split] = evaluate(
                out, assets, f"{key}_{split}", data[split], plan, logs, policy=run, reference=None,
                beta=plan.ipo_beta, ablation=ablation, echo=False, extra=tuple(extra), model=model,
                policy_only=run is None)
    times["eval"] = time.time() - t0

    stage("fspo-judge --judge exact: each system's answers against the base model's few-shot answers")
    t0 = time.time()
    judged = out / "judge"
    generations = [f"{key}={out / 'eval' / f'{key}_heldout' / 'generations.jsonl'}" for key in (BASELINE, *JUDGED)]
    sh(bin_path("fspo-judge"), judged, "--generations", *generations, "--baseline", BASELINE, "--judge", "exact",
       "--bootstrap", plan.bootstrap, "--no-progress", log=logs / "judge.log", echo=False)
    wins = {key: json.loads((judged / "win_rates.json").read_text())["systems"][key]["overall"] for key in JUDGED}
    times["judge"] = time.time() - t0

    stage("GPO on the frozen model's embeddings")
    t0 = time.time()
    gpo = gpo_row(out, assets, plan, logs, "untrained", ["--model", model], echo=False)
    times["gpo"] = time.time() - t0
    times["total"] = time.time() - start
    summary = {"seed": seed, "model": model, "results": results, "win_rates": wins, "gpo": gpo, "seconds": times}
    (out / "seed.json").write_text(json.dumps(summary, indent=1) + "\n")
    stage(f"seed {seed} done in {clock(times['total'])}")
    return summary


def derive_test(source: Path, target: Path, *, persona: bool) -> None:
    """``source``'s test episodes with the same ids, users, questions and answers, their prompts rendered without
    shots: the plain question, or with ``persona`` the question and the user's description (the teacher-forced
    template of ``fspo-prepare --rationale teacher_forced``)."""
    from fspo_recipe.data.episodes import PromptParts
    from fspo_recipe.files import atomic_file

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
    import csv

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
            if split == "heldout" and key in JUDGED and shots is None:
                cells["win_rate"] = spread([per_seed[s]["win_rates"][key]["win_rate"] for s in seeds])
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
             "| interpolated: implicit reward | held-out win rate vs few-shot base, exact judge |",
             "|---|---|---|---|---|---|"]
    for label, splits in table.items():
        h, i = splits["heldout"], splits["interpolated"]
        if "accuracy" in h:  # GPO scores a pair with its own head: one accuracy
            lines.append(f"| {label} | {cell(h['accuracy'])} | n/a | {cell(i['accuracy'])} | n/a | |")
            continue
        win = h.get("win_rate")
        lines.append(f"| {label} | {cell(h['policy_accuracy'])} | {cell(h.get('reward_accuracy'))} "
                     f"| {cell(i['policy_accuracy'])} | {cell(i.get('reward_accuracy'))} "
                     f"| {cell(win) if win else ''} |")
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
              "model's rows have no reference, hence no implicit reward; win rates: 0.5 is a tie with the base model.",
              f"Pairs per seed: held-out {pairs['heldout']}, interpolated {pairs['interpolated']}; "
              f"{plan.ipo_steps} IPO steps of {plan.batch_size} pairs (lr {plan.ipo_lr}, beta {plan.ipo_beta}); "
              f"wall time {clock(seconds)} ({', '.join(clock(t) for t in times)} per seed)."]
    lines += lines_poles
    text = "\n".join(lines)
    print("\n" + text)
    (out / "table.md").write_text(text + "\n")
    summary = {"seeds": seeds, "plan": {k: v for k, v in vars(plan).items()}, "table": table, "seconds": seconds,
               "by_pole": {k: {pole: spread(v) for pole, v in d.items()} for k, d in poles.items()},
               "per_seed": per_seed}
    (out / "study.json").write_text(json.dumps(summary, indent=1, default=list) + "\n")
    return summary


def main_real(out: Path, plan: Plan, seeds: list[int], cache: Path | None = None) -> int:
    """``--model smollm2``: fetch the model, run every seed, summarize."""
    from fspo_recipe.models.smollm2 import SMOLLM2_NAME, fetch_smollm2

    cards = fetch_smollm2(cache, say=lambda line: print(f"  {line}"))
    os.environ["FAIRSEQ2_USER_ASSET_DIR"] = str(cards)  # the model's card; the data's go in extra_path
    start = time.time()
    for i, seed in enumerate(seeds):
        print(f"\n=== seed {seed} ({i + 1} of {len(seeds)}) ===", flush=True)
        run_real_seed(out / f"seed_{seed}", plan, seed, SMOLLM2_NAME)
    summarize(out, plan, seeds, time.time() - start)
    return 0


