"""Does it personalize? FSPO versus non-personalized training on synthetic users, end to end, on a CPU.

    python example_training_scripts/synthetic_study.py [--out synthetic_study_out] [--quick] [--seeds 0,1,2]
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
from dataclasses import dataclass
from pathlib import Path

from fspo_recipe.data.synthetic import POLE_TEXT, POLES, PROPERTIES, reading_ceiling

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Plan:
    users_per_pole: int
    rows_per_user: int
    test_rows_per_user: int
    shots: int
    batch_size: int
    sft_steps: int
    sft_lr: float
    ipo_steps: int
    ipo_lr: float
    ipo_beta: float
    passes: int | None
    """fspo-prepare --passes (None: its default 2(N+1))."""
    bootstrap: int
    rationale: bool
    """Train and evaluate the rationale variant too."""
    full_ablation: bool
    """Shots ablation on every FSPO evaluation (else on the held-out users of `fspo` only)."""
    curve_every: int
    """IPO checkpoint interval; FSPO's held-out accuracy is evaluated at each (accuracy versus step)."""
    properties: tuple[str, ...] = PROPERTIES
    """The properties users have preferences over (fspo-synthetic-users --properties)."""
    test_users_per_pole: int = 1
    """Held-out users per preference (fspo-synthetic-users --test-users-per-pole)."""
    sft_seconds_per_step: float = 0.4
    """A first guess of one SFT step on the 2-core machine, for the time estimates (corrected as stages finish)."""
    ipo_seconds_per_step: float = 0.45
    """Likewise for one IPO step (policy forward and backward, reference forward)."""
    sft_warmup: int = 30
    """Learning-rate warm-up steps of SFT (at most a quarter of its steps)."""
    ipo_warmup: int = 20
    """Learning-rate warm-up steps of IPO (at most a quarter of its steps)."""
    ipo_decay: bool = False
    """IPO's learning rate falls to 0 along a cosine after the warm-up (else constant, the presets' schedule)."""
    num_layers: int = 2
    """Decoder layers of the tiny llama (fspo-tiny-assets --num-layers)."""
    model_dim: int = 64
    """Its width (--model-dim)."""
    num_heads: int = 4
    """Its attention heads (--num-heads)."""
    kv_heads: int = 2
    """Its key/value heads (--kv-heads; fewer than num_heads: grouped-query attention)."""
    bpe_merges: int = 0
    """BPE tokens learned from the training episodes (fspo-tiny-assets --bpe-merges; 0: one token per byte)."""
    gpo_steps: int = 2000
    """Meta-training steps of the GPO baseline (fspo-gpo train)."""
    generate_examples: int | None = None
    """Held-out queries answered for the win rates (None: all)."""
    generate_tokens: int = 96
    """Longest generated answer, in tokens (the data's answers are under 60 bytes, about 15 tokens with BPE)."""


FULL = Plan(users_per_pole=6, rows_per_user=80, test_rows_per_user=30, shots=2, batch_size=16, sft_steps=500,
            sft_lr=3e-3, ipo_steps=4000, ipo_lr=1e-3, ipo_beta=0.1, passes=None, bootstrap=1000, rationale=True,
            full_ablation=True, curve_every=500, kv_heads=4, bpe_merges=400, sft_seconds_per_step=0.2,
            ipo_seconds_per_step=0.15)
QUICK = Plan(users_per_pole=1, rows_per_user=12, test_rows_per_user=12, shots=2, batch_size=8, sft_steps=10, sft_lr=3e-3,
             ipo_steps=5, ipo_lr=1e-3, ipo_beta=0.1, passes=2, bootstrap=200, rationale=False, full_ablation=False,
             curve_every=5, gpo_steps=20, generate_examples=16, generate_tokens=32, kv_heads=4, bpe_merges=400)

DEMO = Plan(users_per_pole=6, rows_per_user=60, test_rows_per_user=20, shots=1, batch_size=16, sft_steps=50,
            sft_lr=3e-3, ipo_steps=250, ipo_lr=1e-3, ipo_beta=0.1, passes=None, bootstrap=1000, rationale=False,
            full_ablation=False, curve_every=250, properties=("case", "length"), test_users_per_pole=2)
"""The quick start's plan (example_training_scripts/quickstart.py): properties a 2-layer byte-level model reads from
one shot within minutes (not mood: which of 12 words is used), one shot per episode; see docs/studies.md."""

MODEL = "syn_tiny"
POLE_NAMES = [pole for prop in PROPERTIES for pole in POLES[prop]]
"""Every pole, property by property: the columns (or rows) of the tables by pole."""

START = 8.0
"""Seconds a fairseq2 command needs to start and load its models on the 2-core machine (for the estimates)."""


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
        speed = sum(self.done.values()) / guessed if guessed else 1.0
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
        proc = subprocess.run(args, env=env, cwd=ROOT)
        tail = ""
    else:
        with log.open("w") as fp:
            proc = subprocess.run(args, env=env, cwd=ROOT, stdout=fp, stderr=subprocess.STDOUT)
        tail = log.read_text()[-3000:]
    if proc.returncode != 0:
        raise SystemExit(f"study: command failed ({proc.returncode}): {' '.join(args)}\n{tail}")


def train(out: Path, assets: Path, name: str, dataset: str, plan: Plan, logs: Path, *,
          runs: tuple[Path, Path] | None = None, stages: Stages | None = None) -> tuple[Path, Path]:
    """SFT then IPO of variant ``name`` on ``dataset`` (into ``runs``, default OUT/runs/NAME_{sft,ipo}); return the
    two run directories. With ``stages``, each is a stage and its metrics are printed as they are published."""
    sft, ipo = runs or (out / "runs" / f"{name}_sft", out / "runs" / f"{name}_ipo")
    common = [f"common.assets.extra_path={assets}", f"dataset.name={dataset}", f"dataset.batch_size={plan.batch_size}",
              "regime.num_data_epochs=null", "trainer.dtype=float32", "trainer.activation_checkpointing=false",
              "regime.publish_metrics_every_n_steps=10", "criterion.config.reference_dtype=float32"]
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


def evaluate(out: Path, assets: Path, name: str, dataset: str, plan: Plan, logs: Path, *,
             policy: Path | None, reference: Path | None, beta: float, ablation: bool, curve: bool = False,
             target: Path | None = None, echo: bool = True, extra: tuple[str, ...] = ()) -> dict:
    """preference_eval of one model on one split (into ``target``, default OUT/eval/NAME); return its metrics.json.
    ``extra``: more configuration (e.g. generation)."""
    target = target or out / "eval" / name
    if target.exists():
        shutil.rmtree(target)
    which = ([f"model.run_dir={policy}", f"reference.run_dir={reference}"] if policy is not None
             else [f"model.name={MODEL}", f"reference.name={MODEL}"])
    extra = ([] if ablation else ["shots=[]"]) + (["all_checkpoints=true"] if curve else []) + list(extra)
    sh(bin_path("fairseq2"), "lm", "preference_eval", target, "--no-sweep-dir", "--config",
       f"common.assets.extra_path={assets}", f"dataset={dataset}", *which, f"bootstrap_samples={plan.bootstrap}",
       "criterion.loss=ipo", f"criterion.loss_params.ipo.beta={beta}", *extra, log=logs / f"eval_{name}.log",
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


GPO_EMBEDDINGS = {"sft": "GPO, SFT-model embeddings", "untrained": "GPO, untrained-model embeddings"}


def gpo_stage(out: Path, assets: Path, plan: Plan, logs: Path, sft_run: Path, *, fresh: bool
              ) -> dict[str, dict[str, dict]]:
    """The GPO baseline on the same users and shots: ``fspo-gpo embed`` (with FSPO's SFT model, and with the
    untrained model), ``train`` over the training users, ``eval`` on held-out and interpolated users with each
    episode's own first k shots. Returns {row name: {split: metrics}}. ``fresh``: remove OUT/gpo first (a new
    study); otherwise finished embeddings and training runs of this study are reused."""
    data = [assets / "syn" / "train.jsonl", assets / "syn" / "test.jsonl", assets / "synint" / "test.jsonl"]
    if fresh and (out / "gpo").exists():
        shutil.rmtree(out / "gpo")
    rows: dict[str, dict[str, dict]] = {}
    for source, label in GPO_EMBEDDINGS.items():
        emb, run = out / "gpo" / f"emb_{source}", out / "gpo" / f"run_{source}"
        which = ["--run-dir", sft_run] if source == "sft" else ["--model", MODEL]
        sh(bin_path("fspo-gpo"), "embed", emb, *which, "--assets-dir", assets, "--data", *data, "--no-progress",
           log=logs / f"gpo_embed_{source}.log")
        sh(bin_path("fspo-gpo"), "train", run, "--embeddings", emb, "--data", data[0], "--steps", plan.gpo_steps,
           "--lr", "1e-3", "--batch-users", "16", "--max-context", "8", "--publish-every", max(1, plan.gpo_steps // 10),
           "--checkpoint-every", plan.gpo_steps, log=logs / f"gpo_train_{source}.log")
        rows[label] = {}
        for split, test in (("heldout", data[1]), ("interpolated", data[2])):
            target = out / "gpo" / f"eval_{source}_{split}"
            sh(bin_path("fspo-gpo"), "eval", target, "--run", run, "--embeddings", emb, "--data", test,
               "--bootstrap", plan.bootstrap, log=logs / f"gpo_eval_{source}_{split}.log")
            rows[label][split] = json.loads((target / "metrics.json").read_text())
    return rows


def make_sources(sources: Path, plan: Plan, seed: int, log: Path | None = None) -> None:
    """``fspo-synthetic-users`` with the plan's users and properties."""
    sh(bin_path("fspo-synthetic-users"), sources, "--users-per-pole", plan.users_per_pole,
       "--rows-per-user", plan.rows_per_user, "--test-rows-per-user", plan.test_rows_per_user, "--seed", seed,
       "--test-users-per-pole", plan.test_users_per_pole,
       "--properties", ",".join(plan.properties), log=log)


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
    parser.add_argument("--out", type=Path, default=ROOT / "synthetic_study_out", help="output directory")
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
    out = args.out.resolve()
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
            return [sys.executable, __file__, "--out", str(out / f"seed_{seed}"), "--seed", str(seed),
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
                                            cwd=ROOT, start_new_session=True)
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


if __name__ == "__main__":
    raise SystemExit(main())
