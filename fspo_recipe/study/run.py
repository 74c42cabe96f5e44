"""The synthetic-users study's runner: each stage one of the project's own commands (users, episodes, the tiny model,
SFT then IPO, evaluation, GPO, win rates), one seed at a time; the command line is fspo_recipe/study/cli.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from fspo_recipe.data.synthetic import reading_ceiling
from fspo_recipe.study.plan import GPO_EMBEDDINGS, MODEL, Plan
from fspo_recipe.study.report import jsonl_rows, report, users_of


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
          runs: tuple[Path, Path] | None = None, stages: Stages | None = None, model: str = MODEL,
          chat_template: bool = False, publish_every: int = 10) -> tuple[Path, Path]:
    """SFT of ``model`` (a card) then IPO from the SFT checkpoint, the SFT model as reference, of variant ``name`` on
    ``dataset`` (into ``runs``, default OUT/runs/NAME_{sft,ipo}); return the two run directories. With
    ``chat_template`` the episodes are the user turn and the answers the assistant turn of the model's chat
    template (instruct models). With ``stages``, each is a stage and its metrics are printed as they are published."""
    sft, ipo = runs or (out / "runs" / f"{name}_sft", out / "runs" / f"{name}_ipo")
    sft_stage(sft, assets, dataset, plan, logs, model=model, chat_template=chat_template, stages=stages,
              publish_every=publish_every)
    preference_stage(ipo, sft, assets, dataset, plan, logs, chat_template=chat_template, stages=stages,
                     publish_every=publish_every)
    return sft, ipo


def sft_stage(run: Path, assets: Path, dataset: str, plan: Plan, logs: Path, *, model: str = MODEL,
              chat_template: bool = False, stages: Stages | None = None, publish_every: int = 10) -> None:
    """``fspo_sft`` of ``model`` on ``dataset`` into ``run`` (started afresh): the preferred answers only, or with
    ``plan.sft_rejected`` both answers (the FSPO authors' SFT)."""
    _finetune(run, "fspo_sft", plan.sft_steps, assets, dataset, plan, logs, chat_template, stages, publish_every, [
        f"model.name={model}", f"optimizer.config.lr={plan.sft_lr}", f"regime.num_steps={plan.sft_steps}",
        f"regime.checkpoint_every_n_steps={plan.sft_steps}",
        f"lr_scheduler.config.num_warmup_steps={min(plan.sft_warmup, plan.sft_steps // 4)}",
        f"criterion.config.loss_params.sft.include_rejected={str(plan.sft_rejected).lower()}"])


def preference_stage(run: Path, sft: Path, assets: Path, dataset: str, plan: Plan, logs: Path, *,
                     chat_template: bool = False, stages: Stages | None = None, publish_every: int = 10,
                     nll_alpha: float | None = None) -> None:
    """``fspo_ipo`` from the SFT run ``sft`` (its last checkpoint; the reference too) into ``run``: IPO, or with
    ``nll_alpha`` (default ``plan.nll_alpha``) > 0 the ``rpo`` criterion (IPO plus the chosen answer's NLL)."""
    alpha = plan.nll_alpha if nll_alpha is None else nll_alpha
    loss = ([f"criterion.config.loss_params.ipo.beta={plan.ipo_beta}"] if not alpha else
            ["criterion.config.loss=rpo", f"criterion.config.loss_params.rpo.beta={plan.ipo_beta}",
             f"criterion.config.loss_params.rpo.alpha={alpha}"])
    warmup = min(plan.ipo_warmup, plan.ipo_steps // 4)
    _finetune(run, "fspo_ipo", plan.ipo_steps, assets, dataset, plan, logs, chat_template, stages, publish_every, [
        f"common.assets.checkpoint_dir={sft}/checkpoints", f"optimizer.config.lr={plan.ipo_lr}",
        f"regime.num_steps={plan.ipo_steps}", f"regime.checkpoint_every_n_steps={plan.curve_every}",
        "regime.keep_last_n_checkpoints=null", f"lr_scheduler.config.num_warmup_steps={warmup}",
        *([f"lr_scheduler.config.cycle_len={plan.ipo_steps - warmup}", "lr_scheduler.config.final_lr_scale=0.0"]
          if plan.ipo_decay else []), *loss])


def _finetune(run: Path, preset: str, steps: int, assets: Path, dataset: str, plan: Plan, logs: Path,
              chat_template: bool, stages: Stages | None, publish_every: int, extra: list[str]) -> None:
    if run.exists():
        shutil.rmtree(run)  # fairseq2 would resume an old run
    command = [bin_path("fairseq2"), "lm", "preference_finetune", run, "--preset", preset, "--no-sweep-dir",
               "--config", *cpu_run(assets, dataset, plan), f"regime.publish_metrics_every_n_steps={publish_every}",
               *(["dataset.extras={chat_template: true}"] if chat_template else []), *extra]
    if stages is None:
        sh(*command, log=logs / f"{run.name}.log")
        return
    stages.begin(preset, f"{preset}: {steps} steps of {plan.batch_size} pairs -> {run}")
    with MetricsWatch(run, steps):
        sh(*command, log=logs / f"{run.name}.log", echo=False)
    stages.end()


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
