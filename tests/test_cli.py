"""`fairseq2 lm preference_finetune` end to end, in subprocesses, as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, cli_env

FAIRSEQ2 = shutil.which("fairseq2", path=str(Path(sys.executable).parent)) or "fairseq2"

# Small, fast and fp32 on CPU; everything else comes from the preset.
CPU_TINY = [
    "trainer.dtype=float32",
    "criterion.config.reference_dtype=float32",
    "dataset.batch_size=2",
    "optimizer.config.lr=1e-4",
    "lr_scheduler.config.num_warmup_steps=0",
    "regime.num_steps=3",
    "regime.publish_metrics_every_n_steps=1",
    "regime.checkpoint_every_n_steps=3",
]


@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory) -> Path:
    from fspo_recipe.models.tiny import write_tiny_assets

    out = tmp_path_factory.mktemp("tiny")
    write_tiny_assets(out, seed=0)
    return out


@pytest.mark.slow
def test_prepared_cards_load_by_name(tiny_assets, tmp_path) -> None:
    """`fspo-prepare` output is found by `dataset.name=<card>` (here beside the tiny model, one extra_path)."""
    from fspo_recipe.data.build import EpisodeOptions
    from fspo_recipe.data.prepare import prepare

    assets = tmp_path / "assets"
    shutil.copytree(tiny_assets, assets)
    prepare("roleplay", [str(REPO / "datasets" / "samples" / "roleplay")], assets, name="rp",
            options=EpisodeOptions(num_shots=2), progress=False)
    out = tmp_path / "run"
    run(out, "fspo_sft", f"common.assets.extra_path={assets}", "model.name=fspo_tiny_llama", "dataset.name=rp_test",
        *CPU_TINY)
    assert [r["Step"] for r in metrics(out)] == [1, 2, 3]
    assert yaml.safe_load((out / "config.yaml").read_text())["dataset"]["_set_"]["name"] == "rp_test"


def run(out: Path, preset: str, *overrides: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [FAIRSEQ2, "lm", "preference_finetune", str(out), "--preset", preset, "--no-sweep-dir", "--config", *overrides]
    full_env = cli_env(**(env or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def metrics(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "metrics" / "train.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_presets_are_listed() -> None:
    proc = subprocess.run(
        [FAIRSEQ2, "lm", "preference_finetune", "--list-preset-configs"],
        capture_output=True, text=True, env={**os.environ, "FAIRSEQ2_EXTENSION_TRACE": "1"}, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("fspo_sft", "fspo_ipo", "fspo_dpo"):
        assert f"  - {name}" in proc.stdout


def test_fspo_ipo_trains_on_cpu(tiny_assets, tmp_path) -> None:
    out = tmp_path / "ipo"
    run(out, "fspo_ipo", f"common.assets.extra_path={tiny_assets}", "model.name=fspo_tiny_llama",
        "criterion.config.reference_model.name=fspo_tiny_llama", "dataset.name=fspo_sample", *CPU_TINY)
    rows = metrics(out)
    assert (out / "logs" / "rank_0.log").read_text().count("Loading 'fspo_tiny_llama' model") == 2  # + reference
    assert [r["Step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert row["FSPO Loss"] == pytest.approx(row["Criterion Loss"])  # nll_scale is 0 in the preset
        assert 0.0 <= row["Reward Accuracy"] <= 1.0
        assert row["Learning Rate"] == pytest.approx(1e-4)
    # Step 1 starts from policy == reference: h = 0 and IPO's loss is (0 - 1/(2*0.01))^2 = 2500 for every pair.
    assert rows[0]["FSPO Loss"] == pytest.approx(2500.0, rel=1e-5)
    assert rows[0]["Reward Accuracy"] == 0.0
    assert (out / "checkpoints" / "step_3" / "model.pt").is_file()


@pytest.mark.slow
def test_compiled_layer_blocks_train_as_the_eager_model(tiny_assets, tmp_path) -> None:
    """criterion.config.compile_layers through the CLI, under activation checkpointing (dynamo's aot_eager backend:
    the graphs without C++ code generation; tests/test_unit.py checks inductor): the eager run's losses."""
    common = [f"common.assets.extra_path={tiny_assets}", "model.name=fspo_tiny_llama",
              "criterion.config.reference_model.name=fspo_tiny_llama", "dataset.name=fspo_sample", *CPU_TINY,
              "trainer.activation_checkpointing=true"]
    run(tmp_path / "eager", "fspo_ipo", *common)
    run(tmp_path / "compiled", "fspo_ipo", *common, "criterion.config.compile_layers=true",
        "criterion.config.compile_backend=aot_eager")
    log = (tmp_path / "compiled" / "logs" / "rank_0.log").read_text()
    assert "compiled 18 layer blocks (norms, feed-forward, projections and rotary) with aot_eager" in log  # 2 x 9
    for eager, compiled in zip(metrics(tmp_path / "eager"), metrics(tmp_path / "compiled"), strict=True):
        assert compiled["FSPO Loss"] == pytest.approx(eager["FSPO Loss"], rel=1e-4)


@pytest.mark.slow
def test_sft_then_ipo_from_the_sft_checkpoint(tiny_assets, tmp_path) -> None:
    sft, ipo = tmp_path / "sft", tmp_path / "ipo"
    run(sft, "fspo_sft", f"common.assets.extra_path={tiny_assets}", "model.name=fspo_tiny_llama",
        "dataset.path=datasets/samples/fspo_sample", *CPU_TINY)
    assert "Reward Accuracy" in metrics(sft)[-1]

    # The preset's policy and reference are `last_checkpoint@` of the SFT run.
    run(ipo, "fspo_ipo", f"common.assets.extra_path={tiny_assets}", f"common.assets.checkpoint_dir={sft}/checkpoints",
        "dataset.path=datasets/samples/fspo_sample", *CPU_TINY)
    rows = metrics(ipo)
    # Policy and reference are the same SFT weights at the start: every implicit reward is 0.
    assert rows[0]["Chosen Rewards"] == pytest.approx(0.0, abs=1e-5)
    assert rows[0]["FSPO Loss"] == pytest.approx(2500.0, rel=1e-5)


@pytest.mark.slow
def test_one_override_switches_the_loss(tiny_assets, tmp_path) -> None:
    out = tmp_path / "simpo"
    run(out, "fspo_ipo", f"common.assets.extra_path={tiny_assets}", "model.name=fspo_tiny_llama",
        "criterion.config.reference_model.name=fspo_tiny_llama", *CPU_TINY, "criterion.config.loss=simpo")
    log = (out / "logs" / "rank_0.log").read_text()
    assert "criterion simpo with SimpoConfig(beta=2.0, gamma=0.5)" in log
    # SimPO needs no reference, so the preset's reference model is not loaded.
    assert "criterion simpo needs no reference; no reference model is loaded" in log
    assert log.count("Loading 'fspo_tiny_llama' model") == 1
    first = metrics(out)[0]
    assert first["FSPO Loss"] > 0.0 and first["FSPO Loss"] != pytest.approx(2500.0)


@pytest.mark.slow
def test_custom_criterion_from_users_module(tiny_assets, tmp_path) -> None:
    out = tmp_path / "hinge"
    run(
        out, "fspo_ipo", f"common.assets.extra_path={tiny_assets}", "model.name=fspo_tiny_llama",
        "criterion.config.reference_model.name=fspo_tiny_llama", *CPU_TINY,
        "criterion.config.loss=my_criteria:hinge",  # the one override that selects the user's criterion
        env={"PYTHONPATH": str(REPO / "tests" / "fixtures")},
    )
    log = (out / "logs" / "rank_0.log").read_text()
    assert "criterion my_criteria:hinge with HingeConfig(margin=1.0)" in log
    # At the first step policy == reference: h = 0 and the hinge loss is exactly the margin.
    assert metrics(out)[0]["Criterion Loss"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_hyper_parameters_of_a_new_criterion_are_added_with_add(tmp_path) -> None:
    proc = subprocess.run(
        [FAIRSEQ2, "lm", "preference_finetune", str(tmp_path), "--preset", "fspo_ipo", "--dump-config", "--config",
         "criterion.config.loss=my_criteria:hinge", "add:criterion.config.loss_params.hinge={margin: 3.0}"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "FAIRSEQ2_EXTENSION_TRACE": "1", "PYTHONPATH": str(REPO / "tests" / "fixtures")},
    )
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    assert config["criterion"]["config"]["loss_params"]["hinge"] == {"_set_": {"margin": 3.0}}
