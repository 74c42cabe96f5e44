"""Meta-training of the GPO module over users (or groups), and its evaluation on held-out ones.

Each training step samples ``batch_users`` users; for each, a random number of context items (0 to
``max_context``) and ``targets`` target items, disjoint, from that user's items. The loss is the cross-entropy of
each target item's softmax over its points with its labels (see :mod:`.tasks`). Every step's sample is drawn from a
generator seeded with (seed, step), so a resumed run is the uninterrupted one.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fspo_recipe.files import atomic_path, keep_lines, numbered
from fspo_recipe.gpo.module import GpoConfig, GpoModule
from fspo_recipe.gpo.tasks import GpoDataError, Item, OpinionQuestion, TaskSet, write_json
from fspo_recipe.stats import bootstrap_interval


@dataclass
class TrainSettings:
    steps: int = 2000
    """Optimizer steps."""
    batch_users: int = 16
    """Users (or groups) per step."""
    max_context: int = 8
    """Most context items per user in a step (the number is drawn from 0..max_context)."""
    targets: int = 4
    """Target items per user in a step."""
    lr: float = 3e-4
    """AdamW learning rate (constant after a linear warm-up of 5% of the steps)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    seed: int = 0
    """Seed of the module's initialization and of every step's sample."""
    checkpoint_every: int = 500
    """Steps between checkpoints (the last step is always saved)."""
    publish_every: int = 50
    """Steps between metric lines."""


class Embeddings:
    """The embedding of every text of a task set, as one tensor."""

    def __init__(self, texts: Sequence[str], vectors: Tensor) -> None:
        self.row = {t: i for i, t in enumerate(texts)}
        self.vectors = vectors

    def of(self, texts: Sequence[str]) -> Tensor:
        return self.vectors[[self.row[t] for t in texts]]


def collate(cases: Sequence[tuple[Sequence[Item], Sequence[Item]]], emb: Embeddings, device: torch.device
            ) -> dict[str, Tensor]:
    """Context points [B, C, D] with labels and padding; target points [B, T*K, D] with labels [B, T, K], point
    padding [B, T, K] and item padding [B, T] (K: most points of an item)."""
    size = len(cases)
    dim = emb.vectors.size(1)
    n_ctx = max((sum(len(i.texts) for i in ctx) for ctx, _ in cases), default=0)
    n_tgt = max(len(tgt) for _, tgt in cases)
    k = max(len(i.texts) for _, tgt in cases for i in tgt)
    ctx = torch.zeros((size, n_ctx, dim))
    ctx_y = torch.zeros((size, n_ctx))
    ctx_pad = torch.ones((size, n_ctx), dtype=torch.bool)
    tgt = torch.zeros((size, n_tgt, k, dim))
    labels = torch.zeros((size, n_tgt, k))
    point_pad = torch.ones((size, n_tgt, k), dtype=torch.bool)
    for b, (context, targets) in enumerate(cases):
        texts = [t for item in context for t in item.texts]
        if texts:
            ctx[b, : len(texts)] = emb.of(texts)
            ctx_y[b, : len(texts)] = torch.tensor([y for item in context for y in item.labels])
            ctx_pad[b, : len(texts)] = False
        for t, item in enumerate(targets):
            n = len(item.texts)
            tgt[b, t, :n] = emb.of(item.texts)
            labels[b, t, :n] = torch.tensor(item.labels)
            point_pad[b, t, :n] = False
    return {"context": ctx.to(device), "context_y": ctx_y.to(device), "context_pad": ctx_pad.to(device),
            "targets": tgt.flatten(1, 2).to(device), "labels": labels.to(device), "point_pad": point_pad.to(device),
            "item_pad": point_pad.all(-1).to(device)}


def item_log_probs(model: GpoModule, batch: dict[str, Tensor]) -> Tensor:
    """[B, T, K] log-probabilities of each target item's points (padded points: -inf)."""
    scores = model(batch["context"], batch["context_y"], batch["targets"], batch["context_pad"],
                   batch["point_pad"].flatten(1))
    scores = scores.view(batch["labels"].shape).masked_fill(batch["point_pad"], float("-inf"))
    return F.log_softmax(scores, dim=-1)


def item_loss(logp: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """Mean over real target items of the cross-entropy with the labels, nats."""
    ce = -torch.where(batch["labels"] > 0, batch["labels"] * logp, torch.zeros_like(logp)).sum(-1)
    real = ~batch["item_pad"]
    return ce[real].mean()


def sample_step(tasks: TaskSet, users: Sequence[str], settings: TrainSettings, step: int
                ) -> list[tuple[list[Item], list[Item]]]:
    rng = random.Random(f"gpo:{settings.seed}:{step}")
    cases = []
    for user in rng.sample(list(users), min(settings.batch_users, len(users))):
        items = list(tasks.items[user])
        rng.shuffle(items)
        targets = items[: settings.targets]
        rest = items[settings.targets :]
        n_ctx = rng.randint(0, min(settings.max_context, len(rest)))
        cases.append((rest[:n_ctx], targets))
    return cases


def train(out: Path, tasks: TaskSet, emb: Embeddings, config: GpoConfig, settings: TrainSettings, *,
          device: torch.device, log: Callable[[str], None] = print) -> GpoModule:
    """Meta-train into ``out`` (``config.json``, ``checkpoints/step_N.pt``, ``metrics/train.jsonl``), resuming
    from the last checkpoint there."""
    users = [u for u, items in tasks.items.items() if len(items) > settings.targets]
    if not users:
        raise GpoDataError(f"no user has more than {settings.targets} items (--targets); nothing to train on.")
    if len(users) < len(tasks.items):
        log(f"gpo: {len(tasks.items) - len(users)} of {len(tasks.items)} users have at most {settings.targets} items "
            "(--targets) and are not trained on")
    identity = {"model": config.to_dict(), "train": asdict(settings), "kind": tasks.kind}
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / "config.json"
    if config_file.is_file():
        have = json.loads(config_file.read_text())
        if have != identity:
            raise GpoDataError(f"{out} holds a GPO run with another configuration ({config_file}); use another OUT.")
    else:
        write_json(config_file, identity)
    torch.manual_seed(settings.seed)
    model = GpoModule(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    warmup = max(1, settings.steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    start = 0
    ckpts = checkpoints(out)
    if ckpts:
        state = torch.load(ckpts[-1], map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = int(state["step"])
        log(f"gpo: resuming from {ckpts[-1]} (step {start})")
    metrics = out / "metrics" / "train.jsonl"
    metrics.parent.mkdir(exist_ok=True)
    _truncate_metrics(metrics, start)
    model.train()
    window: list[tuple[float, float]] = []
    for step in range(start + 1, settings.steps + 1):
        batch = collate(sample_step(tasks, users, settings, step), emb, device)
        logp = item_log_probs(model, batch)
        loss = item_loss(logp, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            real = ~batch["item_pad"]
            hit = (logp.argmax(-1) == batch["labels"].argmax(-1))[real].float().mean()
        window.append((float(loss), float(hit)))
        if step % settings.publish_every == 0 or step == settings.steps:
            row = {"step": step, "loss": float(np.mean([w[0] for w in window])),
                   "top_accuracy": float(np.mean([w[1] for w in window])), "lr": scheduler.get_last_lr()[0]}
            with metrics.open("a") as fp:
                fp.write(json.dumps(row) + "\n")
            log(f"gpo: step {step}/{settings.steps}  loss {row['loss']:.4f}  top accuracy {row['top_accuracy']:.3f}")
            window = []
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            path = out / "checkpoints" / f"step_{step}.pt"
            path.parent.mkdir(exist_ok=True)
            with atomic_path(path) as tmp:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "step": step}, tmp)
    return model


def checkpoints(out: Path) -> list[Path]:
    """``out/checkpoints/step_N.pt`` by step."""
    return [path for _, path in numbered(out / "checkpoints", "step_", ".pt")]


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after the resumed step (written after the last checkpoint by an interrupted run), and a
    line torn by the kill."""
    keep_lines(path, lambda record: isinstance(record.get("step"), int) and record["step"] <= step)


def load_trained(run: Path, device: torch.device) -> GpoModule:
    """The last checkpoint of a ``fspo-gpo train`` output directory."""
    ckpts = checkpoints(run)
    if not (run / "config.json").is_file() or not ckpts:
        raise GpoDataError(f"{run} is not a finished `fspo-gpo train` output (config.json and checkpoints/step_N.pt).")
    config = GpoConfig(**json.loads((run / "config.json").read_text())["model"])
    model = GpoModule(config).to(device)
    model.load_state_dict(torch.load(ckpts[-1], map_location=device, weights_only=True)["model"])
    return model.eval()


# ---- evaluation -----------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(model: GpoModule, cases: Sequence[tuple[Sequence[Item], Item]], emb: Embeddings, device: torch.device,
            batch_size: int = 64) -> list[np.ndarray]:
    """The predicted distribution over each target item's points."""
    out: list[np.ndarray] = []
    for start in range(0, len(cases), batch_size):
        chunk = cases[start : start + batch_size]
        batch = collate([(ctx, [tgt]) for ctx, tgt in chunk], emb, device)
        probs = item_log_probs(model, batch).exp()[:, 0]
        out += [probs[i, : len(tgt.texts)].cpu().numpy() for i, (_, tgt) in enumerate(chunk)]
    return out


def evaluate_pairs(model: GpoModule, tasks: TaskSet, emb: Embeddings, *, shots: Sequence[int] | None,
                   samples: int, seed: int, device: torch.device) -> dict[str, Any]:
    """Pairwise accuracy (chosen's predicted preference above rejected's) on the split's episodes, with each
    episode's first k shots as context for every k; overall with a 95% interval, per user, per k."""
    most = max(len(ep.context) for ep in tasks.episodes)
    counts = sorted(set(shots)) if shots is not None else list(range(most + 1))
    by_k: dict[str, dict[str, Any]] = {}
    correct_at: dict[int, np.ndarray] = {}
    for k in counts:
        probs = predict(model, [(ep.context[:k], ep.target) for ep in tasks.episodes], emb, device)
        correct = np.array([float(p[0] > p[1]) for p in probs])
        correct_at[k] = correct
        by_k[str(k)] = {"accuracy": float(correct.mean()),
                        "accuracy_ci95": list(bootstrap_interval(correct, samples=samples, seed=seed)),
                        "pairs": len(correct)}
    final = correct_at[max(counts)]
    users = np.array([ep.user for ep in tasks.episodes])
    per_user = {u: {"pairs": int((users == u).sum()), "accuracy": float(final[users == u].mean())}
                for u in sorted(set(users.tolist()))}
    return {"overall": {**by_k[str(max(counts))], "shots": max(counts), "users": len(per_user)}, "shots": by_k,
            "per_user": per_user}


def alignment(p: Sequence[float], q: Sequence[float]) -> float:
    """OpinionQA's alignment of two distributions over ordinal options: 1 - W1(p, q) / (K - 1), where the options
    sit at 0, 1, ..., K-1 and W1 is the 1-D Wasserstein distance (the summed absolute difference of the CDFs)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.shape != q.shape or len(p) < 2:
        raise ValueError(f"alignment needs two distributions over the same K >= 2 options, got {p.shape}, {q.shape}")
    return float(1.0 - np.abs(np.cumsum(p) - np.cumsum(q))[:-1].sum() / (len(p) - 1))


def evaluate_opinions(model: GpoModule, questions: Sequence[OpinionQuestion], groups: Sequence[str], emb: Embeddings,
                      *, context: int, seed: int, samples: int, device: torch.device,
                      base_model: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """Alignment of the predicted answer distributions of held-out groups, each question predicted from ``context``
    other questions of the group (drawn with ``seed``); beside it the uniform distribution and, when given, the
    frozen model's own option probabilities."""
    cases, truth, qs, who = [], [], [], []
    for group in groups:
        mine = [q for q in questions if group in q.distributions]
        if len(mine) < context + 1:
            raise GpoDataError(f"group {group!r} answered {len(mine)} questions; {context} context questions and "
                               "one to predict need more.")
        for i, q in enumerate(mine):
            rng = random.Random(f"gpo-eval:{seed}:{group}:{q.qkey}")
            others = mine[:i] + mine[i + 1 :]
            cases.append((tuple(o.item(group) for o in rng.sample(others, context)), q.item(group)))
            truth.append(q.distributions[group])
            qs.append(q)
            who.append(group)
    predicted = predict(model, cases, emb, device)
    systems: dict[str, list[float]] = {
        "gpo": [alignment(p, t) for p, t in zip(predicted, truth)],
        "uniform": [alignment(np.full(len(t), 1.0 / len(t)), t) for t in truth],
    }
    if base_model is not None:
        systems["base_model"] = [alignment(base_model[q.qkey], t) for q, t in zip(qs, truth)]
    result: dict[str, Any] = {"context": context, "questions": len(truth), "groups": list(groups)}
    for name, scores in systems.items():
        arr = np.array(scores)
        result[name] = {"alignment": float(arr.mean()),
                        "alignment_ci95": list(bootstrap_interval(arr, samples=samples, seed=seed)),
                        "per_group": {g: float(arr[np.array(who) == g].mean()) for g in groups}}
    return result
