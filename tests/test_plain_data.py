"""Plain preference data sets (no users, no shots): Anthropic HH and UltraFeedback through fspo-prepare, training
and evaluation."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import REPO, cli_env
from fspo_recipe.data.prepare import main as prepare_main

SAMPLES = REPO / "datasets" / "samples"


def dpo_code_split(row: dict) -> tuple[str, str, str]:
    """The original DPO code's HH split (extract_anthropic_prompt, then slicing both dialogues by its length)."""
    search = "\n\nAssistant:"
    prompt = row["chosen"][: row["chosen"].rfind(search) + len(search)]
    return prompt, row["chosen"][len(prompt):], row["rejected"][len(prompt):]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    for source in ("hh", "ultrafeedback"):
        assert prepare_main([source, "--input", str(SAMPLES / source), "--out", str(out), "--no-progress"]) == 0
    from fspo_recipe.models.tiny import write_tiny_assets

    write_tiny_assets(out, seed=0)
    return out


def test_hh_splits_as_the_dpo_code_and_reports_pairs_with_different_prompts(prepared) -> None:
    for split in ("train", "test"):
        rows = [json.loads(line) for line in (SAMPLES / "hh" / f"{split}.jsonl").read_text().splitlines()]
        got = {e["id"]: e for e in map(json.loads, (prepared / "hh" / f"{split}.jsonl").read_text().splitlines())}
        for i, row in enumerate(rows):
            prompt, chosen, rejected = dpo_code_split(row)
            if row["rejected"].startswith(prompt):
                e = got[f"{split}.jsonl/{i}"]
                assert (e["src"], e["tgt_chosen"], e["tgt_rejected"]) == (prompt, chosen, rejected)  # byte for byte
                assert e["user"] == "(no user)" and "episode" not in e
            else:
                assert f"{split}.jsonl/{i}" not in got  # the DPO code would pair a wrong rejected response
        assert len(got) == sum(r["rejected"].startswith(dpo_code_split(r)[0]) for r in rows)
    summary = json.loads((prepared / "hh" / "summary.json").read_text())
    assert summary["rows_skipped"] == {"chosen and rejected dialogues with different prompts": 4}
    assert (prepared / "hh" / "hh_train.yaml").is_file() and (prepared / "hh" / "hh_test.yaml").is_file()


def test_ultrafeedback_takes_the_assistant_messages(prepared) -> None:
    rows = [json.loads(line) for line in (SAMPLES / "ultrafeedback" / "train_prefs.jsonl").read_text().splitlines()]
    got = [json.loads(line) for line in (prepared / "ultrafeedback" / "train.jsonl").read_text().splitlines()]
    assert len(got) == len(rows)
    assert got[0]["src"] == rows[0]["prompt"] and got[0]["tgt_chosen"] == rows[0]["chosen"][1]["content"]
    assert got[0]["tgt_rejected"] == rows[0]["rejected"][1]["content"]


def test_bad_plain_input_is_refused_with_the_schema(tmp_path, capsys) -> None:
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: yo"}) + "\n")
    assert prepare_main(["hh", "--input", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "missing column(s) 'rejected' for the hh schema" in err and "Expected columns: chosen (" in err
    assert prepare_main(["hh", "--input", str(SAMPLES / "hh"), "--out", str(tmp_path / "o"), "--shots", "2",
                         "--no-progress"]) != 0
    assert "hh holds plain preference pairs without users: use --shots 0" in capsys.readouterr().err
    assert not (tmp_path / "o" / "hh").exists()


def fairseq2(*args: str) -> subprocess.CompletedProcess:
    from test_cli import FAIRSEQ2

    return subprocess.run([FAIRSEQ2, *args], capture_output=True, text=True, env=cli_env(COLUMNS="400"), cwd=REPO,
                          timeout=600)


def test_hh_trains_with_dpo_and_evaluates_without_users(prepared, tmp_path) -> None:
    run = tmp_path / "dpo"
    proc = fairseq2("lm", "preference_finetune", str(run), "--preset", "fspo_dpo", "--no-sweep-dir", "--config",
                    f"common.assets.extra_path={prepared}", "model.name=fspo_tiny_llama", "dataset.name=hh_train",
                    "criterion.config.reference_model.name=fspo_tiny_llama",
                    "dataset.batch_size=4", "regime.num_steps=2", "regime.checkpoint_every_n_steps=2",
                    "trainer.dtype=float32", "criterion.config.reference_dtype=float32",
                    "lr_scheduler.config.num_warmup_steps=0", "regime.publish_metrics_every_n_steps=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (run / "metrics" / "train.jsonl").read_text().splitlines()]
    assert [m["Step"] for m in metrics] == [1, 2]
    out = tmp_path / "eval"
    proc = fairseq2("lm", "preference_eval", str(out), "--no-sweep-dir", "--config",
                    f"common.assets.extra_path={prepared}", f"model.run_dir={run}", "reference.name=fspo_tiny_llama",
                    "dataset=hh_test", "criterion.loss=dpo", "bootstrap_samples=50")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "metrics.json").read_text())
    assert result["overall"]["pairs"] == 30 and list(result["per_user"]) == ["(no user)"]
    assert 0.0 <= result["overall"]["reward_accuracy"] <= 1.0 and result["shots"] == {}
