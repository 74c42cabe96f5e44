"""The launch scripts of example_training_scripts/: syntax, dry runs, and the pipeline for real with torchrun."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cli_env

SCRIPTS = REPO / "example_training_scripts"
LAUNCHERS = ["torchrun.sh", "slurm.sbatch", "fspo_pipeline.sh"]


def env(**extra: str) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # this environment's fairseq2, torchrun
    return cli_env(PATH=path, **extra)


def bash(script: str, timeout: int = 60, **variables: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(SCRIPTS / script)], capture_output=True, text=True, cwd=REPO,
                          env=env(**variables), timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.iterdir() if p.suffix in (".sh", ".sbatch")))
def test_bash_syntax(script: str) -> None:
    proc = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", LAUNCHERS)
def test_every_setting_is_at_the_top_with_a_comment(script: str) -> None:
    lines = (SCRIPTS / script).read_text().splitlines()
    settings = [i for i, line in enumerate(lines) if re.match(r'^([A-Z0-9_]+)="\$\{\1\b', line)]
    assert settings and "DRY_RUN" in "".join(lines[i] for i in settings)
    assert settings == list(range(settings[0], settings[0] + len(settings)))  # one block
    first_command = next(i for i, line in enumerate(lines) if line.startswith(("source", "fspo_", "read ")))
    assert settings[-1] < first_command
    for i in settings:
        if not lines[i].startswith("TORCHRUN="):
            assert "  # " in lines[i], lines[i]


def test_dry_runs_print_the_commands_and_run_nothing(tmp_path) -> None:
    out = tmp_path / "ipo"
    torchrun = bash("torchrun.sh", DRY_RUN="1", NPROC="2", OUT_DIR=str(out), OVERRIDES="regime.num_steps=10 a.b=c").stdout
    assert re.search(r"^torchrun --standalone --nproc-per-node 2 \S*fairseq2 lm preference_finetune "
                     + re.escape(str(out)) + r" --preset fspo_ipo --no-sweep-dir --config-file "
                     r"example_configurations/fsdp_3b.yaml --config regime.num_steps=10 a.b=c $", torchrun, re.M)

    slurm = bash("slurm.sbatch", DRY_RUN="1", CONFIG_FILE="", PRESET="fspo_dpo").stdout
    assert re.search(r"^srun --kill-on-bad-exit=1 \S*fairseq2 lm preference_finetune runs/ipo_8b --preset fspo_dpo "
                     r"--no-sweep-dir $", slurm, re.M)
    header = (SCRIPTS / "slurm.sbatch").read_text().split("set -euo pipefail")[0]
    assert "#SBATCH --nodes=" in header and "#SBATCH --requeue" in header  # before the first command

    root = tmp_path / "fspo"
    proc = bash("fspo_pipeline.sh", DRY_RUN="1", RUN_ROOT=str(root), LAUNCHER="torchrun", NPROC="4", STAGE2="fspo_dpo")
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("fspo-prepare elix --out " + str(root / "data"))
    assert "--preset fspo_sft" in lines[1] and f"{root}/sft " in lines[1] and "--nproc-per-node 4" in lines[1]
    assert "--preset fspo_dpo" in lines[2] and f"common.assets.checkpoint_dir={root}/sft/checkpoints" in lines[2]
    assert f"model.run_dir={root}/dpo reference.run_dir={root}/sft dataset=elix_test" in lines[3]
    assert lines[4].startswith(f"fspo-export-hf {root}/sft {root}/export_sft")
    assert lines[5].startswith(f"fspo-export-hf {root}/dpo {root}/export_dpo")
    assert lines[6].startswith(f"fspo-generate {root}/answers_sft --data elix_test") and "--backend transformers" \
        in lines[6] and f"--model {root}/export_sft" in lines[6]
    assert lines[7].startswith(f"fspo-generate {root}/answers_dpo") and len(lines) == 8  # no judge unless JUDGE=
    judged = bash("fspo_pipeline.sh", DRY_RUN="1", RUN_ROOT=str(root), JUDGE="exact", GENERATE_BACKEND="openai",
                  GENERATE_URL="http://localhost:8000/v1").stdout.splitlines()
    assert "--backend openai --base-url http://localhost:8000/v1" in judged[-2]
    assert judged[-1].startswith(f"fspo-judge {root}/judge --generations {root}/answers_ipo/generations.jsonl "
                                 f"{root}/answers_sft/generations.jsonl --baseline sft --judge exact")
    assert not root.exists() and not out.exists()


@pytest.mark.slow
@pytest.mark.xdist_group("torchrun")  # torchrun --standalone listens on one fixed port
def test_pipeline_runs_sft_then_ipo_with_two_processes_then_evaluates(tmp_path) -> None:
    from fspo_recipe.models.tiny import write_tiny_assets

    root = tmp_path / "fspo"
    write_tiny_assets(root / "data", seed=0)  # the tiny model's card beside the prepared data
    cpu = ("trainer.dtype=float32 trainer.data_parallelism=ddp dataset.batch_size=2 regime.num_steps=3 "
           "regime.checkpoint_every_n_steps=3 regime.publish_metrics_every_n_steps=1 "
           "lr_scheduler.config.num_warmup_steps=0 criterion.config.reference_dtype=float32")
    bash("fspo_pipeline.sh", timeout=900, RUN_ROOT=str(root), INPUT="datasets/samples/elix", SHOTS="2", TEST_USERS="1",
         MODEL="fspo_tiny_llama", LAUNCHER="torchrun", NPROC="2", SFT_OVERRIDES=cpu + " optimizer.config.lr=1e-3",
         STAGE2_OVERRIDES=cpu + " optimizer.config.lr=1e-4", OMP_NUM_THREADS="1",
         GENERATE_BACKEND="")  # the tiny model's tokenizer is not a Hugging Face one: tests/test_generate.py answers
    for stage in ("sft", "ipo"):  # stage 4: both runs exported (weights and config; no tokenizer files)
        config = json.loads((root / f"export_{stage}" / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"] and (root / f"export_{stage}" / "model.safetensors").is_file()
    for stage in ("sft", "ipo"):
        assert (root / stage / "checkpoints" / "step_3" / "model.pt").is_file()
        assert (root / stage / "logs" / "rank_1.log").is_file()  # two processes
        steps = [json.loads(line)["Step"] for line in (root / stage / "metrics" / "train.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3]
    ipo_log = (root / "ipo" / "logs" / "rank_0.log").read_text()
    assert "last_checkpoint@" in ipo_log  # policy and reference from the SFT run
    result = json.loads((root / "eval" / "metrics.json").read_text())
    assert result["overall"]["pairs"] > 0 and 0.0 <= result["overall"]["reward_accuracy"] <= 1.0


@pytest.mark.slow
def test_the_elix_sample_walk_through_runs(tmp_path) -> None:
    out = tmp_path / "elix"
    proc = subprocess.run(["bash", str(SCRIPTS / "elix_sample.sh"), str(out)], capture_output=True, text=True,
                          cwd=REPO, env=env(SFT_STEPS="3", IPO_STEPS="3"), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Elix-sample walk-through done" in proc.stdout and "held-out accuracy: implicit reward" in proc.stdout
    for stage in ("sft", "ipo"):
        steps = [json.loads(line)["Step"] for line in (out / stage / "metrics" / "train.jsonl").read_text().splitlines()]
        assert steps[-1] == 3
    assert json.loads((out / "eval" / "metrics.json").read_text())["overall"]["pairs"] > 0


@pytest.mark.slow
def test_the_quick_start_script_runs_end_to_end(tmp_path) -> None:
    """--check --model tiny: the quick start's pipeline and table with a few steps (the learning is
    docs/studies.md's, measured)."""
    out = tmp_path / "qs"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "quickstart.py"), "--out", str(out), "--check", "--model",
                           "tiny"], capture_output=True, text=True, cwd=REPO, env=env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in ("[1/4] synthetic users", "[2/4] fspo_sft", "[3/4] fspo_ipo", "[4/4] preference_eval"):
        assert stage in proc.stdout
    assert re.search(r"about \d+:\d\d to go", proc.stdout) and "step 3/3  loss" in proc.stdout
    assert re.search(r"^\| 0 \| 0\.\d{3} \| \[0\.\d{3}, [01]\.\d{3}\] \|$", proc.stdout, re.M)
    assert re.search(r"^\| 1 \| [01]\.\d{3} \|", proc.stdout, re.M)
    rows = (out / "eval" / "shots.csv").read_text().splitlines()
    assert rows[0].startswith("shots,pairs,reward_accuracy") and [r.split(",")[0] for r in rows[1:]] == ["0", "1"]
    assert (out / "eval" / "metrics.json").is_file() and (out / "eval" / "accuracy_vs_shots.png").is_file()
    assert (out / "sft" / "checkpoints").is_dir() and (out / "ipo" / "checkpoints").is_dir()


@pytest.mark.slow
def test_the_quick_start_trains_smollm2_and_shows_answers(tmp_path) -> None:
    """--check (default model): SmolLM2 fetched (cached in $FSPO_CACHE or ~/.cache/fspo), two SFT steps, two IPO + NLL
    steps from the SFT model (its reference), the table with 0 and 2 shots, the answers' table (trained against
    untrained with the same shots) and one trained and untrained answer per pole."""
    out = tmp_path / "qs"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "quickstart.py"), "--out", str(out), "--check"],
                          capture_output=True, text=True, cwd=REPO, env=env(), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in ("[1/5] the model", "[2/5] fspo_sft", "[3/5] fspo_ipo", "[4/5] preference_eval",
                  "[5/5] the untrained model answers"):
        assert stage in proc.stdout
    assert "step 2/2  loss" in proc.stdout
    assert re.search(r"^\| 0 \| [01]\.\d{3} \|", proc.stdout, re.M)
    assert re.search(r"^\| 2 \| [01]\.\d{3} \|", proc.stdout, re.M)
    for row in ("follows the user", "clean (no template text)", "ends by itself", "loops", "win rate against the "
                "untrained model"):
        assert re.search(rf"^\| {re.escape(row)}.* \| [01]\.\d{{3}} \[", proc.stdout, re.M), row
    assert re.search(r"who likes answers in upper case, asked: ", proc.stdout)
    assert re.search(r"who likes answers in lower case, asked: ", proc.stdout)
    assert proc.stdout.count("  untrained: ") >= 2 and proc.stdout.count("    trained: ") >= 2
    # The stages chain: IPO starts from the SFT run, which is its reference; the evaluation's reference too.
    config = (out / "ipo" / "config.yaml").read_text()
    assert f"{out / 'sft'}/checkpoints" in config and "loss: rpo" in config
    judged = json.loads((out / "judge" / "win_rates.json").read_text())
    assert judged["judge"] == "exact" and set(judged["answers"]) == {"trained", "untrained"}
    assert judged["systems"]["trained"]["overall"]["judged"] == 4
