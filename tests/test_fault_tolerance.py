"""Runs that crash, diverge or get a mismatched reference: resume, stop cleanly, or refuse with a clear message."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, cli_env as env
from test_cli import FAIRSEQ2, metrics, run, tiny_assets  # noqa: F401  (tiny_assets is a fixture)

SHORT_RUN = [
    "model.name=fspo_tiny_llama",
    "criterion.config.reference_model.name=fspo_tiny_llama",
    "dataset.name=fspo_sample",
    "dataset.batch_size=2",
    "trainer.dtype=float32",
    "criterion.config.reference_dtype=float32",
    "optimizer.config.lr=1e-4",
    "lr_scheduler.config.num_warmup_steps=2",
    "regime.num_steps=12",
    "regime.publish_metrics_every_n_steps=1",
    "regime.checkpoint_every_n_steps=4",
    "regime.keep_last_n_checkpoints=1",
]
# Metrics that measure time, not training.
TIMINGS = {"Time", "Elapsed Time", "Wall Time", "Elements per Second", "Data Read Time", "Data Time Ratio"}


def command(out: Path, *overrides: str) -> list[str]:
    return [FAIRSEQ2, "lm", "preference_finetune", str(out), "--preset", "fspo_ipo", "--no-sweep-dir", "--config",
            *overrides]


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_and_ends_as_an_uninterrupted_one(tiny_assets, tmp_path) -> None:
    overrides = [f"common.assets.extra_path={tiny_assets}", *SHORT_RUN]
    full, killed = tmp_path / "full", tmp_path / "killed"
    run(full, "fspo_ipo", *overrides)

    # Kill the second run once it has written step 6, i.e. after its step-4 checkpoint and two steps beyond it.
    proc = subprocess.Popen(command(killed, *overrides), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env(), cwd=REPO)
    train = killed / "metrics" / "train.jsonl"
    deadline = time.monotonic() + 300
    while not (train.is_file() and '"Step": 6,' in train.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [p.name for p in (killed / "checkpoints").glob("step_*")] == ["step_4"]
    assert max(r["Step"] for r in metrics(killed)) >= 6  # lines of steps 5, 6 that the resumed run will redo

    run(killed, "fspo_ipo", *overrides)  # the same command again

    lines = train.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # every line complete
    a, b = metrics(full), metrics(killed)
    assert [r["Step"] for r in b] == list(range(1, 13))  # no duplicated step
    for ra, rb in zip(a, b):
        for key in set(ra) - TIMINGS:
            assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-7), (ra["Step"], key)
    assert "Resuming at step 5: dropped" in (killed / "logs" / "rank_0.log").read_text()


def test_metrics_of_redone_steps_and_a_cut_line_are_dropped_before_a_resume(tmp_path) -> None:
    from fspo_recipe.train.checkpoints import forget_redone_metrics

    (tmp_path / "metrics").mkdir()
    train, valid = tmp_path / "metrics" / "train.jsonl", tmp_path / "metrics" / "valid.jsonl"
    train.write_text('{"Step": 1, "a": 1}\n{"Step": 2, "a": 2}\n{"Step": 3, "a": 3}\n{"Step": 4, "a"')
    valid.write_text('{"Step": 2, "b": 1}\n')
    assert forget_redone_metrics(tmp_path, 2) == 2  # resuming from the step-2 checkpoint: steps 3, 4 are redone
    assert train.read_text() == '{"Step": 1, "a": 1}\n{"Step": 2, "a": 2}\n'
    assert valid.read_text() == '{"Step": 2, "b": 1}\n'
    assert forget_redone_metrics(tmp_path, 2) == 0  # nothing to drop: the files are left as they are
    assert forget_redone_metrics(tmp_path, None) == 3  # no checkpoint: the run starts over
    assert train.read_text() == valid.read_text() == ""
    assert forget_redone_metrics(tmp_path / "absent", 1) == 0
    assert not list((tmp_path / "metrics").glob(".*tmp"))


@pytest.mark.slow
def test_a_nan_loss_stops_training_naming_the_step_and_keeps_the_last_checkpoint(tiny_assets, tmp_path) -> None:
    out = tmp_path / "nan"
    overrides = [f"common.assets.extra_path={tiny_assets}", *SHORT_RUN, "criterion.config.loss=my_criteria:diverge_after",
                 "add:criterion.config.loss_params.diverge_after={calls: 5}"]
    proc = subprocess.run(command(out, *overrides), capture_output=True, text=True, cwd=REPO, timeout=600,
                          env=env(PYTHONPATH=str(REPO / "tests" / "fixtures"), COLUMNS="400"))
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert "The FSPO loss is nan at step 6 for 2 of 2 pair(s)" in message
    assert "Traceback" not in message  # one clear error, not a stack trace
    assert [p.name for p in (out / "checkpoints").glob("step_*")] == ["step_4"]
    state = torch.load(out / "checkpoints" / "step_4" / "model.pt", weights_only=True)["model"]
    assert all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
    assert [r["Step"] for r in metrics(out)] == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_a_reference_with_another_vocabulary_is_refused(tiny_assets, tmp_path) -> None:
    from fairseq2.models.llama import LLaMAConfig, LLaMAFactory
    from fairseq2.utils.structured import structure

    from fspo_recipe.models.tiny import TinyModelSpec

    spec = TinyModelSpec()
    config = spec.model_config()
    config["vocab_info"] = {**config["vocab_info"], "size": 640}  # type: ignore[dict-item]
    other = tmp_path / "other"
    other.mkdir()
    model = LLaMAFactory(structure(config, LLaMAConfig)).create_model()
    torch.save({"model": model.state_dict(), "model_key": "model", "fs2": True}, other / "model.pt")
    card = (tiny_assets / "tiny_model.yaml").read_text().replace("name: fspo_tiny_llama", "name: other_vocab_llama")
    card = card.replace("size: 512", "size: 640").replace("tokenizer: tokenizer.model",
                                                          f"tokenizer: {tiny_assets / 'tokenizer.model'}")
    (other / "card.yaml").write_text(card)

    out = tmp_path / "run"
    overrides = [f"common.assets.extra_path={tiny_assets}", *SHORT_RUN, "criterion.config.reference_model.name=other_vocab_llama"]
    proc = subprocess.run(command(out, *overrides), capture_output=True, text=True, cwd=REPO, timeout=600,
                          env=env(FAIRSEQ2_USER_ASSET_DIR=str(other), COLUMNS="400"))
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert "The reference model 'other_vocab_llama' has a different vocabulary from the policy 'fspo_tiny_llama'" in message
    assert "size=640" in message and "size=512" in message
    assert "Traceback" not in message


@pytest.mark.slow
def test_a_checkpoint_directory_that_does_not_exist_is_named(tmp_path) -> None:
    missing = tmp_path / "no_such_run" / "checkpoints"
    proc = subprocess.run(command(tmp_path / "run", f"common.assets.checkpoint_dir={missing}"), capture_output=True,
                          text=True, cwd=REPO, timeout=300, env=env(COLUMNS="400"))
    assert proc.returncode != 0
    message = " ".join((proc.stdout + proc.stderr).split())
    assert f"The checkpoint metadata file (model.yaml) is not found under '{missing}'" in message
    assert "'last_checkpoint@' is not a known model" in message
    assert "Traceback" not in message


class _Hostile:
    """A pickle that creates a file when it is loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["hostile pickle", "empty model.pt", "truncated rank_0.pt"])
def test_a_resume_from_a_hostile_or_damaged_checkpoint_is_refused_naming_the_file(tiny_assets, tmp_path, damage
                                                                                  ) -> None:
    out = tmp_path / "run"
    overrides = [f"common.assets.extra_path={tiny_assets}", *SHORT_RUN, "regime.keep_last_n_checkpoints=2",
                 "regime.num_steps=8"]
    run(out, "fspo_ipo", *overrides)
    step = out / "checkpoints" / "step_8"
    marker = tmp_path / "code_ran"
    if damage == "hostile pickle":
        state = torch.load(step / "rank_0.pt", weights_only=True)
        torch.save({**state, "_step_nr": _Hostile(marker)}, step / "rank_0.pt")
        bad = step / "rank_0.pt"
    elif damage == "empty model.pt":
        bad = step / "model.pt"
        bad.write_bytes(b"")
    else:
        bad = step / "rank_0.pt"
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    proc = subprocess.run(command(out, *overrides, "regime.num_steps=12"), capture_output=True, text=True, cwd=REPO,
                          timeout=300, env=env(COLUMNS="400"))
    assert proc.returncode == 1
    message = " ".join(proc.stderr.split())
    assert str(bad) in message and "Traceback" not in message
    assert f"move {step} away to resume from step 4" in message
    assert ("loading it could run code" if damage == "hostile pickle" else "is damaged") in message
    assert not marker.exists()
    assert [r["Step"] for r in metrics(out)] == list(range(1, 9))  # nothing was trained or written


@pytest.mark.slow
def test_a_hostile_model_checkpoint_is_refused_by_the_next_stage_and_by_evaluation(tiny_assets, tmp_path) -> None:
    sft = tmp_path / "sft"
    run(sft, "fspo_sft", f"common.assets.extra_path={tiny_assets}", "model.name=fspo_tiny_llama", *SHORT_RUN[3:8],
        "regime.num_steps=2", "regime.checkpoint_every_n_steps=2")
    model = sft / "checkpoints" / "step_2" / "model.pt"
    marker = tmp_path / "code_ran"
    torch.save({**torch.load(model, weights_only=True), "extra": _Hostile(marker)}, model)
    stage2 = subprocess.run(
        command(tmp_path / "ipo", f"common.assets.extra_path={tiny_assets}", *SHORT_RUN[3:8],
                f"common.assets.checkpoint_dir={sft / 'checkpoints'}"),
        capture_output=True, text=True, cwd=REPO, timeout=300, env=env(COLUMNS="400"))
    evaluation = subprocess.run(
        [FAIRSEQ2, "lm", "preference_eval", str(tmp_path / "eval"), "--no-sweep-dir", "--config",
         f"common.assets.extra_path={tiny_assets}", f"model.run_dir={sft}", "dataset=fspo_sample", "criterion.loss=sft"],
        capture_output=True, text=True, cwd=REPO, timeout=300, env=env(COLUMNS="400"))
    for proc in (stage2, evaluation):
        message = " ".join(proc.stderr.split())
        assert proc.returncode == 1 and "Traceback" not in message, message[-2000:]
        assert f"{model} holds Python objects besides tensors and plain data (a reference to" in message
    assert not marker.exists()
