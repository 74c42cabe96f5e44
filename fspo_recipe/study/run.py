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
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fspo_recipe.data.synthetic import reading_ceiling
from fspo_recipe.study.plan import FULL, GPO_EMBEDDINGS, MODEL, QUICK, SMOLLM2_QUICK, SMOLLM2_STUDY, Plan
from fspo_recipe.study.report import aggregate, jsonl_rows, report, users_of

class Stages:
    """One line per stage, with the elapsed time and an estimate of what remains, so that nobody stares at a silent
    terminal. ``estimates`` are a first guess per stage in seconds; as stages finish, the rest are scaled by how
    much faster or slower this machine ran the ones so far."""

    def __init__(self, estimates: dict[str, float]) -> None:
        self.estimates = dict(estimates)
        self.start = time.time()
        self.done: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def begin(self, name: str, what: str) -> None:
        self._current = (name, time.time())
        names = list(self.estimates)
        print(f"[{names.index(name) + 1}/{len(names)}] {what}  (elapsed {clock(time.time() - self.start)}, "
              f"about {clock(self.remaining())} to go)", flush=True)

    def end(self) -> float:
        assert self._current is not None
        name, started = self._current
        self.done[name] = time.time() - started
        self._current = None
        return self.done[name]

    def remaining(self) -> float:
        guessed = sum(self.estimates[n] for n in self.done)
        # Short stages say little about the machine (a cached download takes a second instead of twenty): the
        # first guess stands until stages guessed at a minute or more are done, and moves within [1/3, 3] of it.
        speed = min(3.0, max(1 / 3, sum(self.done.values()) / guessed)) if guessed >= 60 else 1.0
        return speed * sum(v for n, v in self.estimates.items() if n not in self.done)


def clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


class MetricsWatch:
    """Prints the training metrics of a run as fairseq2 publishes them (``metrics/train.jsonl``), one short line per
    publication, while the command runs with its full output in a log file."""

    KEYS = (("FSPO Loss", "loss"), ("Reward Accuracy", "reward acc"), ("Reward Margin", "margin"),
            ("NLL Loss", "nll/token"))

    def __init__(self, run: Path, total_steps: int) -> None:
        import threading

        self._path, self._total, self._seen = run / "metrics" / "train.jsonl", total_steps, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MetricsWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._print_new()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            self._print_new()

    def _print_new(self) -> None:
        if not self._path.is_file():
            return
        lines = self._path.read_text().splitlines()
        for line in lines[self._seen :]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                return  # being written; read again next time
            values = "  ".join(f"{short} {row[key]:.3f}" for key, short in self.KEYS if isinstance(row.get(key), float))
            print(f"      step {row.get('Step')}/{self._total}  {values}", flush=True)
            self._seen += 1


def bin_path(name: str) -> str:
    return shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}") or name


def sh(*cmd: object, log: Path | None = None, echo: bool = True) -> None:
    """Run one command; its output goes to ``log`` (or through); stop the study with its tail on failure."""
    args = [str(c) for c in cmd]
    if echo:
        print("$", " ".join(args), flush=True)
    env = {**os.environ, "FAIRSEQ2_EXTENSION_TRACE": "1", "TIKTOKEN_CACHE_DIR": ""}
    if log is None:
        proc = subprocess.run(args, env=env)
        tail = ""
    else:
        with log.open("w") as fp:
            proc = subprocess.run(args, env=env, stdout=fp, stderr=subprocess.STDOUT)
        tail = log.read_text()[-3000:]
    if proc.returncode != 0:
        raise SystemExit(f"study: command failed ({proc.returncode}): {' '.join(args)}\n{tail}")


def cpu_run(assets: Path, dataset: str, plan: Plan) -> list[str]:
    """The configuration every training run of a study has: its card directory, data set and batch size, steps
    instead of epochs, float32 policy and reference without activation checkpointing (CPU runs)."""
    return [f"common.assets.extra_path={assets}", f"dataset.name={dataset}", f"dataset.batch_size={plan.batch_size}",
            "regime.num_data_epochs=null", "trainer.dtype=float32", "trainer.activation_checkpointing=false",
            "criterion.config.reference_dtype=float32"]


def train(out: Path, assets: Path, name: str, dataset: str, plan: Plan, logs: Path, *,
          runs: tuple[Path, Path] | None = None, stages: Stages | None = None) -> tuple[Path, Path]:
    """SFT then IPO of variant ``name`` on ``dataset`` (into ``runs``, default OUT/runs/NAME_{sft,ipo}); return the
    two run directories. With ``stages``, each is a stage and its metrics are printed as they are published."""
    sft, ipo = runs or (out / "runs" / f"{name}_sft", out / "runs" / f"{name}_ipo")
    common = [*cpu_run(assets, dataset, plan), "regime.publish_metrics_every_n_steps=10"]
    for run, preset, steps, extra in (
        (sft, "fspo_sft", plan.sft_steps, [f"model.name={MODEL}", f"optimizer.config.lr={plan.sft_lr}",
                           f"regime.num_steps={plan.sft_steps}", f"regime.checkpoint_every_n_steps={plan.sft_steps}",
                           f"lr_scheduler.config.num_warmup_steps={min(plan.sft_warmup, plan.sft_steps // 4)}",
                           "criterion.config.loss_params.sft.include_rejected=false"]),
        (ipo, "fspo_ipo", plan.ipo_steps, [f"common.assets.checkpoint_dir={sft}/checkpoints", f"optimizer.config.lr={plan.ipo_lr}",
                           f"regime.num_steps={plan.ipo_steps}", f"regime.checkpoint_every_n_steps={plan.curve_every}",
                           "regime.keep_last_n_checkpoints=null",
                           f"lr_scheduler.config.num_warmup_steps={min(plan.ipo_warmup, plan.ipo_steps // 4)}",
                           *([f"lr_scheduler.config.cycle_len={plan.ipo_steps - min(plan.ipo_warmup, plan.ipo_steps // 4)}",
                              "lr_scheduler.config.final_lr_scale=0.0"] if plan.ipo_decay else []),
                           f"criterion.config.loss_params.ipo.beta={plan.ipo_beta}"]),
    ):
        if run.exists():
            shutil.rmtree(run)  # fairseq2 would resume an old run
        command = [bin_path("fairseq2"), "lm", "preference_finetune", run, "--preset", preset, "--no-sweep-dir",
                   "--config", *common, *extra]
        if stages is None:
            sh(*command, log=logs / f"{run.name}.log")
            continue
        stages.begin(preset, f"{preset}: {steps} steps of {plan.batch_size} pairs -> {run}")
        with MetricsWatch(run, steps):
            sh(*command, log=logs / f"{run.name}.log", echo=False)
        stages.end()
    return sft, ipo


def ipo_from_model(run: Path, assets: Path, dataset: str, plan: Plan, logs: Path, model: str, *,
                   publish_every: int = 5) -> None:
    """``fspo_ipo`` of a pretrained chat model (card ``model``) from itself, the model its own reference, the prompts
    in its chat template (no SFT stage: it already answers); into ``run``, started afresh."""
    if run.exists():
        shutil.rmtree(run)  # fairseq2 would resume an old run
    sh(bin_path("fairseq2"), "lm", "preference_finetune", run, "--preset", "fspo_ipo", "--no-sweep-dir",
       "--config", *cpu_run(assets, dataset, plan), "dataset.extras={chat_template: true}", f"model.name={model}",
       f"criterion.config.reference_model={{name: {model}}}", f"optimizer.config.lr={plan.ipo_lr}",
       f"regime.num_steps={plan.ipo_steps}", f"regime.checkpoint_every_n_steps={plan.ipo_steps}",
       f"regime.publish_metrics_every_n_steps={publish_every}",
       f"lr_scheduler.config.num_warmup_steps={plan.ipo_warmup}",
       f"criterion.config.loss_params.ipo.beta={plan.ipo_beta}", log=logs / f"{run.name}.log", echo=False)


def evaluate(out: Path, assets: Path, name: str, dataset: str, plan: Plan, logs: Path, *,
             policy: Path | None, reference: Path | None, beta: float, ablation: bool, curve: bool = False,
             target: Path | None = None, echo: bool = True, extra: tuple[str, ...] = (), model: str = MODEL,
             policy_only: bool = False) -> dict:
    """preference_eval of one model on one split (into ``target``, default OUT/eval/NAME); return its metrics.json.
    ``extra``: more configuration (e.g. generation). ``policy`` None: the model of card ``model`` (its own
    reference); ``reference`` None with a ``policy``: that card's model is the reference. ``policy_only``: no
    reference model at all (a reference-free loss; the policy accuracy is what counts)."""
    target = target or out / "eval" / name
    if target.exists():
        shutil.rmtree(target)
    which = ([f"model.run_dir={policy}",
              f"reference.run_dir={reference}" if reference is not None else f"reference.name={model}"]
             if policy is not None else [f"model.name={model}", f"reference.name={model}"])
    if policy_only:
        which = [w for w in which if not w.startswith("reference.")]
    loss = ["criterion.loss=simpo"] if policy_only else ["criterion.loss=ipo", f"criterion.loss_params.ipo.beta={beta}"]
    extra = ([] if ablation else ["shots=[]"]) + (["all_checkpoints=true"] if curve else []) + list(extra)
    sh(bin_path("fairseq2"), "lm", "preference_eval", target, "--no-sweep-dir", "--config",
       f"common.assets.extra_path={assets}", f"dataset={dataset}", *which, f"bootstrap_samples={plan.bootstrap}",
       *loss, *extra, log=logs / f"eval_{name}.log",
       echo=echo)
    return json.loads((target / "metrics.json").read_text())


def generate(plan: Plan) -> tuple[str, ...]:
    """preference_eval settings of the generations judged for win rates."""
    limit = "null" if plan.generate_examples is None else plan.generate_examples
    return ("generation.enabled=true", f"generation.max_examples={limit}",
            f"generation.max_new_tokens={plan.generate_tokens}")


def win_rate_against_sft(out: Path, assets: Path, variant: str, dataset: str, plan: Plan, logs: Path, *,
                         policy: Path, reference: Path, generations: Path) -> dict:
    """Win rate of the variant's answers (``generations``, its IPO model) against its SFT model's answers to the same
    held-out queries, judged exactly by each synthetic user's hidden preference (``fspo-judge --judge exact``)."""
    sft_eval = out / "eval" / f"{variant}_sft_answers"
    evaluate(out, assets, f"{variant}_sft_answers", dataset, plan, logs, policy=policy, reference=reference,
             beta=plan.ipo_beta, ablation=False, target=sft_eval,
             extra=(*generate(plan), "generation.model=reference", "generation.system=sft"))
    judged = out / "judge" / variant
    sh(bin_path("fspo-judge"), judged, "--generations", generations, sft_eval / "generations.jsonl",
       "--baseline", "sft", "--judge", "exact", "--bootstrap", plan.bootstrap, "--no-progress",
       log=logs / f"judge_{variant}.log")
    return json.loads((judged / "win_rates.json").read_text())["systems"][variant]["overall"]


def gpo_stage(out: Path, assets: Path, plan: Plan, logs: Path, sft_run: Path, *, fresh: bool
              ) -> dict[str, dict[str, dict]]:
    """The GPO baseline on the same users and shots, with FSPO's SFT model's embeddings and with the untrained
    model's (:func:`gpo_row`). Returns {row name: {split: metrics}}. ``fresh``: remove OUT/gpo first (a new study);
    otherwise finished embeddings and training runs of this study are reused."""
    if fresh and (out / "gpo").exists():
        shutil.rmtree(out / "gpo")
    return {label: gpo_row(out, assets, plan, logs, source,
                           ["--run-dir", sft_run] if source == "sft" else ["--model", MODEL])
            for source, label in GPO_EMBEDDINGS.items()}


def gpo_row(out: Path, assets: Path, plan: Plan, logs: Path, source: str, which: list, *, echo: bool = True
            ) -> dict[str, dict]:
    """One GPO row: ``fspo-gpo embed`` with the frozen model ``which`` names (``--model NAME`` or ``--run-dir RUN``),
    ``train`` over the training users, ``eval`` on held-out and interpolated users with each episode's own first k
    shots, into OUT/gpo/*_SOURCE. Returns {split: metrics}."""
    data = [assets / "syn" / "train.jsonl", assets / "syn" / "test.jsonl", assets / "synint" / "test.jsonl"]
    emb, run = out / "gpo" / f"emb_{source}", out / "gpo" / f"run_{source}"
    sh(bin_path("fspo-gpo"), "embed", emb, *which, "--assets-dir", assets, "--data", *data, "--no-progress",
       log=logs / f"gpo_embed_{source}.log", echo=echo)
    sh(bin_path("fspo-gpo"), "train", run, "--embeddings", emb, "--data", data[0], "--steps", plan.gpo_steps,
       "--lr", "1e-3", "--batch-users", "16", "--max-context", "8", "--publish-every", max(1, plan.gpo_steps // 10),
       "--checkpoint-every", plan.gpo_steps, log=logs / f"gpo_train_{source}.log", echo=echo)
    metrics = {}
    for split, test in (("heldout", data[1]), ("interpolated", data[2])):
        target = out / "gpo" / f"eval_{source}_{split}"
        sh(bin_path("fspo-gpo"), "eval", target, "--run", run, "--embeddings", emb, "--data", test,
           "--bootstrap", plan.bootstrap, log=logs / f"gpo_eval_{source}_{split}.log", echo=echo)
        metrics[split] = json.loads((target / "metrics.json").read_text())
    return metrics


def make_sources(sources: Path, plan: Plan, seed: int, log: Path | None = None) -> None:
    """``fspo-synthetic-users`` with the plan's users and properties."""
    sh(bin_path("fspo-synthetic-users"), sources, "--users-per-pole", plan.users_per_pole,
       "--rows-per-user", plan.rows_per_user, "--test-rows-per-user", plan.test_rows_per_user, "--seed", seed,
       "--test-users-per-pole", plan.test_users_per_pole,
       "--properties", ",".join(plan.properties), log=log)


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
        from fspo_recipe.study.real import main_real

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


def run_seed(out: Path, plan: Plan, seed: int, *, first: bool) -> None:
    """The whole study for one seed into OUT (users, episodes, model, training, evaluation, report). ``first``: also
    the extras (rationale variant when the plan has it, GPO, win rates of generated answers); later seeds of a
    multi-seed study train and evaluate the baseline and FSPO only (the 2-hour budget)."""
    assets, sources, logs = out / "assets", out / "sources", out / "logs"
    for d in (assets, sources):
        if d.exists():
            shutil.rmtree(d)
    logs.mkdir(parents=True, exist_ok=True)
    start = time.time()
    times: dict[str, float] = {}

    # 1-3: users, episodes, model.
    make_sources(sources, plan, seed)
    prep = [bin_path("fspo-prepare"), "elix", "--out", assets, "--split-mode", "source", "--seed", seed,
            "--no-progress", *(["--passes", plan.passes] if plan.passes else [])]
    datasets = {"syn": (plan.shots, "none"), "syn0": (0, "none")}
    if plan.rationale and first:
        datasets["synrat"] = (plan.shots, "generated")
    for name, (shots, rationale) in datasets.items():
        sh(*prep, "--input", sources / "heldout", "--name", name, "--shots", shots, "--rationale", rationale,
           log=logs / f"prepare_{name}.log")
        sh(*prep, "--input", sources / "interpolated", "--name", f"{name}int", "--shots", shots, "--rationale",
           rationale, log=logs / f"prepare_{name}int.log")
    # The vocabulary is learned from the training episodes, with the user descriptions of the rationale variant's
    # targets when it is trained (else they would be spelled byte by byte).
    bpe_corpus = [assets / name / "train.jsonl" for name in ("syn", "synrat") if name in datasets]
    sh(bin_path("fspo-tiny-assets"), assets, "--name", MODEL, "--seed", seed, "--num-layers", plan.num_layers,
       "--model-dim", plan.model_dim, "--num-heads", plan.num_heads, "--kv-heads", plan.kv_heads,
       *(["--bpe-merges", plan.bpe_merges, "--bpe-from", *bpe_corpus] if plan.bpe_merges else []))
    times["data"] = time.time() - start

    train_users = users_of(jsonl_rows(assets / "syn" / "train.jsonl"))
    test_rows = {split: jsonl_rows(assets / name / "test.jsonl") for split, name in (("heldout", "syn"),
                                                                                      ("interpolated", "synint"))}
    heldout_users, interpolated_users = users_of(test_rows["heldout"]), users_of(test_rows["interpolated"])
    assert not train_users & heldout_users and not train_users & interpolated_users, "a test user is in training"
    ceiling = {split: reading_ceiling(rows) for split, rows in test_rows.items()}

    # 4-5: train and evaluate.
    results: dict[str, dict[str, dict]] = {"untrained": {}, "baseline": {}, "fspo": {}}
    for split, suffix in (("heldout", ""), ("interpolated", "int")):
        results["untrained"][split] = evaluate(out, assets, f"untrained_{split}", f"syn{suffix}_test", plan, logs,
                                               policy=None, reference=None, beta=plan.ipo_beta,
                                               ablation=plan.full_ablation)
    variants = [("baseline", "syn0"), ("fspo", "syn")] + ([("fspo+rationale", "synrat")] if "synrat" in datasets
                                                          else [])
    wins: dict[str, dict] = {}
    for variant, data in variants:
        t0 = time.time()
        sft, ipo = train(out, assets, variant.replace("+", "_"), f"{data}_train", plan, logs)
        times[f"train {variant}"] = time.time() - t0
        results.setdefault(variant, {})
        for split, suffix in (("heldout", ""), ("interpolated", "int")):
            judged = first and split == "heldout" and variant in ("baseline", "fspo")
            name = f"{variant.replace('+', '_')}_{split}"
            results[variant][split] = evaluate(out, assets, name, f"{data}{suffix}_test", plan, logs, policy=ipo,
                                               reference=sft, beta=plan.ipo_beta, ablation=variant != "baseline" and (
                                                   plan.full_ablation or (variant, split) == ("fspo", "heldout")),
                                               curve=(variant, split) == ("fspo", "heldout"),
                                               extra=(*generate(plan), f"generation.system={variant}") if judged else ())
            if judged:
                wins[variant] = win_rate_against_sft(out, assets, variant, f"{data}_test", plan, logs, policy=ipo,
                                                     reference=sft, generations=out / "eval" / name / "generations.jsonl")
    gpo: dict[str, dict[str, dict]] = {}
    if first:
        t0 = time.time()
        gpo = gpo_stage(out, assets, plan, logs, out / "runs" / "fspo_sft", fresh=True)
        times["gpo"] = time.time() - t0
    times["total"] = time.time() - start
    counts = {"train_users": len(train_users), "heldout_users": len(heldout_users),
              "interpolated_users": len(interpolated_users), "seed": seed, "reading_ceiling": ceiling}
    report(out, plan, [v for v, _ in variants], results, wins, gpo, times, counts)


def add_gpo(out: Path, plan: Plan) -> int:
    """``--add-gpo``: run the GPO stage on a finished study in OUT and write its report again with the GPO rows
    (the evaluations are read back from OUT/eval)."""
    summary = json.loads((out / "study.json").read_text())
    variants = [v for v in ("baseline", "fspo", "fspo+rationale") if v in summary["results"]]
    results = {v: {split: json.loads((out / "eval" / f"{v.replace('+', '_')}_{split}" / "metrics.json").read_text())
                   for split in ("heldout", "interpolated")} for v in ["untrained", *variants]}
    times = dict(summary["seconds"])
    t0 = time.time()
    gpo = gpo_stage(out, out / "assets", plan, out / "logs", out / "runs" / "fspo_sft", fresh=False)
    times["gpo"] = time.time() - t0
    times["total"] = times.get("total", 0.0) + times["gpo"]
    counts = {k: summary[k] for k in ("train_users", "heldout_users", "interpolated_users", "seed") if k in summary}
    report(out, plan, variants, results, summary.get("win_rates_vs_sft", {}), gpo, times, counts)
    return 0
