"""fairseq2 lm preference_finetune (the FSPO loader) and fspo-score-reference as a new user meets them: no silent
success, no tracebacks, errors that name the file, line or key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cli_env
from test_cli import CPU_TINY, FAIRSEQ2, run, tiny_assets  # noqa: F401  (tiny_assets is a fixture)

SAMPLES = REPO / "datasets" / "samples"


# ---- fspo-score-reference -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_score_reference_checks_its_output_first_and_finds_a_runs_cards(tiny_assets, tmp_path, capsys) -> None:
    from fspo_recipe.scoring.reference import main as score_main

    sample = SAMPLES / "fspo_sample" / "train.jsonl"
    assert score_main(["--model", "fspo_tiny_llama", "--assets-dir", str(tiny_assets), "--input", str(sample),
                       "--output", str(tmp_path), "--no-progress"]) == 1
    assert "is a directory" in capsys.readouterr().err

    # A run trained with its cards in common.assets.extra_path: --run-dir alone finds the tokenizer's card.
    sft = tmp_path / "sft"
    run(sft, "fspo_sft", f"common.assets.extra_path={tiny_assets}", "model.name=fspo_tiny_llama", *CPU_TINY,
        "regime.num_steps=1", "regime.checkpoint_every_n_steps=1")
    out = tmp_path / "scored.jsonl"

    def score(output: Path) -> subprocess.CompletedProcess:  # a fresh process: no card directory known before
        return subprocess.run([sys.executable, "-m", "fspo_recipe.scoring.reference", "--run-dir", str(sft), "--input",
                               str(sample), "--output", str(output), "--no-progress"], capture_output=True, text=True,
                              env=cli_env(), cwd=REPO, timeout=300)

    assert score(out).returncode == 0
    assert len(out.read_text().splitlines()) == len(sample.read_text().splitlines())

    # The card directories the run recorded are enough without its config.yaml (fspo_card_directories.json)...
    from fspo_recipe.runs import CARD_DIRECTORIES_FILE

    (sft / "config.yaml").unlink()
    assert score(tmp_path / "w.jsonl").returncode == 0
    # ... and without either, one line that says what to pass.
    (sft / CARD_DIRECTORIES_FILE).unlink()
    proc = score(tmp_path / "x.jsonl")
    assert proc.returncode == 1
    assert "--assets-dir" in proc.stderr and "Traceback" not in proc.stderr


# ---- training: no silent success, no tracebacks ----------------------------------------------------------


def train(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [FAIRSEQ2, "lm", "preference_finetune", str(out), "--preset", "fspo_sft", "--no-sweep-dir", "--config",
           "trainer.dtype=float32", "dataset.batch_size=2", "regime.num_steps=2", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, env=cli_env(COLUMNS="400"), cwd=REPO, timeout=300)


@pytest.mark.slow
def test_an_empty_data_set_and_a_max_len_that_drops_all_fail(tiny_assets, tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.jsonl").write_text("")
    proc = train(tmp_path / "a", f"common.assets.extra_path={tiny_assets}", "model.name=fspo_tiny_llama",
                 f"dataset.path={empty}")
    assert proc.returncode == 1
    assert "gave no batch: 0 example(s) read" in proc.stderr and "Training complete" not in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = train(tmp_path / "b", f"common.assets.extra_path={tiny_assets}", "model.name=fspo_tiny_llama",
                 "dataset.max_seq_len=10")
    assert proc.returncode == 1
    assert "48 too long for dataset.max_seq_len=10" in proc.stderr
    log = (tmp_path / "b" / "logs" / "rank_0.log").read_text()
    assert "end of a pass over" in log and "48 dropped as too long for max_seq_len 10" in log


@pytest.mark.slow
def test_the_end_of_every_pass_logs_its_counts(tiny_assets, tmp_path) -> None:
    proc = train(tmp_path / "run", f"common.assets.extra_path={tiny_assets}", "model.name=fspo_tiny_llama",
                 "dataset.max_seq_len=700", "dataset.batch_size=16", "regime.num_steps=8", "regime.num_data_epochs=null")
    assert proc.returncode == 0, proc.stderr[-3000:]
    passes = [line for line in (tmp_path / "run" / "logs" / "rank_0.log").read_text().splitlines()
              if "end of a pass over" in line]
    assert len(passes) >= 2  # 48 examples in batches of 16, 8 steps: two passes end
    assert all("shortened" in line and "dropped as too long for max_seq_len 700" in line for line in passes)


@pytest.mark.slow
@pytest.mark.parametrize("override,message", [
    ("dataset.batch_size=0", "dataset.batch_size is 0; expected a whole number >= 1"),
    ("optimizer.config.lr=nan", "optimizer.config.lr is 'nan'; expected a finite number >= 0"),
    ("dataset.batch_sise=2", "--config: 'dataset.batch_sise' is not a key of the fspo_sft configuration; did you mean "
                             "'dataset.batch_size'?"),
    ("common.assets.extra_path=[/a,/b]", "common.assets.extra_path is ['/a', '/b']; fairseq2 takes one directory "
                                         "there"),
])
def test_configuration_errors_are_one_line_before_any_work(tiny_assets, tmp_path, override, message) -> None:
    proc = train(tmp_path / "run", f"common.assets.extra_path={tiny_assets}", "model.name=fspo_tiny_llama", override)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr and "--config-file" not in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_missing_data_file_and_file_as_output_dir_are_one_line(tiny_assets, tmp_path) -> None:
    import shutil

    cards = tmp_path / "cards"
    shutil.copytree(tiny_assets, cards)
    (cards / "ghost.yaml").write_text("name: ghost\ndataset_family: fspo_preference\ndata: missing.jsonl\n")
    proc = train(tmp_path / "a", f"common.assets.extra_path={cards}", "model.name=fspo_tiny_llama", "dataset.name=ghost")
    assert proc.returncode == 1
    assert "missing.jsonl" in proc.stderr and "Traceback" not in proc.stderr

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    proc = train(a_file / "run", "model.name=fspo_tiny_llama")
    assert proc.returncode == 2
    assert f"{a_file} is a file, not a directory" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_the_reference_hint_works_as_printed(tiny_assets, tmp_path) -> None:
    from fspo_recipe.train.unit import REFERENCE_OVERRIDE

    proc = train(tmp_path / "a", f"common.assets.extra_path={tiny_assets}", "model.name=fspo_tiny_llama",
                 "criterion.config.loss=ipo", "criterion.config.reference_model=null")
    assert proc.returncode == 1
    assert REFERENCE_OVERRIDE in proc.stderr.replace("\n", " ") or "reference_model={name: MODEL}" in proc.stderr
    hint = REFERENCE_OVERRIDE.split(" ", 1)[1].strip("'").replace("MODEL", "fspo_tiny_llama")
    proc = train(tmp_path / "b", f"common.assets.extra_path={tiny_assets}", "model.name=fspo_tiny_llama",
                 "criterion.config.loss=ipo", hint)
    assert proc.returncode == 0, proc.stderr[-3000:]




def test_tiny_assets_given_a_file(tmp_path) -> None:
    from fspo_recipe.models.tiny import main as tiny_main

    (tmp_path / "f").write_text("x")
    assert tiny_main([str(tmp_path / "f")]) == 2


def test_training_data_errors_give_the_column(tmp_path) -> None:
    from fspo_recipe.data.jsonl import PreferenceDataError, read_preference_jsonl

    path = tmp_path / "train.jsonl"
    path.write_text('{"src": "a", "tgt_chosen": "b", "tgt_rejected": "c"}\n{"src": "unterminated\n')
    with pytest.raises(PreferenceDataError, match=r"train.jsonl, line 2, column 9: not valid JSON \(Unterminated"):
        list(read_preference_jsonl(path))
