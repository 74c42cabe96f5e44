"""Does it personalize? FSPO versus non-personalized training on synthetic users, end to end, on a CPU.

    python -m fspo_recipe.study [--out synthetic_study_out] [--quick] [--seeds 0,1,2]
    bash example_training_scripts/synthetic_study.sh [--quick]          (the same, setting up .venv first)

With several seeds (the default 0,1,2; ``--quick``: 0) each seed's whole study goes to OUT/seed_N (its own users,
model initialization and data order), the baseline and FSPO on every seed, the extras (GPO, win rates; the rationale
variant only with ``--rationale``) on the first; OUT then gets the summary over seeds: mean, min-max and a 95%
interval over seeds and pairs. ``--jobs N`` runs N seeds side by side.

Every stage is one of the project's own commands, run as a user runs it:

  1. ``fspo-synthetic-users``: users with a hidden preference over visible byte-level properties of responses
     (case, length, mood, ending; see fspo_recipe/data/synthetic.py), balanced so that pooled over users every
     property wins half of the pairs; training users, held-out users (other people with the same kinds of taste)
     and interpolated users (a combination of two properties no training user has).
  2. ``fspo-prepare elix``: episodes with N shots, with 0 shots (the baseline) and with a rationale.
  3. ``fspo-tiny-assets``: a tiny random llama, its tokenizer the bytes plus BPE tokens learned from the training
     episodes (each of the data's words one token).
  4. ``fairseq2 lm preference_finetune``: for each variant, stage 1 ``fspo_sft`` (chosen responses only), then
     stage 2 ``fspo_ipo`` from the SFT checkpoint with the SFT model as reference:
       - baseline: the same preference pairs without shots (non-personalized);
       - fspo: N shots;
       - fspo+rationale: N shots, the targets first describe the user.
  5. ``fairseq2 lm preference_eval`` on held-out and interpolated users (shots ablation 0..N for FSPO; FSPO's
     held-out users also at every IPO checkpoint), and on the untrained model.

It prints a table of held-out accuracies (implicit reward, and policy-only: summed log-prob of chosen above
rejected), FSPO's accuracy and preferred-response loss by number of shots, accuracy by the property each held-out
user cares about, and FSPO's accuracy by IPO step; writes ``OUT/study.json``, ``OUT/table.md`` and
``OUT/accuracy_vs_shots.png`` (versus shots, and versus IPO step). ``--quick`` is the few-minute CI variant (tiny
data, a few steps, no rationale variant): it checks the pipeline, not the learning.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fspo_recipe.study.plan import FULL, QUICK, SMOLLM2_QUICK, SMOLLM2_STUDY
from fspo_recipe.study.real import main_real
from fspo_recipe.study.report import aggregate
from fspo_recipe.study.run import add_gpo, clock, run_seed


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got '{text}'") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got '{text}'")
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: synthetic_study_out, with --model smollm2 smollm2_study_out, "
                        "in the current directory)")
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny",
                        help="tiny: a random byte-level llama trained with SFT then IPO (default); smollm2: the "
                        "paper's rows on SmolLM2-135M-Instruct (fspo_recipe/study/real.py)")
    parser.add_argument("--cache", type=Path, default=None, help="--model smollm2: where fspo-fetch-smollm2 keeps it")
    parser.add_argument("--quick", action="store_true", help="the few-minute CI variant (checks the pipeline only)")
    parser.add_argument("--seeds", type=parse_seeds, default=None,
                        help="seeds of the users and the models, e.g. 0,1,2 (default: 0,1,2; --quick: 0); several "
                        "seeds go to OUT/seed_N and OUT gets their summary")
    parser.add_argument("--seed", type=int, default=None, help="one seed (the same as --seeds N)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds trained at once, each in its own process with cores/JOBS threads, output in "
                        "OUT/logs/seed_N.log (default: 1, one after the other; for machines with more cores than a "
                        "tiny model's step uses: on the 2-core machine two single-threaded seeds side by side train "
                        "about as fast as one after the other with two threads)")
    parser.add_argument("--rationale", action=argparse.BooleanOptionalAction, default=None,
                        help="train and evaluate the rationale variant on the first seed (default: in a one-seed "
                        "study only; in a multi-seed study it would take the study over its 2-hour budget)")
    parser.add_argument("--no-extras", action="store_true",
                        help="baseline and FSPO only, also on the first seed (no rationale variant, GPO, win rates)")
    parser.add_argument("--add-gpo", action="store_true",
                        help="run only the GPO stage on the finished one-seed study in --out and write its report "
                        "again")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = (args.out or Path("smollm2_study_out" if args.model == "smollm2" else "synthetic_study_out")).resolve()
    if args.model == "smollm2":
        if args.add_gpo or args.jobs != 1 or args.rationale is not None or args.no_extras:
            parser.error("--model smollm2 runs every row on every seed, one seed after the other: no --add-gpo, "
                         "--jobs, --rationale or --no-extras")
        seeds = [args.seed] if args.seed is not None else args.seeds or ([0] if args.quick else [0, 1, 2])
        return main_real(out, SMOLLM2_QUICK if args.quick else SMOLLM2_STUDY, seeds, args.cache)
    if args.add_gpo:
        return add_gpo(out, plan)
    if args.seed is not None and args.seeds is not None:
        parser.error("give --seed or --seeds, not both")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    seeds = [args.seed] if args.seed is not None else args.seeds or ([0] if args.quick else [0, 1, 2])
    rationale = args.rationale if args.rationale is not None else len(seeds) == 1
    plan = dataclasses.replace(plan, rationale=plan.rationale and rationale and not args.no_extras)
    if len(seeds) == 1:
        run_seed(out, plan, seeds[0], first=not args.no_extras)
        return 0
    start = time.time()
    if args.jobs > 1:
        def command(seed: int, first: bool) -> list[str]:
            extras = ["--rationale" if plan.rationale else "--no-rationale"] if first and not args.no_extras \
                else ["--no-extras"]
            return [sys.executable, "-m", "fspo_recipe.study", "--out", str(out / f"seed_{seed}"), "--seed", str(seed),
                    *(["--quick"] if args.quick else []), *extras]

        run_in_parallel(out, seeds, args.jobs, command)
    else:
        for i, seed in enumerate(seeds):
            print(f"\n=== seed {seed} ({i + 1} of {len(seeds)}) ===", flush=True)
            run_seed(out / f"seed_{seed}", plan, seed, first=i == 0 and not args.no_extras)
    aggregate(out, plan, seeds, seconds=time.time() - start, jobs=args.jobs)
    return 0


def run_in_parallel(out: Path, seeds: list[int], jobs: int, command: Callable[[int, bool], list[str]]) -> None:
    """Run ``command(seed, first)`` for every seed, each in its own process, at most ``jobs`` at once, each with
    ``cores // jobs`` threads; the first seed (the one with the extras, the longest) starts first. Output goes to
    OUT/logs/seed_N.log; a failing seed stops the others and the study, with the end of its log."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    waiting = list(enumerate(seeds))
    running: dict[int, tuple[subprocess.Popen, Path, float]] = {}
    start = time.time()
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                i, seed = waiting.pop(0)
                log = out / "logs" / f"seed_{seed}.log"
                env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
                with log.open("w") as fp:  # a session of its own: stopping it stops its fairseq2 commands too
                    proc = subprocess.Popen(command(seed, i == 0), stdout=fp, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
                running[seed] = (proc, log, time.time())
                print(f"seed {seed}: started ({threads} threads; output in {log})  "
                      f"(elapsed {clock(time.time() - start)})", flush=True)
            time.sleep(0.5)
            for seed, (proc, log, began) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[seed]
                if proc.returncode != 0:
                    raise SystemExit(f"study: seed {seed} failed ({proc.returncode}); the end of {log}:\n"
                                     f"{log.read_text()[-3000:]}")
                print(f"seed {seed}: done in {clock(time.time() - began)}  (elapsed {clock(time.time() - start)})",
                      flush=True)
    finally:  # a failed seed, or Ctrl-C: the others stop as well
        for proc, _, _ in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
