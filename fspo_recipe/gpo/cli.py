"""``fspo-gpo``: the GPO baseline (Zhao, Dang and Grover, 2023) on the same users and shots as FSPO.

    # 1. embed every (question, answer) of the splits with a frozen model (a card, or a training run's last step)
    fspo-gpo embed runs/gpo_emb --run-dir runs/sft --data assets/elix/train.jsonl assets/elix/test.jsonl
    # 2. meta-train the GPO module over the training users
    fspo-gpo train runs/gpo --embeddings runs/gpo_emb --data assets/elix/train.jsonl
    # 3. held-out users: pairwise accuracy with each episode's own first k shots, k = 0..N
    fspo-gpo eval runs/gpo_eval --run runs/gpo --embeddings runs/gpo_emb --data assets/elix/test.jsonl

    # group opinions in the OpinionQA schema (fspo_recipe/gpo/tasks.py): held-out groups by name
    fspo-gpo embed runs/oqa_emb --model syn_tiny --assets-dir ASSETS --data datasets/samples/opinionqa/opinions.jsonl
    fspo-gpo train runs/oqa --embeddings runs/oqa_emb --data datasets/samples/opinionqa/opinions.jsonl \\
        --test-groups g20,g21,g22,g23
    fspo-gpo eval runs/oqa_eval --run runs/oqa --embeddings runs/oqa_emb \\
        --data datasets/samples/opinionqa/opinions.jsonl --test-groups g20,g21,g22,g23 --context 8

A file whose lines have ``distributions`` is opinion data; otherwise it is a prepared FSPO split.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fspo_recipe.assets import add_card_directory
from fspo_recipe.cli import run_command
from fspo_recipe.files import atomic_file
from fspo_recipe.gpo.embed import POOLINGS, EmbeddingCache, EmbeddingError, embed_all, embed_batch, point_text
from fspo_recipe.gpo.meta import Embeddings, TrainSettings, evaluate_opinions, evaluate_pairs, load_trained, train
from fspo_recipe.gpo.module import GpoConfig
from fspo_recipe.gpo.tasks import (GpoDataError, TaskSet, groups_of, opinion_tasks, read_opinions, read_pairs,
                                   split_groups, write_json)
from fspo_recipe.lock import OutputInUseError, OutputLock
from fspo_recipe.models.families import packed_model_families
from fspo_recipe.progress import ProgressBar
from fspo_recipe.runs import RunDirError, register_run
from fspo_recipe.scoring.pairs import default_device, encode_pairs, score_pairs
from fspo_recipe.train.checkpoints import CheckpointCheckError


def is_opinions(path: Path) -> bool:
    if not path.is_file():
        raise GpoDataError(f"{path}: no such file.")
    with path.open(encoding="utf-8") as fp:
        first = next((line for line in fp if line.strip()), "")
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and "distributions" in record


def read_tasks(path: Path, groups: Sequence[str] | None = None) -> TaskSet:
    if not is_opinions(path):
        return read_pairs(path)
    questions = read_opinions(path)
    return opinion_tasks(questions, list(groups) if groups is not None else groups_of(questions))


def _device(name: str | None) -> torch.device:
    device = default_device(name)
    if device.type == "cpu":
        # The module is small: one thread is as fast, and two processes sharing the cores (a study training FSPO
        # beside GPO) made two-thread steps 17x slower here (OpenMP threads waiting on each other).
        torch.set_num_threads(1)
    return device


def _load_frozen(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """The frozen model and tokenizer of ``--model`` / ``--run-dir`` (as fspo-score-reference loads them)."""
    from fairseq2 import setup_fairseq2
    from fairseq2.context import get_runtime_context
    from fairseq2.data.text.tokenizers import get_text_tokenizer_hub
    from fairseq2.gang import fake_gangs
    from fairseq2.models.decoder import DecoderModel
    from fairseq2.recipes.common import load_reference_model

    setup_fairseq2()
    context = get_runtime_context()
    if args.assets_dir is not None:
        add_card_directory(context, args.assets_dir)
    name = args.model
    identity = args.model
    if args.run_dir is not None:
        steps = register_run(context, args.run_dir, "gpo_frozen")
        name = steps[max(steps)]
        identity = str((args.run_dir / "checkpoints" / f"step_{max(steps)}").resolve())
    with packed_model_families(context):  # FSPO's model classes and card fields (tied llama embeddings)
        model = load_reference_model(DecoderModel, context, name, fake_gangs(_device(args.device)),
                                     getattr(torch, args.dtype), mp=False)
    return model.eval(), get_text_tokenizer_hub().load(name), identity


@torch.inference_mode()
def option_probabilities(model: Any, tokenizer: Any, question: str, options: Sequence[str],
                         device: torch.device) -> list[float]:
    """The frozen model's own distribution over a question's options: the softmax of each option's summed log-prob
    after the question (the "base model" baseline of the opinion alignment)."""
    prompt = point_text(question, "")[:-1]  # "## Question \n<question>\n## Response \n"
    pairs = encode_pairs(tokenizer, [prompt] * len(options), list(options), list(options))
    scores = score_pairs(model, pairs, batch_size=len(options), device=device)
    return torch.softmax(torch.tensor(scores.chosen, dtype=torch.float64), 0).tolist()


def cmd_embed(args: argparse.Namespace) -> int:
    if (args.model is None) == (args.run_dir is None):
        raise GpoDataError("give one of --model (an asset card) and --run-dir (a training output directory).")
    texts: dict[str, None] = {}
    opinion_files = []
    for path in args.data:
        tasks = read_tasks(path)
        texts.update(dict.fromkeys(tasks.texts()))
        if tasks.kind == "opinions":
            opinion_files.append(path)
    model, tokenizer, identity = _load_frozen(args)
    device = _device(args.device)
    cache = EmbeddingCache(args.out, model=identity, pooling=args.pooling)
    todo = len(cache.missing(texts))
    print(f"fspo-gpo embed: {len(texts)} texts, {len(texts) - todo} already embedded in {args.out}", file=sys.stderr)
    with ProgressBar(not args.no_progress, "embedding", todo) as tick:
        done = embed_all(cache, list(texts), lambda batch: embed_batch(model, tokenizer, batch, args.pooling, device),
                         batch_size=args.batch_size, tick=tick)
    if opinion_files:
        base = {q.qkey: option_probabilities(model, tokenizer, q.question, q.options, device)
                for path in opinion_files for q in read_opinions(path)}
        write_json(args.out / "base_model.json", base)
    print(f"embedded {done} texts ({cache.dim} wide, {args.pooling} pooling) into {args.out}")
    return 0


def _embeddings(directory: Path, tasks: TaskSet) -> Any:
    texts = tasks.texts()
    return Embeddings(texts, EmbeddingCache.open_existing(directory).lookup(texts))


def _groups(args: argparse.Namespace, path: Path) -> tuple[list[str], list[str]] | None:
    if not is_opinions(path):
        return None
    if not args.test_groups:
        raise GpoDataError("opinion data: name the held-out groups with --test-groups g1,g2.")
    return split_groups(groups_of(read_opinions(path)), [g for g in args.test_groups.split(",") if g])


def cmd_train(args: argparse.Namespace) -> int:
    groups = _groups(args, args.data)
    tasks = read_tasks(args.data, groups[0] if groups else None)
    emb = _embeddings(args.embeddings, tasks)
    config = GpoConfig(input_dim=emb.vectors.size(1), model_dim=args.model_dim, num_layers=args.layers,
                       num_heads=args.heads, ffn_dim=2 * args.model_dim)
    settings = TrainSettings(steps=args.steps, batch_users=args.batch_users, max_context=args.max_context,
                             targets=args.targets, lr=args.lr, seed=args.seed, checkpoint_every=args.checkpoint_every,
                             publish_every=args.publish_every)
    print(f"fspo-gpo train: {len(tasks.items)} {'groups' if tasks.kind == 'opinions' else 'users'}, "
          f"{sum(map(len, tasks.items.values()))} items", file=sys.stderr)
    train(args.out, tasks, emb, config, settings, device=_device(args.device))
    print(f"trained GPO for {args.steps} steps into {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import csv

    device = _device(args.device)
    model = load_trained(args.run, device)
    groups = _groups(args, args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    if groups is not None:
        questions = read_opinions(args.data)
        tasks = opinion_tasks(questions, groups[1])
        base_file = args.embeddings / "base_model.json"
        base = json.loads(base_file.read_text()) if base_file.is_file() else None
        result = evaluate_opinions(model, questions, groups[1], _embeddings(args.embeddings, tasks),
                                   context=args.context, seed=args.seed, samples=args.bootstrap, device=device,
                                   base_model=base)
        write_json(args.out / "metrics.json", result)
        for name in ("gpo", "uniform", "base_model"):
            if name in result:
                lo, hi = result[name]["alignment_ci95"]
                print(f"alignment ({name}): {result[name]['alignment']:.3f} [95% CI {lo:.3f}, {hi:.3f}] on "
                      f"{result['questions']} questions of {len(groups[1])} held-out groups, {args.context} context")
        return 0
    tasks = read_pairs(args.data)
    shots = [int(k) for k in args.shots.split(",")] if args.shots else None
    result = evaluate_pairs(model, tasks, _embeddings(args.embeddings, tasks), shots=shots, samples=args.bootstrap,
                            seed=args.seed, device=device)
    write_json(args.out / "metrics.json", result)
    with atomic_file(args.out / "shots.csv") as fp:
        writer = csv.writer(fp)
        writer.writerow(["shots", "pairs", "accuracy", "ci95_low", "ci95_high"])
        for k, row in result["shots"].items():
            writer.writerow([k, row["pairs"], f"{row['accuracy']:.4f}", f"{row['accuracy_ci95'][0]:.4f}",
                             f"{row['accuracy_ci95'][1]:.4f}"])
    with atomic_file(args.out / "per_user.csv") as fp:
        writer = csv.writer(fp)
        writer.writerow(["user", "pairs", "accuracy"])
        for user, row in result["per_user"].items():
            writer.writerow([user, row["pairs"], f"{row['accuracy']:.4f}"])
    o = result["overall"]
    print(f"GPO held-out pairwise accuracy: {o['accuracy']:.3f} [95% CI {o['accuracy_ci95'][0]:.3f}, "
          f"{o['accuracy_ci95'][1]:.3f}] on {o['pairs']} pairs of {o['users']} users with {o['shots']} shots; "
          + ", ".join(f"{k} shots {r['accuracy']:.3f}" for k, r in result["shots"].items()))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fspo-gpo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("embed", help="embed the (question, answer) texts of splits with a frozen model")
    e.add_argument("out", type=Path, help="embedding directory (resumed when it exists)")
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="asset card name of the frozen model")
    which.add_argument("--run-dir", type=Path, help="a training run's output directory: its last checkpoint")
    e.add_argument("--data", type=Path, nargs="+", required=True, help="prepared splits or opinion files")
    e.add_argument("--pooling", choices=POOLINGS, default="mean",
                   help="mean over the text's tokens (default) or the last token's hidden state")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--assets-dir", type=Path, help="extra fairseq2 card directory")
    e.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    e.add_argument("--device", help="cpu, cuda, ... (default: CUDA when present)")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_embed)

    t = sub.add_parser("train", help="meta-train the GPO module over the training users (or groups)")
    t.add_argument("out", type=Path, help="output directory (resumed from its last checkpoint)")
    t.add_argument("--embeddings", type=Path, required=True, help="directory of `fspo-gpo embed`")
    t.add_argument("--data", type=Path, required=True, help="the training split (or the opinion file)")
    t.add_argument("--test-groups", help="opinion data: held-out groups, comma-separated (not trained on)")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--batch-users", type=int, default=16, help="users (or groups) per step")
    t.add_argument("--max-context", type=int, default=8, help="most context items per user in a step")
    t.add_argument("--targets", type=int, default=4, help="target items per user in a step")
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--model-dim", type=int, default=128)
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint-every", type=int, default=500)
    t.add_argument("--publish-every", type=int, default=50)
    t.add_argument("--device")
    t.set_defaults(func=cmd_train)

    v = sub.add_parser("eval", help="held-out users (pairwise accuracy by shots) or groups (alignment)")
    v.add_argument("out", type=Path, help="output directory (metrics.json; shots.csv and per_user.csv for pairs)")
    v.add_argument("--run", type=Path, required=True, help="the output directory of `fspo-gpo train`")
    v.add_argument("--embeddings", type=Path, required=True)
    v.add_argument("--data", type=Path, required=True, help="the held-out split (or the opinion file)")
    v.add_argument("--shots", help="pairs: shot counts, e.g. 0,1,2 (default 0..N)")
    v.add_argument("--test-groups", help="opinion data: the held-out groups, comma-separated")
    v.add_argument("--context", type=int, default=8, help="opinion data: context questions per prediction")
    v.add_argument("--bootstrap", type=int, default=1000)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--device")
    v.set_defaults(func=cmd_eval)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    for name in ("steps", "batch_users", "targets", "model_dim", "layers", "heads", "checkpoint_every",
                 "publish_every", "batch_size", "bootstrap"):
        if getattr(args, name, 1) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("max_context", "context"):
        if getattr(args, name, 0) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    def body() -> int:
        with OutputLock(args.out, f"fspo-gpo {args.command}"):
            return int(args.func(args))

    return run_command(f"fspo-gpo {args.command}", body, {(GpoDataError, EmbeddingError, OSError, OutputInUseError,
                                                            CheckpointCheckError, RunDirError): 2})


if __name__ == "__main__":
    raise SystemExit(main())
