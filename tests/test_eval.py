"""`fairseq2 lm preference_eval`: metrics, shots ablation, checkpoints, plots, errors."""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, make_batch, sample_examples
from test_cli import CPU_TINY, FAIRSEQ2, run
from test_unit import train
from fspo_recipe.criteria import get_criterion
from fspo_recipe.data.build import EpisodeOptions
from fspo_recipe.data.episodes import parse_prompt, render_episode, render_with_shots
from fspo_recipe.data.prepare import prepare
from fspo_recipe.eval.metrics import bootstrap_interval, pair_metrics, summarize
from fspo_recipe.scoring.pairs import PairScores, encode_pairs, score_pairs
from fspo_recipe.train.unit import FspoFinetuneUnit

SAMPLES = REPO / "datasets" / "samples"


def test_metrics_by_hand() -> None:
    policy = PairScores(np.array([-1.0, -5.0, -2.0]), np.array([-2.0, -4.0, -8.0]), np.array([1.0, 1.0, 2.0]),
                        np.array([1.0, 1.0, 8.0]))
    ref = PairScores(np.array([-1.0, -1.0, -1.0]), np.array([-1.0, -1.0, -1.0]), np.zeros(3), np.zeros(3))
    m = pair_metrics(policy, ref, get_criterion("dpo", beta=0.5))
    np.testing.assert_allclose(m["reward_margin"], [0.5, -0.5, 3.0])
    np.testing.assert_array_equal(m["reward_accuracy"], [1, 0, 1])
    np.testing.assert_array_equal(m["policy_accuracy"], [1, 0, 1])
    # per token: -2/2 = -1 vs -8/8 = -1: a tie is not a win
    np.testing.assert_array_equal(m["policy_accuracy_normalized"], [1, 0, 0])
    np.testing.assert_allclose(m["loss"], -np.log(1 / (1 + np.exp(-np.array([0.5, -0.5, 3.0])))))


def test_per_user_means_average_to_overall() -> None:
    rng = np.random.default_rng(0)
    users = ["a"] * 7 + ["b"] * 2 + ["c"] * 11
    per_pair = {k: rng.normal(size=20) for k in
                ("reward_margin", "loss", "chosen_rewards", "rejected_rewards", "chosen_logps", "rejected_logps")}
    per_pair |= {k: (rng.random(20) > 0.3).astype(float) for k in
                 ("reward_accuracy", "policy_accuracy", "policy_accuracy_normalized")}
    s = summarize(per_pair, users, bootstrap_samples=200)
    for metric in per_pair:
        weighted = sum(v["pairs"] * v[metric] for v in s["per_user"].values()) / s["overall"]["pairs"]
        assert weighted == pytest.approx(s["overall"][metric])
    lo, hi = s["overall"]["reward_accuracy_ci95"]
    assert lo <= s["overall"]["reward_accuracy"] <= hi and hi - lo > 0


def test_bootstrap_interval_covers_and_shrinks() -> None:
    values = (np.random.default_rng(1).random(4000) < 0.7).astype(float)
    lo, hi = bootstrap_interval(values, samples=500, seed=0)
    assert lo < 0.7 < hi and hi - lo < 0.06
    small = bootstrap_interval(values[:100], samples=500, seed=0)
    assert small[1] - small[0] > hi - lo


def test_shots_ablation_is_the_episode_renderer(tmp_path) -> None:
    """The ablated prompt of k shots equals render_episode on the first k shot rows of the episode."""
    prepare("elix", [str(SAMPLES / "elix")], tmp_path, options=EpisodeOptions(num_shots=4), progress=False)
    rows = {f"train.jsonl/{i}": json.loads(line)
            for i, line in enumerate((SAMPLES / "elix" / "train.jsonl").read_text().splitlines())}
    ep = json.loads((tmp_path / "elix" / "train.jsonl").read_text().splitlines()[7])

    def shot(row_id):
        r = rows[row_id]
        x, y = (r["response_x"], r["response_y"]) if r["label"] == 0 else (r["response_y"], r["response_x"])
        return (r["prompt"], x, y)

    shots = [shot(i) for i in ep["shot_row_ids"]]
    query = rows[ep["query_row_id"]]["prompt"]
    parsed = parse_prompt(ep["src"])
    for k in range(5):
        assert render_with_shots(parsed, k) == render_episode(shots[:k], query, "", "").prompt
    assert render_with_shots(parsed, 4) == ep["src"]


@pytest.mark.slow
def test_trained_model_scores_above_chance_on_its_training_users(tiny_model, gangs, tmp_path) -> None:
    from fairseq2.data.text.tokenizers.llama import LLaMA3Tokenizer
    from fspo_recipe.models.tiny import write_tiny_assets

    write_tiny_assets(tmp_path, seed=0)
    tokenizer = LLaMA3Tokenizer(tmp_path / "tokenizer.model")
    examples = sample_examples(4)
    pairs = encode_pairs(tokenizer, [e["src"] for e in examples], [e["tgt_chosen"] for e in examples],
                         [e["tgt_rejected"] for e in examples])

    torch.manual_seed(0)
    model = tiny_model()
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    before = score_pairs(model, pairs, batch_size=3, device=torch.device("cpu"))
    ref = score_pairs(reference, pairs, batch_size=3, device=torch.device("cpu"))
    # The evaluator's scores are the training unit's log-probs (same encoding as the stock reader).
    unit = FspoFinetuneUnit(model, reference, get_criterion("dpo"), gangs)
    logps = unit.compute_logps(make_batch(examples))
    np.testing.assert_allclose(before.chosen, logps.policy_chosen.detach().numpy(), rtol=1e-5)

    train(unit, model, make_batch(examples), steps=25, lr=3e-3)
    after = score_pairs(model.eval(), pairs, batch_size=3, device=torch.device("cpu"))
    users = [e["user"] for e in examples]
    result = summarize(pair_metrics(after, ref, get_criterion("dpo")), users, bootstrap_samples=100)
    untrained = summarize(pair_metrics(before, ref, get_criterion("dpo")), users, bootstrap_samples=100)
    assert untrained["overall"]["reward_accuracy"] == 0.0  # policy == reference: no pair is won
    assert result["overall"]["reward_accuracy"] == 1.0
    assert result["overall"]["reward_margin"] > untrained["overall"]["reward_margin"] == 0.0


@pytest.fixture(scope="module")
def eval_assets(tmp_path_factory) -> Path:
    from fspo_recipe.models.tiny import write_tiny_assets

    assets = tmp_path_factory.mktemp("eval_assets")
    write_tiny_assets(assets, seed=0)
    prepare("elix", [str(SAMPLES / "elix")], assets, options=EpisodeOptions(num_shots=2), progress=False)
    return assets


def evaluate(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [FAIRSEQ2, "lm", "preference_eval", str(out), "--no-sweep-dir", "--config", *overrides]
    env = {**os.environ, "FAIRSEQ2_EXTENSION_TRACE": "1", "TIKTOKEN_CACHE_DIR": "", "COLUMNS": "400"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


@pytest.mark.slow
def test_evaluate_every_checkpoint_of_a_run(eval_assets, tmp_path) -> None:
    sft = tmp_path / "sft"
    run(sft, "fspo_sft", f"common.assets.extra_path={eval_assets}", "model.name=fspo_tiny_llama",
        "dataset.name=elix_train", *CPU_TINY, "regime.checkpoint_every_n_steps=1", "regime.keep_last_n_checkpoints=3")
    out = tmp_path / "eval"
    proc = evaluate(out, f"common.assets.extra_path={eval_assets}", f"model.run_dir={sft}", "all_checkpoints=true",
                    "reference.name=fspo_tiny_llama", "dataset=elix_test", "max_examples=15", "bootstrap_samples=200",
                    "batch_size=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out accuracy: implicit reward" in proc.stdout

    result = json.loads((out / "metrics.json").read_text())
    assert list(result["steps"]) == ["1", "2", "3"]
    assert list(result["shots"]) == ["0", "1", "2"]
    assert result["overall"] == {**result["steps"]["3"]}  # the last checkpoint is the headline model
    assert result["shots"]["2"]["reward_accuracy"] == result["overall"]["reward_accuracy"]  # 2 shots = as prepared
    overall = result["overall"]
    assert overall["pairs"] == 15 and 0.0 <= overall["reward_accuracy"] <= 1.0
    with (out / "per_user.csv").open() as fp:
        rows = list(csv.DictReader(fp))
    weighted = sum(int(r["pairs"]) * float(r["reward_accuracy"]) for r in rows) / 15
    assert weighted == pytest.approx(overall["reward_accuracy"])
    with (out / "pairs.csv").open() as fp:
        assert len(list(csv.DictReader(fp))) == 15
    # Every checkpoint's per-user figures (the training curve of each user), the last one's equal to the headline's.
    assert set(result["steps_per_user"]) == {"1", "2", "3"} and result["steps_per_user"]["3"] == result["per_user"]
    for step, users in result["steps_per_user"].items():
        mean = sum(u["pairs"] * u["reward_accuracy"] for u in users.values()) / 15
        assert mean == pytest.approx(result["steps"][step]["reward_accuracy"])
    with (out / "steps_per_user.csv").open() as fp:
        assert len(list(csv.DictReader(fp))) == 3 * len(rows)
    for png in ("accuracy_per_user.png", "accuracy_vs_shots.png", "accuracy_vs_step.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_generation_for_judging(eval_assets, tmp_path) -> None:
    baseline = tmp_path / "baseline.jsonl"
    test_ids = [json.loads(line)["id"] for line in (eval_assets / "elix" / "test.jsonl").read_text().splitlines()[:2]]
    baseline.write_text("".join(json.dumps({"id": i, "response": f"base {i}"}) + "\n" for i in test_ids))
    out = tmp_path / "gen"
    proc = evaluate(out, f"common.assets.extra_path={eval_assets}", "model.name=fspo_tiny_llama",
                    "reference.name=fspo_tiny_llama", "dataset=elix_test", "max_examples=3", "shots=[]",
                    "bootstrap_samples=10", "generation.enabled=true", "generation.max_new_tokens=8",
                    f"generation.baseline_file={baseline}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [g["id"] for g in gens[:2]] == test_ids and len(gens) == 3
    assert gens[0]["baseline_response"] == f"base {test_ids[0]}" and "baseline_response" not in gens[2]
    assert all(isinstance(g["response"], str) and g["prompt"].startswith("# Example 1\n") for g in gens)


@pytest.mark.slow
def test_a_baseline_is_generated_by_the_same_command(eval_assets, tmp_path) -> None:
    """The reference model answers the queries re-rendered without shots: the no-shots baseline of a win rate."""
    out = tmp_path / "gen0"
    proc = evaluate(out, f"common.assets.extra_path={eval_assets}", "model.name=fspo_tiny_llama",
                    "reference.name=fspo_tiny_llama", "dataset=elix_test", "max_examples=6", "shots=[]",
                    "bootstrap_samples=10", "generation.enabled=true", "generation.max_new_tokens=4",
                    "generation.model=reference", "generation.shots=0", "generation.system=base0",
                    "generation.max_examples=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    examples = [json.loads(line) for line in (eval_assets / "elix" / "test.jsonl").read_text().splitlines()[:6]]
    assert len(gens) == 4 and {g["system"] for g in gens} == {"base0"} and {g["shots"] for g in gens} == {0}
    by_id = {e["id"]: e for e in examples}
    for g in gens:
        assert "# Example" not in g["prompt"] and g["prompt"].endswith(f"## Question \n{g['question']}\n")
        assert g["question"] == by_id[g["id"]]["episode"]["query"]
        assert g["user_description"] == by_id[g["id"]].get("user_description")
        assert 0 <= g["tokens"] <= 4
    # taken in turn from each user: the 4 answers cover as many users as the first 6 examples have (up to 4)
    assert len({g["user"] for g in gens}) == min(4, len({e["user"] for e in examples}))
    proc = evaluate(tmp_path / "bad", f"common.assets.extra_path={eval_assets}", "model.name=fspo_tiny_llama",
                    "dataset=elix_test", "shots=[]", "criterion.loss=simpo", "generation.enabled=true",
                    "generation.model=reference")
    assert proc.returncode != 0 and "`generation.model=reference` needs `reference.name`" in proc.stderr


@pytest.mark.slow
def test_clear_errors(eval_assets, tmp_path) -> None:
    proc = evaluate(tmp_path / "e1", f"common.assets.extra_path={eval_assets}", f"model.run_dir={tmp_path / 'nope'}",
                    "reference.name=fspo_tiny_llama", "dataset=elix_test")
    assert proc.returncode != 0
    assert f"{tmp_path / 'nope'}/checkpoints does not exist: is {tmp_path / 'nope'} the OUTPUT_DIR" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = evaluate(tmp_path / "e2", f"common.assets.extra_path={eval_assets}", "model.name=fspo_tiny_llama",
                    "dataset=elix_test", "shots=[]")
    assert proc.returncode != 0
    assert "test.jsonl has no reference_score_chosen/_rejected and no reference model is set" in proc.stderr


def test_end_of_turn_stops_as_end_of_sequence() -> None:
    from fspo_recipe.eval.generation import EndOfTurnAsEos

    probs = torch.tensor([[0.2, 0.3, 0.25, 0.25]])  # eos 0, end of turn 2
    sampled = probs.clone()
    EndOfTurnAsEos([2, 0], 0)(sampled[:, :0], sampled)
    torch.testing.assert_close(sampled, torch.tensor([[0.45, 0.3, 0.0, 0.25]]))  # stopping is either: the sum
    greedy = probs.clone()
    EndOfTurnAsEos([2], 0, greedy=True)(greedy[:, :0], greedy)
    torch.testing.assert_close(greedy, torch.tensor([[0.25, 0.3, 0.0, 0.25]]))  # token 1 stays the argmax
