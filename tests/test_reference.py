"""Precomputed reference scores: the command, its resume, and identical training losses."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import REPO
from test_cli import CPU_TINY, metrics, run
from fspo_recipe.scoring.reference import main as score_main, partial_identity

SAMPLE = REPO / "datasets" / "samples" / "fspo_sample" / "train.jsonl"


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    from fspo_recipe.models.tiny import write_tiny_assets

    root = tmp_path_factory.mktemp("ref")
    write_tiny_assets(root / "assets", seed=0)
    out = root / "scored.jsonl"
    assert score_main(["--model", "fspo_tiny_llama", "--assets-dir", str(root / "assets"), "--input", str(SAMPLE),
                       "--output", str(out), "--batch-size", "5", "--no-progress"]) == 0
    return root, out


def test_scores_are_added_to_every_line(scored) -> None:
    _, out = scored
    src = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(got) == len(src)
    for a, b in zip(src, got):
        assert {k: b[k] for k in a} == a
        assert b["reference_score_chosen"] < 0.0 and b["reference_score_rejected"] < 0.0
    assert not out.with_name(out.name + ".partial").exists()


def test_resume_after_interruption(scored, tmp_path) -> None:
    root, full = scored
    out = tmp_path / "scored.jsonl"
    lines = full.read_text().splitlines(keepends=True)
    # A run killed after 20 lines, in the middle of writing the 21st (with the record of what it scored):
    (tmp_path / "scored.jsonl.partial").write_text("".join(lines[:20]) + lines[20][:37])
    (tmp_path / "scored.jsonl.partial.json").write_text(json.dumps(partial_identity(SAMPLE, "fspo_tiny_llama", None)))
    assert score_main(["--model", "fspo_tiny_llama", "--assets-dir", str(root / "assets"), "--input", str(SAMPLE),
                       "--output", str(out), "--batch-size", "3", "--no-progress"]) == 0
    resumed = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [json.loads(line) for line in lines]
    assert [r["id"] for r in resumed] == [r["id"] for r in expected]
    for a, b in zip(resumed, expected):  # other batch sizes: float32 rounding only
        assert a["reference_score_chosen"] == pytest.approx(b["reference_score_chosen"], abs=1e-3)


def test_precomputed_reference_trains_like_the_live_reference(scored, tmp_path) -> None:
    root, out = scored
    common = [f"common.assets.extra_path={root / 'assets'}", "model.name=fspo_tiny_llama", *CPU_TINY,
              "criterion.config.loss=dpo", "optimizer.config.lr=1e-3"]
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(SAMPLE, data / "train.jsonl")
    run(tmp_path / "live", "fspo_ipo", *common, "criterion.config.reference_model.name=fspo_tiny_llama",
        f"dataset.path={data}")
    scored_dir = tmp_path / "scored"
    scored_dir.mkdir()
    shutil.copy(out, scored_dir / "train.jsonl")
    run(tmp_path / "stored", "fspo_ipo", *common, "criterion.config.reference_model=null", f"dataset.path={scored_dir}")
    live, stored = metrics(tmp_path / "live"), metrics(tmp_path / "stored")
    assert len(live) == len(stored) == 3
    for a, b in zip(live, stored):
        for key in ("FSPO Loss", "Reward Accuracy", "Reward Margin", "Chosen Rewards", "Rejected Rewards"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-4), key
    assert (tmp_path / "stored" / "logs" / "rank_0.log").read_text().count("Loading 'fspo_tiny_llama' model") == 1


def test_run_dir_scores_with_the_runs_last_checkpoint(scored, tmp_path) -> None:
    root, full = scored
    # A run whose checkpoints keep the tiny model's weights (learning rate 0), so its scores must be the tiny model's.
    sft = tmp_path / "sft"
    run(sft, "fspo_sft", f"common.assets.extra_path={root / 'assets'}", "model.name=fspo_tiny_llama", *CPU_TINY,
        "optimizer.config.lr=0.0", "regime.num_steps=2", "regime.checkpoint_every_n_steps=1",
        "regime.keep_last_n_checkpoints=2")
    out = tmp_path / "scored.jsonl"
    assert score_main(["--run-dir", str(sft), "--input", str(SAMPLE), "--output", str(out), "--batch-size", "5",
                       "--no-progress"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [json.loads(line) for line in full.read_text().splitlines()]
    for a, b in zip(got, expected):
        assert a["reference_score_chosen"] == pytest.approx(b["reference_score_chosen"], abs=1e-4)
        assert a["reference_score_rejected"] == pytest.approx(b["reference_score_rejected"], abs=1e-4)
    assert score_main(["--run-dir", str(tmp_path / "nothing"), "--input", str(SAMPLE), "--output", str(out)]) == 1
