"""GPO: the module's mask and invariances, the alignment score, bad input, and embed -> train -> eval end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, cli_env
from fspo_recipe.gpo.meta import alignment
from fspo_recipe.gpo.module import GpoConfig, GpoModule, gpo_mask
from fspo_recipe.gpo.tasks import GpoDataError, read_opinions


def test_targets_never_see_other_targets_and_context_never_sees_targets() -> None:
    blocked = gpo_mask(3, 2)
    assert not blocked[:3, :3].any()                 # context <-> context
    assert blocked[:3, 3:].all()                     # context never sees a target
    assert not blocked[3:, :3].any()                 # targets see every context point
    assert blocked[3, 4] and blocked[4, 3]           # ... but not each other
    assert not blocked[3, 3] and not blocked[4, 4]   # ... and themselves


def _module(seed: int = 0) -> GpoModule:
    torch.manual_seed(seed)
    return GpoModule(GpoConfig(input_dim=6, model_dim=16, num_layers=2, num_heads=2, ffn_dim=32)).eval()


def test_predictions_ignore_context_order_other_targets_and_padding() -> None:
    model = _module()
    g = torch.Generator().manual_seed(1)
    ctx, y, tgt = torch.randn(1, 5, 6, generator=g), torch.rand(1, 5, generator=g), torch.randn(1, 3, 6, generator=g)
    with torch.no_grad():
        base = model(ctx, y, tgt)
        perm = torch.tensor([3, 0, 4, 2, 1])
        torch.testing.assert_close(model(ctx[:, perm], y[:, perm], tgt), base, rtol=1e-5, atol=1e-6)
        # a target alone gives the score it gets beside others
        torch.testing.assert_close(model(ctx, y, tgt[:, 1:2])[0, 0], base[0, 1], rtol=1e-5, atol=1e-6)
        # padded context points (anything in them) change nothing
        padded = torch.cat([ctx, 100 * torch.randn(1, 2, 6, generator=g)], 1)
        pad = torch.tensor([[False] * 5 + [True] * 2])
        out = model(padded, torch.cat([y, torch.ones(1, 2)], 1), tgt, context_pad=pad)
        torch.testing.assert_close(out, base, rtol=1e-5, atol=1e-6)
        # the context matters
        assert not torch.allclose(model(ctx, 1 - y, tgt), base)


def test_a_seed_gives_the_same_module() -> None:
    a, b, c = _module(3), _module(3), _module(4)
    x = torch.randn(2, 4, 6), torch.rand(2, 4), torch.randn(2, 2, 6)
    with torch.no_grad():
        assert torch.equal(a(*x), b(*x)) and not torch.equal(a(*x), c(*x))


def test_alignment_score_against_hand_computed_values() -> None:
    assert alignment([0.5, 0.5], [0.5, 0.5]) == 1.0
    assert alignment([1, 0, 0, 0], [0, 0, 0, 1]) == pytest.approx(0.0)   # W1 = 3 = K - 1
    # CDFs (0.5, 1, 1) and (0, 0.5, 1): W1 = 0.5 + 0.5 = 1; K - 1 = 2
    assert alignment([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]) == pytest.approx(0.5)
    # CDFs (.2, .5, .9, 1) and (.1, .3, .6, 1): W1 = .1 + .2 + .3 = .6; K - 1 = 3
    assert alignment([0.2, 0.3, 0.4, 0.1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        alignment([1.0], [1.0])


@pytest.mark.parametrize("bad, message", [
    ({"distributions": {"g0": [0.5, 0.6]}}, "group 'g0': probabilities sum to 1.1000, not 1."),
    ({"distributions": {"g0": [0.5, 0.25, 0.25]}}, "group 'g0' has 3 probabilities for 2 options."),
    ({"options": ["only one"]}, "field 'options' must be a list of at least two non-empty strings."),
    ({"distributions": {"g0": [1.5, -0.5]}}, "group 'g0': probabilities must be numbers >= 0."),
])
def test_bad_opinion_data_is_named_by_file_line_and_group(tmp_path, bad, message) -> None:
    good = {"qkey": "Q", "question": "Agree?", "options": ["yes", "no"], "distributions": {"g0": [0.5, 0.5]}}
    path = tmp_path / "op.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, **bad}) + "\n")
    with pytest.raises(GpoDataError) as err:
        read_opinions(path)
    assert str(err.value) == f"{path}, line 2: {message}"


def gpo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fspo_recipe.gpo.cli", *args], capture_output=True, text=True,
                          env=cli_env(), cwd=REPO, timeout=900)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """Synthetic users (case, length) with 2-shot episodes, and the tiny untrained model."""
    from fspo_recipe.data.prepare import main as prepare_main
    from fspo_recipe.data.synthetic import write_study_sources
    from fspo_recipe.models.tiny import write_tiny_assets

    root = tmp_path_factory.mktemp("gpo")
    write_study_sources(root / "sources", users_per_pole=6, test_users_per_pole=2, rows_per_user=24,
                        test_rows_per_user=12, properties=("case", "length"))
    assert prepare_main(["elix", "--input", str(root / "sources" / "heldout"), "--out", str(root / "assets"),
                         "--name", "syn", "--shots", "2", "--split-mode", "source", "--no-progress"]) == 0
    write_tiny_assets(root / "assets", seed=0)
    return root


@pytest.fixture(scope="module")
def embedded(synthetic) -> Path:
    """Embeddings of the synthetic train and test splits by the untrained tiny model (made once)."""
    assets = synthetic / "assets"
    emb = synthetic / "emb"
    data = [str(assets / "syn" / "train.jsonl"), str(assets / "syn" / "test.jsonl")]
    proc = gpo("embed", str(emb), "--model", "fspo_tiny_llama", "--assets-dir", str(assets), "--data", *data,
               "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return emb


@pytest.mark.slow
@pytest.mark.xdist_group("gpo")  # one worker builds the module fixtures
def test_embeddings_resume_and_refuse_another_model(synthetic, embedded) -> None:
    assets = synthetic / "assets"
    index = (embedded / "index.jsonl").read_text()
    proc = gpo("embed", str(embedded), "--model", "fspo_tiny_llama", "--assets-dir", str(assets), "--data",
               str(assets / "syn" / "train.jsonl"), "--no-progress")
    assert proc.returncode == 0 and "embedded 0 texts" in proc.stdout
    assert (embedded / "index.jsonl").read_text() == index
    proc = gpo("embed", str(embedded), "--model", "fspo_tiny_llama", "--pooling", "last", "--assets-dir",
               str(assets), "--data", str(assets / "syn" / "train.jsonl"), "--no-progress")
    assert proc.returncode == 2 and "holds embeddings of 'fspo_tiny_llama' (mean pooling)" in proc.stderr


@pytest.mark.slow
@pytest.mark.xdist_group("gpo")  # one worker builds the module fixtures
def test_embed_train_eval_beats_chance_on_held_out_users(synthetic, embedded, tmp_path) -> None:
    assets = synthetic / "assets"
    train, test = assets / "syn" / "train.jsonl", assets / "syn" / "test.jsonl"
    emb = embedded
    run = tmp_path / "run"
    proc = gpo("train", str(run), "--embeddings", str(emb), "--data", str(train), "--steps", "300", "--lr", "1e-3",
               "--batch-users", "8", "--publish-every", "100", "--checkpoint-every", "150", "--model-dim", "64",
               "--layers", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (run / "metrics" / "train.jsonl").read_text().splitlines()]
    assert steps == [100, 200, 300] and (run / "checkpoints" / "step_300.pt").is_file()

    out = tmp_path / "eval"
    proc = gpo("eval", str(out), "--run", str(run), "--embeddings", str(emb), "--data", str(test))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "metrics.json").read_text())
    assert set(result["shots"]) == {"0", "1", "2"} and result["overall"]["users"] == 8
    lo, _ = result["shots"]["2"]["accuracy_ci95"]
    assert lo > 0.5, result["shots"]                       # reads the users' shots: above chance
    assert result["shots"]["0"]["accuracy"] == pytest.approx(0.5, abs=0.15)  # balanced users: chance without
    assert (out / "shots.csv").read_text().startswith("shots,pairs,accuracy,ci95_low,ci95_high\n0,")


@pytest.mark.slow
@pytest.mark.xdist_group("gpo")  # one worker builds the module fixtures
def test_training_resumes_as_the_uninterrupted_run(synthetic, embedded, tmp_path) -> None:
    train = synthetic / "assets" / "syn" / "train.jsonl"
    emb = embedded
    common = ["--embeddings", str(emb), "--data", str(train), "--batch-users", "4", "--publish-every", "5",
              "--checkpoint-every", "10", "--model-dim", "32", "--layers", "1", "--heads", "2"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert gpo("train", str(whole), "--steps", "20", *common).returncode == 0
    assert gpo("train", str(parts), "--steps", "20", *common).returncode == 0
    # interrupt after step 10: remove the last checkpoint and add a metric line written after it
    (parts / "checkpoints" / "step_20.pt").unlink()
    proc = gpo("train", str(parts), "--steps", "20", *common)
    assert proc.returncode == 0 and "resuming from" in proc.stdout
    a = torch.load(whole / "checkpoints" / "step_20.pt", weights_only=True)["model"]
    b = torch.load(parts / "checkpoints" / "step_20.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (whole / "metrics" / "train.jsonl").read_text() == (parts / "metrics" / "train.jsonl").read_text()
    # another configuration in the same directory is refused
    proc = gpo("train", str(parts), "--steps", "30", *common)
    assert proc.returncode == 2 and "holds a GPO run with another configuration" in proc.stderr


@pytest.mark.slow
@pytest.mark.xdist_group("gpo")  # one worker builds the module fixtures
def test_opinions_sample_embeds_trains_and_reports_alignment(synthetic, tmp_path) -> None:
    sample = REPO / "datasets" / "samples" / "opinionqa" / "opinions.jsonl"
    emb, run, out = tmp_path / "emb", tmp_path / "run", tmp_path / "eval"
    groups = "g20,g21,g22,g23"
    proc = gpo("embed", str(emb), "--model", "fspo_tiny_llama", "--assets-dir", str(synthetic / "assets"),
               "--data", str(sample), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    base = json.loads((emb / "base_model.json").read_text())
    assert len(base) == 48 and all(sum(p) == pytest.approx(1.0) and len(p) == 4 for p in base.values())
    proc = gpo("train", str(run), "--embeddings", str(emb), "--data", str(sample), "--test-groups", groups,
               "--steps", "20", "--publish-every", "10", "--model-dim", "32", "--layers", "1", "--heads", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = gpo("eval", str(out), "--run", str(run), "--embeddings", str(emb), "--data", str(sample),
               "--test-groups", groups, "--context", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "metrics.json").read_text())
    assert result["questions"] == 4 * 48 and set(result) >= {"gpo", "uniform", "base_model"}
    for name in ("gpo", "uniform", "base_model"):
        assert 0.0 <= result[name]["alignment"] <= 1.0 and set(result[name]["per_group"]) == set(groups.split(","))
    # A group with fewer answered questions than the context needs is refused, naming the group.
    proc = gpo("eval", str(out), "--run", str(run), "--embeddings", str(emb), "--data", str(sample),
               "--test-groups", groups, "--context", "48")
    assert proc.returncode == 2 and "group 'g20' answered 48 questions; 48 context questions" in proc.stderr
    # Unknown held-out groups are named.
    proc = gpo("train", str(tmp_path / "r2"), "--embeddings", str(emb), "--data", str(sample), "--test-groups", "nope")
    assert proc.returncode == 2 and "test group(s) ['nope'] are not in the data" in proc.stderr


def test_uniform_alignment_of_the_sample_is_below_one() -> None:
    """The sample's groups disagree: the uniform distribution does not match them (the task is not trivial)."""
    questions = read_opinions(REPO / "datasets" / "samples" / "opinionqa" / "opinions.jsonl")
    scores = [alignment([0.25] * 4, d) for q in questions for d in q.distributions.values()]
    assert 0.6 < float(np.mean(scores)) < 0.9
